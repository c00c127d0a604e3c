//! Products with a sparse left operand. MNIST's pixels are about 81% zeros, so the first
//! layer's `x·Wᵀ` and its weight gradient `dyᵀ·x` only need the weights and gradients of the
//! nonzero pixels: the same sums, without the terms that are exactly zero.

use ndarray::{ArrayView2, ArrayViewMut1, ArrayViewMut2};
use simd::Simd;

/// The nonzero entries of a matrix, by row (for `x·w`) and, once [`SparseRows::index_columns`]
/// has run, by column (for `xᵀ·dy`), in buffers that are reused from call to call.
///
/// ```
/// use ndarray::{array, Array2};
/// let x = array![[0.0f32, 2.0, 0.0], [1.0, 0.0, 3.0]];
/// let mut sx = tensor::SparseRows::new();
/// sx.assign(x.view());
/// assert_eq!(sx.nnz(), 3);
/// // x·w for w = 3x2: row 0 is 2·w[1], row 1 is w[0] + 3·w[2].
/// let w = array![[1.0f32, 1.0], [10.0, 20.0], [100.0, 200.0]];
/// let mut y = Array2::zeros((2, 2));
/// tensor::sparse_matmul(&sx, w.view(), 0.0, y.view_mut());
/// assert_eq!(y, array![[20.0, 40.0], [301.0, 601.0]]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SparseRows {
    rows: usize,
    cols: usize,
    /// Row `i`'s entries are `row_start[i]..row_start[i + 1]` of `row_col` and `row_val`.
    row_start: Vec<u32>,
    row_col: Vec<u32>,
    row_val: Vec<f32>,
    /// The same entries by column: column `k`'s are `col_start[k]..col_start[k + 1]`.
    col_start: Vec<u32>,
    col_row: Vec<u32>,
    col_val: Vec<f32>,
    /// Scratch for the counting sort.
    next: Vec<u32>,
    /// Whether the by-column entries are those of the current contents.
    columns_indexed: bool,
}

impl SparseRows {
    /// An empty matrix.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the contents with the nonzero entries of `x`, indexed by row.
    ///
    /// # Panics
    /// If `x` has more than `u32::MAX` entries.
    #[track_caller]
    pub fn assign(&mut self, x: ArrayView2<f32>) {
        let (rows, cols) = x.dim();
        assert!(rows.saturating_mul(cols) <= u32::MAX as usize, "SparseRows holds at most u32::MAX entries");
        self.rows = rows;
        self.cols = cols;
        self.row_start.clear();
        self.row_start.push(0);
        let (mut n, simd) = (0, Simd::get());
        for row in x.rows() {
            // Room for a whole row, so that the scan writes without checking capacity; the
            // buffers keep their length, and `row_start` says how much of them is in use.
            if self.row_col.len() < n + cols + SLACK {
                let len = (n + cols + SLACK).max(2 * self.row_col.len());
                self.row_col.resize(len, 0);
                self.row_val.resize(len, 0.0);
            }
            match row.as_slice() {
                Some(row) => n = compact_nonzeros(simd, row, &mut self.row_col, &mut self.row_val, n),
                None => {
                    for (k, &v) in row.iter().enumerate() {
                        self.row_col[n] = k as u32;
                        self.row_val[n] = v;
                        n += usize::from(v != 0.0);
                    }
                }
            }
            self.row_start.push(n as u32);
        }
        self.columns_indexed = false;
    }

