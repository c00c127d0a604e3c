//! Row-wise softmax and log-softmax, max-subtracted so that logits of any size stay finite,
//! and row-wise argmax.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2, Zip};

/// `out = log_softmax(x)` row by row: `(x - max) - ln(sum(exp(x - max)))`.
///
/// ```
/// use ndarray::{array, Array2};
/// let x = array![[1e4f32, -1e4, 0.0]];
/// let mut out = Array2::zeros((1, 3));
/// tensor::log_softmax_rows(x.view(), out.view_mut());
/// assert_eq!(out, array![[0.0, -2e4, -1e4]]);
/// ```
///
/// # Panics
/// If the shapes differ.
#[track_caller]
pub fn log_softmax_rows(x: ArrayView2<f32>, mut out: ArrayViewMut2<f32>) {
    assert_eq!(x.dim(), out.dim(), "log_softmax_rows: shapes differ");
    Zip::from(x.rows()).and(out.rows_mut()).for_each(|x, mut out| {
        let max = x.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
        let log_sum = sum.ln();
        // (v - max) - log_sum, in this order, as PyTorch: v - (max + log_sum) would lose the
        // small log_sum against a large max.
        Zip::from(&mut out).and(&x).for_each(|o, &v| *o = (v - max) - log_sum);
    });
}

/// `out = softmax(x)` row by row; each row of `out` sums to 1.
///
/// # Panics
/// If the shapes differ.
#[track_caller]
pub fn softmax_rows(x: ArrayView2<f32>, mut out: ArrayViewMut2<f32>) {
    assert_eq!(x.dim(), out.dim(), "softmax_rows: shapes differ");
    Zip::from(x.rows()).and(out.rows_mut()).for_each(|x, mut out| {
        let max = x.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        Zip::from(&mut out).and(&x).for_each(|o, &v| {
            *o = (v - max).exp();
            sum += *o;
        });
        let inv = 1.0 / sum;
        out.mapv_inplace(|v| v * inv);
    });
}

/// The index of the largest value in `row`, the first one on ties (as `torch.argmax`).
pub fn argmax(row: ArrayView1<f32>) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The index of the largest value in each row, the first one on ties (as `torch.argmax`).
pub fn argmax_rows(x: ArrayView2<f32>) -> Vec<usize> {
    x.rows().into_iter().map(argmax).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn log_softmax_matches_the_definition() {
        // Row [0, ln 3]: exp sum = 1 + 3 = 4, so log_softmax = [-ln 4, ln 3 - ln 4].
        let x = array![[0.0f32, 3f32.ln()]];
        let mut out = Array2::zeros((1, 2));
        log_softmax_rows(x.view(), out.view_mut());
        assert!((out[[0, 0]] + 4f32.ln()).abs() < 1e-6);
        assert!((out[[0, 1]] - (3f32.ln() - 4f32.ln())).abs() < 1e-6);
    }

    #[test]
    fn extreme_logits_stay_finite() {
        let x = array![[1e4f32, -1e4, 0.0], [-1e4, -1e4, -1e4], [30.0, 1e4, -5.0]];
        let mut ls = Array2::zeros((3, 3));
        let mut sm = Array2::zeros((3, 3));
        log_softmax_rows(x.view(), ls.view_mut());
        softmax_rows(x.view(), sm.view_mut());
        assert!(ls.iter().chain(sm.iter()).all(|v| v.is_finite()));
        // Three equal logits: each has probability 1/3.
        assert!((ls[[1, 0]] + 3f32.ln()).abs() < 1e-6);
        assert!((sm[[1, 2]] - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(sm[[2, 1]], 1.0);
        for row in sm.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        let x = array![[1.0f32, 3.0, 3.0], [-1.0, -2.0, -0.5], [0.0, 0.0, 0.0]];
        assert_eq!(argmax_rows(x.view()), vec![1, 2, 0]);
    }
}
