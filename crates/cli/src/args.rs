//! The command line: clap's view of it, and its validation into plain configs. This is the
//! only file that sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nn::MlpConfig;
use optim::{AdamConfig, SgdConfig, WeightDecay};

use crate::UsageError;

#[derive(Debug, Parser)]
#[command(name = "mnist", version, about = "Train, evaluate and use MLPs on MNIST", max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Train an MLP (by default the notebook's recipe), then evaluate it on the test set.
    Train(TrainArgs),
    /// Evaluate a saved model on the test set.
    Eval(EvalArgs),
    /// Classify image files (PNG or JPEG, any size) with a saved model.
    Predict(PredictArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DataArgs {
    /// Folder with the four MNIST files, plain or .gz (`cargo xtask fetch-data` fills data/mnist).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Passes over the training set.
    #[arg(long, value_name = "N", default_value_t = 10, allow_negative_numbers = true)]
    pub(crate) epochs: i64,
    /// Samples per optimizer step (the last batch of an epoch may be smaller).
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true)]
    pub(crate) batch_size: i64,
    /// Learning rate.
    #[arg(long, value_name = "RATE", default_value_t = 1e-3, allow_negative_numbers = true)]
    pub(crate) lr: f64,
    /// adam (torch.optim.Adam), adamw (decoupled weight decay) or sgd.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub(crate) optimizer: OptimizerKind,
    /// Momentum, for --optimizer sgd [default: 0].
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub(crate) momentum: Option<f64>,
    /// Weight decay: L2 for adam and sgd, decoupled for adamw [default: 0, adamw 0.01].
    #[arg(long, value_name = "LAMBDA", allow_negative_numbers = true)]
    pub(crate) weight_decay: Option<f64>,
    /// Hidden layer widths, comma-separated ("" for none: softmax regression).
    #[arg(long, value_name = "W,W,...", default_value = "128,64,32")]
    pub(crate) hidden: String,
    /// Apply ReLU to the output logits too, as the notebook does (it lets output units die).
    #[arg(long)]
    pub(crate) output_relu: bool,
    /// Seed for the initial weights, the shuffles and the validation split.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) seed: u64,
    /// Fraction of the training set held out for validation, reported every epoch.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, allow_negative_numbers = true)]
    pub(crate) val_split: f64,
    /// Stop when the validation loss has not improved for this many epochs, keeping the best
    /// epoch's weights (needs --val-split).
    #[arg(long, value_name = "PATIENCE", allow_negative_numbers = true)]
    pub(crate) early_stop: Option<i64>,
    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) threads: Option<i64>,
    /// Save the trained model as safetensors, loadable by PyTorch's load_state_dict.
    #[arg(long, value_name = "PATH")]
    pub(crate) save: Option<PathBuf>,
    /// Write a CSV row per epoch: loss, accuracy, validation loss and accuracy, seconds.
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_csv: Option<PathBuf>,
    /// Write SVG plots: loss and accuracy curves, confusion matrix, misclassified digits.
    #[arg(long, value_name = "DIR")]
    pub(crate) plots: Option<PathBuf>,
    /// Print only the test accuracy.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OptimizerKind {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// The model to evaluate (safetensors, as written by `train --save`).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: PathBuf,
    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) threads: Option<i64>,
    /// Write SVG plots of the confusion matrix and the misclassified digits.
    #[arg(long, value_name = "DIR")]
    pub(crate) plots: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PredictArgs {
    /// The model (safetensors, as written by `train --save`).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: PathBuf,
    /// Image files to classify.
    #[arg(value_name = "IMAGE", required = true)]
    pub(crate) images: Vec<PathBuf>,
}

/// Which optimizer, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// Adam or AdamW.
    Adam(AdamConfig),
    /// SGD.
    Sgd(SgdConfig),
}

