//! Matrix products in the three shapes training needs, writing into outputs the caller owns:
//! `A·B` (forward through a layer stored `[in, out]`), `A·Bᵀ` (forward through PyTorch's
//! `[out, in]` weights, and input gradients), `Aᵀ·B` (weight gradients).
//!
//! Each computes `c = alpha * product + beta * c`, so `beta = 0` overwrites and `beta = 1`
//! accumulates in place.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// `c = alpha * a·b + beta * c`.
///
/// ```
/// use ndarray::{array, Array2};
/// let a = array![[1.0f32, 2.0], [3.0, 4.0]];
/// let b = array![[5.0f32], [6.0]];
/// let mut c = Array2::zeros((2, 1));
/// tensor::matmul(1.0, a.view(), b.view(), 0.0, c.view_mut());
/// assert_eq!(c, array![[17.0], [39.0]]);
/// ```
///
/// # Panics
/// If `a` is `m x k`, `b` is not `k x n` or `c` is not `m x n`.
#[track_caller]
pub fn matmul(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    check_shapes("a·b", a.dim(), b.dim(), c.dim());
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

/// `c = alpha * a·bᵀ + beta * c`.
///
/// # Panics
/// If `a` is `m x k`, `b` is not `n x k` or `c` is not `m x n`.
#[track_caller]
pub fn matmul_nt(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let bt = b.t();
    check_shapes("a·bᵀ", a.dim(), bt.dim(), c.dim());
    general_mat_mul(alpha, &a, &bt, beta, &mut c);
}

/// `c = alpha * aᵀ·b + beta * c`.
///
/// # Panics
/// If `a` is `k x m`, `b` is not `k x n` or `c` is not `m x n`.
#[track_caller]
pub fn matmul_tn(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let at = a.t();
    check_shapes("aᵀ·b", at.dim(), b.dim(), c.dim());
    general_mat_mul(alpha, &at, &b, beta, &mut c);
}

#[track_caller]
fn check_shapes(what: &str, a: (usize, usize), b: (usize, usize), c: (usize, usize)) {
    assert!(
        a.1 == b.0 && c == (a.0, b.1),
        "{what}: shapes do not fit: {}x{} times {}x{} into {}x{}",
        a.0,
        a.1,
        b.0,
        b.1,
        c.0,
        c.1
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn the_three_shapes_agree_with_hand_computed_products() {
        let a = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]; // 2x3
        let b = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]; // 3x2
        // a·b = [[1+3, 2+3], [4+6, 5+6]]
        let mut c = Array2::zeros((2, 2));
        matmul(1.0, a.view(), b.view(), 0.0, c.view_mut());
        assert_eq!(c, array![[4.0, 5.0], [10.0, 11.0]]);
        // a·(bᵀ)ᵀ is the same product.
        let bt = b.t().to_owned();
        let mut c2 = Array2::zeros((2, 2));
        matmul_nt(1.0, a.view(), bt.view(), 0.0, c2.view_mut());
        assert_eq!(c2, c);
        // (aᵀ)ᵀ·b likewise.
        let at = a.t().to_owned();
        let mut c3 = Array2::zeros((2, 2));
        matmul_tn(1.0, at.view(), b.view(), 0.0, c3.view_mut());
        assert_eq!(c3, c);
    }

    #[test]
    fn beta_one_accumulates_and_alpha_scales() {
        let a = array![[1.0f32, 2.0]];
        let b = array![[3.0f32], [4.0]];
        let mut c = array![[100.0f32]];
        // c = 0.5 * 11 + 1 * 100
        matmul(0.5, a.view(), b.view(), 1.0, c.view_mut());
        assert_eq!(c, array![[105.5]]);
    }

    #[test]
    fn beta_zero_ignores_what_was_in_c() {
        let a = array![[1.0f32, 2.0]];
        let b = array![[3.0f32], [4.0]];
        let mut c = array![[f32::NAN]];
        matmul(1.0, a.view(), b.view(), 0.0, c.view_mut());
        assert_eq!(c, array![[11.0]]);
    }

    #[test]
    fn a_shape_mismatch_names_the_shapes() {
        let a = Array2::<f32>::zeros((2, 3));
        let b = Array2::<f32>::zeros((2, 3));
        let mut c = Array2::<f32>::zeros((2, 3));
        let err = std::panic::catch_unwind(move || matmul(1.0, a.view(), b.view(), 0.0, c.view_mut())).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert_eq!(msg, "a·b: shapes do not fit: 2x3 times 2x3 into 2x3");
    }
}
