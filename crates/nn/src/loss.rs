//! Cross-entropy from logits, with log-softmax fused into the negative log-likelihood.

use ndarray::{ArrayView2, ArrayViewMut2};

/// The mean over rows of `-log softmax(logits)[label]`, exactly `nn.CrossEntropyLoss()` on
/// logits. Leaves `softmax(logits)` in `probs` (resized to fit) for the backward pass.
pub(crate) fn softmax_cross_entropy(logits: ArrayView2<f32>, labels: &[usize], probs: &mut Vec<f32>) -> f32 {
    let (rows, cols) = logits.dim();
    probs.resize(rows * cols, 0.0);
    let mut p = ArrayViewMut2::from_shape((rows, cols), probs).expect("buffer sized to fit");
    tensor::log_softmax_rows(logits, p.view_mut());
    // Sum in f64: a batch of thousands of f32 terms would otherwise lose digits.
    let total: f64 = labels.iter().enumerate().map(|(i, &y)| -f64::from(p[[i, y]])).sum();
    p.mapv_inplace(f32::exp);
    (total / rows as f64) as f32
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
