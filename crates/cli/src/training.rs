//! The `train` command: the notebook's training loop and test-set evaluation, with progress,
//! checkpoints, per-epoch CSV, a JSON summary and plots on top. The loop itself is the `train`
//! library's; this file decides what to show and where to write.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use nn::{Model, Sequential};
use train::{Architecture, EpochRecord, Evaluation, Observer, ObserverError, Trainer, TrainingState};

use crate::UsageError;
use crate::args::{Start, TrainConfig};
use crate::eval::{evaluate_test, print_test_results};
use crate::files::{self, load_mnist, write_output};
use crate::svg;
use atomic_file::Target;

/// Runs `train`: prints the notebook's lines on `out`, progress and notes on stderr.
///
/// # Errors
/// Unreadable data or checkpoint, an output that cannot be written (checked before training),
/// or a run that diverged; in every case nothing is saved from the failed run.
pub(crate) fn run(cfg: &TrainConfig, out: &mut (dyn Write + Send)) -> Result<()> {
    let outputs = [
        ("--save", &cfg.outputs.save),
        ("--checkpoint", &cfg.outputs.checkpoint),
        ("--metrics-csv", &cfg.outputs.metrics_csv),
    ];
    for (flag, path) in &outputs[1..] {
        // Rewritten whole after every epoch: in place, each epoch would follow the last.
        if let Some(path) = path.as_deref().filter(|p| atomic_file::target(p).is_ok_and(|t| t == Target::InPlace)) {
            let what = "rewritten after every epoch, so it must be a file, not a device, a pipe or a standard stream";
            return Err(UsageError(format!("{flag} {}: {what}", path.display())).into());
        }
    }
    for (flag, path) in outputs.into_iter().chain([("--summary-json", &cfg.outputs.summary_json)]) {
        if let Some(path) = path {
            atomic_file::check_writable(path).map_err(|e| anyhow!("{flag} {e}"))?;
        }
    }
    // The checkpoint may be the one resumed from: it is read before it is written over.
    let resume = match &cfg.start {
        Start::Resume(path) => Some(path.as_path()),
        Start::New(_) => None,
    };
    let o = &cfg.outputs;
    files::check_distinct(&[
        ("--resume", resume),
        ("--save", o.save.as_deref()),
        ("--metrics-csv", o.metrics_csv.as_deref()),
        ("--summary-json", o.summary_json.as_deref()),
        ("--plots", o.plots.as_deref()),
    ])?;
    files::check_distinct(&[
        ("--checkpoint", o.checkpoint.as_deref()),
        ("--save", o.save.as_deref()),
        ("--metrics-csv", o.metrics_csv.as_deref()),
        ("--summary-json", o.summary_json.as_deref()),
        ("--plots", o.plots.as_deref()),
    ])?;
    // Held to the end: a run that fails leaves no empty folder.
    let _plots = cfg.outputs.plots.as_deref().map(svg::prepare_dir).transpose()?;
    let resumed = match &cfg.start {
        Start::Resume(path) => Some((path, read_state(path)?)),
        Start::New(_) => None,
    };

    let started = Instant::now();
    let mnist = load_mnist(&cfg.data_dir)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mut trainer = match (resumed, &cfg.start) {
        (Some((path, state)), _) => {
            let (done, threads) = (state.epochs_done(), state.threads);
            train::check_fits(&state.model, &mnist.train).map_err(|e| anyhow!("--resume {}: {e}", path.display()))?;
            let trainer = Trainer::resume(state).map_err(|e| anyhow!("--resume {}: {e}", path.display()))?;
            let path = path.display();
            if let Some(best) = trainer.stopped_early() {
                return Err(UsageError(format!(
                    "--resume {path}: the run stopped early after epoch {done}, its validation loss last improved at \
                     epoch {best}; it has nothing left to train"
                ))
                .into());
            }
            if cfg.epochs <= done {
                return Err(UsageError(format!(
                    "--resume {path}: the run has {done} epochs done already; pass an --epochs above that to train on"
                ))
                .into());
            }
            if threads != cfg.threads && !cfg.outputs.quiet {
                eprintln!(
                    "note: the run used {threads} threads and resumes on {}; results will differ in the last bits \
                     from a run that never stopped",
                    cfg.threads
                );
            }
            trainer
        }
        (None, Start::New(run)) => {
            let chosen_by = flag(&run.architecture);
            let config =
                run.architecture.config_for(&mnist.train).map_err(|e| UsageError(format!("{chosen_by}: {e}")))?;
            run.settings.check_memory(&config, cfg.threads).map_err(|e| UsageError(format!("{chosen_by}: {e}")))?;
            let model = Sequential::new(&config, &mut train::init_rng(run.settings.seed));
            train::check_fits(&model, &mnist.train).map_err(|e| UsageError(format!("{chosen_by}: {e}")))?;
            train::check_split(mnist.train.len(), run.settings.val_split)
                .map_err(|e| UsageError(format!("--val-split: {e}")))?;
            if run.settings.precise_bn > 0 && !model.normalizes_over_batch() {
                let what = model.describe();
                return Err(UsageError(format!("--precise-bn: the model {what} has no batch normalisation")).into());
            }
            let mut settings = run.settings.clone();
            let steps = settings.steps_per_epoch(mnist.train.len());
            settings.schedule = run.schedule.in_steps(cfg.epochs, steps, settings.optimizer.lr());
            if let (Some(expanded), false) = (&run.recipe, cfg.outputs.quiet) {
                eprintln!("Recipe {expanded}");
            }
            Trainer::new(model, settings)?
        }
        (None, Start::Resume(_)) => unreachable!("read above"),
    }
    .with_threads(cfg.threads);
    if !cfg.outputs.quiet {
        let val = data::validation_count(mnist.train.len(), trainer.settings().val_split);
        eprintln!(
            "MNIST loaded in {:.0} ms: training on {} images{}, {} test images; model {}, {} parameters, {} thread{}{}",
            load_seconds * 1e3,
            mnist.train.len() - val,
            if val == 0 { String::new() } else { format!(", validating on {val}") },
            mnist.test.len(),
            trainer.model().describe(),
            trainer.model().params().num_scalars(),
            cfg.threads,
            if cfg.threads == 1 { "" } else { "s" },
            match trainer.epochs_done() {
                0 => String::new(),
                done => format!("; resuming after epoch {done}"),
            },
        );
    }

    let test_each_epoch = cfg.outputs.summary_json.as_ref().map(|_| &mnist.test);
    let mut progress = Progress {
        cfg,
        out: &mut *out,
        bar: ProgressBar::hidden(),
        test: test_each_epoch,
        test_accuracy: Vec::new(),
        class_names: &mnist.class_names,
    };
    let fitted = trainer.fit(&mnist.train, cfg.epochs, &mut progress);
    if fitted.is_err() {
        progress.bar.abandon();
    }
    fitted?;
    let test_per_epoch = std::mem::take(&mut progress.test_accuracy);
    drop(progress);
    let (history, settings) = (trainer.history().to_vec(), trainer.settings().clone());
    let model = trainer.into_model();

    let (test, eval_seconds) = evaluate_test(&model, &mnist.test);
    if !cfg.outputs.quiet {
        eprintln!("Evaluated {} test images in {:.1} ms", mnist.test.len(), eval_seconds * 1e3);
    }
    print_test_results(out, &test, &mnist.class_names, cfg.outputs.quiet)?;
    if let Some(path) = &cfg.outputs.save {
        let mut file = train::model_state_with_facts(&model, &settings, history.len(), Some(&test));
        train::record_class_names(&mut file, &mnist.class_names);
        write_output("--save", path, |w| file.write_safetensors(w))?;
        if !cfg.outputs.quiet {
            eprintln!("Saved the model to {}", path.display());
        }
    }
    if let Some(path) = &cfg.outputs.summary_json {
        let per_epoch = &test_per_epoch;
        write_output("--summary-json", path, |w| {
            write_summary(w, &history, per_epoch, &test, [load_seconds, eval_seconds])
        })?;
    }
    if let Some(dir) = &cfg.outputs.plots {
        let curves = plots::training_curves(&history).map_err(|e| anyhow!("--plots: {e}"))?;
        svg::write(dir, "loss.svg", Ok(curves.loss))?;
        svg::write(dir, "accuracy.svg", Ok(curves.accuracy))?;
        svg::evaluation(dir, &mnist.test, &test, &mnist.class_names)?;
        if let Some(augment) = &settings.augment {
            svg::write(dir, "augmented.svg", plots::augmented(&mnist.train, augment, settings.seed))?;
        }
        if !cfg.outputs.quiet {
            eprintln!("Wrote plots to {}", dir.display());
        }
    }
    Ok(())
}

