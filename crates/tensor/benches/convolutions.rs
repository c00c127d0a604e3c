//! The convolutions of LeNet-5 and the CNN at their shapes in a training step (32 samples, as
//! one thread takes of a batch of 64), whole: the forward pass (padding or unfolding, the
//! product, laying the output out; for the CNN's 3x3 layers, Winograd's
//! transforms and products) and the backward pass (the weight and input gradients; no bias).
//! Prints one tab-separated line per layer: the median microseconds of each
//! pass over 101 steps, each backward pass after its forward pass (an unfolding convolution's
//! backward pass overwrites the columns its forward pass left), and the rate of the arithmetic
//! the direct method does (two FLOPs per multiply-add; the surplus columns of the padded path
//! are not counted).
//!
//! The kernels run at the level in force (`MNIST_SIMD`), on one thread:
//!
//! ```sh
//! MNIST_SIMD=avx2 taskset -c 1 cargo bench -p tensor --bench convolutions
//! ```

use std::hint::black_box;
use std::time::Instant;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tensor::{Conv2dShape, ConvScratch, conv2d, conv2d_backward};

/// Samples per call.
const SAMPLES: usize = 32;

/// A layer: its name and shape.
struct Layer {
    what: &'static str,
    shape: Conv2dShape,
}

const fn layer(what: &'static str, (c, side, o, kernel, padding): (usize, usize, usize, usize, usize)) -> Layer {
    let shape = Conv2dShape { in_channels: c, height: side, width: side, out_channels: o, kernel, stride: 1, padding };
    Layer { what, shape }
}

/// The layers whose inputs are not pixels (those take the sparse path) and that compute their
/// inputs' gradients.
const LAYERS: &[Layer] = &[
    layer("lenet conv2 (unfolded)", (6, 14, 16, 5, 0)),
    layer("cnn conv2 (3x3, pad 1)", (16, 28, 16, 3, 1)),
    layer("cnn conv3 (3x3, pad 1)", (16, 14, 32, 3, 1)),
    layer("cnn conv4 (3x3, pad 1)", (32, 14, 32, 3, 1)),
];

fn main() {
    println!("level\t{}", simd::Simd::get());
    println!("layer\tforward (µs)\tbackward (µs)\tforward (GFLOP/s)\tbackward (GFLOP/s)");
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for layer in LAYERS {
        let s = layer.shape;
        let mut random = |rows, cols| Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0));
        let (x, w, dy) =
            (random(SAMPLES, s.in_len()), random(s.out_channels, s.patch_len()), random(SAMPLES, s.out_len()));
        let (mut y, mut dw, mut dx) = (Array2::zeros(dy.dim()), Array2::zeros(w.dim()), Array2::zeros(x.dim()));
        let (mut cols, mut scratch) = (Vec::new(), ConvScratch::default());
        let mut times = [const { Vec::new() }; 2];
        for step in 0..111 {
            let start = Instant::now();
            conv2d(black_box(x.view()), w.view(), None, &s, &mut cols, &mut scratch, y.view_mut());
            black_box(&y);
            let middle = Instant::now();
            let input_grad = Some((dx.view_mut(), 0.0));
            conv2d_backward(
                x.view(),
                w.view(),
                black_box(dy.view()),
                &s,
                &mut cols,
                &mut scratch,
                (dw.view_mut(), 0.0),
                None,
                input_grad,
            );
            black_box((&dw, &dx));
            let end = Instant::now();
            // The first ten warm up.
            if step >= 10 {
                times[0].push((middle - start).as_secs_f64() * 1e6);
                times[1].push((end - middle).as_secs_f64() * 1e6);
            }
        }
        let [forward_us, backward_us] = times.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        let flops = 2.0 * (SAMPLES * s.out_channels * s.patch_len() * s.positions()) as f64;
        println!(
            "{}\t{forward_us:.0}\t{backward_us:.0}\t{:.0}\t{:.0}",
            layer.what,
            flops / forward_us / 1e3,
            2.0 * flops / backward_us / 1e3
        );
    }
}
