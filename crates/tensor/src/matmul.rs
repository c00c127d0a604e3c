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
    #[cfg(target_arch = "x86_64")]
    if avx512::broadcast(alpha, Strided::of(a), b, beta, c.view_mut())
        || avx512::dots(alpha, a, b.t(), beta, c.view_mut())
    {
        return;
    }
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
    #[cfg(target_arch = "x86_64")]
    if avx512::dots(alpha, a, b, beta, c.view_mut()) || avx512::broadcast(alpha, Strided::of(a), bt, beta, c.view_mut())
    {
        return;
    }
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
    #[cfg(target_arch = "x86_64")]
    // A column-major c (a weight gradient stored [in, out]) is the row-major cᵀ = bᵀ·a.
    if avx512::broadcast(alpha, Strided::of(at), b, beta, c.view_mut())
        || avx512::broadcast(alpha, Strided::of(b.t()), a, beta, c.view_mut().reversed_axes())
    {
        return;
    }
    general_mat_mul(alpha, &at, &b, beta, &mut c);
}

/// A matrix read element by element: `(i, j)` at `ptr + i·rows + j·cols`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    rows: usize,
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
impl Strided {
    /// `a`'s layout, if its strides are not negative.
    fn of(a: ArrayView2<f32>) -> Option<Self> {
        let [rows, cols] = [a.strides()[0], a.strides()[1]];
        Some(Self { ptr: a.as_ptr(), rows: usize::try_from(rows).ok()?, cols: usize::try_from(cols).ok()? })
    }
}

