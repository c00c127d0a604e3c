//! Matrix products in the three shapes training needs, writing into outputs the caller owns:
//! `A·B` (forward through a layer stored `[in, out]`), `A·Bᵀ` (forward through PyTorch's
//! `[out, in]` weights, and input gradients), `Aᵀ·B` (weight gradients).
//!
//! Each computes `c = alpha * product + beta * c`, so `beta = 0` overwrites and `beta = 1`
//! accumulates in place.
//!
//! Large products are split by rows of `c` across the current rayon pool. Every element of
//! `c` is still computed by one thread, in the same order as without the split, so results are
//! bit-identical whatever the number of threads.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::parallel::for_row_blocks;

/// Below this many multiply-adds a product is not worth splitting across threads.
const PARALLEL_MIN_WORK: usize = 1 << 17;

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
    gemm(alpha, a, b, beta, c.view_mut());
}

/// `c = alpha * a·bᵀ + beta * c`.
///
/// # Panics
/// If `a` is `m x k`, `b` is not `n x k` or `c` is not `m x n`.
#[track_caller]
pub fn matmul_nt(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let bt = b.t();
    check_shapes("a·bᵀ", a.dim(), bt.dim(), c.dim());
    gemm(alpha, a, bt, beta, c.view_mut());
}

/// `c = alpha * aᵀ·b + beta * c`.
///
/// # Panics
/// If `a` is `k x m`, `b` is not `k x n` or `c` is not `m x n`.
#[track_caller]
pub fn matmul_tn(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let at = a.t();
    check_shapes("aᵀ·b", at.dim(), b.dim(), c.dim());
    gemm(alpha, at, b, beta, c.view_mut());
}

/// `c = alpha * a·b + beta * c` for any strides, split by rows of `c` across threads when the
/// product is large enough.
fn gemm(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if m * n * k < PARALLEL_MIN_WORK {
        general_mat_mul(alpha, &a, &b, beta, &mut c);
        return;
    }
    // Blocks of at least 8 rows: matrixmultiply's tile height.
    for_row_blocks(c, 8, &|first, mut block| {
        let a_block = a.slice(ndarray::s![first..first + block.nrows(), ..]);
        general_mat_mul(alpha, &a_block, &b, beta, &mut block);
    });
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
    fn splitting_across_threads_changes_no_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = Array2::from_shape_fn((67, 301), |_| rng.random_range(-1.0f32..1.0));
        let b = Array2::from_shape_fn((301, 45), |_| rng.random_range(-1.0f32..1.0));
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = Array2::from_elem((67, 45), 0.5f32);
            pool.install(|| matmul(1.0, a.view(), b.view(), 1.0, c.view_mut()));
            c
        };
        let one = run(1);
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
        let expected = a.dot(&b) + 0.5;
        assert!(one.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-4));
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
