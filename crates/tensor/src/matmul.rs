//! Matrix products in the three shapes training needs, writing into outputs the caller owns:
//! `A·B` (forward through a layer stored `[in, out]`), `A·Bᵀ` (forward through PyTorch's
//! `[out, in]` weights, and input gradients), `Aᵀ·B` (weight gradients).
//!
//! Each computes `c = alpha * product + beta * c`, so `beta = 0` overwrites and `beta = 1`
//! accumulates in place.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use simd::Simd;

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
pub fn matmul(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
    matmul_at(Simd::get(), alpha, a, b, beta, c);
}

#[track_caller]
pub(crate) fn matmul_at(
    simd: Simd,
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    check_shapes("a·b", a.dim(), b.dim(), c.dim());
    if kernels::broadcast(simd, alpha, Strided::of(a), b, beta, c.view_mut())
        || kernels::dots(simd, alpha, a, b.t(), beta, c.view_mut())
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
pub fn matmul_nt(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
    matmul_nt_at(Simd::get(), alpha, a, b, beta, c);
}

#[track_caller]
pub(crate) fn matmul_nt_at(
    simd: Simd,
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    let bt = b.t();
    check_shapes("a·bᵀ", a.dim(), bt.dim(), c.dim());
    if kernels::dots(simd, alpha, a, b, beta, c.view_mut())
        || kernels::broadcast(simd, alpha, Strided::of(a), bt, beta, c.view_mut())
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
pub fn matmul_tn(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
    matmul_tn_at(Simd::get(), alpha, a, b, beta, c);
}

#[track_caller]
pub(crate) fn matmul_tn_at(
    simd: Simd,
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    let at = a.t();
    check_shapes("aᵀ·b", at.dim(), b.dim(), c.dim());
    // A column-major c (a weight gradient stored [in, out]) is the row-major cᵀ = bᵀ·a.
    if kernels::broadcast(simd, alpha, Strided::of(at), b, beta, c.view_mut())
        || kernels::broadcast(simd, alpha, Strided::of(b.t()), a, beta, c.view_mut().reversed_axes())
    {
        return;
    }
    general_mat_mul(alpha, &at, &b, beta, &mut c);
}

/// A matrix whose rows start anywhere in one slice: row `i` is `n` values from
/// `data[starts[i]]`. A stride-1 convolution reads its input this way, each row a shifted view
/// of the padded image, so that nothing is unfolded.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub starts: &'a [usize],
    pub n: usize,
}

impl Rows<'_> {
    /// Panics unless every row lies within `data`.
    #[track_caller]
    fn check(&self) {
        let end = self.starts.iter().max().map(|&s| s.checked_add(self.n).expect("a row's end overflows"));
        assert!(end.is_none_or(|end| end <= self.data.len()), "rows end at {end:?}, past {}", self.data.len());
    }
}

/// `c = alpha * a·b + beta * c` with `b`'s rows as [`Rows`] says.
#[track_caller]
pub(crate) fn matmul_rows_at(
    simd: Simd,
    alpha: f32,
    a: ArrayView2<f32>,
    b: Rows,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    check_shapes("a·b", a.dim(), (b.starts.len(), b.n), c.dim());
    b.check();
    assert!(kernels::broadcast_rows_table(simd, alpha, a, b, beta, c.view_mut()), "a·b: c's rows must be contiguous");
}

/// `c = alpha * a·bᵀ + beta * c` with `b`'s rows as [`Rows`] says.
#[track_caller]
pub(crate) fn matmul_nt_rows_at(
    simd: Simd,
    alpha: f32,
    a: ArrayView2<f32>,
    b: Rows,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
) {
    check_shapes("a·bᵀ", a.dim(), (b.n, b.starts.len()), c.dim());
    b.check();
    assert!(kernels::dots_table(simd, alpha, a, b, beta, c.view_mut()), "a·bᵀ: a's and c's rows must be contiguous");
}

/// A matrix read element by element: `(i, j)` at `ptr + i·rows + j·cols`.
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    rows: usize,
    cols: usize,
}

impl Strided {
    /// `a`'s layout, if its strides are not negative.
    fn of(a: ArrayView2<f32>) -> Option<Self> {
        let [rows, cols] = [a.strides()[0], a.strides()[1]];
        Some(Self { ptr: a.as_ptr(), rows: usize::try_from(rows).ok()?, cols: usize::try_from(cols).ok()? })
    }
}

