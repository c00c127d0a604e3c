//! Trains a small MLP with the `train` library alone, on 8x8 images it makes itself: each
//! class lights up one quadrant of the image.
//!
//! ```sh
//! cargo run --release -p train --example quadrants
//! ```

use data::Dataset;
use nn::{MlpConfig, Sequential};
use train::{Settings, Trainer};

fn main() {
    // 400 images of 8x8 pixels; image i lights the quadrant of class i % 4.
    let lit = |i: usize, p: usize| (p / 8 / 4) * 2 + (p % 8) / 4 == i % 4;
    let pixels =
        (0..400).flat_map(|i| (0..64).map(move |p| if lit(i, p) { 200 + (i % 50) as u8 } else { 0 })).collect();
    let data = Dataset::new(pixels, (0..400).map(|i| (i % 4) as u8).collect(), 8, 8, 4);

    let mlp = Sequential::mlp(&MlpConfig::with_hidden(64, &[16], 4, false), &mut train::init_rng(0));
    let mut trainer = Trainer::new(mlp, Settings { batch_size: 16, ..Settings::default() }).expect("valid settings");
    trainer.fit(&data, 3, &mut ()).expect("training runs");
    for r in trainer.history() {
        println!("epoch {}: loss {:.4}, accuracy {:.1}%", r.epoch, r.train_loss, 100.0 * r.train_accuracy);
    }
    println!("accuracy: {:.1}%", 100.0 * train::evaluate_all(&trainer.into_model(), &data).accuracy());
}