    /// Indexes the entries by column too, as [`sparse_matmul_tn`] needs; does nothing if they
    /// already are. Within a column the rows stay in ascending order.
    pub fn index_columns(&mut self) {
        if self.columns_indexed {
            return;
        }
        let (n, cols) = (self.nnz(), self.cols);
        if self.col_row.len() < n {
            self.col_row.resize(n, 0);
            self.col_val.resize(n, 0.0);
        }
        // A counting sort by column.
        let (row_col, row_val) = (&self.row_col[..n], &self.row_val[..n]);
        let col_start = &mut self.col_start;
        col_start.clear();
        col_start.resize(cols + 1, 0);
        for &k in row_col {
            col_start[k as usize + 1] += 1;
        }
        for k in 0..cols {
            col_start[k + 1] += col_start[k];
        }
        let next = &mut self.next;
        next.clear();
        next.extend_from_slice(&col_start[..cols]);
        let (col_row, col_val) = (&mut self.col_row[..n], &mut self.col_val[..n]);
        for (i, w) in self.row_start.windows(2).enumerate() {
            for e in w[0] as usize..w[1] as usize {
                let k = row_col[e] as usize;
                let slot = next[k] as usize;
                col_row[slot] = i as u32;
                col_val[slot] = row_val[e];
                next[k] += 1;
            }
        }
        self.columns_indexed = true;
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The number of nonzero entries.
    pub fn nnz(&self) -> usize {
        self.row_start.last().map_or(0, |&n| n as usize)
    }

    /// The share of entries that are nonzero.
    pub fn density(&self) -> f64 {
        let total = self.rows * self.cols;
        if total == 0 { 0.0 } else { self.nnz() as f64 / total as f64 }
    }

    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let range = self.row_start[i] as usize..self.row_start[i + 1] as usize;
        (&self.row_col[range.clone()], &self.row_val[range])
    }

    fn col(&self, k: usize) -> (&[u32], &[f32]) {
        let range = self.col_start[k] as usize..self.col_start[k + 1] as usize;
        (&self.col_row[range.clone()], &self.col_val[range])
    }
}

/// Appends the nonzero entries of `row` (column index and value) at position `n` of `cols` and
/// `vals`, which have room for all of them plus [`SLACK`]; returns the new end.
fn compact_nonzeros(simd: Simd, row: &[f32], cols: &mut [u32], vals: &mut [f32], n: usize) -> usize {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd; // no vector path of its own here
    assert!(cols.len() >= n + row.len() + SLACK && vals.len() >= n + row.len() + SLACK, "room for the row");
    #[cfg(target_arch = "x86_64")]
    if simd.avx512() {
        // SAFETY: the CPU has AVX-512F (`simd` says so), and the buffers have the room
        // asserted above.
        return unsafe { compact_nonzeros_avx512(row, cols, vals, n) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the CPU has AVX2 (`simd` says so), and the buffers have the room asserted
        // above.
        return unsafe { compact_nonzeros_avx2(row, cols, vals, n) };
    }
    compact_nonzeros_portable(row, cols, vals, n, 0)
}

/// Entries written past the end of what is kept: the vector paths store whole vectors.
const SLACK: usize = 16;

/// One entry at a time: every entry is written, and the end only advances past nonzero ones,
/// which avoids a branch per entry. `first` is the column of `row[0]`.
fn compact_nonzeros_portable(row: &[f32], cols: &mut [u32], vals: &mut [f32], mut n: usize, first: usize) -> usize {
    for (k, &v) in row.iter().enumerate() {
        cols[n] = (first + k) as u32;
        vals[n] = v;
        // NaN is kept, as the dense product would propagate it; -0.0 equals 0 and is dropped.
        n += usize::from(v != 0.0);
    }
    n
}

/// For each 8-bit mask, the positions of its set bits, in order, padded with zeros: the lane
/// permutation that packs a vector's selected lanes to its front.
#[cfg(target_arch = "x86_64")]
static PACK: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut bit, mut n) = (0, 0);
        while bit < 8 {
            if mask & (1 << bit) != 0 {
                table[mask][n] = bit as u32;
                n += 1;
            }
            bit += 1;
        }
        mask += 1;
    }
    table
};

