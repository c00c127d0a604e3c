use std::error::Error;

/// An error from an [`Observer`](crate::Observer), passed through by the trainer.
pub type ObserverError = Box<dyn Error + Send + Sync>;

/// Why a run could not start, go on, or be restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Settings that do not go together.
    #[error("{reason}")]
    Settings {
        /// The problem.
        reason: String,
    },
    /// The model's input or output width does not fit the data.
    #[error(
        "the model maps {inputs} inputs to {classes} classes, but the data has {pixels} pixels per image and {data_classes} classes"
    )]
    ModelDoesNotFit {
        /// The model's input width.
        inputs: usize,
        /// The model's classes.
        classes: usize,
        /// The data's values per sample.
        pixels: usize,
        /// The data's classes.
        data_classes: usize,
    },
    /// The validation split leaves no sample on one side.
    #[error("a validation split of {split:?} leaves {train} training and {val} validation samples of {total}")]
    EmptySplit {
        /// The fraction asked for.
        split: f64,
        /// Training samples left.
        train: usize,
        /// Validation samples.
        val: usize,
        /// All samples.
        total: usize,
    },
    /// The run has already trained the epochs asked for.
    #[error("the run has {done} epochs done already; ask for more than that to train on")]
    AlreadyDone {
        /// Epochs done.
        done: usize,
    },
    /// The run stopped early already: its patience ran out, so it has nothing left to train.
    #[error(
        "the run stopped early after epoch {done}, its validation loss last improved at epoch {best}; it has nothing left to train"
    )]
    StoppedEarly {
        /// Epochs done.
        done: usize,
        /// The epoch with the best validation loss, whose weights the run kept.
        best: usize,
    },
    /// The loss stopped being finite or became absurdly large.
    #[error("epoch {epoch}, {what}; training diverged, most likely because the learning rate ({}) is too high", shown(*.lr))]
    Diverged {
        /// The 1-based epoch.
        epoch: usize,
        /// Where and what: the step and the loss, or the parameter holding non-finite values.
        what: String,
        /// The learning rate.
        lr: f32,
    },
    /// The optimizer refused a step or its state.
    #[error(transparent)]
    Optimizer(#[from] optim::OptimError),
    /// A model or training state that does not load.
    #[error(transparent)]
    State(#[from] nn::NnError),
    /// A file that holds a model but no training state.
    #[error("a model without training state, not a file written by a training checkpoint")]
    NoTrainingState,
    /// The observer stopped the run with an error of its own.
    #[error(transparent)]
    Observer(ObserverError),
    /// Training the model would take more memory than the system has available.
    #[error(
        "the model has {parameters} parameters and training it needs about {:.1} GB, more than the {:.1} GB of memory available",
        *needed as f64 / 1e9, *available as f64 / 1e9
    )]
    OutOfMemory {
        /// The model's parameters.
        parameters: usize,
        /// Bytes training would take, by [`crate::Settings::memory_estimate`].
        needed: u64,
        /// Bytes available.
        available: u64,
    },
}

/// A learning rate as a person would write it: `0.001` and `100`, but `1e30` rather than
/// thirty-one digits.
fn shown(lr: f32) -> String {
    if lr != 0.0 && !(1e-4..1e7).contains(&lr.abs()) { format!("{lr:e}") } else { lr.to_string() }
}