/// The flag that chose the model.
fn flag(architecture: &Architecture) -> &'static str {
    match architecture {
        Architecture::Mlp { .. } => "--hidden",
        Architecture::Lenet => "--model lenet",
        Architecture::Cnn => "--model cnn",
        Architecture::Layers(_) => "--layers",
    }
}

fn read_state(path: &Path) -> Result<TrainingState<Sequential>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    TrainingState::from_safetensors(&bytes).map_err(|e| match e {
        train::TrainError::NoTrainingState => {
            anyhow!(
                "{}: a model without training state: --resume needs a file written by train --checkpoint",
                path.display()
            )
        }
        other => anyhow!("{}: {other}", path.display()),
    })
}

/// What the command line shows and writes as the run goes.
struct Progress<'a> {
    cfg: &'a TrainConfig,
    out: &'a mut (dyn Write + Send),
    bar: ProgressBar,
    /// With `--summary-json`, the test set, evaluated after every epoch for the summary (how
    /// soon a recipe reaches an accuracy); nothing is chosen by it.
    test: Option<&'a data::Dataset>,
    test_accuracy: Vec<f64>,
    /// Recorded in checkpoints, as in saved models.
    class_names: &'a [String],
}

impl Observer<Sequential> for Progress<'_> {
    fn epoch_started(&mut self, epoch: usize, steps: usize) {
        self.bar = if self.cfg.outputs.quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let style = ProgressStyle::with_template("Epoch {prefix} [{bar:40}] {pos}/{len} steps, eta {eta}")
                .expect("valid template")
                .progress_chars("=> ");
            ProgressBar::new(steps as u64).with_style(style).with_prefix(format!("{epoch}/{}", self.cfg.epochs))
        };
    }

    fn step_done(&mut self, _step: usize, _steps: usize) {
        self.bar.inc(1);
    }

    fn epoch_done(&mut self, trainer: &Trainer<Sequential>, record: &EpochRecord) -> Result<(), ObserverError> {
        self.bar.finish_and_clear();
        if let Some(test) = self.test {
            self.test_accuracy.push(train::evaluate_all(trainer.model(), test).accuracy());
        }
        if !self.cfg.outputs.quiet {
            writeln!(self.out, "{}", epoch_line(record, self.cfg.epochs))?;
        }
        if let Some(path) = &self.cfg.outputs.metrics_csv {
            write_output("--metrics-csv", path, |w| EpochRecord::write_csv(trainer.history(), w))?;
        }
        if let Some(path) = &self.cfg.outputs.checkpoint {
            let mut state = trainer.state().to_state_dict();
            train::record_class_names(&mut state, self.class_names);
            write_output("--checkpoint", path, |w| state.write_safetensors(w))?;
        }
        Ok(())
    }

    fn stopped_early(&mut self, patience: usize, best_epoch: usize) -> Result<(), ObserverError> {
        if !self.cfg.outputs.quiet {
            writeln!(
                self.out,
                "Early stop: no better validation loss for {patience} epochs; keeping epoch {best_epoch}"
            )?;
        }
        Ok(())
    }
}