/// The products, written once over [`F32s`] and compiled for each level: sixteen lanes with
/// AVX-512, eight with AVX2, four on the portable level. They allocate nothing, where
/// `general_mat_mul` (matrixmultiply) allocates a packing buffer per call; it is left only the
/// layouts these do not take (negative strides, no contiguous rows). Each output sums its
/// terms in one fixed order, whatever its place in a tile, so results do not depend on the
/// shapes around it.
mod kernels {
    use ndarray::{ArrayView2, ArrayViewMut2};
    use simd::{F32s, Simd};

    use super::{Rows, Strided};

    /// The distance between rows of a matrix whose rows are contiguous, if they are.
    fn row_major<S: ndarray::RawData>(m: &ndarray::ArrayBase<S, ndarray::Ix2>) -> Option<usize> {
        let (rows, cols) = m.dim();
        let [rs, cs] = [m.strides()[0], m.strides()[1]];
        (cs == 1 || cols <= 1).then_some(())?;
        if rows <= 1 { Some(cols) } else { usize::try_from(rs).ok() }
    }

    /// `c = alpha·a·b + beta·c` with `b` and `c` row-major: each `a` element broadcast against
    /// rows of `b`, for a tile of `c` in registers. False (and nothing done) where the layouts
    /// do not suit.
    pub(super) fn broadcast(
        simd: Simd,
        alpha: f32,
        a: Option<Strided>,
        b: ArrayView2<f32>,
        beta: f32,
        mut c: ArrayViewMut2<f32>,
    ) -> bool {
        let (Some(a), Some(ldb), Some(ldc)) = (a, row_major(&b), row_major(&c)) else { return false };
        let ((m, n), k) = (c.dim(), b.nrows());
        let starts = std::ptr::null();
        let product = Product { k, alpha, beta, a, b: b.as_ptr(), ldb, starts, c: c.as_mut_ptr(), ldc };
        // SAFETY: `a` addresses an m x k matrix (the caller's checked view), `b` a k x n one
        // with rows `ldb` apart, and `c` an m x n one with rows `ldc` apart, none overlapping
        // `c`.
        unsafe { broadcast_at(simd, m, n, product) };
        true
    }

    /// [`broadcast`] with `b`'s rows where [`Rows`] says (checked by the caller to lie within
    /// its data). False (and nothing done) where `a` has negative strides or `c` no contiguous
    /// rows.
    pub(super) fn broadcast_rows_table(
        simd: Simd,
        alpha: f32,
        a: ArrayView2<f32>,
        b: Rows,
        beta: f32,
        mut c: ArrayViewMut2<f32>,
    ) -> bool {
        let (Some(a), Some(ldc)) = (Strided::of(a), row_major(&c)) else { return false };
        let ((m, n), k) = (c.dim(), b.starts.len());
        let (data, starts) = (b.data.as_ptr(), b.starts.as_ptr());
        let product = Product { k, alpha, beta, a, b: data, ldb: 0, starts, c: c.as_mut_ptr(), ldc };
        // SAFETY: `a` addresses an m x k matrix (the caller's checked view), `b`'s k rows of n
        // values lie within its data (checked by the caller), and `c` is an m x n matrix with
        // rows `ldc` apart that overlaps neither.
        unsafe { broadcast_table_at(simd, m, n, product) };
        true
    }

    simd::kernel! {
        /// [`broadcast_all`] at a level.
        unsafe fn broadcast_at(m: usize, n: usize, product: Product) => broadcast_strided;
    }

    simd::kernel! {
        /// [`broadcast_all`] with a table of `b`'s rows, at a level.
        unsafe fn broadcast_table_at(m: usize, n: usize, product: Product) => broadcast_table;
    }

    /// [`broadcast_all`] with `b`'s rows `ldb` apart.
    ///
    /// # Safety
    /// As [`broadcast_all`].
    #[inline(always)]
    unsafe fn broadcast_strided<V: F32s>(m: usize, n: usize, product: Product) {
        // SAFETY: the caller's promise.
        unsafe { broadcast_all::<V, false>(m, n, product) }
    }