/// Everything `train` needs, validated.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Where MNIST is.
    pub data_dir: PathBuf,
    /// Passes over the training set (at least 1).
    pub epochs: usize,
    /// Samples per step (at least 1).
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Hidden widths (input and output widths come from the data).
    pub hidden: Vec<usize>,
    /// ReLU on the logits.
    pub output_relu: bool,
    /// The run's seed.
    pub seed: u64,
    /// Validation fraction in `[0, 1)`.
    pub val_split: f64,
    /// Early-stopping patience in epochs.
    pub early_stop: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Where to save the model.
    pub save: Option<PathBuf>,
    /// Where to write per-epoch metrics.
    pub metrics_csv: Option<PathBuf>,
    /// Where to write plots.
    pub plots: Option<PathBuf>,
    /// Print only the test accuracy.
    pub quiet: bool,
}

impl TrainConfig {
    /// The model's shape for data of `inputs` features and `classes` classes.
    pub fn model(&self, inputs: usize, classes: usize) -> MlpConfig {
        let mut widths = vec![inputs];
        widths.extend(&self.hidden);
        widths.push(classes);
        MlpConfig { widths, output_relu: self.output_relu }
    }
}

fn usage(message: String) -> UsageError {
    UsageError(message)
}

/// A count flag that must be at least `min`.
fn count(flag: &str, value: i64, min: i64) -> Result<usize, UsageError> {
    if value < min {
        return Err(usage(format!("{flag} must be at least {min}, got {value}")));
    }
    usize::try_from(value).map_err(|_| usage(format!("{flag} is too large: {value}")))
}

