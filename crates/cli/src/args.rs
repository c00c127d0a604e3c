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
    Train(Box<TrainArgs>),
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
    /// Passes over the training set; with --resume, the total to reach [default: 10].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) epochs: Option<i64>,
    /// Samples per optimizer step (the last batch of an epoch may be smaller) [default: 64].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) batch_size: Option<i64>,
    /// Learning rate [default: 0.001].
    #[arg(long, value_name = "RATE", allow_negative_numbers = true)]
    pub(crate) lr: Option<f64>,
    /// adam (torch.optim.Adam), adamw (decoupled weight decay) or sgd [default: adam].
    #[arg(long, value_enum)]
    pub(crate) optimizer: Option<OptimizerKind>,
    /// Momentum, for --optimizer sgd [default: 0].
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub(crate) momentum: Option<f64>,
    /// Weight decay: L2 for adam and sgd, decoupled for adamw [default: 0, adamw 0.01].
    #[arg(long, value_name = "LAMBDA", allow_negative_numbers = true)]
    pub(crate) weight_decay: Option<f64>,
    /// Hidden layer widths, comma-separated ("" for none: softmax regression)
    /// [default: 128,64,32].
    #[arg(long, value_name = "W,W,...")]
    pub(crate) hidden: Option<String>,
    /// Apply ReLU to the output logits too, as the notebook does (it lets output units die).
    #[arg(long)]
    pub(crate) output_relu: bool,
    /// Seed for the initial weights, the shuffles and the validation split [default: 0].
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
    /// Fraction of the training set held out for validation, reported every epoch [default: 0].
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    pub(crate) val_split: Option<f64>,
    /// Stop when the validation loss has not improved for this many epochs, keeping the best
    /// epoch's weights (needs --val-split).
    #[arg(long, value_name = "PATIENCE", allow_negative_numbers = true)]
    pub(crate) early_stop: Option<i64>,
    /// Worker threads; each takes an equal part of every batch [default: all cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) threads: Option<i64>,
    /// Save the trained model as safetensors, loadable by PyTorch's load_state_dict.
    #[arg(long, value_name = "PATH")]
    pub(crate) save: Option<PathBuf>,
    /// After every epoch, save the whole training state (model, optimizer, progress) here, for
    /// --resume.
    #[arg(long, value_name = "PATH")]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Continue the run saved by --checkpoint at PATH, with its settings, up to --epochs; the
    /// result is the same as if the run had never stopped.
    #[arg(long, value_name = "PATH")]
    pub(crate) resume: Option<PathBuf>,
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

impl OptimizerConfig {
    /// The name `--optimizer` takes for it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Adam(AdamConfig { weight_decay: WeightDecay::Decoupled(_), .. }) => "adamw",
            Self::Adam(_) => "adam",
            Self::Sgd(_) => "sgd",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            Self::Adam(c) => c.lr,
            Self::Sgd(c) => c.lr,
        }
    }

    /// The weight decay coefficient, whatever its kind.
    pub fn weight_decay(&self) -> f32 {
        let wd = match self {
            Self::Adam(c) => c.weight_decay,
            Self::Sgd(c) => c.weight_decay,
        };
        match wd {
            WeightDecay::None => 0.0,
            WeightDecay::L2(l) | WeightDecay::Decoupled(l) => l,
        }
    }
}

/// What defines a training run, as opposed to where its outputs go: a resumed run keeps these.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
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
}

impl RunSettings {
    /// The model's shape for data of `inputs` features and `classes` classes.
    pub fn model(&self, inputs: usize, classes: usize) -> MlpConfig {
        let mut widths = vec![inputs];
        widths.extend(&self.hidden);
        widths.push(classes);
        MlpConfig { widths, output_relu: self.output_relu }
    }
}

/// The run-defining flags as given: `None` where the flag was left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFlags {
    batch_size: Option<usize>,
    optimizer: Option<OptimizerKind>,
    lr: Option<f32>,
    momentum: Option<f32>,
    weight_decay: Option<f32>,
    hidden: Option<Vec<usize>>,
    output_relu: bool,
    seed: Option<u64>,
    val_split: Option<f64>,
    early_stop: Option<usize>,
}