/// Eight entries at a time: compare with zero, then pack the nonzero lanes (and their column
/// numbers) to the front with one permutation and store the whole vector.
///
/// # Safety
/// The CPU must have AVX2, and `cols` and `vals` must have room for `n + row.len() + SLACK`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn compact_nonzeros_avx2(row: &[f32], cols: &mut [u32], vals: &mut [f32], mut n: usize) -> usize {
    use std::arch::x86_64::*;
    let chunks = row.len() / 8;
    let zero = _mm256_setzero_ps();
    for c in 0..chunks {
        // SAFETY: `c * 8 + 8 <= row.len()`.
        let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(c * 8)) };
        // Not-equal, unordered: NaN counts as nonzero, as in the portable path.
        let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(v, zero)) as usize;
        if mask == 0 {
            continue;
        }
        // SAFETY: `PACK[mask]` is eight u32s; the stores write 8 entries from `n`, which the
        // caller guarantees room for, as `n` stays at most the entries scanned so far.
        unsafe {
            let perm = _mm256_loadu_si256(PACK[mask].as_ptr().cast());
            let columns = _mm256_add_epi32(perm, _mm256_set1_epi32((c * 8) as i32));
            _mm256_storeu_ps(vals.as_mut_ptr().add(n), _mm256_permutevar8x32_ps(v, perm));
            _mm256_storeu_si256(cols.as_mut_ptr().add(n).cast(), columns);
        }
        n += mask.count_ones() as usize;
    }
    compact_nonzeros_portable(&row[chunks * 8..], cols, vals, n, chunks * 8)
}

/// Sixteen entries at a time: the nonzero lanes (and their column numbers) compressed to the
/// front of a register, which is stored whole (a compressing store to memory is slow on some
/// CPUs).
///
/// # Safety
/// The CPU must have AVX-512F, and `cols` and `vals` must have room for `n + row.len() + SLACK`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn compact_nonzeros_avx512(row: &[f32], cols: &mut [u32], vals: &mut [f32], mut n: usize) -> usize {
    use std::arch::x86_64::*;
    let chunks = row.len() / 16;
    let zero = _mm512_setzero_ps();
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for c in 0..chunks {
        // SAFETY: `c * 16 + 16 <= row.len()`.
        let v = unsafe { _mm512_loadu_ps(row.as_ptr().add(c * 16)) };
        // Not-equal, unordered: NaN counts as nonzero, as in the portable path.
        let mask = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, zero);
        if mask == 0 {
            continue;
        }
        let columns = _mm512_add_epi32(lanes, _mm512_set1_epi32((c * 16) as i32));
        // SAFETY: the stores write 16 entries from `n`, which the caller guarantees room for,
        // as `n` stays at most the entries scanned so far.
        unsafe {
            _mm512_storeu_ps(vals.as_mut_ptr().add(n), _mm512_maskz_compress_ps(mask, v));
            _mm512_storeu_si512(cols.as_mut_ptr().add(n).cast(), _mm512_maskz_compress_epi32(mask, columns));
        }
        n += mask.count_ones() as usize;
    }
    compact_nonzeros_portable(&row[chunks * 16..], cols, vals, n, chunks * 16)
}

/// `y = beta * y + x·w` for a sparse `x` (`m x k`) and a dense `w` (`k x n`).
///
/// Each row of `y` gathers the rows of `w` that its entries pick. Read row by row, `w` would
/// stream from the outer caches once per sample; so the rows of `y` go in groups of 32, and
/// each group takes its entries in tiles of `w`'s rows (64 KiB) small enough to stay near the
/// core while the whole group reads them. A row's sum goes through its entries in
/// the same order either way, so the tiles change no result.
///
/// # Panics
/// If `w` is not `x.cols()` tall or `y` is not `x.rows() x w.ncols()`.
#[track_caller]
pub fn sparse_matmul(x: &SparseRows, w: ArrayView2<f32>, beta: f32, y: ArrayViewMut2<f32>) {
    sparse_matmul_at(Simd::get(), x, w, beta, y);
}

