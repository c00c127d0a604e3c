//! Three interleaved spirals in the plane, learned by a small MLP with `tensor`, `nn` and
//! `optim` alone: no MNIST, no data crate.
//!
//! ```sh
//! cargo run --release -p nn --example spiral
//! ```

use std::f32::consts::PI;
use std::process::ExitCode;

use ndarray::Array2;
use nn::{Grads, MlpConfig, Model, Sequential, Tape};
use optim::{Adam, AdamConfig, Optimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `per_class` noisy points on each of `classes` spiral arms.
fn spirals(per_class: usize, classes: usize, rng: &mut impl Rng) -> (Array2<f32>, Vec<usize>) {
    let n = per_class * classes;
    let mut x = Array2::zeros((n, 2));
    let mut y = Vec::with_capacity(n);
    for c in 0..classes {
        for i in 0..per_class {
            let r = i as f32 / per_class as f32;
            let angle = 4.0 * r + 2.0 * PI * c as f32 / classes as f32 + rng.random_range(-0.2..0.2);
            let row = c * per_class + i;
            x[[row, 0]] = r * angle.sin();
            x[[row, 1]] = r * angle.cos();
            y.push(c);
        }
    }
    (x, y)
}

/// Trains on the spirals and returns the training accuracy, printing the loss as it goes.
fn train(verbose: bool) -> f32 {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (x, y) = spirals(100, 3, &mut rng);
    let mut mlp = Sequential::mlp(&MlpConfig { widths: vec![2, 64, 64, 3], output_relu: false }, &mut rng);
    let mut adam = Adam::new(AdamConfig { lr: 1e-2, ..AdamConfig::default() }).expect("valid config");
    let mut tape = Tape::new();
    let mut grads = Grads::new(mlp.params());

    for epoch in 1..=500 {
        tape.clear();
        let input = tape.input(x.view());
        let logits = mlp.forward(&mut tape, input);
        let loss = tape.cross_entropy(logits, &y);
        tape.backward(loss, mlp.params(), &mut grads);
        adam.step(mlp.params_mut(), &grads).expect("every parameter has a gradient");
        if verbose && epoch % 100 == 0 {
            println!("epoch {epoch:3}: loss {:.4}", tape.value(loss)[[0, 0]]);
        }
    }
    let correct = mlp.predict(x.view()).iter().zip(&y).filter(|(p, t)| p == t).count();
    correct as f32 / y.len() as f32
}

fn main() -> ExitCode {
    let accuracy = train(true);
    println!("training accuracy: {:.1}%", 100.0 * accuracy);
    if accuracy < 0.95 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

#[test]
fn the_spirals_are_learned() {
    // A linear model gets about a third of these right; an MLP that learned gets nearly all.
    let accuracy = train(false);
    assert!(accuracy >= 0.95, "training accuracy {accuracy}");
}
