//! The `train` command: the notebook's training loop, then its test-set evaluation, with a
//! validation split, early stopping, checkpoints, per-epoch CSV and plots on top.
//!
//! Randomness comes from one seed through ChaCha8 streams: the initial weights use stream
//! `u64::MAX - 1`, the validation split `u64::MAX` and epoch `k`'s shuffle stream `k`, so each
//! is reproducible on its own.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{Result, bail};
use data::{Batch, Dataset, Loader, Order};
use indicatif::{ProgressBar, ProgressStyle};
use nn::{Grads, Mlp, Tape};
use optim::{Adam, Optimizer, Sgd};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::args::{OptimizerConfig, RunSettings, TrainConfig};
use crate::checkpoint::{Best, TrainingState};
use crate::eval::{Evaluation, evaluate, print_test_results};
use crate::fsutil::{check_writable, prepare_dir, write_atomically};
use crate::{checkpoint, load_mnist, plots};

/// The ChaCha8 stream the initial weights are drawn from.
const INIT_STREAM: u64 = u64::MAX - 1;

/// A batch's mean loss above this means the weights have diverged: on average the true class
/// scores this many logits below the top one (a model guessing uniformly loses ln 10 = 2.3).
const DIVERGED_LOSS: f64 = 1e4;

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
    /// checkpoint, which keeps no timings so that its bytes do not depend on them).
    pub seconds: Option<f64>,
}

/// What a training run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained model (the best epoch's, with early stopping).
    pub model: Mlp,
    /// Per-epoch figures.
    pub history: Vec<EpochRecord>,
    /// The model's results on the test set.
    pub test: Evaluation,
}