#[track_caller]
fn sparse_matmul_at(simd: Simd, x: &SparseRows, w: ArrayView2<f32>, beta: f32, mut y: ArrayViewMut2<f32>) {
    assert!(
        w.nrows() == x.cols() && y.dim() == (x.rows(), w.ncols()),
        "sparse x·w: shapes do not fit: {}x{} times {:?} into {:?}",
        x.rows(),
        x.cols(),
        w.dim(),
        y.dim()
    );
    let tile = (TILE_BYTES / (w.ncols() * std::mem::size_of::<f32>()).max(1)).max(1);
    let mut rows = y.rows_mut().into_iter().enumerate().peekable();
    while rows.peek().is_some() {
        let mut group: [_; GROUP] = std::array::from_fn(|_| None);
        for (slot, (i, out)) in group.iter_mut().zip(&mut rows) {
            *slot = Some((x.row(i), out));
        }
        // The first tile runs even without columns: it applies `beta`.
        let mut first = 0;
        while first == 0 || first < x.cols() {
            let end = (first + tile) as u32;
            for ((cols, vals), out) in group.iter_mut().flatten() {
                // A row's entries are sorted by column: this tile's lead the rest.
                let here = cols[..cols.len().min(tile)].partition_point(|&k| k < end);
                if first == 0 || here > 0 {
                    gather_rows(
                        simd,
                        &cols[..here],
                        &vals[..here],
                        w,
                        if first == 0 { beta } else { 1.0 },
                        out.view_mut(),
                    );
                }
                (*cols, *vals) = (&cols[here..], &vals[here..]);
            }
            first += tile;
        }
    }
}

/// Rows of `y` that [`sparse_matmul`] computes together.
const GROUP: usize = 32;

/// The bytes of `w`'s rows that [`sparse_matmul`] reads together, for a group of rows: about a
/// core's first-level data cache.
const TILE_BYTES: usize = 64 * 1024;

/// `c = beta * c + xᵀ·dy` for a sparse `x` (`m x k`) and a dense `dy` (`m x n`): the weight
/// gradient of `x·w`. Rows of `c` for columns of `x` without entries are only scaled by `beta`.
///
/// # Panics
/// If `x`'s columns are not indexed ([`SparseRows::index_columns`]), `dy` is not `x.rows()`
/// tall or `c` is not `x.cols() x dy.ncols()`.
#[track_caller]
pub fn sparse_matmul_tn(x: &SparseRows, dy: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
    sparse_matmul_tn_at(Simd::get(), x, dy, beta, c);
}

#[track_caller]
fn sparse_matmul_tn_at(simd: Simd, x: &SparseRows, dy: ArrayView2<f32>, beta: f32, mut c: ArrayViewMut2<f32>) {
    assert!(x.columns_indexed, "sparse xᵀ·dy: index the columns first (SparseRows::index_columns)");
    assert!(
        dy.nrows() == x.rows() && c.dim() == (x.cols(), dy.ncols()),
        "sparse xᵀ·dy: shapes do not fit: ({}x{})ᵀ times {:?} into {:?}",
        x.rows(),
        x.cols(),
        dy.dim(),
        c.dim()
    );
    for (k, out) in c.rows_mut().into_iter().enumerate() {
        let (rows, vals) = x.col(k);
        gather_rows(simd, rows, vals, dy, beta, out);
    }
}

