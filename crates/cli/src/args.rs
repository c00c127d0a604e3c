//! The command line: clap's view of it, and its validation into plain configs. This is the
//! only file that sees clap. Every default comes from the library that owns it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nn::MlpConfig;
use optim::{AdamConfig, OptimizerConfig, SgdConfig, WeightDecay};
use train::{Architecture, EpochSchedule, ModelFamily, Recipe, Settings};

/// A command line that parses but does not make sense; exits with status 2, like clap's own.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[derive(Debug, Parser)]
#[command(name = "mnist", version, about = "Train, evaluate and use neural networks on MNIST", max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Train a model (by default the notebook's MLP and recipe), then evaluate it on the test
    /// set.
    Train(Box<TrainArgs>),
    /// Evaluate a saved model on the test set.
    Eval(EvalArgs),
    /// Classify image files (PNG or JPEG, any size) with a saved model.
    Predict(PredictArgs),
    /// Serve a model over HTTP: a page to draw digits on, and a prediction API.
    Serve(ServeArgs),
    /// Write a saved model as ONNX, for ONNX Runtime and every other ONNX reader.
    #[command(after_long_help = EXPORT_EXAMPLE)]
    Export(ExportArgs),
}

/// Running an exported model with ONNX Runtime (`pip install onnxruntime numpy`).
const EXPORT_EXAMPLE: &str = "\
Running the file with ONNX Runtime in Python (pip install onnxruntime numpy):

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession(\"model.onnx\")
    images = np.zeros((1, 1, 28, 28), np.float32)  # N x C x H x W, pixels / 255
    logits, probabilities = session.run(None, {\"input\": images})
    print(probabilities.argmax(axis=1))";

#[derive(Debug, Args)]
pub(crate) struct DataArgs {
    /// Folder with the four MNIST files, plain or .gz (`cargo xtask fetch-data` fills data/mnist;
    /// eval needs only the two test files). Any data set in MNIST's layout works (Fashion-MNIST,
    /// KMNIST).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub(crate) data_dir: PathBuf,
}

fn defaults() -> (Settings, AdamConfig) {
    (Settings::default(), AdamConfig::adamw())
}

/// Flags in the group "run" define a run: a resumed run keeps its own, so clap refuses them with
/// --resume.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("run").multiple(true)))]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          help = format!("Passes over the training set; with --resume, the total to reach [default: {}; --recipe strong: {} for the MLP, {} for LeNet-5 and layer lists, {} for the CNN; --recipe fast: {}]",
                         train::DEFAULT_EPOCHS, Recipe::STRONG_EPOCHS_MLP, Recipe::STRONG_EPOCHS_CONV, Recipe::STRONG_EPOCHS_CNN, Recipe::FAST_EPOCHS))]
    pub(crate) epochs: Option<i64>,
    #[arg(group = "run", long, value_enum,
          help = format!("notebook (the notebook's recipe), strong (augmentation, a one-cycle schedule peaking at {}, label smoothing {}, {} epochs for the MLP, {} for LeNet-5 and layer lists, {} for the CNN, whose running statistics --precise-bn {} re-estimates: the settings that validated best) or fast (99% in seconds: LeNet-5 unless a model is given, {} epochs, one-cycle peaking at {}, label smoothing {}); flags given as well override it [default: notebook]",
                         Recipe::STRONG_LR, Recipe::STRONG_LABEL_SMOOTHING, Recipe::STRONG_EPOCHS_MLP, Recipe::STRONG_EPOCHS_CONV, Recipe::STRONG_EPOCHS_CNN,
                         Recipe::STRONG_PRECISE_BN_CNN, Recipe::FAST_EPOCHS, Recipe::FAST_LR, Recipe::STRONG_LABEL_SMOOTHING))]
    pub(crate) recipe: Option<RecipeKind>,
    #[arg(group = "run", long, value_name = "N", allow_negative_numbers = true,
          help = format!("Samples per optimizer step (the last batch of an epoch may be smaller) [default: {}]",
                         defaults().0.batch_size))]
    pub(crate) batch_size: Option<i64>,
    #[arg(group = "run", long, value_name = "RATE", allow_negative_numbers = true,
          help = format!("Learning rate [default: {}]", defaults().0.optimizer.lr()))]
    pub(crate) lr: Option<f64>,
    /// adam (torch.optim.Adam), adamw (decoupled weight decay) or sgd [default: adam].
    #[arg(group = "run", long, value_enum)]
    pub(crate) optimizer: Option<OptimizerKind>,
    /// Momentum, for --optimizer sgd [default: 0].
    #[arg(group = "run", long, value_name = "M", allow_negative_numbers = true)]
    pub(crate) momentum: Option<f64>,
    #[arg(group = "run", long, value_name = "LAMBDA", allow_negative_numbers = true,
          help = format!("Weight decay: L2 for adam and sgd, decoupled for adamw [default: 0, adamw {}]",
                         OptimizerConfig::Adam(defaults().1).weight_decay().coefficient()))]
    pub(crate) weight_decay: Option<f64>,
    /// mlp (the notebook's, shaped by --hidden and --output-relu), lenet (LeNet-5, as in
    /// PyTorch's tutorials) or cnn (four 3x3 convolutions with batch normalisation) [default:
    /// mlp].
    #[arg(group = "run", long, value_enum, conflicts_with = "layers")]
    pub(crate) model: Option<ModelKind>,
    /// A model as a list of layers, e.g. "conv(6,5,pad=2),relu,maxpool(2),flatten,linear(10)":
    /// conv(OUT,K[,stride=S][,pad=P][,bias=false]), maxpool(K[,S]), avgpool(K[,S]),
    /// globalavgpool, batchnorm[(momentum=M,eps=E)], relu, tanh, sigmoid, gelu, gelu(tanh),
    /// leakyrelu[(SLOPE)], flatten (C, H, W order), linear(OUT), dropout(P). Input widths come from the data; the last layer's
    /// width must be the number of classes.
    #[arg(group = "run", long, value_name = "LAYERS", conflicts_with_all = ["hidden", "output_relu"])]
    pub(crate) layers: Option<String>,
    #[arg(group = "run", long, value_name = "W,W,...",
          help = format!("Hidden layer widths of the MLP, comma-separated (\"\" for none: softmax regression) [default: {}]",
                         widths(&MlpConfig::NOTEBOOK_HIDDEN)))]
    pub(crate) hidden: Option<String>,
    /// Apply ReLU to the MLP's output logits too, as the notebook does (it lets output units
    /// die).
    #[arg(group = "run", long)]
    pub(crate) output_relu: bool,
    #[arg(group = "run", long, value_name = "N",
          help = format!("Seed for the initial weights, the shuffles and the validation split [default: {}]",
                         defaults().0.seed))]
    pub(crate) seed: Option<u64>,
    /// Fraction of the training set held out for validation, reported every epoch [default: 0].
    #[arg(group = "run", long, value_name = "FRACTION", allow_negative_numbers = true)]
    pub(crate) val_split: Option<f64>,
    /// Stop when the validation loss has not improved for this many epochs, keeping the best
    /// epoch's weights (needs --val-split).
    #[arg(group = "run", long, value_name = "PATIENCE", allow_negative_numbers = true)]
    pub(crate) early_stop: Option<i64>,
    /// How the learning rate changes, per optimizer step, as PyTorch's schedulers: cosine
    /// (CosineAnnealingLR down to --min-lr over the run), step (StepLR: times --gamma every
    /// --step-epochs) or onecycle (OneCycleLR peaking at --lr) [default: constant].
    #[arg(group = "run", long, value_enum)]
    pub(crate) schedule: Option<ScheduleKind>,
    /// Epochs of linear warm-up (LinearLR from a third of the learning rate) before the
    /// schedule [default: 0].
    #[arg(group = "run", long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) warmup_epochs: Option<i64>,
    /// The lowest learning rate of --schedule cosine [default: 0].
    #[arg(group = "run", long, value_name = "RATE", allow_negative_numbers = true)]
    pub(crate) min_lr: Option<f64>,
    /// Epochs between decays of --schedule step [default: a third of --epochs].
    #[arg(group = "run", long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) step_epochs: Option<i64>,
    /// The factor of each decay of --schedule step [default: 0.1].
    #[arg(group = "run", long, value_name = "FACTOR", allow_negative_numbers = true)]
    pub(crate) gamma: Option<f64>,
    /// Train on randomly transformed images: each rotated, shifted and scaled a little, a fresh
    /// draw per image and epoch from the run's seed.
    #[arg(group = "run", long)]
    pub(crate) augment: bool,
    #[arg(group = "run", long, value_name = "DEGREES", allow_negative_numbers = true,
          help = format!("The largest rotation of the augmentation (--augment, or a recipe's), either way [default: {}]", data::Augment::default().rotate))]
    pub(crate) rotate: Option<f64>,
    #[arg(group = "run", long, value_name = "PIXELS", allow_negative_numbers = true,
          help = format!("The largest shift of the augmentation (--augment, or a recipe's) along each axis [default: {}]", data::Augment::default().shift))]
    pub(crate) shift: Option<f64>,
    #[arg(group = "run", long, value_name = "FRACTION", allow_negative_numbers = true,
          help = format!("The largest change of size of the augmentation (--augment, or a recipe's), either way [default: {}]", data::Augment::default().scale))]
    pub(crate) scale: Option<f64>,
    /// Label smoothing of the training loss, as F.cross_entropy(label_smoothing=EPS)
    /// [default: 0].
    #[arg(group = "run", long, value_name = "EPS", allow_negative_numbers = true)]
    pub(crate) label_smoothing: Option<f64>,
    /// For models with batch normalisation: after each epoch, re-estimate its running
    /// statistics (what evaluation and saved models use) as the average over the epoch's first
    /// N batches, not augmented; 0 keeps those its momentum tracked [default: 0, or the
    /// recipe's].
    #[arg(group = "run", long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) precise_bn: Option<i64>,
    /// Worker threads; each takes an equal part of every batch [default: all cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) threads: Option<i64>,
    /// Continue the run saved by --checkpoint at PATH, with its settings, up to --epochs; the
    /// result is the same as if the run had never stopped. Flags that define a run (--lr,
    /// --hidden, --seed, ...) cannot be given with it.
    #[arg(long, value_name = "PATH", conflicts_with = "run")]
    pub(crate) resume: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) outputs: Outputs,
}

