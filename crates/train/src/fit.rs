//! The epoch loop: shuffled batches, the threaded step, validation, early stopping with the
//! best weights kept, divergence detection, and an [`Observer`] told of every step and epoch.

use std::time::Instant;

use data::{Dataset, Loader, Order};
use nn::Model;
use optim::Optimizer;

use crate::error::ObserverError;
use crate::evaluate::{check_fits, evaluate};
use crate::state::{Best, TrainingState};
use crate::step::{Recipe, StepError, Stepper};
use crate::{Settings, TrainError};

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean of the batch losses, as the notebook prints it.
    pub train_loss: f64,
    /// Fraction of training samples classified right during the epoch (as the weights moved).
    pub train_accuracy: f64,
    /// Mean loss on the validation set after the epoch, if there is one.
    pub val_loss: Option<f64>,
    /// Accuracy on the validation set after the epoch, if there is one.
    pub val_accuracy: Option<f64>,
    /// Wall-clock seconds of the epoch's training steps (unknown for epochs restored from a
    /// saved state, which keeps no timings so that its bytes do not depend on them).
    pub seconds: Option<f64>,
}

impl EpochRecord {
    /// Writes `records` as CSV: a header, then a row per epoch with six decimals (empty cells
    /// where a figure is unknown).
    ///
    /// # Errors
    /// The writer's.
    pub fn write_csv(records: &[EpochRecord], w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"])?;
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
        for r in records {
            csv.write_record([
                r.epoch.to_string(),
                format!("{:.6}", r.train_loss),
                format!("{:.6}", r.train_accuracy),
                opt(r.val_loss),
                opt(r.val_accuracy),
                opt(r.seconds),
            ])?;
        }
        csv.flush()
    }
}

/// What a front end does while a run trains: draw progress, print, save checkpoints, stop.
/// Every method has a default that does nothing, and `()` is an observer that does nothing.
///
/// ```
/// use train::{EpochRecord, Observer, ObserverError, Trainer};
///
/// /// Prints each epoch's loss, and stops the run once it is low enough.
/// struct StopBelow(f64);
///
/// impl<M: nn::Model> Observer<M> for StopBelow {
///     fn epoch_done(&mut self, _: &Trainer<M>, record: &EpochRecord) -> Result<(), ObserverError> {
///         println!("epoch {}: loss {:.4}", record.epoch, record.train_loss);
///         if record.train_loss < self.0 { Err("low enough".into()) } else { Ok(()) }
///     }
/// }
///
/// // Two classes of 2x2 images: the left column lit, or the right.
/// let pixels = (0..64).flat_map(|i| if i % 2 == 0 { [255, 0, 255, 0] } else { [0, 255, 0, 255] }).collect();
/// let data = data::Dataset::new(pixels, (0..64).map(|i| (i % 2) as u8).collect(), 2, 2, 2);
/// let config = nn::SequentialConfig::parse("flatten,linear(2)", [1, 2, 2]).unwrap();
/// let model = nn::Sequential::new(&config, &mut train::init_rng(0));
/// let mut trainer = Trainer::new(model, train::Settings { batch_size: 8, ..Default::default() }).unwrap();
/// let result = trainer.fit(&data, 100, &mut StopBelow(0.3));
/// assert!(matches!(result, Err(train::TrainError::Observer(_))), "stopped before 100 epochs");
/// assert!(trainer.history().len() < 100);
/// ```
pub trait Observer<M: Model> {
    /// Epoch `epoch` (1-based) starts, with `steps` steps.
    fn epoch_started(&mut self, epoch: usize, steps: usize) {
        let _ = (epoch, steps);
    }

    /// Step `step` (1-based) of `steps` of the epoch is done.
    fn step_done(&mut self, step: usize, steps: usize) {
        let _ = (step, steps);
    }

    /// An epoch is done and recorded: `trainer` is at its end (its [`Trainer::state`] is what a
    /// checkpoint saves).
    ///
    /// # Errors
    /// Whatever should stop the run; [`Trainer::fit`] returns it as [`TrainError::Observer`].
    fn epoch_done(&mut self, trainer: &Trainer<M>, record: &EpochRecord) -> Result<(), ObserverError> {
        let _ = (trainer, record);
        Ok(())
    }

    /// Early stopping ends the run: `patience` epochs passed without a validation loss better
    /// than that of epoch `best_epoch`, whose weights [`Trainer::into_model`] returns.
    ///
    /// # Errors
    /// As [`Observer::epoch_done`].
    fn stopped_early(&mut self, patience: usize, best_epoch: usize) -> Result<(), ObserverError> {
        let _ = (patience, best_epoch);
        Ok(())
    }
}

impl<M: Model> Observer<M> for () {}

