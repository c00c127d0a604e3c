//! A training run on disk: the model, the optimizer's state, the settings, the figures of every
//! epoch and early stopping's best weights, as one safetensors file.
//!
//! The model's tensors keep their own names (`fc1.weight`), so that a training file also loads
//! as a model (in PyTorch too); the optimizer's are under `optimizer.` and the best weights
//! under `best.`. Settings, progress and history are metadata.

use std::io;

use nn::{Model, StateDict};

use crate::evaluate::Evaluation;
use crate::fit::EpochRecord;
use crate::{Settings, TrainError};

const FORMAT_KEY: &str = "format";
/// The format of training files; files written before the engine was generic say
/// `mnist-mlp-training`, and load the same.
const TRAINING_FORMAT: &str = "mnist-training";
const LEGACY_TRAINING_FORMAT: &str = "mnist-mlp-training";
const OPTIMIZER_PREFIX: &str = "optimizer.";
const BEST_PREFIX: &str = "best.";

mod keys {
    pub(crate) const EPOCHS_DONE: &str = "epochs_done";
    pub(crate) const THREADS: &str = "threads";
    pub(crate) const HISTORY: &str = "history";
    pub(crate) const BEST_EPOCH: &str = "best_epoch";
    pub(crate) const BEST_VAL_LOSS: &str = "best_val_loss";
    pub(crate) const EPOCHS: &str = "epochs";
    pub(crate) const TEST_ACCURACY: &str = "test_accuracy";
    pub(crate) const OPTIMIZER: &str = "optimizer";
    pub(crate) const CLASS_NAMES: &str = "class_names";
    pub(crate) use crate::settings::keys::{BATCH_SIZE, SEED};
}

/// The epoch with the lowest validation loss, and its weights.
#[derive(Debug, Clone)]
pub struct Best<M> {
    /// Its validation loss.
    pub val_loss: f64,
    /// Its 1-based number.
    pub epoch: usize,
    /// Its weights.
    pub model: M,
}

/// A training run at the end of an epoch: enough to continue it exactly
/// ([`Trainer::resume`](crate::Trainer::resume)).
#[derive(Debug, Clone)]
pub struct TrainingState<M> {
    /// The model after the last epoch.
    pub model: M,
    /// What defines the run.
    pub settings: Settings,
    /// The optimizer's state, as [`optim::Optimizer::state_dict`] gives it.
    pub optimizer: StateDict,
    /// Threads the run used (a batch is split across them, which rounding sees).
    pub threads: usize,
    /// The figures of every epoch so far, without their timings.
    pub history: Vec<EpochRecord>,
    /// Early stopping's best epoch so far, if it is on.
    pub best: Option<Best<M>>,
}

impl<M: Model> TrainingState<M> {
    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }

    /// The state as named tensors and metadata.
    pub fn to_state_dict(&self) -> StateDict {
        let mut state = self.model.state_dict();
        state.extend_prefixed(OPTIMIZER_PREFIX, self.optimizer.clone());
        self.settings.write_metadata(&mut state);
        state.set_meta(FORMAT_KEY, TRAINING_FORMAT);
        state.set_meta(keys::EPOCHS_DONE, self.epochs_done().to_string());
        state.set_meta(keys::THREADS, self.threads.to_string());
        state.set_meta(keys::HISTORY, self.history.iter().map(history_row).collect::<Vec<_>>().join(";"));
        if let Some(best) = &self.best {
            state.set_meta(keys::BEST_EPOCH, best.epoch.to_string());
            state.set_meta(keys::BEST_VAL_LOSS, format!("{:?}", best.val_loss));
            let mut tensors = best.model.state_dict();
            // Only the tensors: the model's own metadata is the run's already.
            tensors.clear_metadata();
            state.extend_prefixed(BEST_PREFIX, tensors);
        }
        state
    }

    /// The state's safetensors bytes. The same state always gives the same bytes.
    pub fn to_safetensors(&self) -> Vec<u8> {
        self.to_state_dict().to_safetensors()
    }

    /// [`TrainingState::to_safetensors`] into any writer.
    ///
    /// # Errors
    /// The writer's.
    pub fn write_safetensors(&self, w: &mut dyn io::Write) -> io::Result<()> {
        self.to_state_dict().write_safetensors(w)
    }

    /// Reads a state written by [`TrainingState::to_safetensors`].
    ///
    /// # Errors
    /// Bytes that are not safetensors, a model file without training state, or settings,
    /// optimizer buffers or best weights missing or malformed.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, TrainError> {
        let mut state = StateDict::from_safetensors(bytes)?;
        if !is_training(&state) {
            return Err(TrainError::NoTrainingState);
        }
        let optimizer = state.take_prefixed(OPTIMIZER_PREFIX);
        let best_tensors = state.take_prefixed(BEST_PREFIX);
        let model = M::from_state_dict(&state)?;
        let history = state
            .require_meta(keys::HISTORY)?
            .split(';')
            .filter(|r| !r.is_empty())
            .map(parse_history_row)
            .collect::<Result<Vec<_>, _>>()?;
        let epochs_done: usize = state.parse_meta(keys::EPOCHS_DONE, "a count")?;
        if epochs_done != history.len() {
            return Err(bad_meta(keys::EPOCHS_DONE, &epochs_done.to_string(), "the number of epochs in the history"));
        }
        let best = match state.meta(keys::BEST_EPOCH) {
            Some(_) => Some(Best {
                val_loss: state.parse_meta(keys::BEST_VAL_LOSS, "a number")?,
                epoch: state.parse_meta(keys::BEST_EPOCH, "a count")?,
                model: M::from_state_dict(&best_tensors)?,
            }),
            None => None,
        };
        Ok(Self {
            model,
            settings: Settings::from_metadata(&state)?,
            optimizer,
            threads: state.parse_meta(keys::THREADS, "a count")?,
            history,
            best,
        })
    }
}

