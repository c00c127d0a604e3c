//! The engine on small synthetic data sets: learning on images of any shape and class count,
//! bit-reproducible runs, exact resumption, early stopping, divergence, observers.

use data::{Dataset, Mnist};
use nn::{MlpConfig, Model, Sequential, SequentialConfig};
use optim::{AdamConfig, LrCurve, LrSchedule, OptimizerConfig};
use testkit::Synthetic;
use train::{EpochRecord, Observer, ObserverError, Settings, TrainError, Trainer, TrainingState};

fn synthetic(spec: Synthetic) -> Mnist {
    let dir = tempfile::tempdir().unwrap();
    spec.write(dir.path());
    Mnist::load(dir.path()).unwrap()
}

fn mlp_model_for(data: &Dataset, hidden: &[usize], seed: u64) -> Sequential {
    Sequential::mlp(
        &MlpConfig::with_hidden(data.image_len(), hidden, data.classes(), false),
        &mut train::init_rng(seed),
    )
}

fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

#[test]
fn a_set_of_another_shape_and_class_count_is_learned() {
    let spec = Synthetic { rows: 12, cols: 12, classes: 4, train: 400, test: 100, seed: 1 };
    let set = synthetic(spec);
    assert_eq!((set.train.image_len(), set.train.classes()), (144, 4));
    let mut trainer = Trainer::new(mlp_model_for(&set.train, &[16], 0), Settings::default()).unwrap();
    trainer.fit(&set.train, 5, &mut ()).unwrap();
    let model = trainer.into_model();
    assert_eq!(model.classes(), 4);
    let test: Vec<usize> = (0..set.test.len()).collect();
    let eval = train::evaluate(&model, &set.test, &test);
    // Guessing gets a quarter right; the set's ambiguous images keep a model from all of them.
    assert!(eval.accuracy() >= 0.8, "test accuracy {}", eval.accuracy());
    assert_eq!(eval.confusion.total(), 100);
    assert_eq!(eval.predictions.len(), 100);
}

#[test]
fn evaluation_gives_each_sample_what_it_gets_alone_at_any_thread_count() {
    // 250 samples: batches of 100, 100 and 50, through a convolution and a normalisation in
    // evaluation mode, whose running statistics a short run has moved.
    let spec = Synthetic { rows: 12, cols: 12, classes: 4, train: 128, test: 250, seed: 2 };
    let set = synthetic(spec);
    let config = SequentialConfig::parse("conv(4,3,pad=1),batchnorm,relu,maxpool(2),flatten,linear(4)", [1, 12, 12]);
    let model = Sequential::new(&config.unwrap(), &mut train::init_rng(3));
    let mut trainer = Trainer::new(model, Settings::default()).unwrap();
    trainer.fit(&set.train, 1, &mut ()).unwrap();
    let model = trainer.into_model();
    let all: Vec<usize> = (0..set.test.len()).collect();
    let [one, two] = [1, 2].map(|threads| on_threads(threads, || train::evaluate(&model, &set.test, &all)));
    assert_eq!(one.predictions, two.predictions);
    assert_eq!(one.loss.to_bits(), two.loss.to_bits());
    assert_eq!(one.confusion.total(), 250);
    let alone: Vec<_> = all.iter().map(|&i| train::evaluate(&model, &set.test, &[i])).collect();
    assert_eq!(one.predictions, alone.iter().map(|e| e.predictions[0]).collect::<Vec<_>>());
    let mean = alone.iter().map(|e| e.loss).sum::<f64>() / 250.0;
    assert!((one.loss - mean).abs() <= 1e-12 * mean, "{} against {mean}", one.loss);
}

/// Records what the trainer reports, and saves the state after every epoch.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    states: Vec<Vec<u8>>,
    fail_at: Option<usize>,
}

impl Observer<Sequential> for Recorder {
    fn epoch_started(&mut self, epoch: usize, steps: usize) {
        self.events.push(format!("start {epoch} {steps}"));
    }

    fn step_done(&mut self, step: usize, steps: usize) {
        if step == steps {
            self.events.push(format!("steps {step}"));
        }
    }

    fn epoch_done(&mut self, trainer: &Trainer<Sequential>, record: &EpochRecord) -> Result<(), ObserverError> {
        self.events.push(format!("done {}", record.epoch));
        self.states.push(trainer.state().to_safetensors());
        if self.fail_at == Some(record.epoch) {
            return Err("the disk is full".into());
        }
        Ok(())
    }

    fn stopped_early(&mut self, patience: usize, best_epoch: usize) -> Result<(), ObserverError> {
        self.events.push(format!("stop {patience} {best_epoch}"));
        Ok(())
    }
}