impl RunFlags {
    /// The settings of a new run: the flags given, defaults for the rest (the notebook's).
    ///
    /// # Errors
    /// Flags that do not go together.
    pub fn resolve(&self) -> Result<RunSettings, UsageError> {
        let kind = self.optimizer.unwrap_or(OptimizerKind::Adam);
        if self.momentum.is_some() && kind != OptimizerKind::Sgd {
            return Err(usage("--momentum applies to --optimizer sgd only".into()));
        }
        let lr = self.lr.unwrap_or(1e-3);
        let l2 = self.weight_decay.map_or(WeightDecay::None, WeightDecay::L2);
        let optimizer = match kind {
            OptimizerKind::Adam => OptimizerConfig::Adam(AdamConfig { lr, weight_decay: l2, ..AdamConfig::default() }),
            OptimizerKind::Adamw => OptimizerConfig::Adam(AdamConfig {
                lr,
                weight_decay: WeightDecay::Decoupled(self.weight_decay.unwrap_or(0.01)),
                ..AdamConfig::default()
            }),
            OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig {
                lr,
                momentum: self.momentum.unwrap_or(0.0),
                weight_decay: l2,
                ..SgdConfig::default()
            }),
        };
        let val_split = self.val_split.unwrap_or(0.0);
        if self.early_stop.is_some() && val_split == 0.0 {
            return Err(usage("--early-stop needs a validation set: add --val-split FRACTION".into()));
        }
        Ok(RunSettings {
            batch_size: self.batch_size.unwrap_or(64),
            optimizer,
            hidden: self.hidden.clone().unwrap_or_else(|| vec![128, 64, 32]),
            output_relu: self.output_relu,
            seed: self.seed.unwrap_or(0),
            val_split,
            early_stop: self.early_stop,
        })
    }

    /// Checks that the flags given agree with a saved run's settings: a resumed run keeps them.
    ///
    /// # Errors
    /// The first flag that differs, with both values.
    pub fn check_resume(&self, saved: &RunSettings) -> Result<(), UsageError> {
        fn differ(flag: &str, given: impl std::fmt::Display, saved: impl std::fmt::Display) -> UsageError {
            usage(format!("{flag} {given} differs from the resumed run's {saved}: a resumed run keeps its settings"))
        }
        let sgd = match saved.optimizer {
            OptimizerConfig::Sgd(c) => Some(c),
            OptimizerConfig::Adam(_) => None,
        };
        let list = |w: &[usize]| w.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        if let Some(b) = self.batch_size.filter(|&b| b != saved.batch_size) {
            return Err(differ("--batch-size", b, saved.batch_size));
        }
        if let Some(k) = self.optimizer.filter(|k| k.name() != saved.optimizer.kind()) {
            return Err(differ("--optimizer", k.name(), saved.optimizer.kind()));
        }
        if let Some(lr) = self.lr.filter(|&lr| lr != saved.optimizer.lr()) {
            return Err(differ("--lr", lr, saved.optimizer.lr()));
        }
        if let Some(m) = self.momentum.filter(|&m| Some(m) != sgd.map(|c| c.momentum)) {
            return Err(differ("--momentum", m, sgd.map_or("none".into(), |c| c.momentum.to_string())));
        }
        if let Some(w) = self.weight_decay.filter(|&w| w != saved.optimizer.weight_decay()) {
            return Err(differ("--weight-decay", w, saved.optimizer.weight_decay()));
        }
        if let Some(h) = self.hidden.as_ref().filter(|h| **h != saved.hidden) {
            return Err(differ("--hidden", list(h), list(&saved.hidden)));
        }
        if self.output_relu && !saved.output_relu {
            return Err(differ("--output-relu", "true", "false"));
        }
        if let Some(s) = self.seed.filter(|&s| s != saved.seed) {
            return Err(differ("--seed", s, saved.seed));
        }
        if let Some(v) = self.val_split.filter(|&v| v != saved.val_split) {
            return Err(differ("--val-split", v, saved.val_split));
        }
        if let Some(p) = self.early_stop.filter(|&p| Some(p) != saved.early_stop) {
            return Err(differ("--early-stop", p, saved.early_stop.map_or("none".into(), |p| p.to_string())));
        }
        Ok(())
    }
}

impl OptimizerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Adam => "adam",
            Self::Adamw => "adamw",
            Self::Sgd => "sgd",
        }
    }
}

/// Everything `train` needs, validated.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Where MNIST is.
    pub data_dir: PathBuf,
    /// Epochs to train; with `resume`, the total to reach.
    pub epochs: usize,
    /// The run-defining flags as given.
    pub run: RunFlags,
    /// Worker threads.
    pub threads: usize,
    /// Where to save the model.
    pub save: Option<PathBuf>,
    /// Where to save the training state after every epoch.
    pub checkpoint: Option<PathBuf>,
    /// A training state to continue from.
    pub resume: Option<PathBuf>,
    /// Where to write per-epoch metrics.
    pub metrics_csv: Option<PathBuf>,
    /// Where to write plots.
    pub plots: Option<PathBuf>,
    /// Print only the test accuracy.
    pub quiet: bool,
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

/// A float flag that must be finite and positive (`strict`) or non-negative.
fn float(flag: &str, value: Option<f64>, strict: bool) -> Result<Option<f32>, UsageError> {
    match value {
        Some(v) if strict && !(v.is_finite() && v > 0.0) => {
            Err(usage(format!("{flag} must be a finite number above 0, got {v}")))
        }
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            Err(usage(format!("{flag} must be a finite number of at least 0, got {v}")))
        }
        Some(v) => Ok(Some(v as f32)),
        None => Ok(None),
    }
}