    /// [`broadcast_all`] with `b`'s rows where its table says.
    ///
    /// # Safety
    /// As [`broadcast_all`].
    #[inline(always)]
    unsafe fn broadcast_table<V: F32s>(m: usize, n: usize, product: Product) {
        // SAFETY: the caller's promise.
        unsafe { broadcast_all::<V, true>(m, n, product) }
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
        /// Where `b`'s rows start, for the kernels whose `TABLE` is true: row `r` at
        /// `b + starts[r]` instead of `b + r·ldb`.
        starts: *const usize,
        c: *mut f32,
        ldc: usize,
    }

    impl Product {
        /// The offset of `b`'s row `r`.
        ///
        /// # Safety
        /// With `TABLE`, `r` must be a row of the table.
        #[inline(always)]
        unsafe fn b_row<const TABLE: bool>(&self, r: usize) -> usize {
            // SAFETY: the caller's promise.
            if TABLE { unsafe { *self.starts.add(r) } } else { r * self.ldb }
        }
    }

    /// Tiles of `R` rows and two vectors of columns: 8 x 32 with AVX-512 (16 sums of its 32
    /// registers), 6 x 16 with AVX2 and 6 x 8 on the portable level (12 of 16).
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `product` must address the matrices its fields describe
    /// (an m x n `c`, with `a` m x k and `b` k x n).
    #[inline(always)]
    unsafe fn broadcast_all<V: F32s, const TABLE: bool>(m: usize, n: usize, product: Product) {
        // SAFETY: the caller's promise.
        unsafe {
            if V::LANES >= 16 {
                broadcast_rows::<V, 8, TABLE>(m, n, product)
            } else {
                broadcast_rows::<V, 6, TABLE>(m, n, product)
            }
        }
    }

    /// [`broadcast`] in tiles of `MR` rows, then one tile of the rows left.
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `product` must address the matrices its fields describe
    /// (an m x n `c`, with `a` m x k and `b` k x n).
    #[inline(always)]
    unsafe fn broadcast_rows<V: F32s, const MR: usize, const TABLE: bool>(m: usize, n: usize, product: Product) {
        let nr = 2 * V::LANES;
        for j in (0..n).step_by(nr) {
            let width = (n - j).min(nr);
            let widths = (width.min(V::LANES), width.saturating_sub(V::LANES));
            let mut i = 0;
            // SAFETY (each tile): rows i..i + R and columns j..j + width, within the matrices.
            while i + MR <= m {
                unsafe {
                    if width == nr {
                        broadcast_tile::<V, MR, true, TABLE>(i, j, widths, product)
                    } else {
                        broadcast_tile::<V, MR, false, TABLE>(i, j, widths, product)
                    }
                };
                i += MR;
            }
            // The last rows, in one tile as tall as they are.
            unsafe {
                match m - i {
                    0 => {}
                    1 => broadcast_tile::<V, 1, false, TABLE>(i, j, widths, product),
                    2 => broadcast_tile::<V, 2, false, TABLE>(i, j, widths, product),
                    3 => broadcast_tile::<V, 3, false, TABLE>(i, j, widths, product),
                    4 => broadcast_tile::<V, 4, false, TABLE>(i, j, widths, product),
                    5 => broadcast_tile::<V, 5, false, TABLE>(i, j, widths, product),
                    6 => broadcast_tile::<V, 6, false, TABLE>(i, j, widths, product),
                    _ => (i..m).for_each(|i| broadcast_tile::<V, 1, false, TABLE>(i, j, widths, product)),
                }
            }
        }
    }