/// A run with every moving part: validation, early stopping, a warm-up then a cosine
/// schedule stepped per optimizer step, label smoothing and augmentation.
fn settings() -> Settings {
    let schedule =
        LrSchedule { warmup_steps: 10, warmup_start: 0.1, curve: LrCurve::Cosine { t_max: 40, eta_min: 1e-5 } };
    Settings {
        batch_size: 32,
        val_split: 0.2,
        early_stop: Some(5),
        seed: 4,
        schedule,
        label_smoothing: 0.1,
        ..Settings::default()
    }
}

#[test]
fn runs_repeat_bit_for_bit_and_resume_exactly() {
    let set = synthetic(Synthetic::default());
    for threads in [1, 2] {
        let run = || {
            on_threads(threads, || {
                let mut rec = Recorder::default();
                let mut trainer = Trainer::new(mlp_model_for(&set.train, &[24, 12], 2), settings()).unwrap();
                trainer.fit(&set.train, 3, &mut rec).unwrap();
                rec
            })
        };
        let (a, b) = (run(), run());
        assert_eq!(a.states, b.states, "{threads} threads: two runs differ");
        assert_eq!(
            a.events,
            [
                "start 1 15",
                "steps 15",
                "done 1",
                "start 2 15",
                "steps 15",
                "done 2",
                "start 3 15",
                "steps 15",
                "done 3"
            ]
        );

        // Stopped after epoch 1 and resumed from its saved bytes: the same states after.
        let resumed = on_threads(threads, || {
            let state = TrainingState::<Sequential>::from_safetensors(&a.states[0]).unwrap();
            assert_eq!(state.to_safetensors(), a.states[0], "a state round-trips to the same bytes");
            let mut rec = Recorder::default();
            let mut trainer = Trainer::resume(state).unwrap();
            trainer.fit(&set.train, 3, &mut rec).unwrap();
            rec
        });
        assert_eq!(resumed.states, a.states[1..], "{threads} threads: the resumed run differs");
    }
}

#[test]
fn thread_counts_round_differently_but_both_learn() {
    let set = synthetic(Synthetic::default());
    let states: Vec<Vec<u8>> = [1, 2]
        .into_iter()
        .map(|t| {
            on_threads(t, || {
                let settings = Settings { batch_size: 16, ..Settings::default() };
                let mut trainer = Trainer::new(mlp_model_for(&set.train, &[24], 3), settings).unwrap();
                trainer.fit(&set.train, 2, &mut ()).unwrap();
                // Guessing gets a tenth right.
                assert!(trainer.history()[1].train_accuracy > 0.5, "{:?}", trainer.history());
                trainer.state().to_safetensors()
            })
        })
        .collect();
    assert_ne!(states[0], states[1]);
}

#[test]
fn early_stopping_keeps_the_best_epochs_weights() {
    // Labels that no image predicts: what the model learns of the training part only makes
    // the validation loss worse, soon.
    let mut set = synthetic(Synthetic { train: 100, ..Synthetic::default() });
    let shuffled_labels = (0..100u64).map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) % 10) as u8).collect();
    set.train = Dataset::new(set.train.pixels().to_vec(), shuffled_labels, 12, 12, 10);
    let settings = Settings {
        batch_size: 10,
        early_stop: Some(1),
        optimizer: OptimizerConfig::Adam(AdamConfig { lr: 0.1, ..AdamConfig::default() }),
        schedule: LrSchedule::default(),
        label_smoothing: 0.0,
        augment: None,
        ..settings()
    };
    let mut rec = Recorder::default();
    let mut trainer = Trainer::new(mlp_model_for(&set.train, &[64], 5), settings).unwrap();
    trainer.fit(&set.train, 30, &mut rec).unwrap();
    let done = trainer.epochs_done();
    let best = trainer.best_epoch().unwrap();
    assert!(done < 30 && best == done - 1, "{done} epochs, best {best}: {:?}", rec.events);
    assert_eq!(rec.events.last().unwrap(), &format!("stop 1 {best}"));
    let losses: Vec<f64> = trainer.history().iter().map(|r| r.val_loss.unwrap()).collect();
    let min = losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(losses[best - 1], min);
    let best_state = TrainingState::<Sequential>::from_safetensors(&rec.states[best - 1]).unwrap();
    assert_eq!(trainer.into_model().params(), best_state.model.params());
    // Resumed from its last state, the run has nothing left to train, and says so.
    let last = TrainingState::<Sequential>::from_safetensors(&rec.states[done - 1]).unwrap();
    let err = Trainer::resume(last).unwrap().fit(&set.train, 30, &mut ()).unwrap_err();
    assert!(matches!(err, TrainError::StoppedEarly { done: d, best: b } if (d, b) == (done, best)), "{err}");
}

