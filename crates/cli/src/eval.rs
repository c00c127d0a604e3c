//! Evaluating a model on a data set, and the `eval` command.

use std::io::Write;

use anyhow::Result;
use data::{Batch, Dataset};
use metrics::ConfusionMatrix;
use ndarray::ArrayViewMut2;
use nn::{Inference, Mlp};
use rayon::prelude::*;

use crate::args::EvalArgs;
use crate::{checkpoint, load_mnist, plots};

/// The notebook's test batch size; it changes the speed of evaluation, not its results.
pub const EVAL_BATCH: usize = 1000;

/// What a model does on a set of samples.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Mean cross-entropy over the samples.
    pub loss: f64,
    /// True against predicted classes.
    pub confusion: ConfusionMatrix,
    /// The predicted class of each sample, in the order evaluated.
    pub predictions: Vec<usize>,
}

impl Evaluation {
    /// The fraction of correct predictions.
    pub fn accuracy(&self) -> f64 {
        self.confusion.accuracy()
    }
}

/// Evaluates `mlp` on the samples `indices` of `data`, in that order, without a tape. The
/// indices are cut into batches of [`EVAL_BATCH`]; each thread of the rayon pool takes a run of
/// whole batches with its own reused buffers, and the batches' results are combined in order,
/// so the results do not depend on the number of threads.
pub fn evaluate(mlp: &Mlp, data: &Dataset, indices: &[usize]) -> Evaluation {
    let batches = indices.len().div_ceil(EVAL_BATCH);
    let threads = rayon::current_num_threads().clamp(1, batches.max(1));
    let parts: Vec<Vec<(f64, ConfusionMatrix, Vec<usize>)>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let (mut batch, mut scratch) = (Batch::new(), Inference::default());
            let mut log_probs = Vec::new();
            (t * batches / threads..(t + 1) * batches / threads)
                .map(|b| {
                    let chunk = &indices[b * EVAL_BATCH..((b + 1) * EVAL_BATCH).min(indices.len())];
                    batch.fill(data, chunk);
                    let logits = mlp.logits_with(batch.x(), &mut scratch);
                    log_probs.resize(logits.len(), 0.0);
                    let mut lp = ArrayViewMut2::from_shape(logits.dim(), &mut log_probs[..]).expect("sized above");
                    tensor::log_softmax_rows(logits, lp.view_mut());
                    let loss = -batch.labels().iter().enumerate().map(|(i, &y)| f64::from(lp[[i, y]])).sum::<f64>();
                    let predicted = tensor::argmax_rows(logits);
                    let mut confusion = ConfusionMatrix::new(data.classes());
                    confusion.add_batch(batch.labels(), &predicted);
                    (loss, confusion, predicted)
                })
                .collect()
        })
        .collect();
    let mut confusion = ConfusionMatrix::new(data.classes());
    let mut predictions = Vec::with_capacity(indices.len());
    let mut total_loss = 0.0;
    for (loss, part, predicted) in parts.into_iter().flatten() {
        total_loss += loss;
        confusion.merge(&part);
        predictions.extend(predicted);
    }
    let loss = if indices.is_empty() { 0.0 } else { total_loss / indices.len() as f64 };
    Evaluation { loss, confusion, predictions }
}

/// Prints the notebook's `Test Accuracy` line, then (unless quiet) precision, recall and F1 per
/// class and the confusion matrix.
pub fn print_test_results(out: &mut (dyn Write + Send), eval: &Evaluation, quiet: bool) -> std::io::Result<()> {
    writeln!(out, "Test Accuracy: {:.2}%", 100.0 * eval.accuracy())?;
    if quiet {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "Per-class metrics on the test set ({} images):", eval.confusion.total())?;
    write!(out, "{}", eval.confusion.report())?;
    writeln!(out)?;
    writeln!(out, "Confusion matrix (rows: true digit, columns: predicted digit):")?;
    write!(out, "{}", eval.confusion)?;
    Ok(())
}

/// `eval --model PATH`: the test-set results of a saved model, as at the end of `train`.
pub(crate) fn run(args: &EvalArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    if let Some(dir) = &args.plots {
        crate::fsutil::prepare_dir("--plots", dir)?;
    }
    let mlp = checkpoint::load(&args.model)?;
    let mnist = load_mnist(&args.data.data_dir)?;
    crate::check_model_fits(&mlp, &mnist.test, &args.model)?;
    let all: Vec<usize> = (0..mnist.test.len()).collect();
    let started = std::time::Instant::now();
    let eval = evaluate(&mlp, &mnist.test, &all);
    eprintln!("Evaluated {} test images in {:.1} ms", all.len(), started.elapsed().as_secs_f64() * 1e3);
    print_test_results(out, &eval, false)?;
    if let Some(dir) = &args.plots {
        plots::confusion_heatmap(dir, &eval.confusion)?;
        plots::misclassified(dir, &mnist.test, &eval.predictions)?;
    }
    Ok(())
}