    /// A tile of `R` rows of `c` from column `j`: `widths` columns in each of its two vectors
    /// (both full where `FULL`).
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `product` must address the matrices its fields describe
    /// (rows i..i + R and columns j.. of the widths within them).
    #[inline(always)]
    unsafe fn broadcast_tile<V: F32s, const R: usize, const FULL: bool, const TABLE: bool>(
        i: usize,
        j: usize,
        (w0, w1): (usize, usize),
        product: Product,
    ) {
        let Product { k, alpha, beta, a, b, c, ldc, .. } = product;
        let lanes = V::LANES;
        // SAFETY: row p of b, columns j..j + width (the widths), and a's rows i..i + R at
        // column p, then c's rows i..i + R at the same columns: within the matrices (see
        // `broadcast`), on a CPU with V's level.
        unsafe {
            let mut acc = [[V::zero(); 2]; R];
            for p in 0..k {
                let row = b.add(product.b_row::<TABLE>(p) + j);
                let (b0, b1) = if FULL {
                    (V::load(row), V::load(row.add(lanes)))
                } else {
                    (V::load_first(row, w0), V::load_first(row.wrapping_add(lanes), w1))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = V::splat(*a.ptr.add((i + r) * a.rows + p * a.cols));
                    acc[0] = av.mul_add(b0, acc[0]);
                    acc[1] = av.mul_add(b1, acc[1]);
                }
            }
            let (alpha, beta_v) = (V::splat(alpha), V::splat(beta));
            for (r, acc) in acc.iter().enumerate() {
                for (half, (&sum, width)) in acc.iter().zip([w0, w1]).enumerate() {
                    let at = c.add((i + r) * ldc + j).wrapping_add(lanes * half);
                    let mut v = alpha.mul(sum);
                    if FULL {
                        if beta != 0.0 {
                            v = beta_v.mul_add(V::load(at), v);
                        }
                        v.store(at);
                    } else {
                        if beta != 0.0 {
                            v = beta_v.mul_add(V::load_first(at, width), v);
                        }
                        v.store_first(at, width);
                    }
                }
            }
        }
    }

    /// `c = alpha·a·bᵀ + beta·c` with `a`, `b` and `c` row-major: dot products of rows, a
    /// vector of partial sums each, for a tile at a time. False (and nothing done) where the
    /// layouts do not suit.
    pub(super) fn dots(
        simd: Simd,
        alpha: f32,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        beta: f32,
        mut c: ArrayViewMut2<f32>,
    ) -> bool {
        let (Some(lda), Some(ldb), Some(ldc)) = (row_major(&a), row_major(&b), row_major(&c)) else { return false };
        let ((m, n), k) = (c.dim(), a.ncols());
        let a = Strided { ptr: a.as_ptr(), rows: lda, cols: 1 };
        let starts = std::ptr::null();
        let product = Product { k, alpha, beta, a, b: b.as_ptr(), ldb, starts, c: c.as_mut_ptr(), ldc };
        // SAFETY: a is m x k, b is n x k and c is m x n, rows `lda`, `ldb` and `ldc` apart (the
        // caller's checked views).
        unsafe { dots_at(simd, m, n, product) };
        true
    }

    /// [`dots`] with `b`'s rows where [`Rows`] says (checked by the caller to lie within its
    /// data). False (and nothing done) where `a` or `c` has no contiguous rows.
    pub(super) fn dots_table(
        simd: Simd,
        alpha: f32,
        a: ArrayView2<f32>,
        b: Rows,
        beta: f32,
        mut c: ArrayViewMut2<f32>,
    ) -> bool {
        let (Some(lda), Some(ldc)) = (row_major(&a), row_major(&c)) else { return false };
        let ((m, n), k) = (c.dim(), a.ncols());
        let a = Strided { ptr: a.as_ptr(), rows: lda, cols: 1 };
        let (data, starts) = (b.data.as_ptr(), b.starts.as_ptr());
        let product = Product { k, alpha, beta, a, b: data, ldb: 0, starts, c: c.as_mut_ptr(), ldc };
        // SAFETY: a is m x k with rows `lda` apart, b's n rows of k values lie within its data
        // (checked by the caller), and c is m x n with rows `ldc` apart.
        unsafe { dots_table_at(simd, m, n, product) };
        true
    }

    simd::kernel! {
        /// [`dots_all`] at a level.
        unsafe fn dots_at(m: usize, n: usize, product: Product) => dots_strided;
    }

    simd::kernel! {
        /// [`dots_all`] with a table of `b`'s rows, at a level.
        unsafe fn dots_table_at(m: usize, n: usize, product: Product) => dots_table_all;
    }

    /// [`dots_all`] with `b`'s rows `ldb` apart.
    ///
    /// # Safety
    /// As [`dots_all`].
    #[inline(always)]
    unsafe fn dots_strided<V: F32s>(m: usize, n: usize, product: Product) {
        // SAFETY: the caller's promise.
        unsafe { dots_all::<V, false>(m, n, product) }
    }