/// `out = beta * out + Σ_e vals[e] * src[idx[e], :]`, the one loop both products share.
fn gather_rows(simd: Simd, idx: &[u32], vals: &[f32], src: ArrayView2<f32>, beta: f32, mut out: ArrayViewMut1<f32>) {
    let ld = src.strides()[0];
    if let (Some(out), true, true) = (out.as_slice_mut(), src.strides()[1] == 1 || src.ncols() <= 1, ld >= 0) {
        // Rows of `src` are contiguous: the fast kernels index the underlying slice directly.
        let len = if src.nrows() == 0 { 0 } else { (src.nrows() - 1) * ld as usize + src.ncols() };
        // SAFETY: `src` is a valid view, so its `nrows` rows of `ncols` elements, `ld` apart,
        // lie within one allocation starting at `as_ptr()`, covering exactly `len` elements.
        let flat = unsafe { std::slice::from_raw_parts(src.as_ptr(), len) };
        return gather_rows_contiguous(simd, idx, vals, flat, ld as usize, beta, out);
    }
    if beta == 0.0 {
        out.fill(0.0);
    } else if beta != 1.0 {
        out *= beta;
    }
    for (&i, &v) in idx.iter().zip(vals) {
        out.scaled_add(v, &src.row(i as usize));
    }
}

/// [`gather_rows`] over a row-major slice with rows `ld` apart, with the widest vector
/// instructions the CPU has.
fn gather_rows_contiguous(simd: Simd, idx: &[u32], vals: &[f32], src: &[f32], ld: usize, beta: f32, out: &mut [f32]) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd; // no vector path of its own here
    #[cfg(target_arch = "x86_64")]
    if simd.avx512() {
        // SAFETY: the CPU has AVX-512F (`simd` says so).
        return unsafe { gather_rows_avx512(idx, vals, src, ld, beta, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`simd` says so).
        return unsafe { gather_rows_avx2(idx, vals, src, ld, beta, out) };
    }
    gather_rows_blocked::<64, false>(idx, vals, src, ld, beta, out);
}

/// Sound to call only where the CPU has AVX2 and FMA, which its caller checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gather_rows_avx2(idx: &[u32], vals: &[f32], src: &[f32], ld: usize, beta: f32, out: &mut [f32]) {
    gather_rows_blocked::<64, true>(idx, vals, src, ld, beta, out);
}

/// Twice the block of AVX2: 32 registers of 16 lanes hold 128 sums with room to spare. Sound
/// to call only where the CPU has AVX-512F, which its caller checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gather_rows_avx512(idx: &[u32], vals: &[f32], src: &[f32], ld: usize, beta: f32, out: &mut [f32]) {
    gather_rows_blocked::<128, true>(idx, vals, src, ld, beta, out);
}

/// The output row in blocks whose sums stay in registers while every entry is added in: `BIG`
/// wide first, then 64, 16 and 1.
#[inline(always)]
fn gather_rows_blocked<const BIG: usize, const FUSED: bool>(
    idx: &[u32],
    vals: &[f32],
    src: &[f32],
    ld: usize,
    beta: f32,
    out: &mut [f32],
) {
    let mut j = 0;
    while j + BIG <= out.len() {
        block::<BIG, FUSED>(idx, vals, src, ld, j, beta, &mut out[j..j + BIG]);
        j += BIG;
    }
    while j + 64 <= out.len() {
        block::<64, FUSED>(idx, vals, src, ld, j, beta, &mut out[j..j + 64]);
        j += 64;
    }
    while j + 16 <= out.len() {
        block::<16, FUSED>(idx, vals, src, ld, j, beta, &mut out[j..j + 16]);
        j += 16;
    }
    while j < out.len() {
        block::<1, FUSED>(idx, vals, src, ld, j, beta, &mut out[j..j + 1]);
        j += 1;
    }
}