/// Runs `train`: prints the notebook's lines on `out`, progress and notes on stderr.
///
/// # Errors
/// Unreadable data or checkpoint, an output that cannot be written (checked before training),
/// a resumed run's settings contradicted by the flags, or a loss that stops being finite; in
/// every case nothing is saved from the failed run.
pub fn run(cfg: &TrainConfig, out: &mut (dyn Write + Send)) -> Result<TrainOutcome> {
    for (flag, path) in [("--save", &cfg.save), ("--checkpoint", &cfg.checkpoint), ("--metrics-csv", &cfg.metrics_csv)]
    {
        if let Some(path) = path {
            check_writable(flag, path)?;
        }
    }
    if let Some(dir) = &cfg.plots {
        prepare_dir("--plots", dir)?;
    }
    let resumed = cfg.resume.as_deref().map(checkpoint::load_training).transpose()?;
    let settings = match &resumed {
        Some(state) => {
            cfg.run.check_resume(&state.settings)?;
            if cfg.epochs <= state.epochs_done {
                bail!(
                    "--resume: the run has {} epochs done already; pass an --epochs above that to train on",
                    state.epochs_done
                );
            }
            state.settings.clone()
        }
        None => cfg.run.resolve()?,
    };

    let started = Instant::now();
    let mnist = load_mnist(&cfg.data_dir)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let train_set = &mnist.train;
    let (train_idx, val_idx) = if settings.val_split > 0.0 {
        let (t, v) = data::split_indices(train_set.len(), settings.val_split, settings.seed);
        if v.is_empty() || t.is_empty() {
            bail!(
                "--val-split {} leaves {} training and {} validation samples of {}",
                settings.val_split,
                t.len(),
                v.len(),
                train_set.len()
            );
        }
        (t, v)
    } else {
        ((0..train_set.len()).collect(), Vec::new())
    };
    let model_config = settings.model(train_set.image_len(), train_set.classes());
    let mut optimizer: Box<dyn Optimizer> = match settings.optimizer {
        OptimizerConfig::Adam(c) => Box::new(Adam::new(c)?),
        OptimizerConfig::Sgd(c) => Box::new(Sgd::new(c)?),
    };
    let (mut mlp, mut history, mut best, first_epoch) = match resumed {
        Some(state) => {
            if state.model.config() != &model_config {
                bail!("--resume: the saved model does not fit this data set ({:?})", state.model.config().widths);
            }
            if state.threads != cfg.threads && !cfg.quiet {
                eprintln!(
                    "note: the run used {} threads and resumes on {}; results will differ in the last bits from a \
                     run that never stopped",
                    state.threads, cfg.threads
                );
            }
            optimizer.load_state(state.optimizer)?;
            (state.model, state.history, state.best, state.epochs_done)
        }
        None => {
            let mut init_rng = ChaCha8Rng::seed_from_u64(settings.seed);
            init_rng.set_stream(INIT_STREAM);
            (Mlp::new(&model_config, &mut init_rng), Vec::new(), None, 0)
        }
    };
    let mut loader = Loader::new(train_set, train_idx, settings.batch_size, Order::Shuffled { seed: settings.seed });
    if !cfg.quiet {
        let widths: Vec<String> = model_config.widths.iter().map(usize::to_string).collect();
        eprintln!(
            "MNIST loaded in {:.0} ms: training on {} images{}, {} test images; model {}{}, {} parameters, {} thread{}{}",
            load_seconds * 1e3,
            loader.len(),
            if val_idx.is_empty() { String::new() } else { format!(", validating on {}", val_idx.len()) },
            mnist.test.len(),
            widths.join("-"),
            if model_config.output_relu { " with ReLU on the logits" } else { "" },
            mlp.params().num_scalars(),
            cfg.threads,
            if cfg.threads == 1 { "" } else { "s" },
            if first_epoch > 0 { format!("; resuming after epoch {first_epoch}") } else { String::new() },
        );
    }

    let mut stepper = Stepper::new(cfg.threads.min(settings.batch_size), &mlp, optimizer);
    // Early stopping is over once `patience` epochs have passed without a better one.
    let patience_spent = |best: &Option<Best>, done: usize| match (settings.early_stop, best) {
        (Some(patience), Some(best)) => done - best.epoch >= patience,
        _ => false,
    };
    for epoch in first_epoch..cfg.epochs {
        if patience_spent(&best, epoch) {
            break;
        }
        loader.set_epoch(epoch as u64);
        let bar = progress_bar(cfg, epoch, loader.num_batches());
        let started = Instant::now();
        let (train_loss, correct) = stepper.epoch(&mut mlp, &loader, epoch, &bar)?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let val = (!val_idx.is_empty()).then(|| evaluate(&mlp, train_set, &val_idx));
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss,
            train_accuracy: correct as f64 / loader.len() as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_accuracy: val.as_ref().map(Evaluation::accuracy),
            seconds: Some(seconds),
        };
        if !cfg.quiet {
            writeln!(out, "{}", epoch_line(&record, cfg.epochs))?;
        }
        history.push(record);
        if let (Some(_), Some(val)) = (settings.early_stop, &val)
            && best.as_ref().is_none_or(|b| val.loss < b.val_loss)
        {
            best = Some(Best { val_loss: val.loss, epoch: epoch + 1, model: mlp.clone() });
        }
        if let Some(path) = &cfg.metrics_csv {
            write_atomically(path, |w| write_history_csv(w, &history))?;
        }
        if let Some(path) = &cfg.checkpoint {
            let state = TrainingState {
                model: mlp.clone(),
                settings: settings.clone(),
                optimizer: stepper.optimizer.state(),
                epochs_done: epoch + 1,
                threads: cfg.threads,
                history: history.iter().map(|r| EpochRecord { seconds: None, ..r.clone() }).collect(),
                best: best.clone(),
            };
            checkpoint::save_training(path, &state)?;
        }
        if patience_spent(&best, epoch + 1)
            && let (false, Some(patience), Some(b)) = (cfg.quiet, settings.early_stop, &best)
        {
            writeln!(out, "Early stop: no better validation loss for {patience} epochs; keeping epoch {}", b.epoch)?;
        }
    }
    if let Some(b) = best {
        mlp = b.model;
    }

    let all_test: Vec<usize> = (0..mnist.test.len()).collect();
    let started = Instant::now();
    let test = evaluate(&mlp, &mnist.test, &all_test);
    if !cfg.quiet {
        eprintln!("Evaluated {} test images in {:.1} ms", all_test.len(), started.elapsed().as_secs_f64() * 1e3);
    }
    print_test_results(out, &test, cfg.quiet)?;
    if let Some(path) = &cfg.save {
        checkpoint::save(path, &mlp, &checkpoint_facts(&settings, &history, &test))?;
        if !cfg.quiet {
            eprintln!("Saved the model to {}", path.display());
        }
    }
    if let Some(dir) = &cfg.plots {
        plots::training_curves(dir, &history)?;
        plots::confusion_heatmap(dir, &test.confusion)?;
        plots::misclassified(dir, &mnist.test, &test.predictions)?;
        if !cfg.quiet {
            eprintln!("Wrote plots to {}", dir.display());
        }
    }
    Ok(TrainOutcome { model: mlp, history, test })
}

/// What every step uses: a shard and gradients per thread, and the optimizer.
struct Stepper {
    shards: Vec<Shard>,
    grads: Vec<Grads>,
    optimizer: Box<dyn Optimizer>,
}

impl Stepper {
    fn new(threads: usize, mlp: &Mlp, optimizer: Box<dyn Optimizer>) -> Self {
        Self {
            shards: (0..threads).map(|_| Shard::new()).collect(),
            grads: (0..threads).map(|_| Grads::new(mlp.params())).collect(),
            optimizer,
        }
    }

