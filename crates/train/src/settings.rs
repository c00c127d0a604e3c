//! What defines a training run, as opposed to where its outputs go: a resumed run keeps these.

use nn::StateDict;
use optim::{LrSchedule, OptimizerConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::TrainError;

/// The notebook's number of epochs.
pub const DEFAULT_EPOCHS: usize = 10;

/// The ChaCha8 stream of a run's seed that initial weights are drawn from. Epoch `k`'s shuffle
/// uses stream `k` and the validation split stream `u64::MAX`, so each is reproducible alone.
const INIT_STREAM: u64 = u64::MAX - 1;

/// The generator a run with `seed` draws its initial weights from.
///
/// ```
/// use nn::{MlpConfig, Sequential};
/// let mlp = Sequential::mlp(&MlpConfig::default(), &mut train::init_rng(0));
/// ```
pub fn init_rng(seed: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(INIT_STREAM);
    rng
}

/// A run's settings. The default is the notebook's recipe: batches of 64, shuffled every
/// epoch, `torch.optim.Adam` with lr 1e-3, seed 0, no validation split.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Samples per optimizer step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// The optimizer and its hyperparameters.
    pub optimizer: OptimizerConfig,
    /// The seed of the shuffles and the validation split (and, by [`init_rng`], of the
    /// initial weights).
    pub seed: u64,
    /// The fraction of the training set held out for validation, in `[0, 1)`.
    pub val_split: f64,
    /// Stop after this many epochs without a better validation loss, keeping the best
    /// epoch's weights (needs a validation split).
    pub early_stop: Option<usize>,
    /// How the learning rate changes from optimizer step to optimizer step.
    pub schedule: LrSchedule,
    /// Label smoothing of the training loss, in `[0, 1)`.
    pub label_smoothing: f32,
    /// Random affine transforms of the training images, a fresh draw per image and epoch.
    pub augment: Option<data::Augment>,
    /// After each epoch's steps, re-estimate the running statistics of batch normalisation as
    /// the average over the epoch's first `precise_bn` batches (all of them if it has fewer),
    /// not augmented, each weighed by its samples ("precise batch normalisation"); 0 keeps
    /// what the momentum tracked. Evaluation and saved models use the running statistics;
    /// training does not, so its steps are the same either way. Models without batch
    /// normalisation ignore it.
    pub precise_bn: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 64,
            optimizer: OptimizerConfig::default(),
            seed: 0,
            val_split: 0.0,
            early_stop: None,
            schedule: LrSchedule::default(),
            label_smoothing: 0.0,
            augment: None,
            precise_bn: 0,
        }
    }
}

pub(crate) mod keys {
    pub(crate) const BATCH_SIZE: &str = "batch_size";
    pub(crate) const SEED: &str = "seed";
    pub(crate) const VAL_SPLIT: &str = "val_split";
    pub(crate) const EARLY_STOP: &str = "early_stop";
    pub(crate) const SCHEDULE: &str = "schedule";
    pub(crate) const LABEL_SMOOTHING: &str = "label_smoothing";
    pub(crate) const AUGMENT: &str = "augment";
    pub(crate) const PRECISE_BN: &str = "precise_bn";
}

