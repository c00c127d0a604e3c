//! The training step's kernels at the shapes of the default model (784-128-64-32-10, batch
//! 64 per step, 32 per thread with two threads, 1000 for evaluation), on inputs as sparse as
//! MNIST's (about 19% nonzero).
//!
//! ```sh
//! cargo bench -p tensor --bench kernels
//! ```

use divan::Bencher;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tensor::SparseRows;

fn main() {
    divan::main();
}

/// A batch of `rows` inputs of 784 features, about 19% nonzero like MNIST's pixels.
fn inputs(rows: usize) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    Array2::from_shape_fn((rows, 784), |_| if rng.random_bool(0.19) { rng.random_range(0.0..1.0) } else { 0.0 })
}

fn dense(rows: usize, cols: usize) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0..1.0))
}

/// First layer forward, dense: x·Wᵀ with W [128, 784].
#[divan::bench(args = [32, 64, 1000])]
fn first_layer_dense(bencher: Bencher, rows: usize) {
    let (x, w) = (inputs(rows), dense(128, 784));
    let mut y = Array2::zeros((rows, 128));
    bencher.bench_local(|| tensor::matmul_nt(1.0, x.view(), w.view(), 0.0, y.view_mut()));
}

/// First layer forward, sparse: gathering the nonzero inputs (assign) and the product.
#[divan::bench(args = [32, 64, 1000])]
fn first_layer_sparse(bencher: Bencher, rows: usize) {
    let (x, wt) = (inputs(rows), dense(784, 128));
    let mut sx = SparseRows::new();
    let mut y = Array2::zeros((rows, 128));
    bencher.bench_local(|| {
        sx.assign(x.view());
        tensor::sparse_matmul(&sx, wt.view(), 0.0, y.view_mut());
    });
}

/// Finding the nonzero inputs alone.
#[divan::bench(args = [32, 64, 1000])]
fn sparse_assign(bencher: Bencher, rows: usize) {
    let x = inputs(rows);
    let mut sx = SparseRows::new();
    bencher.bench_local(|| sx.assign(x.view()));
}

/// First layer weight gradient, dense: dyᵀ·x into [128, 784].
#[divan::bench(args = [32, 64])]
fn first_layer_grad_dense(bencher: Bencher, rows: usize) {
    let (x, dy) = (inputs(rows), dense(rows, 128));
    let mut dw = Array2::zeros((128, 784));
    bencher.bench_local(|| tensor::matmul_tn(1.0, dy.view(), x.view(), 0.0, dw.view_mut()));
}

/// First layer weight gradient, sparse: finding the nonzero inputs by column, then xᵀ·dy into
/// the transposed buffer, as Linear stores it.
#[divan::bench(args = [32, 64])]
fn first_layer_grad_sparse(bencher: Bencher, rows: usize) {
    let (x, dy) = (inputs(rows), dense(rows, 128));
    let mut sx = SparseRows::new();
    sx.assign(x.view());
    let mut dwt = Array2::zeros((784, 128));
    bencher.bench_local(|| {
        sx.assign(x.view());
        sx.index_columns();
        tensor::sparse_matmul_tn(&sx, dy.view(), 0.0, dwt.view_mut());
    });
}

/// The hidden layers' products: [rows, 128]·[128, 64]ᵀ-shaped, forward and both gradients.
#[divan::bench(args = [32, 64])]
fn hidden_layer(bencher: Bencher, rows: usize) {
    let (x, w, dy) = (dense(rows, 128), dense(64, 128), dense(rows, 64));
    let (mut y, mut dw, mut dx) = (Array2::zeros((rows, 64)), Array2::zeros((64, 128)), Array2::zeros((rows, 128)));
    bencher.bench_local(|| {
        tensor::matmul_nt(1.0, x.view(), w.view(), 0.0, y.view_mut());
        tensor::matmul_tn(1.0, dy.view(), x.view(), 0.0, dw.view_mut());
        tensor::matmul(1.0, dy.view(), w.view(), 0.0, dx.view_mut());
    });
}