/// Products with 16-lane fused multiply-adds for CPUs with AVX-512, where `matrixmultiply`
/// (AVX2 at most) leaves half of each vector unit idle. Each output sums its terms in one fixed
/// order, whatever its place in a tile, so results do not depend on the shapes around it.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use ndarray::{ArrayView2, ArrayViewMut2};

    use super::Strided;

    /// Rows of `c` per tile of [`broadcast`], and columns (two vectors).
    const MR: usize = 8;
    const NR: usize = 32;

    fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// The distance between rows of a matrix whose rows are contiguous, if they are.
    fn row_major<S: ndarray::RawData>(m: &ndarray::ArrayBase<S, ndarray::Ix2>) -> Option<usize> {
        let (rows, cols) = m.dim();
        let [rs, cs] = [m.strides()[0], m.strides()[1]];
        (cs == 1 || cols <= 1).then_some(())?;
        if rows <= 1 { Some(cols) } else { usize::try_from(rs).ok() }
    }

    /// `c = alpha·a·b + beta·c` with `b` and `c` row-major: each `a` element broadcast against
    /// rows of `b`, for a tile of `c` in registers. False (and nothing done) where the CPU or
    /// the layouts do not suit.
    pub(super) fn broadcast(
        alpha: f32,
        a: Option<Strided>,
        b: ArrayView2<f32>,
        beta: f32,
        mut c: ArrayViewMut2<f32>,
    ) -> bool {
        let (Some(a), Some(ldb), Some(ldc)) = (a, row_major(&b), row_major(&c)) else { return false };
        if !available() {
            return false;
        }
        let ((m, n), k) = (c.dim(), b.nrows());
        let product = Product { k, alpha, beta, a, b: b.as_ptr(), ldb, c: c.as_mut_ptr(), ldc };
        // SAFETY: the CPU has AVX-512F; `a` addresses an m x k matrix (the caller's checked
        // view), `b` a k x n one with rows `ldb` apart, and `c` an m x n one with rows `ldc`
        // apart, none overlapping `c`.
        unsafe { broadcast_avx512(m, n, product) };
        true
    }

    /// What the tiles of one product share: `c = alpha·(a times b) + beta·c` with a sum over
    /// `k`, `b` and `c` read by rows `ldb` and `ldc` apart.
    #[derive(Clone, Copy)]
    struct Product {
        k: usize,
        alpha: f32,
        beta: f32,
        a: Strided,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn broadcast_avx512(m: usize, n: usize, product: Product) {
        for j in (0..n).step_by(NR) {
            let width = (n - j).min(NR);
            let masks = (lanes(width), lanes(width.saturating_sub(16)));
            let mut i = 0;
            while i + MR <= m {
                // SAFETY: as for `broadcast_avx512`, with rows i..i + MR and columns j..j + width.
                unsafe { broadcast_tile::<MR>(i, j, masks, product) };
                i += MR;
            }
            // The last rows, one at a time.
            for i in i..m {
                // SAFETY: as above, with row i.
                unsafe { broadcast_tile::<1>(i, j, masks, product) };
            }
        }
    }

    /// The first `count` lanes of a vector.
    fn lanes(count: usize) -> u16 {
        ((1u32 << count.min(16)) - 1) as u16
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn broadcast_tile<const R: usize>(i: usize, j: usize, (m0, m1): (u16, u16), product: Product) {
        let Product { k, alpha, beta, a, b, ldb, c, ldc } = product;
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..k {
            // SAFETY: row p of b, columns j..j + width (the masks), and a's rows i..i + R at
            // column p: within the matrices (see `broadcast_avx512`).
            unsafe {
                let row = b.add(p * ldb + j);
                let (b0, b1) = (_mm512_maskz_loadu_ps(m0, row), _mm512_maskz_loadu_ps(m1, row.wrapping_add(16)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.ptr.add((i + r) * a.rows + p * a.cols));
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        let (alpha, beta_v) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (r, acc) in acc.iter().enumerate() {
            for (half, (&sum, mask)) in acc.iter().zip([m0, m1]).enumerate() {
                // SAFETY: row i + r of c, the columns the mask allows.
                unsafe {
                    let at = c.add((i + r) * ldc + j).wrapping_add(16 * half);
                    let mut v = _mm512_mul_ps(alpha, sum);
                    if beta != 0.0 {
                        v = _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, at), v);
                    }
                    _mm512_mask_storeu_ps(at, mask, v);
                }
            }
        }
    }

    /// `c = alpha·a·bᵀ + beta·c` with `a`, `b` and `c` row-major: dot products of rows, sixteen
    /// lanes of partial sums each, for a 4 x 4 tile at a time. False (and nothing done) where
    /// the CPU or the layouts do not suit.
    pub(super) fn dots(
        alpha: f32,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        beta: f32,
        mut c: ArrayViewMut2<f32>,
    ) -> bool {
        let (Some(lda), Some(ldb), Some(ldc)) = (row_major(&a), row_major(&b), row_major(&c)) else { return false };
        if !available() {
            return false;
        }
        let ((m, n), k) = (c.dim(), a.ncols());
        let a = Strided { ptr: a.as_ptr(), rows: lda, cols: 1 };
        let product = Product { k, alpha, beta, a, b: b.as_ptr(), ldb, c: c.as_mut_ptr(), ldc };
        // SAFETY: the CPU has AVX-512F; a is m x k, b is n x k and c is m x n, rows `lda`,
        // `ldb` and `ldc` apart (the caller's checked views).
        unsafe { dots_avx512(m, n, product) };
        true
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dots_avx512(m: usize, n: usize, product: Product) {
        let tile = |i: usize, j: usize, rows: usize, cols: usize| {
            // SAFETY: rows i..i + rows of a and c, rows j..j + cols of b, within the matrices.
            unsafe {
                match (rows, cols) {
                    (4, 4) => dots_tile::<4, 4>(i, j, product),
                    (4, _) => (j..j + cols).for_each(|j| dots_tile::<4, 1>(i, j, product)),
                    (_, 4) => (i..i + rows).for_each(|i| dots_tile::<1, 4>(i, j, product)),
                    _ => (i..i + rows).for_each(|i| (j..j + cols).for_each(|j| dots_tile::<1, 1>(i, j, product))),
                }
            }
        };
        for i in (0..m).step_by(4) {
            for j in (0..n).step_by(4) {
                tile(i, j, (m - i).min(4), (n - j).min(4));
            }
        }
    }

    /// A tile of [`dots`]: `a`'s rows are `a.rows` apart, its columns contiguous.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dots_tile<const R: usize, const C: usize>(i: usize, j: usize, product: Product) {
        let Product { k, alpha, beta, a, b, ldb, c, ldc } = product;
        let (a, lda) = (a.ptr, a.rows);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for p in (0..k).step_by(16) {
            let mask = lanes(k - p);
            // SAFETY: columns p.. of rows i + r of a and j + s of b, the lanes the mask allows.
            unsafe {
                let bv: [__m512; C] = std::array::from_fn(|s| _mm512_maskz_loadu_ps(mask, b.add((j + s) * ldb + p)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_maskz_loadu_ps(mask, a.add((i + r) * lda + p));
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(av, bv, *acc);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (s, &sum) in acc.iter().enumerate() {
                // SAFETY: element (i + r, j + s) of c.
                unsafe {
                    let at = c.add((i + r) * ldc + j + s);
                    let v = alpha * _mm512_reduce_add_ps(sum);
                    *at = if beta == 0.0 { v } else { beta.mul_add(*at, v) };
                }
            }
        }
    }
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
    fn every_shape_and_layout_matches_the_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut random = |rows, cols| Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0));
        for (m, k, n) in
            [(1, 1, 1), (3, 5, 7), (8, 16, 32), (9, 17, 33), (16, 150, 100), (33, 3, 70), (5, 40, 4), (4, 0, 4)]
        {
            let (a, b, c0) = (random(m, k), random(k, n), random(m, n));
            // Column-major copies: the transposes of row-major ones, viewed back.
            let (a_cm, b_cm) = (a.t().as_standard_layout().to_owned(), b.t().as_standard_layout().to_owned());
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (2.0, -0.5)] {
                let want = |i: usize, j: usize| {
                    let terms = (0..k).map(|p| f64::from(a[[i, p]]) * f64::from(b[[p, j]]));
                    let (sum, size) = terms.fold((0.0, 0.0), |(s, z), t| (s + t, z + t.abs()));
                    (f64::from(alpha) * sum + f64::from(beta) * f64::from(c0[[i, j]]), size)
                };
                let check = |what: &str, c: &Array2<f32>| {
                    for ((i, j), &got) in c.indexed_iter() {
                        let (value, size) = want(i, j);
                        let slack = 1e-6 * (f64::from(alpha.abs()) * size + 1.0);
                        assert!(
                            (f64::from(got) - value).abs() <= slack,
                            "{what} {m}x{k}x{n} at ({i}, {j}): {got} vs {value}"
                        );
                    }
                };
                let run = |f: &dyn Fn(ArrayViewMut2<f32>)| {
                    let mut c = c0.clone();
                    f(c.view_mut());
                    c
                };
                check("a·b", &run(&|c| matmul(alpha, a.view(), b.view(), beta, c)));
                check("a·b, b column-major", &run(&|c| matmul(alpha, a.view(), b_cm.t(), beta, c)));
                check("a·b, a column-major", &run(&|c| matmul(alpha, a_cm.t(), b.view(), beta, c)));
                check("a·bᵀ", &run(&|c| matmul_nt(alpha, a.view(), b_cm.view(), beta, c)));
                check("a·bᵀ, b column-major", &run(&|c| matmul_nt(alpha, a.view(), b.t(), beta, c)));
                check("aᵀ·b", &run(&|c| matmul_tn(alpha, a_cm.view(), b.view(), beta, c)));
                check("aᵀ·b, b column-major", &run(&|c| matmul_tn(alpha, a_cm.view(), b_cm.t(), beta, c)));
                let mut c_cm = c0.t().as_standard_layout().to_owned();
                matmul_tn(alpha, a_cm.view(), b.view(), beta, c_cm.view_mut().reversed_axes());
                check("aᵀ·b into a column-major c", &c_cm.t().to_owned());
            }
        }
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
