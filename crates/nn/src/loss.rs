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

/// The mean over rows of `(1 - eps)·(-log softmax(logits)[label]) + eps·mean_k(-log
/// softmax(logits)[k])`, exactly `nn.CrossEntropyLoss(label_smoothing=eps)` on logits. Leaves
/// `softmax(logits)` in `probs` (resized to fit) for the backward pass.
pub(crate) fn softmax_cross_entropy(logits: ArrayView2<f32>, labels: &[usize], eps: f32, probs: &mut Vec<f32>) -> f32 {
    let nll = cross_entropy_sum(logits, labels, probs);
    let total = if eps == 0.0 {
        nll
    } else {
        // Σ_rows mean_k -log p_k, from the log-probabilities left in `probs`.
        let classes = logits.ncols() as f64;
        let uniform: f64 = probs.iter().map(|&lp| -f64::from(lp)).sum::<f64>() / classes;
        (1.0 - f64::from(eps)) * nll + f64::from(eps) * uniform
    };
    probs.iter_mut().for_each(|p| *p = p.exp());
    (total / logits.nrows() as f64) as f32
}

/// `dlogits = beta * dlogits + (softmax - target) * scale`, the gradient of the mean loss
/// times `dloss` when `scale = dloss / rows`; the target is `(1 - eps)·onehot + eps / classes`.
pub(crate) fn softmax_cross_entropy_backward(
    probs: ArrayView2<f32>,
    labels: &[usize],
    eps: f32,
    scale: f32,
    beta: f32,
    mut dlogits: ArrayViewMut2<f32>,
) {
    let spread = eps / probs.ncols() as f32;
    if beta == 0.0 {
        dlogits.zip_mut_with(&probs, |d, &p| *d = (p - spread) * scale);
    } else {
        dlogits.zip_mut_with(&probs, |d, &p| *d = beta * *d + (p - spread) * scale);
    }
    for (i, &y) in labels.iter().enumerate() {
        dlogits[[i, y]] -= (1.0 - eps) * scale;
    }
}
