//! The `f32` kernels a small neural network needs, over ndarray views. Functions take views and
//! write into outputs the caller owns, so a training loop can reuse its buffers; the matrix
//! products follow `general_mat_mul`'s `c = alpha * a·b + beta * c` convention and come in the
//! three shapes training uses: [`matmul`], [`matmul_nt`] and [`matmul_tn`].
//!
//! `tensor` knows nothing of layers or gradients: `nn` builds those from these kernels. The
//! kernels run on the calling thread; callers parallelise across batches or samples.
//! A wrong shape is a programmer error and panics with a message naming the shapes.

mod activation;
mod aligned;
mod batchnorm;
mod conv;
mod elementwise;
mod init;
mod matmul;
mod padded;
mod pool;
mod softmax;
mod sparse;
mod sparse_conv;
mod winograd;

pub use activation::{Activation, activation, activation_backward};
pub use aligned::AlignedVec;
pub use batchnorm::{
    Normalization, batch_norm_backward, batch_norm_backward_sums, batch_norm_normalize, channel_sums, mean_and_variance,
};
pub use conv::{
    Conv2dShape, ConvScratch, col2im_add, conv2d, conv2d_backward, conv2d_forward, conv2d_multiply_adds, im2col,
};
pub use elementwise::{add_bias, relu_backward, relu_inplace, relu_into, sum_rows};
pub use init::linear_init;
pub use matmul::{matmul, matmul_nt, matmul_tn};
pub use pool::{
    Pool2dShape, avg_pool2d, avg_pool2d_backward, global_avg_pool, global_avg_pool_backward, max_pool2d,
    max_pool2d_backward,
};
pub use softmax::{argmax, argmax_rows, log_softmax_rows, softmax_rows};
pub use sparse::{SparseRows, sparse_matmul, sparse_matmul_tn};
pub use sparse_conv::{SparseConvScratch, sparse_conv2d, sparse_conv2d_backward};
