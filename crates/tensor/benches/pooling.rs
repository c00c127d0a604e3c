//! Max pooling over 2x2 windows at the shapes of LeNet-5's and the CNN's layers in a training
//! step (32 samples, as one thread takes of a batch of 64): the forward pass, which also
//! records each window's maximum for the backward pass, and the backward pass.
//!
//! The kernels run at the level in force (`MNIST_SIMD`):
//!
//! ```sh
//! MNIST_SIMD=portable cargo bench -p tensor --bench pooling
//! ```

use divan::Bencher;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tensor::Pool2dShape;

fn main() {
    divan::main();
}

/// Samples per call.
const SAMPLES: usize = 32;

/// The pooled layers as (channels, side): LeNet-5's two, then the CNN's two.
const LAYERS: [(usize, usize); 4] = [(6, 28), (16, 10), (16, 28), (32, 14)];

fn shape((channels, side): (usize, usize)) -> Pool2dShape {
    Pool2dShape { channels, height: side, width: side, kernel: 2, stride: 2 }
}

/// Activations after a ReLU: about half zeros, the rest positive.
fn activations(shape: &Pool2dShape) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    Array2::from_shape_fn((SAMPLES, shape.in_len()), |_| rng.random_range(-1.0f32..1.0).max(0.0))
}

/// A layer's shape, its input, and buffers for its output and maxima.
fn pooled(layer: (usize, usize)) -> (Pool2dShape, Array2<f32>, Array2<f32>, Vec<u32>) {
    let shape = shape(layer);
    let x = activations(&shape);
    (shape, x, Array2::zeros((SAMPLES, shape.out_len())), Vec::new())
}

#[divan::bench(args = LAYERS)]
fn forward(bencher: Bencher, layer: (usize, usize)) {
    let (shape, x, mut y, mut argmax) = pooled(layer);
    bencher.bench_local(|| tensor::max_pool2d(x.view(), &shape, y.view_mut(), &mut argmax));
}

#[divan::bench(args = LAYERS)]
fn backward(bencher: Bencher, layer: (usize, usize)) {
    let (shape, x, mut y, mut argmax) = pooled(layer);
    tensor::max_pool2d(x.view(), &shape, y.view_mut(), &mut argmax);
    let mut dx = Array2::zeros(x.dim());
    bencher.bench_local(|| tensor::max_pool2d_backward(y.view(), &argmax, 0.0, dx.view_mut()));
}