    /// One epoch over `loader`'s current order. Returns the mean of the batch losses and how
    /// many samples were classified right.
    ///
    /// # Errors
    /// The loss of a batch is not finite or above [`DIVERGED_LOSS`], or a weight is not
    /// finite after the epoch: training diverged.
    fn epoch(&mut self, mlp: &mut Mlp, loader: &Loader, epoch: usize, bar: &ProgressBar) -> Result<(f64, usize)> {
        let steps = loader.num_batches();
        let lr = self.optimizer.learning_rate();
        let diverged = |what: String| {
            anyhow::anyhow!(
                "epoch {}, {what}; training diverged, most likely because the learning rate ({lr}) is too high",
                epoch + 1
            )
        };
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for step in 0..steps {
            let (loss, right, parts) =
                forward_backward(&mut self.shards, &mut self.grads, mlp, loader.dataset(), loader.batch_indices(step));
            if !(loss.is_finite() && loss <= DIVERGED_LOSS) {
                bar.abandon();
                return Err(diverged(format!("step {}/{steps}: the loss became {loss:.4e}", step + 1)));
            }
            self.optimizer.step_sum(mlp.params_mut(), &self.grads[..parts])?;
            loss_sum += loss;
            correct += right;
            bar.inc(1);
        }
        if let Some(p) = mlp.params().iter().find(|p| p.value().iter().any(|v| !v.is_finite())) {
            return Err(diverged(format!("{} holds non-finite values", p.name())));
        }
        Ok((loss_sum / steps as f64, correct))
    }
}

/// One thread's part of every batch: its rows and its tape, both reused.
struct Shard {
    batch: Batch,
    tape: Tape,
    loss: f32,
    correct: usize,
}

impl Shard {
    fn new() -> Self {
        Self { batch: Batch::new(), tape: Tape::new(), loss: 0.0, correct: 0 }
    }

    /// Forward and backward over the samples `indices`, which are the share `scale` of a batch:
    /// the gradient written into `grads` is that share of the batch's.
    fn run(&mut self, mlp: &Mlp, data: &Dataset, indices: &[usize], scale: f32, grads: &mut Grads) {
        self.batch.fill(data, indices);
        self.tape.clear();
        let x = self.tape.input(self.batch.x());
        let logits = mlp.forward(&mut self.tape, x);
        let loss = self.tape.cross_entropy(logits, self.batch.labels());
        self.loss = self.tape.value(loss)[[0, 0]];
        self.correct = count_correct(self.tape.value(logits), self.batch.labels());
        self.tape.backward_scaled(loss, scale, mlp.params(), grads);
    }
}

/// Forward and backward over one batch, split into equal parts across the shards' threads
/// (the parts' gradients are summed, in shard order, by the optimizer's step, so a run is
/// reproducible for a given number of threads). Returns the batch's mean loss, how many of its
/// samples were classified right, and how many shards took part.
fn forward_backward(
    shards: &mut [Shard],
    grads: &mut [Grads],
    mlp: &Mlp,
    data: &Dataset,
    indices: &[usize],
) -> (f64, usize, usize) {
    let n = indices.len();
    let parts = shards.len().min(n).max(1);
    let shards = &mut shards[..parts];
    let range = |s: usize| s * n / parts..(s + 1) * n / parts;
    if parts == 1 {
        shards[0].run(mlp, data, indices, 1.0, &mut grads[0]);
    } else {
        shards.par_iter_mut().zip(&mut grads[..parts]).enumerate().for_each(|(s, (shard, grads))| {
            let rows = range(s);
            let scale = rows.len() as f32 / n as f32;
            shard.run(mlp, data, &indices[rows], scale, grads);
        });
    }
    let loss = shards.iter().enumerate().map(|(s, sh)| f64::from(sh.loss) * range(s).len() as f64 / n as f64).sum();
    (loss, shards.iter().map(|sh| sh.correct).sum(), parts)
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

/// Rows whose largest logit is at the label.
fn count_correct(logits: ndarray::ArrayView2<f32>, labels: &[usize]) -> usize {
    logits
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, y)| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best == **y
        })
        .count()
}

fn write_history_csv(w: &mut dyn Write, history: &[EpochRecord]) -> std::io::Result<()> {
    let mut csv = csv::Writer::from_writer(w);
    csv.write_record(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"])?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for r in history {
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

/// Training facts stored in a checkpoint's metadata.
fn checkpoint_facts(settings: &RunSettings, history: &[EpochRecord], test: &Evaluation) -> Vec<(&'static str, String)> {
    let optimizer = match settings.optimizer {
        OptimizerConfig::Adam(c) => format!("adam lr={} weight_decay={:?}", c.lr, c.weight_decay),
        OptimizerConfig::Sgd(c) => format!("sgd lr={} momentum={} weight_decay={:?}", c.lr, c.momentum, c.weight_decay),
    };
    vec![
        ("epochs", history.len().to_string()),
        ("batch_size", settings.batch_size.to_string()),
        ("optimizer", optimizer),
        ("seed", settings.seed.to_string()),
        ("test_accuracy", format!("{:.4}", test.accuracy())),
    ]
}

fn progress_bar(cfg: &TrainConfig, epoch: usize, steps: usize) -> ProgressBar {
    if cfg.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("Epoch {prefix} [{bar:40}] {pos}/{len} steps, eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::new(steps as u64).with_style(style).with_prefix(format!("{}/{}", epoch + 1, cfg.epochs))
}