/// `Epoch 1/10, Loss: 0.2934` as the notebook prints it, then the extra figures.
fn epoch_line(r: &EpochRecord, epochs: usize) -> String {
    let mut line =
        format!("Epoch {}/{epochs}, Loss: {:.4}, Accuracy: {:.2}%", r.epoch, r.train_loss, 100.0 * r.train_accuracy);
    if let (Some(loss), Some(acc)) = (r.val_loss, r.val_accuracy) {
        line += &format!(", Val Loss: {loss:.4}, Val Accuracy: {:.2}%", 100.0 * acc);
    }
    if let Some(seconds) = r.seconds {
        line += &format!(", Time: {seconds:.2}s");
    }
    line
}

/// The run's figures as JSON, for scripts (`cargo xtask bench` reads it).
fn write_summary(
    w: &mut dyn Write,
    history: &[EpochRecord],
    test_per_epoch: &[f64],
    test: &Evaluation,
    seconds: [f64; 2],
) -> std::io::Result<()> {
    let epochs: Vec<serde_json::Value> = history
        .iter()
        .map(|r| {
            // Epochs restored from a checkpoint were not evaluated here.
            let skipped = history.len() - test_per_epoch.len();
            let test = (r.epoch > skipped).then(|| test_per_epoch[r.epoch - skipped - 1]);
            serde_json::json!({
                "epoch": r.epoch, "train_loss": r.train_loss, "train_accuracy": r.train_accuracy,
                "val_loss": r.val_loss, "val_accuracy": r.val_accuracy, "seconds": r.seconds,
                "test_accuracy": test,
            })
        })
        .collect();
    let summary = serde_json::json!({
        "test_accuracy": test.accuracy(),
        "test_loss": test.loss,
        "test_images": test.confusion.total(),
        "load_seconds": seconds[0],
        "eval_seconds": seconds[1],
        "simd": simd::Simd::get().level().name(),
        "epochs": epochs,
    });
    serde_json::to_writer_pretty(&mut *w, &summary)?;
    writeln!(w)
}