fn is_training(state: &StateDict) -> bool {
    matches!(state.meta(FORMAT_KEY), Some(TRAINING_FORMAT | LEGACY_TRAINING_FORMAT))
}

/// Loads a model from a model file or from a training state (its last epoch's weights).
///
/// # Errors
/// Bytes that are not safetensors, or tensors and metadata that do not make a model of type `M`.
pub fn load_model<M: Model>(bytes: &[u8]) -> Result<M, TrainError> {
    model_from_state(StateDict::from_safetensors(bytes)?)
}

/// [`load_model`] from the file already read as a `state_dict` (whose metadata a caller may
/// want too).
///
/// # Errors
/// Tensors and metadata that do not make a model of type `M`.
pub fn model_from_state<M: Model>(mut state: StateDict) -> Result<M, TrainError> {
    if is_training(&state) {
        state.take_prefixed(OPTIMIZER_PREFIX);
        state.take_prefixed(BEST_PREFIX);
    }
    Ok(M::from_state_dict(&state)?)
}

/// What a trained model's file holds: the model's `state_dict`, loadable by PyTorch's
/// `load_state_dict`, with the run's facts in the metadata (epochs, batch size, optimizer,
/// seed and the test accuracy, when known).
pub fn model_state_with_facts<M: Model>(
    model: &M,
    settings: &Settings,
    epochs: usize,
    test: Option<&Evaluation>,
) -> StateDict {
    let mut state = model.state_dict();
    state.set_meta(keys::EPOCHS, epochs.to_string());
    state.set_meta(keys::BATCH_SIZE, settings.batch_size.to_string());
    state.set_meta(keys::OPTIMIZER, settings.optimizer.to_string());
    state.set_meta(keys::SEED, settings.seed.to_string());
    if let Some(test) = test {
        state.set_meta(keys::TEST_ACCURACY, format!("{:.4}", test.accuracy()));
    }
    state
}

/// The facts of its run that a model file records (epochs, batch size, optimizer, seed, test
/// accuracy, class names), as (key, value) pairs in that order: what a copy of the model in
/// another format should carry along.
pub fn recorded_facts(state: &StateDict) -> Vec<(String, String)> {
    [keys::EPOCHS, keys::BATCH_SIZE, keys::OPTIMIZER, keys::SEED, keys::TEST_ACCURACY, keys::CLASS_NAMES]
        .into_iter()
        .filter_map(|key| Some((key.to_owned(), state.meta(key)?.to_owned())))
        .collect()
}

/// Records the names of the model's classes (`names[i]` for class `i`, as
/// [`data::Mnist::class_names`] gives them) in a model file, as a JSON array of strings.
pub fn record_class_names(state: &mut StateDict, names: &[String]) {
    state.set_meta(keys::CLASS_NAMES, serde_json::to_string(names).expect("strings serialise"));
}

/// The class names a model file of `classes` classes records ([`record_class_names`]), if
/// any.
///
/// # Errors
/// Names that are not a JSON array of one name per class, each a usable name
/// ([`data::class_name_fault`]).
pub fn recorded_class_names(state: &StateDict, classes: usize) -> Result<Option<Vec<String>>, TrainError> {
    let Some(text) = state.meta(keys::CLASS_NAMES) else { return Ok(None) };
    let names: Vec<String> = serde_json::from_str(text).map_err(|_| bad_class_names(text))?;
    if names.len() != classes || names.iter().any(|n| data::class_name_fault(n).is_some()) {
        return Err(bad_class_names(text));
    }
    Ok(Some(names))
}

fn bad_class_names(text: &str) -> TrainError {
    // The error quotes it as Rust does, escaping quotes and control characters once.
    let shown: String = text.chars().take(80).collect();
    bad_meta(keys::CLASS_NAMES, &shown, "a JSON array of one name per class, without control characters")
}

/// The test accuracy a model file records, if any.
pub fn recorded_test_accuracy(state: &StateDict) -> Option<f64> {
    state.meta(keys::TEST_ACCURACY)?.parse().ok()
}

fn bad_meta(key: &str, value: &str, expected: &'static str) -> TrainError {
    nn::NnError::BadMetadata { key: key.to_owned(), value: value.to_owned(), expected }.into()
}

/// An epoch's figures, exactly (`{:?}` round-trips floats), without its timing.
fn history_row(r: &EpochRecord) -> String {
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:?}"));
    format!("{},{:?},{:?},{},{}", r.epoch, r.train_loss, r.train_accuracy, opt(r.val_loss), opt(r.val_accuracy))
}

fn parse_history_row(row: &str) -> Result<EpochRecord, TrainError> {
    let bad = || bad_meta(keys::HISTORY, row, "rows of epoch, loss, accuracy, validation loss and accuracy");
    let fields: Vec<&str> = row.split(',').collect();
    let [epoch, loss, acc, val_loss, val_acc] = fields[..] else { return Err(bad()) };
    let opt = |v: &str| if v.is_empty() { Ok(None) } else { v.parse().map(Some).map_err(|_| bad()) };
    Ok(EpochRecord {
        epoch: epoch.parse().map_err(|_| bad())?,
        train_loss: loss.parse().map_err(|_| bad())?,
        train_accuracy: acc.parse().map_err(|_| bad())?,
        val_loss: opt(val_loss)?,
        val_accuracy: opt(val_acc)?,
        seconds: None,
    })
}
