//! Evaluating a model on a data set, and the `eval` command.

use std::io::Write;

use anyhow::Result;
use data::{Batch, Dataset};
use metrics::ConfusionMatrix;
use ndarray::Array2;
use nn::Mlp;
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

/// Evaluates `mlp` on the samples `indices` of `data`, in that order, without a tape. Batches
/// are evaluated in parallel across the rayon pool and combined in order, so the results do not
/// depend on the number of threads.
pub fn evaluate(mlp: &Mlp, data: &Dataset, indices: &[usize]) -> Evaluation {
    let parts: Vec<(f64, ConfusionMatrix, Vec<usize>)> = indices
        .par_chunks(EVAL_BATCH)
        .map(|chunk| {
            let mut batch = Batch::new();
            batch.fill(data, chunk);
            let logits = mlp.logits(batch.x());
            let mut log_probs = Array2::zeros(logits.dim());
            tensor::log_softmax_rows(logits.view(), log_probs.view_mut());
            let loss = -batch.labels().iter().enumerate().map(|(i, &y)| f64::from(log_probs[[i, y]])).sum::<f64>();
            let predicted = tensor::argmax_rows(logits.view());
            let mut confusion = ConfusionMatrix::new(data.classes());
            confusion.add_batch(batch.labels(), &predicted);
            (loss, confusion, predicted)
        })
        .collect();
    let mut confusion = ConfusionMatrix::new(data.classes());
    let mut predictions = Vec::with_capacity(indices.len());
    let mut total_loss = 0.0;
    for (loss, part, predicted) in parts {
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