/// Where `train` writes, and how much it says.
#[derive(Debug, Clone, Args)]
pub struct Outputs {
    /// Save the trained model as safetensors, loadable by PyTorch's load_state_dict.
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
    /// After every epoch, save the whole training state (model, optimizer, progress) here, for
    /// --resume.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Write a CSV row per epoch: loss, accuracy, validation loss and accuracy, seconds.
    #[arg(long, value_name = "PATH")]
    pub metrics_csv: Option<PathBuf>,
    /// Write a JSON summary of the run for scripts: test accuracy and loss, times, every epoch.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Write SVG plots: loss and accuracy curves, confusion matrix, misclassified digits.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Print only the test accuracy.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RecipeKind {
    Notebook,
    Strong,
    Fast,
}

impl From<RecipeKind> for Recipe {
    fn from(kind: RecipeKind) -> Self {
        match kind {
            RecipeKind::Notebook => Recipe::Notebook,
            RecipeKind::Strong => Recipe::Strong,
            RecipeKind::Fast => Recipe::Fast,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScheduleKind {
    Constant,
    Cosine,
    Step,
    Onecycle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModelKind {
    Mlp,
    Lenet,
    Cnn,
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
    /// The model to evaluate (safetensors, as written by `train --save` or `--checkpoint`).
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
pub(crate) struct ExportArgs {
    /// The model (safetensors, as written by `train --save` or `--checkpoint`).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: PathBuf,
    /// Where to write the ONNX file (opset 17): input `input` (N x C x H x W pixels in 0..1),
    /// outputs `logits` and `probabilities`.
    #[arg(long, value_name = "PATH")]
    pub(crate) onnx: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct PredictArgs {
    /// The model (safetensors, as written by `train --save` or `--checkpoint`).
    #[arg(long, value_name = "PATH")]
    pub(crate) model: PathBuf,
    /// Image files to classify.
    #[arg(value_name = "IMAGE", required = true)]
    pub(crate) images: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The model to serve (as written by `train --save` or `--checkpoint`); without it, the
    /// default model is trained first, which takes a few seconds.
    #[arg(long, value_name = "PATH")]
    pub(crate) model: Option<PathBuf>,
    /// The address to listen on: an IP address or a host name, and a port.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub(crate) addr: String,
    /// Where MNIST is, to train a model when --model is not given.
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Worker threads for training and inference [default: all cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub(crate) threads: Option<i64>,
}

/// A new run: its settings and its model (whose input and output widths come from the data).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The engine's settings (the schedule still in epochs: see `schedule`).
    pub settings: Settings,
    /// The learning-rate schedule, in epochs.
    pub schedule: EpochSchedule,
    /// The model.
    pub architecture: Architecture,
    /// What `--recipe` expanded to, as flags, when one was given.
    pub recipe: Option<String>,
}

/// What `train` starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A new run.
    New(Box<NewRun>),
    /// The run saved at this path.
    Resume(PathBuf),
}

/// Everything `train` needs, validated.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Where MNIST is.
    pub data_dir: PathBuf,
    /// Epochs to train; when resuming, the total to reach.
    pub epochs: usize,
    /// A new run or a resumed one.
    pub start: Start,
    /// Worker threads.
    pub threads: usize,
    /// Where to write, and how much to say.
    pub outputs: Outputs,
}

fn usage(message: String) -> UsageError {
    UsageError(message)
}

fn widths(values: &[usize]) -> String {
    values.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// A count flag that must be at least `min`.
fn count(flag: &str, value: i64, min: i64) -> Result<usize, UsageError> {
    if value < min {
        return Err(usage(format!("{flag} must be at least {min}, got {value}")));
    }
    usize::try_from(value).map_err(|_| usage(format!("{flag} is too large: {value}")))
}

/// The most `--threads` asks for: beyond any CPU's cores, where a pool of threads costs memory
/// and start-up time and only slows training.
const MAX_THREADS: i64 = 1024;

pub(crate) fn threads(value: Option<i64>) -> Result<usize, UsageError> {
    match value {
        Some(n) if n > MAX_THREADS => Err(usage(format!("--threads must be at most {MAX_THREADS}, got {n}"))),
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

impl TrainArgs {
    /// The new run the flags describe: the flags given, the libraries' defaults (the
    /// notebook's) for the rest.
    fn new_run(&self) -> Result<NewRun, UsageError> {
        let (_, adamw) = defaults();
        // The recipe's settings and schedule, which the flags given override.
        let plan = Recipe::from(self.recipe.unwrap_or(RecipeKind::Notebook)).plan(self.family());
        let defaults = &plan.settings;
        let kind = self.optimizer.unwrap_or(OptimizerKind::Adam);
        let momentum = float("--momentum", self.momentum, false)?;
        if momentum.is_some() && kind != OptimizerKind::Sgd {
            return Err(usage("--momentum applies to --optimizer sgd only".into()));
        }
        if let Some(m) = momentum.filter(|&m| m >= 1.0) {
            // The velocity would grow without end.
            return Err(usage(format!("--momentum must be below 1, got {m}")));
        }
        let lr = float("--lr", self.lr, true)?.unwrap_or(defaults.optimizer.lr());
        let decay = float("--weight-decay", self.weight_decay, false)?;
        let l2 = decay.map_or(WeightDecay::None, WeightDecay::L2);
        let optimizer = match kind {
            OptimizerKind::Adam => OptimizerConfig::Adam(AdamConfig { lr, weight_decay: l2, ..AdamConfig::default() }),
            OptimizerKind::Adamw => OptimizerConfig::Adam(AdamConfig {
                lr,
                weight_decay: decay.map_or(adamw.weight_decay, WeightDecay::Decoupled),
                ..adamw
            }),
            OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig {
                lr,
                momentum: momentum.unwrap_or(SgdConfig::default().momentum),
                weight_decay: l2,
                ..SgdConfig::default()
            }),
        };
        if let Some(v) = self.val_split.filter(|v| !(0.0..1.0).contains(v)) {
            return Err(usage(format!("--val-split must be in [0, 1), got {v}")));
        }
        let early_stop = self.early_stop.map(|p| count("--early-stop", p, 1)).transpose()?;
        let val_split = self.val_split.unwrap_or(defaults.val_split);
        if early_stop.is_some() && val_split == 0.0 {
            return Err(usage("--early-stop needs a validation set: add --val-split FRACTION".into()));
        }
        let label_smoothing =
            float("--label-smoothing", self.label_smoothing, false)?.unwrap_or(defaults.label_smoothing);
        if label_smoothing >= 1.0 {
            return Err(usage(format!("--label-smoothing must be below 1, got {label_smoothing}")));
        }
        // Every schedule flag given is checked, whichever schedule it shapes.
        let min_lr_flag = float("--min-lr", self.min_lr, false)?;
        let every_epochs_flag = self.step_epochs.map(|s| count("--step-epochs", s, 1)).transpose()?;
        let gamma_flag = float("--gamma", self.gamma, true)?;
        let kind = match self.schedule {
            None => plan.schedule.kind,
            Some(ScheduleKind::Constant) => train::ScheduleKind::Constant,
            Some(ScheduleKind::Cosine) => train::ScheduleKind::Cosine { min_lr: 0.0 },
            Some(ScheduleKind::Step) => {
                train::ScheduleKind::Step { every_epochs: None, gamma: optim::STEP_GAMMA as f32 }
            }
            Some(ScheduleKind::Onecycle) => train::ScheduleKind::OneCycle,
        };
        // The flags given shape the schedule in force, a recipe's too.
        let kind = match kind {
            train::ScheduleKind::Cosine { min_lr } => {
                train::ScheduleKind::Cosine { min_lr: min_lr_flag.unwrap_or(min_lr) }
            }
            train::ScheduleKind::Step { every_epochs, gamma } => train::ScheduleKind::Step {
                every_epochs: every_epochs_flag.or(every_epochs),
                gamma: gamma_flag.unwrap_or(gamma),
            },
            other => other,
        };
        let min_lr = match kind {
            train::ScheduleKind::Cosine { min_lr } => min_lr,
            _ => 0.0,
        };
        // A flag of another schedule than the one in force would change nothing.
        let applies = |flag: &str, given: bool, to: &str, ok: bool| match given && !ok {
            true => Err(usage(format!("{flag} applies to --schedule {to} only"))),
            false => Ok(()),
        };
        applies("--min-lr", self.min_lr.is_some(), "cosine", matches!(kind, train::ScheduleKind::Cosine { .. }))?;
        let step = matches!(kind, train::ScheduleKind::Step { .. });
        applies("--step-epochs", self.step_epochs.is_some(), "step", step)?;
        applies("--gamma", self.gamma.is_some(), "step", step)?;
        if min_lr > lr {
            return Err(usage(format!("--min-lr must not be above the learning rate ({lr}), got {min_lr}")));
        }
        let warmup_epochs = self.warmup_epochs.map(|w| count("--warmup-epochs", w, 0)).transpose()?;
        let schedule = EpochSchedule { kind, warmup_epochs: warmup_epochs.unwrap_or(plan.schedule.warmup_epochs) };
        let settings = Settings {
            batch_size: self
                .batch_size
                .map(|b| count("--batch-size", b, 1))
                .transpose()?
                .unwrap_or(defaults.batch_size),
            optimizer,
            seed: self.seed.unwrap_or(defaults.seed),
            val_split,
            early_stop,
            label_smoothing,
            augment: self.augment_flags(defaults.augment)?,
            precise_bn: self
                .precise_bn
                .map(|n| count("--precise-bn", n, 0))
                .transpose()?
                .unwrap_or(defaults.precise_bn),
            ..defaults.clone()
        };
        let mlp_flag = self.hidden.is_some() || self.output_relu;
        // A recipe chosen for a model trains that one when the flags name none.
        let recipe_model = plan.architecture.clone().filter(|_| self.model.is_none() && !mlp_flag);
        let architecture = match (&self.layers, self.model.unwrap_or(ModelKind::Mlp)) {
            (Some(layers), _) => Architecture::Layers(layers.clone()),
            (None, _) if recipe_model.is_some() => recipe_model.expect("checked"),
            (None, kind @ (ModelKind::Lenet | ModelKind::Cnn)) if mlp_flag => {
                let name = if kind == ModelKind::Lenet { "lenet" } else { "cnn" };
                return Err(usage(format!("--hidden and --output-relu shape the MLP, not --model {name}")));
            }
            (None, ModelKind::Lenet) => Architecture::Lenet,
            (None, ModelKind::Cnn) => Architecture::Cnn,
            (None, ModelKind::Mlp) => match &self.hidden {
                None if !self.output_relu => Architecture::notebook(),
                spec => Architecture::Mlp {
                    hidden: spec.as_deref().map(hidden).transpose()?.unwrap_or(MlpConfig::NOTEBOOK_HIDDEN.to_vec()),
                    output_relu: self.output_relu,
                },
            },
        };
        Ok(NewRun { settings, schedule, architecture, recipe: None })
    }
}

impl TrainArgs {
    /// The family of the model the flags ask for, whose epochs `--recipe strong` trains (a
    /// layer list is taken for a convolutional model, whatever it holds).
    fn family(&self) -> ModelFamily {
        match (&self.layers, self.model) {
            (Some(_), _) | (None, Some(ModelKind::Lenet)) => ModelFamily::Convolutional,
            (None, Some(ModelKind::Cnn)) => ModelFamily::Cnn,
            (None, Some(ModelKind::Mlp) | None) => ModelFamily::Mlp,
        }
    }

    /// `--augment` with its ranges, those of the recipe's augmentation (or the library's
    /// defaults) for those not given.
    fn augment_flags(&self, recipe: Option<data::Augment>) -> Result<Option<data::Augment>, UsageError> {
        if !self.augment && recipe.is_none() {
            let given = [("--rotate", self.rotate), ("--shift", self.shift), ("--scale", self.scale)];
            return match given.iter().find(|(_, value)| value.is_some()) {
                Some((flag, _)) => {
                    Err(usage(format!("{flag} sets a range of the augmentation, which is off: add --augment")))
                }
                None => Ok(None),
            };
        }
        let d = recipe.unwrap_or_default();
        let augment = data::Augment {
            rotate: float("--rotate", self.rotate, false)?.unwrap_or(d.rotate),
            shift: float("--shift", self.shift, false)?.unwrap_or(d.shift),
            scale: float("--scale", self.scale, false)?.unwrap_or(d.scale),
        };
        augment.validate().map_err(|e| usage(format!("--{} must be in [0, {}], got {}", e.name, e.max, e.value)))?;
        Ok(Some(augment))
    }
}

/// `--recipe NAME` as the flags it stands for, with what other flags changed of it.
fn expansion(kind: RecipeKind, run: &NewRun, epochs: usize) -> String {
    let name = match kind {
        RecipeKind::Notebook => "notebook",
        RecipeKind::Strong => "strong",
        RecipeKind::Fast => "fast",
    };
    let mut flags = Vec::new();
    // The model the recipe chose, when the flags named none.
    // The model a recipe names, whatever the family asked for.
    if Recipe::from(kind).plan(ModelFamily::Mlp).architecture.as_ref() == Some(&run.architecture) {
        match run.architecture {
            Architecture::Lenet => flags.push("--model lenet".to_owned()),
            Architecture::Cnn => flags.push("--model cnn".to_owned()),
            _ => {}
        }
    }
    flags.extend([format!("--epochs {epochs}"), format!("--lr {}", run.settings.optimizer.lr())]);
    if let Some(a) = run.settings.augment {
        flags.push(format!("--augment --rotate {} --shift {} --scale {}", a.rotate, a.shift, a.scale));
    }
    let schedule = match run.schedule.kind {
        train::ScheduleKind::Constant => "constant",
        train::ScheduleKind::Cosine { .. } => "cosine",
        train::ScheduleKind::Step { .. } => "step",
        train::ScheduleKind::OneCycle => "onecycle",
    };
    flags.push(format!("--schedule {schedule}"));
    flags.push(format!("--label-smoothing {}", run.settings.label_smoothing));
    if run.settings.precise_bn > 0 {
        flags.push(format!("--precise-bn {}", run.settings.precise_bn));
    }
    format!("{name}: {}", flags.join(" "))
}

impl TryFrom<TrainArgs> for TrainConfig {
    type Error = UsageError;

    fn try_from(a: TrainArgs) -> Result<Self, UsageError> {
        let default_epochs = Recipe::from(a.recipe.unwrap_or(RecipeKind::Notebook)).plan(a.family()).epochs;
        let epochs = a.epochs.map_or(Ok(default_epochs), |e| count("--epochs", e, 1))?;
        let start = match a.resume.clone() {
            Some(path) => Start::Resume(path),
            None => {
                let mut run = a.new_run()?;
                if let Some(kind) = a.recipe {
                    run.recipe = Some(expansion(kind, &run, epochs));
                }
                Start::New(Box::new(run))
            }
        };
        Ok(Self { data_dir: a.data.data_dir, epochs, start, threads: threads(a.threads)?, outputs: a.outputs })
    }
}
