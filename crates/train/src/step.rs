//! The training step: a batch split across the rayon pool, each part with its own tape and
//! gradients, the parts' gradients summed in a fixed order by the optimizer's step. A model
//! that normalises over the batch runs its parts on threads of their own instead, meeting at
//! each batch normalisation to share the whole batch's statistics.

use std::sync::Arc;

use data::Dataset;
use nn::{BatchSync, Grads, Model, Tape};
use optim::Optimizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// A batch's mean loss above this means the weights have diverged: on average the true class
/// scores this many logits below the top one (a model guessing uniformly loses ln 10 = 2.3).
const DIVERGED_LOSS: f64 = 1e4;

/// What every step uses: a shard and gradients per thread. Reused from step to step, so that a
/// warm step allocates nothing of its own (a model that normalises over the batch starts its
/// parts' threads each step, which the system allocates for).
pub(crate) struct Stepper {
    shards: Vec<Shard>,
    grads: Vec<Grads>,
    /// Where the parts of a batch meet, for models that normalise over the batch.
    sync: Option<Arc<BatchSync>>,
}

/// The first ChaCha8 stream of a run's seed that dropout masks are drawn from: epoch `e`'s
/// part `p` of every batch uses stream `DROPOUT_STREAMS + e·2^16 + p`, so that a resumed run
/// draws the masks an uninterrupted one would. (Streams below 2^32 are epochs' shuffles.)
const DROPOUT_STREAMS: u64 = 1 << 32;

/// What a step reports.
pub(crate) struct StepResult {
    /// The batch's mean loss.
    pub(crate) loss: f64,
    /// Samples classified right, before the update.
    pub(crate) correct: usize,
}

impl Stepper {
    /// Buffers for `parts` parts of every batch.
    pub(crate) fn new<M: Model>(parts: usize, model: &M) -> Self {
        Self {
            shards: (0..parts.max(1)).map(|_| Shard::default()).collect(),
            grads: (0..parts.max(1)).map(|_| Grads::new(model.params())).collect(),
            sync: None,
        }
    }

    /// Starts epoch `epoch` (0-based) of a run with `seed`: each part's dropout generator.
    pub(crate) fn start_epoch(&mut self, seed: u64, epoch: usize) {
        for (part, shard) in self.shards.iter_mut().enumerate() {
            shard.rng = ChaCha8Rng::seed_from_u64(seed);
            shard.rng.set_stream(DROPOUT_STREAMS + ((epoch as u64) << 16) + part as u64);
        }
    }

    /// Forward, backward and one optimizer step over the samples `indices` of `data`.
    ///
    /// # Errors
    /// The batch's loss is not finite or above [`DIVERGED_LOSS`] (then nothing is updated), or
    /// the optimizer refuses the step.
    pub(crate) fn step<M: Model>(
        &mut self,
        model: &mut M,
        optimizer: &mut dyn Optimizer,
        data: &Dataset,
        indices: &[usize],
        recipe: Recipe,
    ) -> Result<StepResult, StepError> {
        let sync = &mut self.sync;
        let (loss, correct, parts) =
            forward_backward(&mut self.shards, &mut self.grads, sync, model, data, indices, recipe, true);
        if !(loss.is_finite() && loss <= DIVERGED_LOSS) {
            return Err(StepError::Diverged { loss });
        }
        // Every part saw the whole batch's statistics: the first part's tape has them.
        model.track_running_statistics(&self.shards[0].tape);
        optimizer.step_sum(model.params_mut(), &self.grads[..parts]).map_err(StepError::Optimizer)?;
        Ok(StepResult { loss, correct })
    }
}

impl Stepper {
    /// Re-estimates the running statistics of `model`'s batch normalisations as the average
    /// of the statistics of `batches` (training mode's forward pass, nothing augmented), each
    /// batch weighed by its samples and split across the parts as a step splits it.
    pub(crate) fn recalibrate<'a, M: Model>(
        &mut self,
        model: &mut M,
        data: &Dataset,
        batches: impl Iterator<Item = &'a [usize]>,
    ) {
        let clean = Recipe { smoothing: 0.0, augment: None };
        let mut seen = 0;
        for indices in batches {
            forward_backward(&mut self.shards, &mut self.grads, &mut self.sync, model, data, indices, clean, false);
            seen += indices.len();
            // Counts below 2^24 are exact in f32: equal batches weigh exactly 1/k.
            model.average_running_statistics(&self.shards[0].tape, indices.len() as f32 / seen as f32);
        }
    }
}

/// What a step does to each batch besides forward and backward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipe {
    /// Label smoothing of the loss.
    pub(crate) smoothing: f32,
    /// Random transforms of the images.
    pub(crate) augment: Option<data::Augment>,
}

/// Why a step failed.
pub(crate) enum StepError {
    Diverged { loss: f64 },
    Optimizer(optim::OptimError),
}

