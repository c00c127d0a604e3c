//! A model of one's own, written with public items only: a small network with a skip
//! connection (`h + relu(fc2(h))`), trained with `Trainer`, evaluated, saved, loaded and used
//! to classify, on 12x12 images of three kinds of stroke that the program draws itself.
//!
//! ```sh
//! cargo run --release -p train --example residual
//! ```

use data::Dataset;
use nn::{Linear, Model, NnError, Params, StateDict, Tape, Var};
use rand::Rng;
use train::{Settings, Trainer};

/// `h = relu(fc1(x))`, then `fc3(h + relu(fc2(h)))`.
#[derive(Debug, Clone)]
struct Residual {
    params: Params,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

/// Where the file keeps the widths, so that loading can rebuild the layers.
const WIDTHS: &str = "residual_widths";

impl Residual {
    fn new(inputs: usize, hidden: usize, classes: usize, rng: &mut impl Rng) -> Self {
        let mut params = Params::new();
        let fc1 = Linear::new(&mut params, "fc1", inputs, hidden, rng);
        let fc2 = Linear::new(&mut params, "fc2", hidden, hidden, rng);
        let fc3 = Linear::new(&mut params, "fc3", hidden, classes, rng);
        Self { params, fc1, fc2, fc3 }
    }
}

impl Model for Residual {
    fn params(&self) -> &Params {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    fn input_width(&self) -> usize {
        self.fc1.in_features
    }

    fn classes(&self) -> usize {
        self.fc3.out_features
    }

    fn describe(&self) -> String {
        format!("residual {}-{}-{}", self.fc1.in_features, self.fc1.out_features, self.fc3.out_features)
    }

    /// The one forward pass: training records it, evaluation and `classify` run it on a tape
    /// made for inference.
    fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let h = self.fc1.forward(tape, &self.params, x);
        let h = tape.relu(h);
        let branch = self.fc2.forward(tape, &self.params, h);
        let branch = tape.relu(branch);
        let sum = tape.add(h, branch);
        self.fc3.forward(tape, &self.params, sum)
    }

    fn state_dict(&self) -> StateDict {
        let mut state = self.params.state_dict();
        let widths = [self.fc1.in_features, self.fc1.out_features, self.fc3.out_features];
        state.set_meta(WIDTHS, widths.map(|w| w.to_string()).join(","));
        state
    }

    fn from_state_dict(state: &StateDict) -> Result<Self, NnError> {
        let text = state.meta(WIDTHS).ok_or_else(|| NnError::MissingMetadata { key: WIDTHS.into() })?;
        let bad = || NnError::BadMetadata { key: WIDTHS.into(), value: text.into(), expected: "three widths" };
        let widths: Vec<usize> = text.split(',').map(str::parse).collect::<Result<_, _>>().map_err(|_| bad())?;
        let [inputs, hidden, classes] = widths[..] else { return Err(bad()) };
        // Any values will do: the file's replace them, strictly (every tensor, its shape).
        let mut model = Self::new(inputs, hidden, classes, &mut train::init_rng(0));
        model.params.load_state_dict(state)?;
        Ok(model)
    }
}

/// 600 images of 12x12: a horizontal stroke (class 0), a vertical one (1) or a diagonal (2),
/// at a random place, over faint noise.
fn strokes(seed: u64) -> Dataset {
    let mut rng = train::init_rng(seed);
    let (side, n) = (12usize, 600usize);
    let mut pixels = Vec::with_capacity(n * side * side);
    for i in 0..n {
        let at = rng.random_range(2..side - 2);
        for p in 0..side * side {
            let (r, c) = (p / side, p % side);
            let ink = match i % 3 {
                0 => r == at,
                1 => c == at,
                _ => r == c,
            };
            pixels.push(if ink { rng.random_range(180..=255) } else { rng.random_range(0..40) });
        }
    }
    Dataset::new(pixels, (0..n).map(|i| (i % 3) as u8).collect(), side, side, 3)
}

/// What the example shows, for `main` to print and the test to check.
struct Outcome {
    accuracy: f64,
    reloaded_logits_equal: bool,
    classified: Vec<usize>,
    evaluated: Vec<usize>,
}

fn run() -> Outcome {
    let data = strokes(1);
    let model = Residual::new(data.image_len(), 32, data.classes(), &mut train::init_rng(0));
    let mut trainer = Trainer::new(model, Settings { batch_size: 16, ..Settings::default() }).expect("valid settings");
    trainer.fit(&data, 5, &mut ()).expect("training runs");
    for r in trainer.history() {
        println!("epoch {}: loss {:.4}, accuracy {:.1}%", r.epoch, r.train_loss, 100.0 * r.train_accuracy);
    }
    let model = trainer.into_model();

    let test = strokes(2);
    let evaluation = train::evaluate_all(&model, &test);

    // Saved as safetensors with PyTorch's names (fc1.weight, ...), and loaded back.
    let bytes = model.state_dict().to_safetensors();
    let loaded: Residual = train::load_model(&bytes).expect("the file just written");
    let x =
        ndarray::Array2::from_shape_fn((test.len(), test.image_len()), |(i, j)| f32::from(test.image(i)[j]) / 255.0);
    let (classified, probabilities) = loaded.classify(x.view());
    println!("first image: class {} with probabilities {}", classified[0], probabilities.row(0));
    Outcome {
        accuracy: evaluation.accuracy(),
        reloaded_logits_equal: loaded.logits(x.view()) == model.logits(x.view()),
        classified,
        evaluated: evaluation.predictions,
    }
}

fn main() {
    let outcome = run();
    println!("test accuracy {:.1}%", 100.0 * outcome.accuracy);
    println!("the loaded model computes the same logits: {}", outcome.reloaded_logits_equal);
    println!("classify agrees with evaluate: {}", outcome.classified == outcome.evaluated);
}

#[test]
fn a_model_of_ones_own_trains_evaluates_saves_loads_and_classifies() {
    let outcome = run();
    assert!(outcome.accuracy > 0.9, "test accuracy {}", outcome.accuracy);
    assert!(outcome.reloaded_logits_equal, "the loaded model computes other logits");
    assert_eq!(outcome.classified, outcome.evaluated, "classify and evaluate disagree");
}