/// A training run: a model, its optimizer and the run's progress.
///
/// ```
/// use data::Dataset;
/// use nn::{MlpConfig, Model, Sequential};
/// use train::{Settings, Trainer};
///
/// // Two classes of 1x2 images: bright on the left, or on the right.
/// let pixels = (0..64).flat_map(|i| if i % 2 == 0 { [255, 0] } else { [0, 255] }).collect();
/// let data = Dataset::new(pixels, (0..64).map(|i| i % 2).collect(), 1, 2, 2);
/// let mlp = Sequential::mlp(&MlpConfig { widths: vec![2, 8, 2], output_relu: false }, &mut train::init_rng(0));
/// let settings = Settings { batch_size: 8, ..Settings::default() };
/// let mut trainer = Trainer::new(mlp, settings).unwrap();
/// trainer.fit(&data, 20, &mut ()).unwrap();
/// let model = trainer.into_model();
/// assert_eq!(train::evaluate_all(&model, &data).accuracy(), 1.0);
/// ```
pub struct Trainer<M: Model> {
    model: M,
    settings: Settings,
    optimizer: Box<dyn Optimizer>,
    threads: usize,
    history: Vec<EpochRecord>,
    best: Option<Best<M>>,
}

impl<M: Model> Trainer<M> {
    /// A new run of `model` with `settings`, on as many threads as the current rayon pool has.
    ///
    /// # Errors
    /// Settings that do not go together ([`Settings::validate`]).
    pub fn new(model: M, settings: Settings) -> Result<Self, TrainError> {
        settings.validate()?;
        let optimizer = settings.optimizer.build()?;
        let threads = rayon::current_num_threads();
        Ok(Self { model, settings, optimizer, threads, history: Vec::new(), best: None })
    }

    /// Continues a run from a saved state, exactly: the same model, optimizer state, history
    /// and early-stopping record, so that training on gives what a run that never stopped
    /// gives (on the same number of threads).
    ///
    /// # Errors
    /// Invalid settings, or an optimizer state that does not fit the model.
    pub fn resume(state: TrainingState<M>) -> Result<Self, TrainError> {
        let mut trainer = Self::new(state.model, state.settings)?;
        trainer.optimizer.load_state_dict(&state.optimizer, trainer.model.params())?;
        trainer.history = state.history;
        trainer.best = state.best;
        Ok(trainer)
    }

    /// Splits every batch across `threads` parts (at most the batch size). Results depend on
    /// it in the last bits, as the parts' gradients are summed in a fixed order.
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The model as it is now (after the last epoch, not the best one).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The run's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Epochs trained so far.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }

    /// Every epoch's figures so far.
    pub fn history(&self) -> &[EpochRecord] {
        &self.history
    }