/// One thread's part of every batch: its tape, labels and random generator, reused.
struct Shard {
    tape: Tape,
    labels: Vec<usize>,
    rng: ChaCha8Rng,
    loss: f32,
    correct: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { tape: Tape::new(), labels: Vec::new(), rng: ChaCha8Rng::seed_from_u64(0), loss: 0.0, correct: 0 }
    }
}

impl Shard {
    /// Forward and backward over the samples `indices`, which are the share `scale` of a batch:
    /// the gradient written into `grads` is that share of the batch's. Without `backward`,
    /// only the forward pass in training mode, for the batch statistics it records.
    #[allow(clippy::too_many_arguments)]
    fn run<M: Model>(
        &mut self,
        model: &M,
        data: &Dataset,
        indices: &[usize],
        recipe: Recipe,
        scale: f32,
        grads: &mut Grads,
        backward: bool,
    ) {
        self.tape.clear();
        // The pixels go from their stored bytes straight into the tape's input (transformed
        // on the way when augmenting, with draws from this part's generator).
        let Self { tape, labels, rng, .. } = self;
        let x = tape.input_with(indices.len(), data.image_len(), |x| match &recipe.augment {
            Some(augment) => data::fill_rows_augmented(data, indices, augment, rng, x, labels),
            None => {
                data::fill_rows(data, indices, x);
                data::fill_labels(data, indices, labels);
            }
        });
        let logits = model.forward_train(&mut self.tape, x, &mut self.rng);
        if !backward {
            return;
        }
        let loss = self.tape.cross_entropy_smoothed(logits, &self.labels, recipe.smoothing);
        self.loss = self.tape.value(loss)[[0, 0]];
        let rows = self.tape.value(logits);
        self.correct = rows.rows().into_iter().zip(&self.labels).filter(|(row, y)| tensor::argmax(*row) == **y).count();
        self.tape.backward_scaled(loss, scale, model.params(), grads);
    }
}

/// Tells the other parts of a batch that this one failed, if it panics, so that they do not
/// wait for it forever.
struct AbandonOnPanic<'a>(&'a BatchSync);

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

/// Forward and backward (or only forward, without `backward`) over one batch, split into
/// equal parts across the shards' threads. Returns the batch's mean loss, how many of its
/// samples were classified right, and how many shards took part (only the last is meaningful
/// without `backward`).
#[allow(clippy::too_many_arguments)]
fn forward_backward<M: Model>(
    shards: &mut [Shard],
    grads: &mut [Grads],
    sync: &mut Option<Arc<BatchSync>>,
    model: &M,
    data: &Dataset,
    indices: &[usize],
    recipe: Recipe,
    backward: bool,
) -> (f64, usize, usize) {
    let n = indices.len();
    let parts = shards.len().min(n).max(1);
    let shards = &mut shards[..parts];
    let range = |s: usize| s * n / parts..(s + 1) * n / parts;
    if parts == 1 {
        shards[0].tape.share_batch(None);
        shards[0].run(model, data, indices, recipe, 1.0, &mut grads[0], backward);
    } else if model.normalizes_over_batch() {
        // A part waits for the others at each batch normalisation, so each needs a thread of
        // its own: rayon's workers may be busy elsewhere, or take two parts in turn.
        if sync.as_ref().is_none_or(|s| s.parts() != parts) {
            *sync = Some(Arc::new(BatchSync::new(parts)));
        }
        let sync = sync.as_ref().expect("made above");
        let run = |s: usize, shard: &mut Shard, grads: &mut Grads| {
            let _failed = AbandonOnPanic(sync);
            let rows = range(s);
            shard.tape.share_batch(Some((Arc::clone(sync), s)));
            shard.run(model, data, &indices[rows.clone()], recipe, rows.len() as f32 / n as f32, grads, backward);
        };
        std::thread::scope(|scope| {
            // A part that cannot be started must release those already waiting for it.
            let _failed = AbandonOnPanic(sync);
            let mut parts = shards.iter_mut().zip(&mut grads[..parts]).enumerate();
            let (_, (first, first_grads)) = parts.next().expect("two parts or more");
            for (s, (shard, grads)) in parts {
                let run = &run;
                std::thread::Builder::new()
                    .name(format!("batch-part-{s}"))
                    .spawn_scoped(scope, move || run(s, shard, grads))
                    .expect("the system can start a thread");
            }
            run(0, first, first_grads);
        });
    } else {
        shards.par_iter_mut().zip(&mut grads[..parts]).enumerate().for_each(|(s, (shard, grads))| {
            let rows = range(s);
            let scale = rows.len() as f32 / n as f32;
            shard.run(model, data, &indices[rows], recipe, scale, grads, backward);
        });
        // Each part normalised with its own statistics: a model of one's own that records
        // batch normalisation must say so, or its results would silently depend on the threads.
        assert!(
            shards.iter().all(|s| s.tape.batch_statistics().next().is_none()),
            "the model records batch normalisation but its Model::normalizes_over_batch is false"
        );
    }
    let loss = shards.iter().enumerate().map(|(s, sh)| f64::from(sh.loss) * range(s).len() as f64 / n as f64).sum();
    (loss, shards.iter().map(|sh| sh.correct).sum(), parts)
}