    /// [`dots_all`] with `b`'s rows where its table says.
    ///
    /// # Safety
    /// As [`dots_all`].
    #[inline(always)]
    unsafe fn dots_table_all<V: F32s>(m: usize, n: usize, product: Product) {
        // SAFETY: the caller's promise.
        unsafe { dots_all::<V, true>(m, n, product) }
    }

    /// Tiles of 4 x 4 dot products with AVX-512 (16 sums of its 32 registers), 2 x 4 with
    /// 16 registers.
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `product` must address the matrices its fields describe
    /// (an m x n `c`, with `a` m x k and `b` n x k).
    #[inline(always)]
    unsafe fn dots_all<V: F32s, const TABLE: bool>(m: usize, n: usize, product: Product) {
        // SAFETY: the caller's promise.
        unsafe {
            if V::LANES >= 16 {
                dots_rows::<V, 4, TABLE>(m, n, product)
            } else {
                dots_rows::<V, 2, TABLE>(m, n, product)
            }
        }
    }

    /// [`dots`] in tiles of `R` x 4, and narrower ones at the edges.
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `product` must address the matrices its fields describe
    /// (an m x n `c`, with `a` m x k and `b` n x k).
    #[inline(always)]
    unsafe fn dots_rows<V: F32s, const R: usize, const TABLE: bool>(m: usize, n: usize, product: Product) {
        const C: usize = 4;
        let tile = |i: usize, j: usize, rows: usize, cols: usize| {
            // SAFETY: rows i..i + rows of a and c, rows j..j + cols of b, within the matrices.
            unsafe {
                if rows == R && cols == C {
                    dots_tile::<V, R, C, TABLE>(i, j, product)
                } else if rows == R {
                    (j..j + cols).for_each(|j| dots_tile::<V, R, 1, TABLE>(i, j, product))
                } else if cols == C {
                    (i..i + rows).for_each(|i| dots_tile::<V, 1, C, TABLE>(i, j, product))
                } else {
                    (i..i + rows).for_each(|i| (j..j + cols).for_each(|j| dots_tile::<V, 1, 1, TABLE>(i, j, product)))
                }
            }
        };
        for i in (0..m).step_by(R) {
            for j in (0..n).step_by(C) {
                tile(i, j, (m - i).min(R), (n - j).min(C));
            }
        }
    }