    /// The epoch with the best validation loss so far, with early stopping.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.as_ref().map(|b| b.epoch)
    }

    /// The epoch whose weights the run kept, if early stopping has ended it: then [`Self::fit`]
    /// has nothing left to train.
    pub fn stopped_early(&self) -> Option<usize> {
        self.best_epoch().filter(|_| self.patience_spent(self.epochs_done()))
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f32 {
        self.optimizer.config().lr()
    }

    /// Everything needed to continue the run exactly; what a checkpoint saves.
    pub fn state(&self) -> TrainingState<M> {
        TrainingState {
            model: self.model.clone(),
            settings: self.settings.clone(),
            optimizer: self.optimizer.state_dict(self.model.params()),
            threads: self.threads,
            history: self.history.iter().map(|r| EpochRecord { seconds: None, ..r.clone() }).collect(),
            best: self.best.clone(),
        }
    }

    /// The trained model: the best epoch's with early stopping, else the last one's.
    pub fn into_model(self) -> M {
        match self.best {
            Some(best) => best.model,
            None => self.model,
        }
    }

    /// Whether early stopping's patience has run out after `done` epochs.
    fn patience_spent(&self, done: usize) -> bool {
        match (self.settings.early_stop, &self.best) {
            (Some(patience), Some(best)) => done - best.epoch >= patience,
            _ => false,
        }
    }

    /// Trains on `data` until `epochs` epochs are done in all (counting those of a resumed
    /// run), or early stopping ends the run. With a validation split, that share of `data`
    /// (drawn from the seed) is held out and evaluated after every epoch.
    ///
    /// # Errors
    /// The model does not fit the data, the split leaves an empty side, `epochs` are done
    /// already or the run stopped early already, training diverged (a batch loss not finite or above 1e4, or a weight not
    /// finite after an epoch), or the observer returned an error. After divergence the model's
    /// weights are unusable; nothing should be saved from the run.
    pub fn fit(&mut self, data: &Dataset, epochs: usize, observer: &mut dyn Observer<M>) -> Result<(), TrainError> {
        check_fits(&self.model, data)?;
        let first = self.epochs_done();
        if epochs <= first {
            return Err(TrainError::AlreadyDone { done: first });
        }
        if let Some(best) = self.stopped_early() {
            return Err(TrainError::StoppedEarly { done: first, best });
        }
        let Settings {
            batch_size, seed, val_split, early_stop, schedule, label_smoothing, augment, precise_bn, ..
        } = self.settings;
        let recipe = Recipe { smoothing: label_smoothing, augment };
        let base_lr = self.settings.optimizer.lr();
        let (train_idx, val_idx) = split(data.len(), val_split, seed)?;
        let mut loader = Loader::new(data, train_idx, batch_size, Order::Shuffled { seed });
        let mut stepper = Stepper::new(self.threads.min(batch_size), &self.model);
        for epoch in first..epochs {
            if self.patience_spent(epoch) {
                break;
            }
            loader.set_epoch(epoch as u64);
            stepper.start_epoch(seed, epoch);
            let steps = loader.num_batches();
            observer.epoch_started(epoch + 1, steps);
            let started = Instant::now();
            let (mut loss_sum, mut correct) = (0.0f64, 0usize);
            for step in 0..steps {
                if !schedule.is_constant() {
                    // Steps are counted over the whole run, so that a resumed run continues them.
                    self.optimizer.set_learning_rate(schedule.lr(base_lr, (epoch * steps + step) as u64));
                }
                let indices = loader.batch_indices(step);
                let result = stepper.step(&mut self.model, self.optimizer.as_mut(), data, indices, recipe);
                match result {
                    Ok(r) => {
                        loss_sum += r.loss;
                        correct += r.correct;
                    }
                    Err(StepError::Diverged { loss }) => {
                        return Err(
                            self.diverged(epoch, format!("step {}/{steps}: the loss became {loss:.4e}", step + 1))
                        );
                    }
                    Err(StepError::Optimizer(e)) => return Err(e.into()),
                }
                observer.step_done(step + 1, steps);
            }
            if let Some(p) = self.model.params().iter().find(|p| p.elements().iter().any(|v| !v.is_finite())) {
                return Err(self.diverged(epoch, format!("{} holds non-finite values", p.name())));
            }
            if precise_bn > 0 && self.model.normalizes_over_batch() {
                let batches = (0..steps.min(precise_bn)).map(|step| loader.batch_indices(step));
                stepper.recalibrate(&mut self.model, data, batches);
            }
            // The epoch's time includes the re-estimate: it is part of what training costs.
            let seconds = started.elapsed().as_secs_f64();
            let val = (!val_idx.is_empty()).then(|| evaluate(&self.model, data, &val_idx));
            let record = EpochRecord {
                epoch: epoch + 1,
                train_loss: loss_sum / steps as f64,
                train_accuracy: correct as f64 / loader.len() as f64,
                val_loss: val.as_ref().map(|v| v.loss),
                val_accuracy: val.as_ref().map(|v| v.accuracy()),
                seconds: Some(seconds),
            };
            self.history.push(record.clone());
            if let (Some(_), Some(val)) = (early_stop, &val)
                && self.best.as_ref().is_none_or(|b| val.loss < b.val_loss)
            {
                self.best = Some(Best { val_loss: val.loss, epoch: epoch + 1, model: self.model.clone() });
            }
            observer.epoch_done(self, &record).map_err(TrainError::Observer)?;
            if self.patience_spent(epoch + 1)
                && let (Some(patience), Some(best)) = (early_stop, &self.best)
            {
                observer.stopped_early(patience, best.epoch).map_err(TrainError::Observer)?;
            }
        }
        Ok(())
    }

    fn diverged(&self, epoch: usize, what: String) -> TrainError {
        TrainError::Diverged { epoch: epoch + 1, what, lr: self.learning_rate() }
    }
}

/// Checks that a validation split of `val_split` leaves samples on both sides of a training
/// set of `samples`, as [`Trainer::fit`] checks before it trains.
///
/// # Errors
/// [`TrainError::EmptySplit`] when either side would be empty.
pub fn check_split(samples: usize, val_split: f64) -> Result<(), TrainError> {
    // The sides' sizes do not depend on the seed.
    split(samples, val_split, 0).map(drop)
}

/// The training and validation indices of a run.
fn split(n: usize, val_split: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>), TrainError> {
    if val_split == 0.0 {
        return Ok(((0..n).collect(), Vec::new()));
    }
    let (train, val) = data::split_indices(n, val_split, seed);
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::EmptySplit { split: val_split, train: train.len(), val: val.len(), total: n });
    }
    Ok((train, val))
}