#[test]
fn a_diverging_run_stops_with_its_epoch_and_step() {
    let set = synthetic(Synthetic::default());
    let settings = Settings {
        optimizer: OptimizerConfig::Adam(AdamConfig { lr: 1e6, ..AdamConfig::default() }),
        ..Settings::default()
    };
    let mut trainer = Trainer::new(mlp_model_for(&set.train, &[24], 0), settings).unwrap();
    let err = trainer.fit(&set.train, 2, &mut ()).unwrap_err();
    assert!(matches!(err, TrainError::Diverged { epoch: 1, .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("epoch 1, step ") && message.ends_with("the learning rate (1000000) is too high"),
        "{message}"
    );
}

#[test]
fn an_observers_error_stops_the_run() {
    let set = synthetic(Synthetic::default());
    let mut rec = Recorder { fail_at: Some(2), ..Recorder::default() };
    let mut trainer = Trainer::new(mlp_model_for(&set.train, &[8], 0), Settings::default()).unwrap();
    let err = trainer.fit(&set.train, 5, &mut rec).unwrap_err();
    assert_eq!(err.to_string(), "the disk is full");
    assert_eq!(trainer.epochs_done(), 2);
}

#[test]
fn bad_runs_are_refused_before_training() {
    let set = synthetic(Synthetic { classes: 3, ..Synthetic::default() });
    let wrong = Sequential::mlp(&MlpConfig { widths: vec![144, 10], output_relu: false }, &mut train::init_rng(0));
    let err = Trainer::new(wrong, Settings::default()).unwrap().fit(&set.train, 1, &mut ()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the model maps 144 inputs to 10 classes, but the data has 144 pixels per image and 3 classes"
    );

    let tiny = Settings { val_split: 0.0001, ..Settings::default() };
    let err = Trainer::new(mlp_model_for(&set.train, &[4], 0), tiny).unwrap().fit(&set.train, 1, &mut ()).unwrap_err();
    assert_eq!(err.to_string(), "a validation split of 0.0001 leaves 600 training and 0 validation samples of 600");

    let no_val = Settings { early_stop: Some(2), ..Settings::default() };
    let err = Trainer::new(mlp_model_for(&set.train, &[4], 0), no_val).err().unwrap();
    assert_eq!(err.to_string(), "early stopping needs a validation split");

    let mut trainer = Trainer::new(mlp_model_for(&set.train, &[4], 0), Settings::default()).unwrap();
    trainer.fit(&set.train, 1, &mut ()).unwrap();
    let err = trainer.fit(&set.train, 1, &mut ()).unwrap_err();
    assert_eq!(err.to_string(), "the run has 1 epochs done already; ask for more than that to train on");
}

#[test]
fn a_schedule_and_smoothing_are_saved_and_change_the_run() {
    let set = synthetic(Synthetic::default());
    let run = |settings: Settings| {
        let mut trainer = Trainer::new(mlp_model_for(&set.train, &[24], 2), settings).unwrap();
        trainer.fit(&set.train, 2, &mut ()).unwrap();
        trainer.state()
    };
    let plain = run(Settings { batch_size: 32, ..Settings::default() });
    let full = run(settings());
    assert_ne!(plain.model.params(), full.model.params());
    let back = TrainingState::<Sequential>::from_safetensors(&full.to_safetensors()).unwrap();
    assert_eq!(back.settings, settings());
}

/// A model with batch normalisation that does not say so: `Model::normalizes_over_batch` left
/// at its default.
#[derive(Debug, Clone)]
struct Unmarked(Sequential);

impl Model for Unmarked {
    fn params(&self) -> &nn::Params {
        self.0.params()
    }
    fn params_mut(&mut self) -> &mut nn::Params {
        self.0.params_mut()
    }
    fn input_width(&self) -> usize {
        self.0.input_width()
    }
    fn classes(&self) -> usize {
        self.0.classes()
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn forward(&self, tape: &mut nn::Tape, x: nn::Var) -> nn::Var {
        self.0.forward(tape, x)
    }
    fn forward_train(&self, tape: &mut nn::Tape, x: nn::Var, rng: &mut dyn rand::RngCore) -> nn::Var {
        self.0.forward_train(tape, x, rng)
    }
    fn state_dict(&self) -> nn::StateDict {
        self.0.state_dict()
    }
    fn from_state_dict(state: &nn::StateDict) -> Result<Self, nn::NnError> {
        Sequential::from_state_dict(state).map(Unmarked)
    }
}

#[test]
fn a_model_that_hides_its_batch_normalisation_is_stopped_rather_than_split() {
    let set = synthetic(Synthetic { rows: 6, cols: 6, classes: 3, train: 64, test: 8, seed: 3 });
    let config = nn::SequentialConfig::parse("flatten,linear(8),batchnorm,relu,linear(3)", [1, 6, 6]).unwrap();
    let model = Unmarked(Sequential::new(&config, &mut train::init_rng(0)));
    let settings = Settings { batch_size: 16, ..Settings::default() };
    let one = on_threads(1, || {
        Trainer::new(model.clone(), settings.clone()).unwrap().with_threads(1).fit(&set.train, 1, &mut ())
    });
    assert!(one.is_ok(), "a batch in one part is the whole batch");
    let two = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        on_threads(2, || Trainer::new(model, settings).unwrap().with_threads(2).fit(&set.train, 1, &mut ()))
    }));
    let message =
        two.expect_err("two parts with their own statistics").downcast::<&str>().map(|m| *m).unwrap_or_default();
    assert!(message.contains("normalizes_over_batch"), "{message}");
}