    /// A tile of [`dots`]: `a`'s rows are `a.rows` apart, its columns contiguous.
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `product` must address the matrices its fields describe
    /// (rows i..i + R of `a` and `c`, rows j..j + C of `b`, within them).
    #[inline(always)]
    unsafe fn dots_tile<V: F32s, const R: usize, const C: usize, const TABLE: bool>(
        i: usize,
        j: usize,
        product: Product,
    ) {
        let Product { k, alpha, beta, a, b, c, ldc, .. } = product;
        let (a, lda, lanes) = (a.ptr, a.rows, V::LANES);
        // SAFETY: columns p.. of rows i + r of a and j + s of b, no further than k, then the
        // elements (i + r, j + s) of c: within the matrices, on a CPU with V's level.
        unsafe {
            let mut acc = [[V::zero(); C]; R];
            let b_rows: [*const f32; C] = std::array::from_fn(|s| b.add(product.b_row::<TABLE>(j + s)));
            let mut p = 0;
            while p + lanes <= k {
                let mut bv = [V::zero(); C];
                for (s, bv) in bv.iter_mut().enumerate() {
                    *bv = V::load(b_rows[s].add(p));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = V::load(a.add((i + r) * lda + p));
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = av.mul_add(bv, *acc);
                    }
                }
                p += lanes;
            }
            if p < k {
                let mut bv = [V::zero(); C];
                for (s, bv) in bv.iter_mut().enumerate() {
                    *bv = V::load_first(b_rows[s].add(p), k - p);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = V::load_first(a.add((i + r) * lda + p), k - p);
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = av.mul_add(bv, *acc);
                    }
                }
            }
            // The tile's sums, a vector's worth at a time where it has as many as vectors have
            // lanes (`sums` gives them in one transposition), else one by one.
            let mut sums = [0.0f32; 16];
            let acc = acc.as_flattened();
            if acc.len() % lanes == 0 {
                for (at, acc) in sums.chunks_exact_mut(lanes).zip(acc.chunks_exact(lanes)) {
                    V::sums(acc).store(at.as_mut_ptr());
                }
            } else {
                sums.iter_mut().zip(acc).for_each(|(s, v)| *s = v.sum());
            }
            for r in 0..R {
                for s in 0..C {
                    let at = c.add((i + r) * ldc + j + s);
                    let v = alpha * sums[r * C + s];
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
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (8, 16, 32),
            (9, 17, 33),
            (16, 150, 100),
            (33, 3, 70),
            (5, 40, 4),
            (4, 0, 4),
            (13, 37, 49),
        ] {
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
                for simd in Simd::every() {
                    let check = |what: &str, c: &Array2<f32>| check(&format!("{simd}, {what}"), c);
                    check("a·b", &run(&|c| matmul_at(simd, alpha, a.view(), b.view(), beta, c)));
                    check("a·b, b column-major", &run(&|c| matmul_at(simd, alpha, a.view(), b_cm.t(), beta, c)));
                    check("a·b, a column-major", &run(&|c| matmul_at(simd, alpha, a_cm.t(), b.view(), beta, c)));
                    check("a·bᵀ", &run(&|c| matmul_nt_at(simd, alpha, a.view(), b_cm.view(), beta, c)));
                    check("a·bᵀ, b column-major", &run(&|c| matmul_nt_at(simd, alpha, a.view(), b.t(), beta, c)));
                    check("aᵀ·b", &run(&|c| matmul_tn_at(simd, alpha, a_cm.view(), b.view(), beta, c)));
                    check("aᵀ·b, b column-major", &run(&|c| matmul_tn_at(simd, alpha, a_cm.view(), b_cm.t(), beta, c)));
                    let mut c_cm = c0.t().as_standard_layout().to_owned();
                    matmul_tn_at(simd, alpha, a_cm.view(), b.view(), beta, c_cm.view_mut().reversed_axes());
                    check("aᵀ·b into a column-major c", &c_cm.t().to_owned());
                }
            }
        }
    }

    #[test]
    fn rows_from_a_table_are_the_rows_they_name() {
        // b's rows start anywhere in one slice, overlapping and out of order: the products are
        // those of the same rows copied out, at every level.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let data: Vec<f32> = (0..400).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for (m, rows, n) in [(1, 1, 1), (5, 7, 37), (9, 13, 70), (16, 20, 33)] {
            let starts: Vec<usize> = (0..rows).map(|_| rng.random_range(0..=400 - n)).collect();
            let b = Array2::from_shape_fn((rows, n), |(r, j)| data[starts[r] + j]);
            let table = Rows { data: &data, starts: &starts, n };
            let a = Array2::from_shape_fn((m, rows), |_| rng.random_range(-1.0f32..1.0));
            let d = Array2::from_shape_fn((m, n), |_| rng.random_range(-1.0f32..1.0));
            let (c_ab, c_nt) = (d.map(|v| v * 0.5), Array2::from_shape_fn((m, rows), |(i, r)| (i + r) as f32));
            for simd in Simd::every() {
                let (mut got, mut want) = (c_ab.clone(), c_ab.clone());
                matmul_rows_at(simd, 0.5, a.view(), table, -2.0, got.view_mut());
                matmul_at(simd, 0.5, a.view(), b.view(), -2.0, want.view_mut());
                assert_eq!(got, want, "{simd}: a·b, {m}x{rows}x{n}");
                let (mut got, mut want) = (c_nt.clone(), c_nt.clone());
                matmul_nt_rows_at(simd, 2.0, d.view(), table, 1.0, got.view_mut());
                matmul_nt_at(simd, 2.0, d.view(), b.view(), 1.0, want.view_mut());
                assert_eq!(got, want, "{simd}: a·bᵀ, {m}x{n}x{rows}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "rows end at")]
    fn a_row_past_the_data_is_refused() {
        let data = [0.0f32; 10];
        let b = Rows { data: &data, starts: &[0, 7], n: 4 };
        let a = Array2::<f32>::zeros((1, 2));
        matmul_rows_at(Simd::get(), 1.0, a.view(), b, 0.0, Array2::zeros((1, 4)).view_mut());
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
