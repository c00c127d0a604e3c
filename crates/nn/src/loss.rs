//! Cross-entropy from logits, with log-softmax fused into the negative log-likelihood.

use ndarray::{ArrayView2, ArrayViewMut2};

/// The sum over rows of `-log softmax(logits)[label]`, in f64 (a batch of thousands of f32
/// terms would otherwise lose digits). Leaves `log_softmax(logits)` in `log_probs` (resized to
/// fit), a buffer the caller reuses.
///
/// ```
/// let logits = ndarray::array![[0.0f32, 0.0], [2.0, 0.0]];
/// let loss = nn::cross_entropy_sum(logits.view(), &[0, 0], &mut Vec::new());
/// // ln 2 + ln(1 + e^-2)
/// assert!((loss - (2f64.ln() + (1.0 + (-2f64).exp()).ln())).abs() < 1e-6);
/// ```
///
/// # Panics
/// If there is not one label per row, or a label is not a column of `logits`.
#[track_caller]
pub fn cross_entropy_sum(logits: ArrayView2<f32>, labels: &[usize], log_probs: &mut Vec<f32>) -> f64 {
    let (rows, cols) = logits.dim();
    assert_eq!(labels.len(), rows, "cross_entropy: {} labels for {rows} rows", labels.len());
    log_probs.resize(rows * cols, 0.0);
    let mut p = ArrayViewMut2::from_shape((rows, cols), log_probs).expect("buffer sized to fit");
    tensor::log_softmax_rows(logits, p.view_mut());
    labels.iter().enumerate().map(|(i, &y)| -f64::from(p[[i, y]])).sum()
}

/// The mean over rows of `-log softmax(logits)[label]`, exactly `nn.CrossEntropyLoss()` on
/// logits. Leaves `softmax(logits)` in `probs` (resized to fit) for the backward pass.
pub(crate) fn softmax_cross_entropy(logits: ArrayView2<f32>, labels: &[usize], probs: &mut Vec<f32>) -> f32 {
    let total = cross_entropy_sum(logits, labels, probs);
    probs.iter_mut().for_each(|p| *p = p.exp());
    (total / logits.nrows() as f64) as f32
}

/// `dlogits = beta * dlogits + (softmax - onehot) * scale`, the gradient of the mean loss times
/// `dloss` when `scale = dloss / rows`.
pub(crate) fn softmax_cross_entropy_backward(
    probs: ArrayView2<f32>,
    labels: &[usize],
    scale: f32,
    beta: f32,
    mut dlogits: ArrayViewMut2<f32>,
) {
    if beta == 0.0 {
        dlogits.zip_mut_with(&probs, |d, &p| *d = p * scale);
    } else {
        dlogits.zip_mut_with(&probs, |d, &p| *d = beta * *d + p * scale);
    }
    for (i, &y) in labels.iter().enumerate() {
        dlogits[[i, y]] -= scale;
    }
}
