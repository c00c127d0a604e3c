//! A model's results on a set of samples: loss, confusion matrix and predictions.

use data::Dataset;
use metrics::ConfusionMatrix;
use nn::{Model, Tape};
use rayon::prelude::*;

use crate::TrainError;

/// Samples per forward pass in evaluation. The notebook's test batches are 1,000, but the
/// predictions are the same at any size (the mean loss differs in f64's last bits), and an
/// inference tape holds every layer's values for its batch: 320 KB a sample for the CNN, so
/// 100 samples a thread keep the peak memory of a run down by hundreds of megabytes.
pub(crate) const EVAL_BATCH: usize = 100;

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

/// Checks that `model` takes `data`'s samples and has its classes.
///
/// # Errors
/// [`TrainError::ModelDoesNotFit`] with both shapes.
pub fn check_fits<M: Model>(model: &M, data: &Dataset) -> Result<(), TrainError> {
    if model.input_width() != data.image_len() || model.classes() != data.classes() {
        return Err(TrainError::ModelDoesNotFit {
            inputs: model.input_width(),
            classes: model.classes(),
            pixels: data.image_len(),
            data_classes: data.classes(),
        });
    }
    Ok(())
}

/// Evaluates `model` on every sample of `data`, as [`evaluate`] does.
///
/// # Panics
/// If the model does not fit the data ([`check_fits`]).
#[track_caller]
pub fn evaluate_all<M: Model>(model: &M, data: &Dataset) -> Evaluation {
    let all: Vec<usize> = (0..data.len()).collect();
    evaluate(model, data, &all)
}

/// Evaluates `model` on the samples `indices` of `data`, in that order: its forward pass on a
/// tape made for inference. The indices are cut into batches of 100; each thread of
/// the rayon pool takes a run of whole batches with its own reused tape, and the batches'
/// results are combined in order, so the results do not depend on the number of threads.
///
/// # Panics
/// If the model does not fit the data ([`check_fits`]) or an index is out of range.
#[track_caller]
pub fn evaluate<M: Model>(model: &M, data: &Dataset, indices: &[usize]) -> Evaluation {
    if let Err(e) = check_fits(model, data) {
        panic!("{e}");
    }
    let batches = indices.len().div_ceil(EVAL_BATCH);
    let threads = rayon::current_num_threads().clamp(1, batches.max(1));
    let width = data.image_len();
    let parts: Vec<Vec<(f64, ConfusionMatrix, Vec<usize>)>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let (mut tape, mut labels, mut log_probs) = (Tape::for_inference(), Vec::new(), Vec::new());
            (t * batches / threads..(t + 1) * batches / threads)
                .map(|b| {
                    let chunk = &indices[b * EVAL_BATCH..((b + 1) * EVAL_BATCH).min(indices.len())];
                    data::fill_labels(data, chunk, &mut labels);
                    // The pixels go straight onto the tape, converted once.
                    tape.clear();
                    let x = tape.input_with(chunk.len(), width, |x| data::fill_rows(data, chunk, x));
                    let logits = model.forward(&mut tape, x);
                    let logits = tape.value(logits);
                    let loss = nn::cross_entropy_sum(logits, &labels, &mut log_probs);
                    let predicted = tensor::argmax_rows(logits);
                    let mut confusion = ConfusionMatrix::new(data.classes());
                    confusion.add_batch(&labels, &predicted);
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