pub(crate) fn threads(value: Option<i64>) -> Result<usize, UsageError> {
    match value {
        Some(n) => count("--threads", n, 1),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Parses `--hidden`: comma-separated positive widths, or "" for none.
fn hidden(spec: &str) -> Result<Vec<usize>, UsageError> {
    if spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|w| match w.trim().parse::<usize>() {
            Ok(0) => Err(usage(format!("--hidden {spec:?}: a width of 0"))),
            Ok(n) => Ok(n),
            Err(_) => Err(usage(format!("--hidden {spec:?}: {:?} is not a width", w.trim()))),
        })
        .collect()
}

impl TryFrom<TrainArgs> for TrainConfig {
    type Error = UsageError;

    fn try_from(a: TrainArgs) -> Result<Self, UsageError> {
        let epochs = count("--epochs", a.epochs, 1)?;
        let batch_size = count("--batch-size", a.batch_size, 1)?;
        if !(a.lr.is_finite() && a.lr > 0.0) {
            return Err(usage(format!("--lr must be a finite number above 0, got {}", a.lr)));
        }
        let non_negative = |flag: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v >= 0.0) => {
                Err(usage(format!("{flag} must be a finite number of at least 0, got {v}")))
            }
            _ => Ok(v),
        };
        let momentum = non_negative("--momentum", a.momentum)?;
        let weight_decay = non_negative("--weight-decay", a.weight_decay)?;
        if momentum.is_some() && a.optimizer != OptimizerKind::Sgd {
            return Err(usage("--momentum applies to --optimizer sgd only".into()));
        }
        let lr = a.lr as f32;
        let optimizer = match a.optimizer {
            OptimizerKind::Adam => OptimizerConfig::Adam(AdamConfig {
                lr,
                weight_decay: weight_decay.map_or(WeightDecay::None, |w| WeightDecay::L2(w as f32)),
                ..AdamConfig::default()
            }),
            OptimizerKind::Adamw => OptimizerConfig::Adam(AdamConfig {
                lr,
                weight_decay: WeightDecay::Decoupled(weight_decay.unwrap_or(0.01) as f32),
                ..AdamConfig::default()
            }),
            OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig {
                lr,
                momentum: momentum.unwrap_or(0.0) as f32,
                weight_decay: weight_decay.map_or(WeightDecay::None, |w| WeightDecay::L2(w as f32)),
                ..SgdConfig::default()
            }),
        };
        if !(0.0..1.0).contains(&a.val_split) {
            return Err(usage(format!("--val-split must be in [0, 1), got {}", a.val_split)));
        }
        let early_stop = match a.early_stop {
            Some(_) if a.val_split == 0.0 => {
                return Err(usage("--early-stop needs a validation set: add --val-split FRACTION".into()));
            }
            Some(p) => Some(count("--early-stop", p, 1)?),
            None => None,
        };
        Ok(Self {
            data_dir: a.data.data_dir,
            epochs,
            batch_size,
            optimizer,
            hidden: hidden(&a.hidden)?,
            output_relu: a.output_relu,
            seed: a.seed,
            val_split: a.val_split,
            early_stop,
            threads: threads(a.threads)?,
            save: a.save,
            metrics_csv: a.metrics_csv,
            plots: a.plots,
            quiet: a.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<TrainConfig, String> {
        let cli = Cli::try_parse_from(["mnist", "train"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Train(t) = cli.command else { unreachable!() };
        TrainConfig::try_from(t).map_err(|e| e.0)
    }

    #[test]
    fn defaults_are_the_notebooks_recipe() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.epochs, c.batch_size, c.hidden.clone(), c.output_relu), (10, 64, vec![128, 64, 32], false));
        assert_eq!(c.optimizer, OptimizerConfig::Adam(AdamConfig::default()));
        assert_eq!(c.model(784, 10).widths, vec![784, 128, 64, 32, 10]);
        assert_eq!(c.data_dir, PathBuf::from("data/mnist"));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, message) in [
            (&["--batch-size", "0"][..], "--batch-size must be at least 1, got 0"),
            (&["--epochs", "-3"], "--epochs must be at least 1, got -3"),
            (&["--lr", "0"], "--lr must be a finite number above 0, got 0"),
            (&["--lr", "-1"], "--lr must be a finite number above 0, got -1"),
            (&["--lr", "inf"], "--lr must be a finite number above 0, got inf"),
            (&["--lr", "NaN"], "--lr must be a finite number above 0, got NaN"),
            (&["--hidden", "128,0,32"], "--hidden \"128,0,32\": a width of 0"),
            (&["--hidden", "128,,32"], "--hidden \"128,,32\": \"\" is not a width"),
            (&["--val-split", "1"], "--val-split must be in [0, 1), got 1"),
            (&["--val-split", "-0.1"], "--val-split must be in [0, 1), got -0.1"),
            (&["--early-stop", "3"], "--early-stop needs a validation set: add --val-split FRACTION"),
            (&["--val-split", "0.1", "--early-stop", "0"], "--early-stop must be at least 1, got 0"),
            (&["--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
            (&["--optimizer", "sgd", "--momentum", "-1"], "--momentum must be a finite number of at least 0, got -1"),
            (&["--weight-decay", "nan"], "--weight-decay must be a finite number of at least 0, got NaN"),
            (&["--threads", "0"], "--threads must be at least 1, got 0"),
        ] {
            assert_eq!(parse(args).unwrap_err(), message, "{args:?}");
        }
    }

    #[test]
    fn optimizers_and_widths_are_configured() {
        let c = parse(&["--optimizer", "sgd", "--momentum", "0.9", "--weight-decay", "0.01", "--lr", "0.1"]).unwrap();
        let OptimizerConfig::Sgd(s) = c.optimizer else { panic!() };
        assert_eq!((s.lr, s.momentum, s.weight_decay), (0.1, 0.9, WeightDecay::L2(0.01)));
        let c = parse(&["--optimizer", "adamw"]).unwrap();
        let OptimizerConfig::Adam(a) = c.optimizer else { panic!() };
        assert_eq!(a.weight_decay, WeightDecay::Decoupled(0.01));
        assert_eq!(parse(&["--hidden", ""]).unwrap().model(784, 10).widths, vec![784, 10]);
        assert_eq!(parse(&["--hidden", "256, 128"]).unwrap().hidden, vec![256, 128]);
    }
}