#[test]
fn precise_batch_normalisation_averages_clean_batches_and_leaves_the_weights_alone() {
    let set = synthetic(Synthetic { rows: 6, cols: 6, classes: 3, train: 64, test: 8, seed: 3 });
    let config = SequentialConfig::parse("flatten,batchnorm,linear(8),batchnorm,relu,linear(3)", [1, 6, 6]).unwrap();
    // Augmented training, so that the tracked statistics are those of other images.
    let settings = |precise_bn| Settings {
        batch_size: 16,
        augment: Some(data::Augment::default()),
        precise_bn,
        ..Settings::default()
    };
    let run = |precise_bn: usize| {
        on_threads(2, || {
            let model = Sequential::new(&config, &mut train::init_rng(0));
            let mut trainer = Trainer::new(model, settings(precise_bn)).unwrap().with_threads(2);
            trainer.fit(&set.train, 1, &mut ()).unwrap();
            let after_one = trainer.state().to_safetensors();
            trainer.fit(&set.train, 2, &mut ()).unwrap();
            // Stopped after the first epoch and resumed: the same end.
            let state = TrainingState::<Sequential>::from_safetensors(&after_one).unwrap();
            let mut resumed = Trainer::resume(state).unwrap();
            assert_eq!(resumed.settings(), &settings(precise_bn), "saved with the run");
            resumed.fit(&set.train, 2, &mut ()).unwrap();
            assert_eq!(resumed.state().to_safetensors(), trainer.state().to_safetensors(), "resumed exactly");
            trainer.into_model().state_dict()
        })
    };
    // The mean of the pixels of `images`, as the model reads them.
    let mean = |images: &[usize]| -> Vec<f32> {
        let mut pixels = vec![0.0; images.len() * 36];
        data::fill_rows(&set.train, images, &mut pixels);
        (0..36).map(|j| pixels.iter().skip(j).step_by(36).sum::<f32>() / images.len() as f32).collect()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
    let tracked = run(0);
    // More batches than an epoch has: all four of the last epoch, 16 images each.
    let every = run(100);
    for name in tracked.names() {
        match (tracked.get(name), every.get(name)) {
            (Some(a), Some(b)) if name.contains("running") => assert_ne!(a, b, "{name}: re-estimated"),
            (Some(a), Some(b)) => assert_eq!(a, b, "{name}: training does not read the running statistics"),
            _ => {}
        }
    }
    // Two epochs of four steps, then four batches re-estimated after each.
    let count = |state: &nn::StateDict| state.get_i64("bn1.num_batches_tracked").unwrap().data()[0];
    assert_eq!((count(&tracked), count(&every)), (8, 16));
    // The first normalisation sees the pixels themselves: four equal batches average to the
    // mean of every training image.
    let running = |state: &nn::StateDict| state.get("bn1.running_mean").unwrap().data().to_vec();
    let all: Vec<usize> = (0..set.train.len()).collect();
    assert!(close(&running(&every), &mean(&all)), "{:?} against {:?}", running(&every), mean(&all));
    assert!(!close(&running(&tracked), &mean(&all)));
    // One batch: the first of the last epoch, as the run's loader orders it.
    let mut loader = data::Loader::new(&set.train, all.clone(), 16, data::Order::Shuffled { seed: 0 });
    loader.set_epoch(1);
    let first = mean(loader.batch_indices(0));
    assert!(close(&running(&run(1)), &first), "{:?} against {first:?}", running(&run(1)));
}
