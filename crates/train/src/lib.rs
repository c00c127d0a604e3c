//! The training engine: any [`nn::Model`] on any [`data::Dataset`].
//!
//! A [`Trainer`] is built from a model and [`Settings`] (whose default is the notebook's
//! recipe: Adam at lr 1e-3, batches of 64, shuffled every epoch). [`Trainer::fit`] runs the
//! epochs: every batch is split across the rayon pool, each thread running forward and
//! backward on its part with its own tape and gradients, and the parts' gradients are summed in
//! a fixed order by the optimizer's step, so that a run is bit-reproducible for a given seed
//! and thread count. A validation split, early stopping with the best weights kept, and
//! divergence detection are part of the loop; progress reaches the caller through an
//! [`Observer`]. [`evaluate`] gives a model's loss, accuracy, confusion matrix and predictions
//! on a data set.
//!
//! A run's [`TrainingState`] (model, optimizer state, settings, history, best epoch) is
//! serialised to bytes or any writer as safetensors, and [`Trainer::resume`] continues it
//! exactly. [`model_state_with_facts`] is what a trained model is saved as; [`load_model`] reads either.
//!
//! `train` prints nothing, parses no flags and chooses no paths: those belong to front ends.
//!
//! ```
//! use data::Dataset;
//! use nn::{MlpConfig, Sequential};
//! use train::{Settings, Trainer};
//!
//! let data = Dataset::new(vec![0, 255, 255, 0], vec![0, 1], 1, 2, 2);
//! let mlp = Sequential::mlp(&MlpConfig { widths: vec![2, 4, 2], output_relu: false }, &mut train::init_rng(0));
//! let mut trainer = Trainer::new(mlp, Settings::default()).unwrap();
//! trainer.fit(&data, 3, &mut ()).unwrap();
//! assert_eq!(trainer.history().len(), 3);
//! let bytes = trainer.state().to_safetensors();
//! let resumed = Trainer::resume(train::TrainingState::<Sequential>::from_safetensors(&bytes).unwrap()).unwrap();
//! assert_eq!(resumed.epochs_done(), 3);
//! ```

mod error;
mod evaluate;
mod fit;
mod recipe;
mod settings;
mod state;
mod step;

pub use error::{ObserverError, TrainError};
pub use evaluate::{Evaluation, check_fits, evaluate, evaluate_all};
pub use fit::{EpochRecord, Observer, Trainer, check_split};
pub use recipe::{Architecture, EpochSchedule, ModelFamily, Plan, Recipe, ScheduleKind, fit_notebook, mlp_for};
pub use settings::{DEFAULT_EPOCHS, Settings, init_rng};
pub use state::{
    Best, TrainingState, load_model, model_from_state, model_state_with_facts, record_class_names,
    recorded_class_names, recorded_facts, recorded_test_accuracy,
};