impl TryFrom<TrainArgs> for TrainConfig {
    type Error = UsageError;

    fn try_from(a: TrainArgs) -> Result<Self, UsageError> {
        let epochs = count("--epochs", a.epochs.unwrap_or(10), 1)?;
        let batch_size = a.batch_size.map(|b| count("--batch-size", b, 1)).transpose()?;
        let lr = float("--lr", a.lr, true)?;
        let momentum = float("--momentum", a.momentum, false)?;
        let weight_decay = float("--weight-decay", a.weight_decay, false)?;
        if let Some(v) = a.val_split.filter(|v| !(0.0..1.0).contains(v)) {
            return Err(usage(format!("--val-split must be in [0, 1), got {v}")));
        }
        let early_stop = a.early_stop.map(|p| count("--early-stop", p, 1)).transpose()?;
        let run = RunFlags {
            batch_size,
            optimizer: a.optimizer,
            lr,
            momentum,
            weight_decay,
            hidden: a.hidden.as_deref().map(hidden).transpose()?,
            output_relu: a.output_relu,
            seed: a.seed,
            val_split: a.val_split,
            early_stop,
        };
        if a.resume.is_none() {
            // A new run's flags must go together now; a resumed run's are checked against it.
            run.resolve()?;
        }
        Ok(Self {
            data_dir: a.data.data_dir,
            epochs,
            run,
            threads: threads(a.threads)?,
            save: a.save,
            checkpoint: a.checkpoint,
            resume: a.resume,
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
        TrainConfig::try_from(*t).map_err(|e| e.0)
    }

    #[test]
    fn defaults_are_the_notebooks_recipe() {
        let c = parse(&[]).unwrap();
        let s = c.run.resolve().unwrap();
        assert_eq!((c.epochs, s.batch_size, s.hidden.clone(), s.output_relu), (10, 64, vec![128, 64, 32], false));
        assert_eq!(s.optimizer, OptimizerConfig::Adam(AdamConfig::default()));
        assert_eq!(s.model(784, 10).widths, vec![784, 128, 64, 32, 10]);
        assert_eq!((s.seed, s.val_split, s.early_stop), (0, 0.0, None));
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

    fn settings(args: &[&str]) -> RunSettings {
        parse(args).unwrap().run.resolve().unwrap()
    }

    #[test]
    fn optimizers_and_widths_are_configured() {
        let c = settings(&["--optimizer", "sgd", "--momentum", "0.9", "--weight-decay", "0.01", "--lr", "0.1"]);
        let OptimizerConfig::Sgd(s) = c.optimizer else { panic!() };
        assert_eq!((s.lr, s.momentum, s.weight_decay), (0.1, 0.9, WeightDecay::L2(0.01)));
        let c = settings(&["--optimizer", "adamw"]);
        let OptimizerConfig::Adam(a) = c.optimizer else { panic!() };
        assert_eq!(a.weight_decay, WeightDecay::Decoupled(0.01));
        assert_eq!(c.optimizer.kind(), "adamw");
        assert_eq!(settings(&["--hidden", ""]).model(784, 10).widths, vec![784, 10]);
        assert_eq!(settings(&["--hidden", "256, 128"]).hidden, vec![256, 128]);
    }

    #[test]
    fn a_resumed_run_refuses_flags_that_change_it() {
        let saved = settings(&["--lr", "0.01", "--hidden", "64", "--val-split", "0.1", "--early-stop", "2"]);
        let flags = |args: &[&str]| parse(&[&["--resume", "x"], args].concat()).unwrap().run;
        assert_eq!(flags(&[]).check_resume(&saved), Ok(()));
        assert_eq!(flags(&["--lr", "0.01", "--epochs", "20", "--threads", "1"]).check_resume(&saved), Ok(()));
        for (args, message) in [
            (&["--lr", "0.001"][..], "--lr 0.001 differs from the resumed run's 0.01"),
            (&["--hidden", "128,64"], "--hidden 128,64 differs from the resumed run's 64"),
            (&["--optimizer", "sgd"], "--optimizer sgd differs from the resumed run's adam"),
            (&["--batch-size", "32"], "--batch-size 32 differs from the resumed run's 64"),
            (&["--seed", "3"], "--seed 3 differs from the resumed run's 0"),
            (&["--output-relu"], "--output-relu true differs from the resumed run's false"),
            (&["--early-stop", "5"], "--early-stop 5 differs from the resumed run's 2"),
        ] {
            let err = flags(args).check_resume(&saved).unwrap_err();
            assert_eq!(err.0, format!("{message}: a resumed run keeps its settings"), "{args:?}");
        }
    }
}