#[inline(always)]
fn block<const W: usize, const FUSED: bool>(
    idx: &[u32],
    vals: &[f32],
    src: &[f32],
    ld: usize,
    j: usize,
    beta: f32,
    out: &mut [f32],
) {
    let mut acc = [0.0f32; W];
    if beta != 0.0 {
        for (a, &o) in acc.iter_mut().zip(out.iter()) {
            *a = beta * o;
        }
    }
    for (&i, &v) in idx.iter().zip(vals) {
        let start = i as usize * ld + j;
        let row: &[f32; W] = src[start..start + W].try_into().expect("a block of W");
        for (a, &r) in acc.iter_mut().zip(row) {
            *a = if FUSED { v.mul_add(r, *a) } else { *a + v * r };
        }
    }
    out.copy_from_slice(&acc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// A random matrix with about `density` of its entries nonzero.
    fn sparse_random(rng: &mut impl Rng, rows: usize, cols: usize, density: f64) -> Array2<f32> {
        Array2::from_shape_fn(
            (rows, cols),
            |_| if rng.random_bool(density) { rng.random_range(-1.0..1.0) } else { 0.0 },
        )
    }

    #[test]
    fn the_vector_paths_round_alike() {
        // AVX2 and AVX-512 fuse each term, in the same order: their results are the same bits.
        // The portable path rounds twice per term, within a few ulps of them.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for n in [1, 16, 70, 128, 200, 300] {
            let src: Vec<f32> = (0..50 * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let idx: Vec<u32> = (0..30).map(|_| rng.random_range(0..50)).collect();
            let vals: Vec<f32> = (0..30).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let want: Vec<f64> = (0..n)
                .map(|j| {
                    0.15 + idx
                        .iter()
                        .zip(&vals)
                        .map(|(&i, &v)| f64::from(v) * f64::from(src[i as usize * n + j]))
                        .sum::<f64>()
                })
                .collect();
            let mut fused: Option<Vec<f32>> = None;
            for simd in Simd::every() {
                let mut out = vec![0.5; n];
                gather_rows_contiguous(simd, &idx, &vals, &src, n, 0.3, &mut out);
                for (j, (&got, &want)) in out.iter().zip(&want).enumerate() {
                    assert!((f64::from(got) - want).abs() < 1e-5, "{simd}, {n} wide, at {j}: {got} vs {want}");
                }
                if simd.avx2() {
                    assert_eq!(fused.get_or_insert_with(|| out.clone()), &out, "{simd}, {n} wide");
                }
            }
        }
    }

    #[test]
    fn agrees_with_the_dense_products() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (m, k, n) in [(7, 13, 5), (64, 784, 128), (3, 100, 70), (1, 1, 1), (4, 9, 0)] {
            let x = sparse_random(&mut rng, m, k, 0.2);
            let w = Array2::from_shape_fn((k, n), |_| rng.random_range(-1.0f32..1.0));
            let dy = Array2::from_shape_fn((m, n), |_| rng.random_range(-1.0f32..1.0));
            let mut sx = SparseRows::new();
            sx.assign(x.view());
            assert_eq!(sx.nnz(), x.iter().filter(|v| **v != 0.0).count());

            sx.index_columns();
            for simd in Simd::every() {
                let mut y = Array2::from_elem((m, n), 1.0f32);
                sparse_matmul_at(simd, &sx, w.view(), 0.5, y.view_mut());
                let expected = x.dot(&w) + 0.5;
                assert!(y.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4), "{simd}, {m}x{k}x{n}");

                // The weight gradient, into a transposed (column-major) buffer as Linear keeps it.
                let mut c = Array2::from_elem((n, k), 2.0f32);
                sparse_matmul_tn_at(simd, &sx, dy.view(), 1.0, c.view_mut().reversed_axes());
                let expected = x.t().dot(&dy) + 2.0;
                assert!(c.t().iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4), "{simd}, {m}x{k}x{n}");
            }
        }
    }

    #[test]
    fn tiles_and_groups_change_no_result() {
        // Against the sums row by row, in the same order, with a `beta` that only the first
        // tile applies: MNIST's shape (3 groups of rows, 7 tiles), 2 groups of 5 tiles, 1 group
        // of 8 tiles, 2 groups of 1 tile, and no columns at all (only `beta` applies).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (m, k, n, density) in
            [(70, 784, 128, 0.2), (33, 2000, 40, 0.05), (5, 600, 200, 0.9), (40, 300, 1, 0.3), (3, 0, 4, 0.5)]
        {
            let x = sparse_random(&mut rng, m, k, density);
            let w = Array2::from_shape_fn((k, n), |_| rng.random_range(-1.0f32..1.0));
            let start = Array2::from_shape_fn((m, n), |_| rng.random_range(-1.0f32..1.0));
            let mut sx = SparseRows::new();
            sx.assign(x.view());
            let mut y = start.clone();
            sparse_matmul(&sx, w.view(), 0.7, y.view_mut());
            let mut by_rows = start.clone();
            for (i, out) in by_rows.rows_mut().into_iter().enumerate() {
                let (cols, vals) = sx.row(i);
                gather_rows(Simd::get(), cols, vals, w.view(), 0.7, out);
            }
            assert_eq!(y, by_rows, "{m}x{k}x{n}");
        }
    }

    #[test]
    fn every_compaction_path_finds_the_same_entries() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for len in [1, 7, 8, 15, 16, 17, 33, 784] {
            let mut row: Vec<f32> = sparse_random(&mut rng, 1, len, 0.4).into_raw_vec_and_offset().0;
            row[0] = f32::NAN;
            row[len - 1] = -0.0;
            let room = 3 + len + SLACK;
            let entries = |n: usize, cols: &[u32], vals: &[f32]| {
                (cols[3..n].to_vec(), vals[3..n].iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            };
            let (mut cols, mut vals) = (vec![0; room], vec![0.0; room]);
            let n = compact_nonzeros_portable(&row, &mut cols, &mut vals, 3, 0);
            let portable = entries(n, &cols, &vals);
            assert_eq!(portable.0.len(), row.iter().filter(|v| **v != 0.0 || v.is_nan()).count());
            for simd in Simd::every() {
                let (mut cols, mut vals) = (vec![0; room], vec![0.0; room]);
                let n = compact_nonzeros(simd, &row, &mut cols, &mut vals, 3);
                assert_eq!(entries(n, &cols, &vals), portable, "{simd}, {len}");
            }
        }
    }

    #[test]
    fn every_nonzero_is_found_whatever_the_row_length() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for cols in [1, 7, 8, 9, 16, 31, 784] {
            let mut x = sparse_random(&mut rng, 5, cols, 0.3);
            x[[0, 0]] = -0.0;
            x[[4, cols - 1]] = f32::NAN;
            let mut sx = SparseRows::new();
            sx.assign(x.view());
            for i in 0..5 {
                let (idx, vals) = sx.row(i);
                let expected: Vec<(u32, f32)> = x
                    .row(i)
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0.0 || v.is_nan())
                    .map(|(k, &v)| (k as u32, v))
                    .collect();
                let got: Vec<(u32, f32)> = idx.iter().copied().zip(vals.iter().copied()).collect();
                assert_eq!(got.len(), expected.len(), "{cols} columns, row {i}");
                for ((gk, gv), (ek, ev)) in got.iter().zip(&expected) {
                    assert!(gk == ek && (gv == ev || (gv.is_nan() && ev.is_nan())), "{cols} columns, row {i}");
                }
            }
        }
    }

    #[test]
    fn reassigning_replaces_everything() {
        let mut sx = SparseRows::new();
        sx.assign(Array2::from_elem((5, 5), 1.0f32).view());
        sx.assign(ndarray::array![[0.0f32, 0.0], [0.0, 4.0]].view());
        assert_eq!((sx.rows(), sx.cols(), sx.nnz()), (2, 2, 1));
        assert_eq!(sx.density(), 0.25);
        let mut y = Array2::zeros((2, 1));
        sparse_matmul(&sx, ndarray::array![[1.0f32], [2.0]].view(), 0.0, y.view_mut());
        assert_eq!(y, ndarray::array![[0.0], [8.0]]);
    }
}