impl Settings {
    /// Checks that the settings go together.
    ///
    /// # Errors
    /// [`TrainError::Settings`] naming the first problem.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |reason: String| Err(TrainError::Settings { reason });
        if self.batch_size == 0 {
            return bad("the batch size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.val_split) {
            return bad(format!("the validation split must be in [0, 1), got {}", self.val_split));
        }
        if self.early_stop.is_some() && self.val_split == 0.0 {
            return bad("early stopping needs a validation split".into());
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("label smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if let Some(Err(e)) = self.augment.map(|a| a.validate()) {
            return bad(e.to_string());
        }
        if self.early_stop == Some(0) {
            return bad("early stopping needs a patience of at least 1 epoch".into());
        }
        self.optimizer.build().map(drop).map_err(|e| TrainError::Settings { reason: e.to_string() })
    }

    /// An estimate of the bytes training takes, before anything is allocated, for a model of
    /// `parameters` parameters whose activations hold `activations` values per sample, on
    /// `threads` threads: the weights, a gradient per thread's part of each batch, the
    /// optimizer's state, the best weights kept for early stopping, each part's values on its
    /// tape with their gradients (doubled, for what convolutions unfold), and each thread's
    /// evaluation tape. Saturating.
    ///
    /// ```
    /// let settings = train::Settings::default(); // Adam: two buffers per parameter
    /// // 1,000 parameters on 2 threads: weights, 2 gradients, 2 Adam buffers, 4 bytes each.
    /// assert_eq!(settings.memory_estimate(1_000, 0, 2), 5 * 1_000 * 4);
    /// ```
    pub fn memory_estimate(&self, parameters: usize, activations: usize, threads: usize) -> u64 {
        let optimizer = match &self.optimizer {
            OptimizerConfig::Adam(_) => 2,
            OptimizerConfig::Sgd(sgd) => u64::from(sgd.momentum != 0.0),
        };
        let best = u64::from(self.early_stop.is_some());
        let copies = 1 + threads as u64 + optimizer + best;
        let per_part = (self.batch_size.div_ceil(threads.max(1)) as u64).saturating_mul(activations as u64);
        let evaluation = (crate::evaluate::EVAL_BATCH as u64).saturating_mul(activations as u64);
        let floats = (parameters as u64)
            .saturating_mul(copies)
            .saturating_add(per_part.saturating_mul(4).saturating_add(evaluation).saturating_mul(threads as u64));
        floats.saturating_mul(4)
    }

    /// Refuses to train `model` on `threads` threads when [`Self::memory_estimate`] is more
    /// than the memory the system says is available for new work (`MemAvailable` on Linux;
    /// elsewhere nothing is refused). Called before anything is allocated: the allocator would
    /// abort the process instead, mid-way.
    ///
    /// # Errors
    /// [`TrainError::OutOfMemory`], or a model too large to count.
    pub fn check_memory(&self, model: &nn::SequentialConfig, threads: usize) -> Result<(), TrainError> {
        let parameters = model.parameter_count()?;
        let needed = self.memory_estimate(parameters, model.activations_per_sample()?, threads);
        match available_memory() {
            Some(available) if needed > available => Err(TrainError::OutOfMemory { parameters, needed, available }),
            _ => Ok(()),
        }
    }

    /// Optimizer steps per epoch over `samples` samples, after the validation split.
    pub fn steps_per_epoch(&self, samples: usize) -> u64 {
        let train = samples - data::validation_count(samples, self.val_split);
        train.div_ceil(self.batch_size.max(1)) as u64
    }

    /// Writes the settings into `state`'s metadata (the optimizer's config as `optim` writes
    /// it); floats exactly.
    pub fn write_metadata(&self, state: &mut StateDict) {
        state.set_meta(keys::BATCH_SIZE, self.batch_size.to_string());
        state.set_meta(keys::SEED, self.seed.to_string());
        state.set_meta(keys::VAL_SPLIT, format!("{:?}", self.val_split));
        state.set_meta(keys::EARLY_STOP, self.early_stop.map_or("none".into(), |p| p.to_string()));
        state.set_meta(keys::SCHEDULE, self.schedule.to_string());
        state.set_meta(keys::LABEL_SMOOTHING, format!("{:?}", self.label_smoothing));
        state.set_meta(
            keys::AUGMENT,
            self.augment
                .map_or("none".into(), |a| format!("rotate={:?},shift={:?},scale={:?}", a.rotate, a.shift, a.scale)),
        );
        state.set_meta(keys::PRECISE_BN, self.precise_bn.to_string());
        self.optimizer.write_metadata(state);
    }

    /// Reads settings written by [`Settings::write_metadata`].
    ///
    /// # Errors
    /// A missing or malformed entry, named.
    pub fn from_metadata(state: &StateDict) -> Result<Self, TrainError> {
        let early_stop = match state.require_meta(keys::EARLY_STOP)? {
            "none" => None,
            _ => Some(state.parse_meta(keys::EARLY_STOP, "a count")?),
        };
        Ok(Self {
            batch_size: state.parse_meta(keys::BATCH_SIZE, "a count")?,
            optimizer: OptimizerConfig::from_metadata(state)?,
            seed: state.parse_meta(keys::SEED, "a count")?,
            val_split: state.parse_meta(keys::VAL_SPLIT, "a number")?,
            early_stop,
            // Files from before schedules and smoothing existed had neither.
            schedule: match state.meta(keys::SCHEDULE) {
                Some(_) => state.parse_meta(keys::SCHEDULE, "a schedule")?,
                None => LrSchedule::default(),
            },
            label_smoothing: match state.meta(keys::LABEL_SMOOTHING) {
                Some(_) => state.parse_meta(keys::LABEL_SMOOTHING, "a number")?,
                None => 0.0,
            },
            augment: match state.meta(keys::AUGMENT) {
                None | Some("none") => None,
                Some(text) => Some(parse_augment(text).ok_or_else(|| nn::NnError::BadMetadata {
                    key: keys::AUGMENT.into(),
                    value: text.into(),
                    expected: "rotate=R,shift=S,scale=F",
                })?),
            },
            // Nor had files from before precise batch normalisation.
            precise_bn: match state.meta(keys::PRECISE_BN) {
                Some(_) => state.parse_meta(keys::PRECISE_BN, "a count")?,
                None => 0,
            },
        })
    }
}

/// Reads `rotate=R,shift=S,scale=F`.
fn parse_augment(text: &str) -> Option<data::Augment> {
    let mut augment = data::Augment::default();
    for part in text.split(',') {
        let (key, value) = part.split_once('=')?;
        let value: f32 = value.parse().ok()?;
        match key {
            "rotate" => augment.rotate = value,
            "shift" => augment.shift = value,
            "scale" => augment.scale = value,
            _ => return None,
        }
    }
    Some(augment)
}

/// The memory the system says is available for new work, where it says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_model_larger_than_memory_is_refused_before_anything_is_allocated() {
        let small = nn::SequentialConfig::parse("flatten,linear(10)", [1, 28, 28]).unwrap();
        assert!(Settings::default().check_memory(&small, 2).is_ok());
        // 784 x 200,000 + 200,000^2 parameters: hundreds of GB with Adam's state.
        let huge =
            nn::SequentialConfig::parse("flatten,linear(200000),linear(200000),linear(10)", [1, 28, 28]).unwrap();
        match Settings::default().check_memory(&huge, 2) {
            Err(TrainError::OutOfMemory { parameters, needed, available }) => {
                assert_eq!(parameters, 784 * 200_000 + 200_000 + 200_000 * 200_000 + 200_000 + 200_000 * 10 + 10);
                assert!(needed > available, "{needed} <= {available}");
            }
            other => panic!("{other:?}"),
        }
    }
}
