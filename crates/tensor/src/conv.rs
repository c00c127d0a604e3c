//! 2-D convolution as PyTorch's `nn.Conv2d` computes it (a cross-correlation, zero padding),
//! and its gradients, by unfolding each sample's input patches into the columns of a matrix
//! (`im2col`) so that the work is matrix products. Stride-1 convolutions whose output is
//! nearly as wide as the padded input (3x3 with padding 1) skip the unfolding: their products
//! read shifted rows of the padded input where they lie (see the `padded` module). 3x3
//! convolutions with padding 1 of an even height and width from 8 or more channels take
//! Winograd's F(2x2, 3x3) instead: fewer multiplications, for some transforms (see the
//! `winograd` module).
//!
//! Activations are rows of a batch: sample `n`'s `[C, H, W]` values, row-major, form row `n`.
//! A weight `[out, in, kH, kW]` is read as the `out x (in·kH·kW)` matrix it is row-major.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

use simd::{F32s, Simd};

use crate::matmul::{matmul_at, matmul_nt_at, matmul_tn_at};

/// The geometry of a convolution over one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    /// Input channels.
    pub in_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel side (square kernels).
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
}

impl Conv2dShape {
    /// Output height: `(H + 2·padding - kernel) / stride + 1`, rounded down as in PyTorch.
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Values per input sample: `C·H·W`.
    pub fn in_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Values per output sample.
    pub fn out_len(&self) -> usize {
        self.out_channels * self.positions()
    }

    /// Output positions per channel.
    pub fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Values per patch: `in·kH·kW`, the width of the weight matrix.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Whether the kernel fits the padded input and every size is positive.
    pub fn is_valid(&self) -> bool {
        self.in_channels > 0
            && self.out_channels > 0
            && self.kernel > 0
            && self.stride > 0
            && self.height + 2 * self.padding >= self.kernel
            && self.width + 2 * self.padding >= self.kernel
    }
}

/// Unfolds one sample `x` (`C·H·W` values) into `cols`, a `patch_len x positions` matrix whose
/// column `p` holds the input patch under output position `p` (zeros in the padding).
///
/// # Panics
/// If the lengths do not fit the shape.
#[track_caller]
pub fn im2col(x: &[f32], shape: &Conv2dShape, cols: &mut [f32]) {
    assert_eq!(cols.len(), shape.patch_len() * shape.positions(), "im2col: columns buffer");
    im2col_rows(Simd::get(), x, shape, cols, shape.positions(), 0);
}

/// [`im2col`] into rows that may be parts of longer rows (sample `n`'s block of a batch's
/// unfolded matrix).
/// Row `r` of the unfolded matrix is `cols[r·stride + offset..][..positions]`.
fn im2col_rows(simd: Simd, x: &[f32], shape: &Conv2dShape, cols: &mut [f32], stride: usize, offset: usize) {
    assert_eq!(x.len(), shape.in_len(), "im2col: input of {} for {shape:?}", x.len());
    let positions = shape.positions();
    assert!(offset + positions <= stride && cols.len() >= shape.patch_len() * stride - (stride - offset - positions));
    // On the portable level, masked lanes are a loop each: the walk's copies are faster.
    if lines_fit(shape) && simd.avx2() {
        // SAFETY: the rows are in `cols` (asserted above); the shape fits.
        return unsafe { im2col_lines(simd, shape, x, cols, stride, offset) };
    }
    let rows = cols.chunks_mut(stride).take(shape.patch_len()).map(|row| &mut row[offset..offset + positions]);
    im2col_walk(x, shape, rows);
}

/// [`im2col_rows`] on any CPU and shape.
fn im2col_walk<'a>(x: &[f32], shape: &Conv2dShape, rows: impl Iterator<Item = &'a mut [f32]>) {
    for_each_segment(shape, rows, |segment| match segment {
        Segment::Zeros(out) => out.fill(0.0),
        Segment::Copy { out, from, step } => {
            if step == 1 {
                out.copy_from_slice(&x[from..from + out.len()]);
            } else {
                out.iter_mut().enumerate().for_each(|(t, o)| *o = x[from + t * step]);
            }
        }
    });
}

/// The adjoint of [`im2col`]: adds each entry of `cols` into the input value it was read from.
///
/// # Panics
/// If the lengths do not fit the shape.
#[track_caller]
pub fn col2im_add(cols: &[f32], shape: &Conv2dShape, dx: &mut [f32]) {
    assert_eq!(cols.len(), shape.patch_len() * shape.positions(), "col2im: columns buffer");
    col2im_rows(Simd::get(), cols, shape.positions(), 0, shape, dx);
}

/// [`col2im_add`] from rows that may be parts of longer rows.
/// Row `r` of the unfolded matrix is `cols[r·stride + offset..][..positions]`.
fn col2im_rows(simd: Simd, cols: &[f32], stride: usize, offset: usize, shape: &Conv2dShape, dx: &mut [f32]) {
    assert_eq!(dx.len(), shape.in_len(), "col2im: input of {} for {shape:?}", dx.len());
    let positions = shape.positions();
    assert!(offset + positions <= stride && cols.len() >= shape.patch_len() * stride - (stride - offset - positions));
    if lines_fit(shape) && simd.avx2() {
        // SAFETY: the rows are in `cols` (asserted above); the shape fits.
        return unsafe { col2im_lines(simd, shape, cols, stride, offset, dx) };
    }
    let rows = (0..shape.patch_len()).map(|r| &cols[r * stride + offset..r * stride + offset + positions]);
    col2im_walk(rows, shape, dx);
}

/// [`col2im_rows`] on any CPU and shape.
fn col2im_walk<'a>(rows: impl Iterator<Item = &'a [f32]>, shape: &Conv2dShape, dx: &mut [f32]) {
    for_each_segment(shape, rows, |segment| match segment {
        Segment::Zeros(_) => {}
        Segment::Copy { out, from, step } => {
            if step == 1 {
                dx[from..from + out.len()].iter_mut().zip(out.iter()).for_each(|(d, &c)| *d += c);
            } else {
                out.iter().enumerate().for_each(|(t, &c)| dx[from + t * step] += c);
            }
        }
    });
}

/// [`im2col`] and [`col2im_add`] for stride 1 and rows of at most 32 values, a vector at a
/// time: each output row of each patch entry is a few masked vector operations (the masks zero
/// the padding), where the general walk calls a copy per run: LeNet-5's second convolution has
/// 1,500 runs of 10 values per sample. Written once over [`F32s`]; `Q` vectors of `V` cover a
/// row of 32 (two with AVX-512, four with AVX2, eight on the portable level).
struct Lines<V: F32s, const Q: usize> {
    shape: Conv2dShape,
    /// Per kernel column `j`, the lanes of each vector of output columns whose input column
    /// `ox + j - padding` is inside the image.
    masks: [[V::Mask; Q]; MAX_KERNEL],
}

/// The lanes `lo..hi` of a vector over positions `first..first + lanes` of a row of `len`
/// whose partner position, `i + plus - minus`, lies in `0..other`: output columns whose input
/// column is inside the image (`plus` the kernel column, `minus` the padding), or input
/// columns whose output column is inside the output row (the other way round).
pub(crate) fn lanes_inside(
    first: usize,
    lanes: usize,
    len: usize,
    plus: usize,
    minus: usize,
    other: usize,
) -> (usize, usize) {
    let lo = minus.saturating_sub(plus + first).min(lanes);
    let hi = len.saturating_sub(first).min((other + minus).saturating_sub(plus + first)).min(lanes).max(lo);
    (lo, hi)
}

/// The widest kernel [`Lines`] takes.
const MAX_KERNEL: usize = 16;

/// Whether [`Lines`] takes `shape`.
fn lines_fit(shape: &Conv2dShape) -> bool {
    shape.stride == 1 && shape.out_width() <= 32 && shape.width <= 32 && shape.kernel <= MAX_KERNEL
}

impl<V: F32s, const Q: usize> Lines<V, Q> {
    /// # Safety
    /// The CPU must have `V`'s level, and the shape must fit ([`lines_fit`]).
    #[inline(always)]
    unsafe fn new(shape: &Conv2dShape) -> Self {
        assert!(lines_fit(shape) && Q * V::LANES >= 32);
        let (p, w, ow, lanes) = (shape.padding, shape.width, shape.out_width(), V::LANES);
        // Plain loops, not closures: a closure that does not inline would not be compiled
        // for the level, and every mask would be a call.
        // SAFETY (`V` methods): the caller's promise.
        let mut masks = [[unsafe { V::lanes(0, 0) }; Q]; MAX_KERNEL];
        for (j, masks) in masks.iter_mut().enumerate() {
            for (q, mask) in masks.iter_mut().enumerate() {
                // Lanes l with output column q·lanes + l < ow and input column + j - p in 0..w.
                let first = q * lanes;
                let (lo, hi) = lanes_inside(first, lanes, ow, j, p, w);
                *mask = unsafe { V::lanes(lo, hi) };
            }
        }
        Self { shape: *shape, masks }
    }

    /// The input offset of output `(0, 0)` for patch entry `(c, i, j)`: out of the image in the
    /// padding, so only masked reads use it.
    fn origin(&self, c: usize, i: usize, j: usize) -> isize {
        let s = &self.shape;
        ((c * s.height * s.width + i * s.width + j) as isize) - (s.padding * s.width + s.padding) as isize
    }

    /// The rows of outputs whose input row is inside the image, for kernel row `i`.
    fn rows_inside(&self, i: usize) -> std::ops::Range<usize> {
        let s = &self.shape;
        let lo = s.padding.saturating_sub(i).min(s.out_height());
        let hi = (s.height + s.padding).saturating_sub(i).min(s.out_height()).max(lo);
        lo..hi
    }

    /// # Safety
    /// The CPU must have `V`'s level, and `cols` must hold the unfolded rows (row `r` at
    /// `r·stride + offset`, `positions` long).
    #[inline(always)]
    unsafe fn im2col(&self, x: &[f32], cols: &mut [f32], stride: usize, offset: usize) {
        let (k, w, ow, oh, lanes) =
            (self.shape.kernel, self.shape.width, self.shape.out_width(), self.shape.out_height(), V::LANES);
        let vectors = ow.div_ceil(lanes);
        // SAFETY (`V` methods): the caller's promise.
        let none = unsafe { V::lanes(0, 0) };
        let len = oh * ow;
        for (r, row) in cols.chunks_mut(stride).take(self.shape.patch_len()).enumerate() {
            let row = &mut row[offset..offset + len];
            let (c, i, j) = (r / (k * k), (r / k) % k, r % k);
            let (origin, inside) = (self.origin(c, i, j), self.rows_inside(i));
            for oy in 0..oh {
                let inside = inside.contains(&oy);
                for q in 0..vectors {
                    let mask = if inside { self.masks[j][q] } else { none };
                    let at = oy * ow + lanes * q;
                    // SAFETY: the mask enables only columns inside the image, on an input row
                    // inside it (else nothing is read). The store stays in the entry's row:
                    // whole where a vector fits (lanes past the output row land on later
                    // output rows, which are written after it), else only the row's outputs.
                    // AVX2's masked stores are slow on AMD's cores.
                    unsafe {
                        let src = x.as_ptr().wrapping_offset(origin + (oy * w + lanes * q) as isize);
                        let v = V::load_masked(src, mask);
                        let to = row.as_mut_ptr().add(at);
                        if at + lanes <= len {
                            v.store(to);
                        } else {
                            v.store_first(to, (ow - lanes * q).min(lanes));
                        }
                    }
                }
            }
        }
    }

    /// Each input row gathers what every patch entry read from it, in registers, and is
    /// written once: adding into memory entry by entry would read values just stored by
    /// masked stores, which the CPU cannot forward.
    ///
    /// # Safety
    /// The CPU must have `V`'s level, and `cols` must hold the unfolded rows (row `r` at
    /// `r·stride + offset`, `positions` long).
    #[inline(always)]
    unsafe fn col2im(&self, cols: &[f32], stride: usize, offset: usize, dx: &mut [f32]) {
        let s = &self.shape;
        let (k, p, h, w, ow, lanes) = (s.kernel, s.padding, s.height, s.width, s.out_width(), V::LANES);
        let vectors = w.div_ceil(lanes);
        // Input column x reads output column x + p - j, inside the output row where
        // 0 <= x + p - j < ow.
        // SAFETY (`V` methods): the caller's promise.
        let mut reach = [[unsafe { V::lanes(0, 0) }; Q]; MAX_KERNEL];
        for (j, reach) in reach.iter_mut().enumerate() {
            for (q, mask) in reach.iter_mut().enumerate() {
                let first = q * lanes;
                let (lo, hi) = lanes_inside(first, lanes, w, p, j, ow);
                *mask = unsafe { V::lanes(lo, hi) };
            }
        }
        for c in 0..s.in_channels {
            for y in 0..h {
                let mut acc = [unsafe { V::zero() }; Q];
                for i in 0..k {
                    // Output row y + p - i, if there is one.
                    let Some(oy) = (y + p).checked_sub(i).filter(|&oy| oy < s.out_height()) else { continue };
                    for (j, reach) in reach.iter().enumerate().take(k) {
                        let r = (c * k + i) * k + j;
                        // SAFETY: row r of the unfolded matrix, output row oy, the columns the
                        // mask enables (inside that row); the caller promised `cols` holds it.
                        unsafe {
                            let at = cols
                                .as_ptr()
                                .add(r * stride + offset + oy * ow)
                                .wrapping_offset(p as isize - j as isize);
                            for (q, acc) in acc.iter_mut().enumerate().take(vectors) {
                                let v = V::load_masked(at.wrapping_add(lanes * q), reach[q]);
                                *acc = acc.add(v);
                            }
                        }
                    }
                }
                // SAFETY: input row (c, y), its `w` values.
                unsafe {
                    let at = dx.as_mut_ptr().add((c * h + y) * w);
                    for (q, acc) in acc.iter().enumerate().take(vectors) {
                        let (n, to) = ((w - lanes * q).min(lanes), at.add(lanes * q));
                        V::load_first(to, n).add(*acc).store_first(to, n);
                    }
                }
            }
        }
    }
}

/// [`Lines::im2col`] with the `Lines` for `V`'s width.
///
/// # Safety
/// As [`Lines::im2col`], and the shape must fit ([`lines_fit`]).
#[inline(always)]
unsafe fn im2col_any<V: F32s>(shape: &Conv2dShape, x: &[f32], cols: &mut [f32], stride: usize, offset: usize) {
    // SAFETY: the caller's promise.
    unsafe {
        match V::LANES {
            16 => Lines::<V, 2>::new(shape).im2col(x, cols, stride, offset),
            8 => Lines::<V, 4>::new(shape).im2col(x, cols, stride, offset),
            _ => Lines::<V, 8>::new(shape).im2col(x, cols, stride, offset),
        }
    }
}

/// [`Lines::col2im`] with the `Lines` for `V`'s width.
///
/// # Safety
/// As [`Lines::col2im`], and the shape must fit ([`lines_fit`]).
#[inline(always)]
unsafe fn col2im_any<V: F32s>(shape: &Conv2dShape, cols: &[f32], stride: usize, offset: usize, dx: &mut [f32]) {
    // SAFETY: the caller's promise.
    unsafe {
        match V::LANES {
            16 => Lines::<V, 2>::new(shape).col2im(cols, stride, offset, dx),
            8 => Lines::<V, 4>::new(shape).col2im(cols, stride, offset, dx),
            _ => Lines::<V, 8>::new(shape).col2im(cols, stride, offset, dx),
        }
    }
}

simd::kernel! {
    /// [`im2col_any`] at a level.
    unsafe fn im2col_lines(shape: &Conv2dShape, x: &[f32], cols: &mut [f32], stride: usize, offset: usize)
        => im2col_any;
}

simd::kernel! {
    /// [`col2im_any`] at a level.
    unsafe fn col2im_lines(shape: &Conv2dShape, cols: &[f32], stride: usize, offset: usize, dx: &mut [f32])
        => col2im_any;
}

/// A run of one row of the unfolded matrix: in the padding, or read from the input at
/// `from`, `from + step`, ...
enum Segment<T> {
    Zeros(T),
    Copy { out: T, from: usize, step: usize },
}

/// Walks the unfolded matrix's rows (one per patch entry `(c, i, j)`) as runs along each row of
/// output positions, so that the work is copies of whole runs rather than an index per entry.
#[inline(always)]
fn for_each_segment<'a, T, S>(shape: &Conv2dShape, rows: impl Iterator<Item = S>, mut f: impl FnMut(Segment<T>))
where
    S: SplitRun<'a, T>,
{
    let (oh, ow, k, s, p) = (shape.out_height(), shape.out_width(), shape.kernel, shape.stride, shape.padding);
    let (h, w) = (shape.height, shape.width);
    for (r, mut row) in rows.enumerate() {
        let (c, i, j) = (r / (k * k), (r / k) % k, r % k);
        // Output columns whose input column `ox·s + j - p` lies inside the image.
        let lo = p.saturating_sub(j).div_ceil(s).min(ow);
        let hi = if w + p > j { ((w + p - j - 1) / s + 1).min(ow) } else { 0 }.max(lo);
        for oy in 0..oh {
            let line = row.take(ow);
            let y = (oy * s + i).checked_sub(p).filter(|&y| y < h);
            let Some(y) = y else {
                f(Segment::Zeros(line));
                continue;
            };
            let (left, rest) = S::split(line, lo);
            let (mid, right) = S::split(rest, hi - lo);
            f(Segment::Zeros(left));
            // No column of this row inside the image (a kernel wider than the padded input's
            // middle): nothing to copy, and no place in the image to copy from.
            if hi > lo {
                f(Segment::Copy { out: mid, from: (c * h + y) * w + lo * s + j - p, step: s });
            }
            f(Segment::Zeros(right));
        }
    }
}

/// A row of the unfolded matrix, cut into runs: mutable for [`im2col`], shared for
/// [`col2im_add`].
trait SplitRun<'a, T> {
    /// The next `n` entries.
    fn take(&mut self, n: usize) -> T;
    /// `run` split after `n` entries.
    fn split(run: T, n: usize) -> (T, T);
}

impl<'a> SplitRun<'a, &'a mut [f32]> for &'a mut [f32] {
    fn take(&mut self, n: usize) -> &'a mut [f32] {
        let (head, tail) = std::mem::take(self).split_at_mut(n);
        *self = tail;
        head
    }

    fn split(run: &'a mut [f32], n: usize) -> (&'a mut [f32], &'a mut [f32]) {
        run.split_at_mut(n)
    }
}

impl<'a> SplitRun<'a, &'a [f32]> for &'a [f32] {
    fn take(&mut self, n: usize) -> &'a [f32] {
        let (head, tail) = self.split_at(n);
        *self = tail;
        head
    }

    fn split(run: &'a [f32], n: usize) -> (&'a [f32], &'a [f32]) {
        run.split_at(n)
    }
}

/// Buffers for [`conv2d`], [`conv2d_forward`] and [`conv2d_backward`] (a chunk's product before
/// it is laid out sample by sample; [`conv2d_forward`]'s unfolded columns), reused from call to
/// call: once large enough, nothing is allocated.
#[derive(Debug, Clone, Default)]
pub struct ConvScratch {
    product: Vec<f32>,
    columns: Vec<f32>,
    padded: crate::padded::Scratch,
    winograd: crate::winograd::Scratch,
}

/// The multiply-adds of one sample's forward pass through a convolution of `shape` (each
/// gradient takes as many): `out·patch_len·positions` directly, 4/9 of that where Winograd's
/// method takes the shape (16 for each 2x2 block of outputs and input channel rather than 36;
/// its transforms only add).
pub fn conv2d_multiply_adds(shape: &Conv2dShape) -> usize {
    let direct = shape.out_channels * shape.patch_len() * shape.positions();
    if crate::winograd::fits(shape) { direct / 9 * 4 } else { direct }
}

/// `y = conv2d(x, w) + bias` for a batch: `x` is `N x in_len`, `w` is `out x patch_len`, `y` is
/// `N x out_len`. The batch's patches are unfolded side by side into `cols` (`patch_len x
/// N·positions`), so that the whole batch is one matrix product, and left there for
/// [`conv2d_backward`]; for a stride-1 shape whose output is nearly as wide as its padded
/// input, `cols` holds each sample's zero-padded input instead, which the products read
/// shifted; where Winograd's method takes the shape, nothing (its backward pass pads `x`
/// again). `cols` grows as needed.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn conv2d(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    cols: &mut Vec<f32>,
    scratch: &mut ConvScratch,
    y: ArrayViewMut2<f32>,
) {
    conv2d_at(Simd::get(), x, w, bias, shape, cols, scratch, y);
}

/// [`conv2d`] for a forward pass alone (inference): the patches are unfolded a few samples at
/// a time into `scratch` and not kept, so memory stays that of a few samples' columns however
/// large the batch.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn conv2d_forward(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut ConvScratch,
    y: ArrayViewMut2<f32>,
) {
    conv2d_forward_at(Simd::get(), x, w, bias, shape, scratch, y);
}

#[track_caller]
fn conv2d_forward_at(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut ConvScratch,
    y: ArrayViewMut2<f32>,
) {
    // The scratch's own columns, reused from call to call (taking a Vec allocates nothing).
    let mut columns = std::mem::take(&mut scratch.columns);
    conv2d_keeping(simd, x, w, bias, shape, &mut columns, false, scratch, y);
    scratch.columns = columns;
}

#[track_caller]
#[allow(clippy::too_many_arguments)]
fn conv2d_at(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    cols: &mut Vec<f32>,
    scratch: &mut ConvScratch,
    y: ArrayViewMut2<f32>,
) {
    conv2d_keeping(simd, x, w, bias, shape, cols, true, scratch, y);
}

/// The forward pass by whichever method takes `shape`; with `keep`, what the backward pass
/// needs besides the input stays in `cols`.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn conv2d_keeping(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    cols: &mut Vec<f32>,
    keep: bool,
    scratch: &mut ConvScratch,
    y: ArrayViewMut2<f32>,
) {
    if crate::winograd::fits(shape) {
        check(x.dim(), w.dim(), y.dim(), shape);
        // Nothing is kept: the backward pass pads the input again.
        crate::winograd::forward(simd, x, w, bias, shape, &mut scratch.winograd, y);
    } else if crate::padded::fits(shape) {
        check(x.dim(), w.dim(), y.dim(), shape);
        crate::padded::forward(simd, x, w, bias, shape, cols, keep, &mut scratch.padded, y);
    } else {
        conv2d_chunks(simd, x, w, bias, shape, cols, keep, &mut scratch.product, y);
    }
}

/// The convolution a few samples at a time (eight of LeNet-5's), so that their unfolded
/// columns are still in the cache when the product reads them. With `keep`, every sample's
/// columns stay in `cols` for the backward pass; without, each chunk reuses the same space.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn conv2d_chunks(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    cols: &mut Vec<f32>,
    keep: bool,
    tmp: &mut Vec<f32>,
    mut y: ArrayViewMut2<f32>,
) {
    check(x.dim(), w.dim(), y.dim(), shape);
    let (n, k, p, o) = (x.nrows(), shape.patch_len(), shape.positions(), shape.out_channels);
    let per_chunk = chunk_len(n, k * p);
    let width = if keep { n * p } else { per_chunk * p };
    cols.resize(k * width, 0.0);
    tmp.resize(o * per_chunk * p, 0.0);
    for samples in chunks(n, k * p) {
        // The chunk's first column: its place in the whole batch's columns, or the start.
        let first = if keep { samples.start * p } else { 0 };
        for (t, s) in samples.clone().enumerate() {
            let row = x.row(s);
            im2col_rows(simd, row.to_slice().expect("rows of a standard matrix"), shape, cols, width, first + t * p);
        }
        let span = samples.len() * p;
        let c = ArrayView2::from_shape((k, width), &cols[..]).expect("sized above");
        let mut out = ArrayViewMut2::from_shape((o, span), &mut tmp[..o * span]).expect("sized above");
        matmul_at(simd, 1.0, w, c.slice(ndarray::s![.., first..first + span]), 0.0, out.view_mut());
        // From [out, sample·position] to each sample's [out, position], with the bias.
        for (t, s) in samples.enumerate() {
            let mut yn = y.row_mut(s);
            let yn = yn.as_slice_mut().expect("standard rows");
            for oc in 0..o {
                let b = bias.map_or(0.0, |b| b[oc]);
                let src = &tmp[oc * span + t * p..oc * span + (t + 1) * p];
                yn[oc * p..(oc + 1) * p].iter_mut().zip(src).for_each(|(y, &v)| *y = v + b);
            }
        }
    }
}

/// The gradients of [`conv2d`] given `dy` (`N x out_len`), with the input `x` it was given
/// (standard rows) and `cols` as it left them for that input: `dw = beta_w·dw +
/// Σ_n dy_n·colsᵀ`, `db = beta_b·db + Σ over samples and positions of dy`, and, when asked,
/// `dx = beta_x·dx + col2im(wᵀ·dy_n)` (which overwrites unfolded `cols`; padded inputs are
/// left as they are).
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    cols: &mut [f32],
    scratch: &mut ConvScratch,
    dw: (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
    dx: Option<(ArrayViewMut2<f32>, f32)>,
) {
    conv2d_backward_at(Simd::get(), x, w, dy, shape, cols, scratch, dw, db, dx);
}

#[track_caller]
#[allow(clippy::too_many_arguments)]
fn conv2d_backward_at(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    cols: &mut [f32],
    scratch: &mut ConvScratch,
    (dw, beta_w): (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
    dx: Option<(ArrayViewMut2<f32>, f32)>,
) {
    let (n, k, p, o) = (dy.nrows(), shape.patch_len(), shape.positions(), shape.out_channels);
    assert!(shape.is_valid(), "conv2d: invalid shape {shape:?}");
    assert_eq!(w.dim(), (o, k), "conv2d_backward: weight {:?} for {shape:?}", w.dim());
    assert_eq!(dy.ncols(), shape.out_len(), "conv2d_backward: output gradient for {shape:?}");
    assert_eq!(x.dim(), (dy.nrows(), shape.in_len()), "conv2d_backward: input for {shape:?}");
    if crate::winograd::fits(shape) {
        crate::winograd::backward(simd, x, w, dy, shape, &mut scratch.winograd, (dw, beta_w), db, dx);
        return;
    }
    if crate::padded::fits(shape) {
        crate::padded::backward(simd, w, dy, shape, cols, &mut scratch.padded, (dw, beta_w), db, dx);
        return;
    }
    let tmp = &mut scratch.product;
    assert_eq!(cols.len(), k * n * p, "conv2d_backward: the columns conv2d left for this batch");
    // dy from each sample's [out, position] to [out, sample·position].
    tmp.resize(o * n * p, 0.0);
    for (s, dy_n) in dy.rows().into_iter().enumerate() {
        let dy_n = dy_n.to_slice().expect("standard rows");
        for oc in 0..o {
            tmp[oc * n * p + s * p..oc * n * p + (s + 1) * p].copy_from_slice(&dy_n[oc * p..(oc + 1) * p]);
        }
    }
    let d = ArrayView2::from_shape((o, n * p), &tmp[..]).expect("sized above");
    let (mut dw, mut dx) = (dw, dx);
    if n == 0 {
        dw.map_inplace(|g| *g = if beta_w == 0.0 { 0.0 } else { beta_w * *g });
    }
    if let Some((dx, beta_x)) = dx.as_mut() {
        assert_eq!(dx.dim(), (n, shape.in_len()), "conv2d_backward: input gradient shape");
        if *beta_x == 0.0 {
            dx.fill(0.0);
        } else if *beta_x != 1.0 {
            *dx *= *beta_x;
        }
    }
    // A few samples at a time, as in the forward pass: each chunk's columns serve the weight
    // gradient, then are overwritten by the input gradient's, while in the cache.
    for (part, samples) in chunks(n, k * p).enumerate() {
        let span = samples.start * p..samples.end * p;
        let (d_part, columns) = (d.slice(ndarray::s![.., span.clone()]), ArrayView2::from_shape((k, n * p), &cols[..]));
        let columns = columns.expect("sized by the check");
        matmul_nt_at(
            simd,
            1.0,
            d_part,
            columns.slice(ndarray::s![.., span.clone()]),
            if part == 0 { beta_w } else { 1.0 },
            dw.view_mut(),
        );
        if let Some((dx, _)) = dx.as_mut() {
            let mut dcols = ArrayViewMut2::from_shape((k, n * p), &mut cols[..]).expect("sized by the check");
            matmul_tn_at(simd, 1.0, w, d_part, 0.0, dcols.slice_mut(ndarray::s![.., span]));
            for s in samples {
                let mut dxn = dx.row_mut(s);
                col2im_rows(simd, cols, n * p, s * p, shape, dxn.as_slice_mut().expect("standard rows"));
            }
        }
    }
    if let Some((mut db, beta_b)) = db {
        for (g, row) in db.iter_mut().zip(d.rows()) {
            let sum = row.sum();
            *g = if beta_b == 0.0 { sum } else { beta_b * *g + sum };
        }
    }
}

/// Consecutive samples, as many as keep their unfolded columns (`per_sample` values each)
/// within about 512 KiB, half of a core's L2 cache on common CPUs.
fn chunks(n: usize, per_sample: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = chunk_len(n, per_sample);
    (0..n).step_by(size).map(move |start| start..(start + size).min(n))
}

/// The samples of each of [`chunks`]'s chunks (the last may have fewer).
fn chunk_len(n: usize, per_sample: usize) -> usize {
    (512 * 1024 / 4 / per_sample.max(1)).clamp(1, n.max(1))
}

#[track_caller]
pub(crate) fn check(x: (usize, usize), w: (usize, usize), y: (usize, usize), shape: &Conv2dShape) {
    assert!(shape.is_valid(), "conv2d: invalid shape {shape:?}");
    assert_eq!(x.1, shape.in_len(), "conv2d: input rows of {} for {shape:?}", x.1);
    assert_eq!(w, (shape.out_channels, shape.patch_len()), "conv2d: weight {w:?} for {shape:?}");
    assert_eq!(y, (x.0, shape.out_len()), "conv2d: output {y:?} for {} samples of {shape:?}", x.0);
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2};

    use super::*;

    /// For each patch entry `(c, i, j)` and output position `(oy, ox)`, the input offset read,
    /// or `None` in the padding.
    fn source(sh: &Conv2dShape, c: usize, i: usize, j: usize, oy: usize, ox: usize) -> Option<usize> {
        let y = (oy * sh.stride + i).checked_sub(sh.padding)?;
        let x = (ox * sh.stride + j).checked_sub(sh.padding)?;
        (y < sh.height && x < sh.width).then(|| (c * sh.height + y) * sh.width + x)
    }

    fn shape(in_channels: usize, h: usize, w: usize, out: usize, k: usize, s: usize, p: usize) -> Conv2dShape {
        Conv2dShape { in_channels, height: h, width: w, out_channels: out, kernel: k, stride: s, padding: p }
    }

    /// The definition, term by term.
    fn naive(x: &[f32], w: &[f32], b: &[f32], sh: &Conv2dShape) -> Vec<f32> {
        let (oh, ow, k) = (sh.out_height(), sh.out_width(), sh.kernel);
        let mut y = vec![0.0; sh.out_len()];
        for o in 0..sh.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[o];
                    for c in 0..sh.in_channels {
                        for i in 0..k {
                            for j in 0..k {
                                if let Some(s) = source(sh, c, i, j, oy, ox) {
                                    acc += w[((o * sh.in_channels + c) * k + i) * k + j] * x[s];
                                }
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn the_forward_only_convolution_gives_the_same_bits_in_less_memory() {
        // Three samples. 3x3 on 28 pixels from 5 channels: each sample's padded input (30 x 30)
        // is kept for the backward pass, or one at a time; from 16 channels, by Winograd's
        // method, nothing. LeNet-5's second layer with 32 input channels: patches of 800 x 100
        // values, three chunks of one sample.
        let cases = [
            (shape(5, 28, 28, 4, 3, 1, 1), 5 * 30 * 30),
            (shape(16, 28, 28, 4, 3, 1, 1), 0),
            (shape(32, 14, 14, 4, 5, 1, 0), 800 * 100),
        ];
        assert_eq!(
            cases.map(|(sh, _)| (crate::padded::fits(&sh), crate::winograd::fits(&sh))),
            [(true, false), (true, true), (false, false)]
        );
        for simd in Simd::every() {
            for (sh, per_sample) in cases {
                let x = Array2::from_shape_fn((3, sh.in_len()), |(n, i)| ((n * 31 + i * 7) % 17) as f32 / 8.0 - 1.0);
                let w = Array2::from_shape_fn((4, sh.patch_len()), |(o, i)| ((o * 5 + i * 3) % 11) as f32 / 10.0 - 0.5);
                let b = Array1::from(vec![0.1, -0.2, 0.3, 0.0]);
                let (mut kept, mut alone) = (Array2::zeros((3, sh.out_len())), Array2::zeros((3, sh.out_len())));
                let (mut cols, mut scratch) = (Vec::new(), ConvScratch::default());
                conv2d_at(simd, x.view(), w.view(), Some(b.view()), &sh, &mut cols, &mut scratch, kept.view_mut());
                let mut fresh = ConvScratch::default();
                conv2d_forward_at(simd, x.view(), w.view(), Some(b.view()), &sh, &mut fresh, alone.view_mut());
                assert_eq!(kept, alone, "{simd}, {sh:?}");
                assert_eq!(cols.len(), 3 * per_sample, "the backward pass's inputs, {simd}, {sh:?}");
                assert_eq!(fresh.columns.len(), per_sample, "one sample's inputs, {simd}, {sh:?}");
            }
        }
    }

    #[test]
    fn output_sizes_round_down_as_in_pytorch() {
        let s = shape(1, 28, 28, 6, 5, 1, 2);
        assert_eq!((s.out_height(), s.out_width(), s.out_len()), (28, 28, 6 * 784));
        let s = shape(3, 7, 6, 4, 3, 2, 1);
        assert_eq!((s.out_height(), s.out_width()), (4, 3));
        assert!(!shape(1, 3, 3, 1, 5, 1, 0).is_valid());
    }

    #[test]
    fn the_product_is_the_definitions_sum() {
        for sh in [
            shape(3, 7, 6, 4, 3, 1, 0),
            shape(3, 7, 6, 4, 3, 2, 1),
            shape(1, 8, 8, 2, 5, 1, 2),
            shape(3, 7, 14, 4, 3, 1, 1),
            shape(2, 5, 30, 3, 3, 1, 1),
        ] {
            let n = 2;
            let x = Array2::from_shape_fn((n, sh.in_len()), |(a, b)| ((a * 31 + b * 7) % 11) as f32 - 5.0);
            let w =
                Array2::from_shape_fn((sh.out_channels, sh.patch_len()), |(a, b)| ((a * 5 + b * 3) % 7) as f32 * 0.5);
            let b = Array1::from_shape_fn(sh.out_channels, |o| o as f32);
            for simd in Simd::every() {
                let mut y = Array2::zeros((n, sh.out_len()));
                conv2d_at(
                    simd,
                    x.view(),
                    w.view(),
                    Some(b.view()),
                    &sh,
                    &mut Vec::new(),
                    &mut ConvScratch::default(),
                    y.view_mut(),
                );
                for s in 0..n {
                    let want = naive(x.row(s).as_slice().unwrap(), w.as_slice().unwrap(), b.as_slice().unwrap(), &sh);
                    assert_eq!(y.row(s).to_vec(), want, "{simd}, {sh:?}");
                }
            }
        }
    }

    #[test]
    fn the_vector_unfolding_matches_the_walk() {
        for sh in [
            shape(6, 14, 14, 16, 5, 1, 0),
            shape(1, 28, 28, 6, 5, 1, 2),
            shape(2, 9, 30, 3, 3, 1, 1),
            shape(3, 5, 4, 2, 5, 1, 3),
            // One output row of 8, and rows of 16.
            shape(2, 3, 10, 3, 3, 1, 0),
            shape(1, 6, 18, 2, 3, 1, 0),
        ] {
            let x: Vec<f32> = (0..sh.in_len()).map(|v| (v % 13) as f32 - 6.0).collect();
            let len = sh.patch_len() * sh.positions();
            for simd in Simd::every() {
                let (mut fast, mut walk) = (vec![9.0; len], vec![7.0; len]);
                im2col_rows(simd, &x, &sh, &mut fast, sh.positions(), 0);
                im2col_walk(&x, &sh, walk.chunks_exact_mut(sh.positions()));
                assert_eq!(fast, walk, "{simd}, {sh:?}");
                // As one sample's block of a batch's rows: nothing outside it is written.
                let (positions, rows) = (sh.positions(), sh.patch_len());
                let (stride, offset) = (3 * positions + 5, positions + 2);
                let mut block = vec![9.0; rows * stride];
                im2col_rows(simd, &x, &sh, &mut block, stride, offset);
                for (r, row) in block.chunks_exact(stride).enumerate() {
                    assert_eq!(row[offset..offset + positions], walk[r * positions..][..positions], "{simd}, {sh:?}");
                    let outside = row[..offset].iter().chain(&row[offset + positions..]);
                    assert!(
                        outside.into_iter().all(|&v| v == 9.0),
                        "{simd}, {sh:?}: row {r} written outside its block"
                    );
                }
                let c: Vec<f32> = (0..len).map(|v| (v % 5) as f32 - 2.0).collect();
                let (mut fast, mut walk) = (vec![1.0; sh.in_len()], vec![1.0; sh.in_len()]);
                col2im_rows(simd, &c, sh.positions(), 0, &sh, &mut fast);
                col2im_walk(c.chunks_exact(sh.positions()), &sh, &mut walk);
                // Each input sums the same values in another order: integers, so exactly.
                assert_eq!(fast, walk, "{simd}, {sh:?}");
            }
        }
    }

    #[test]
    fn gradients_are_the_definitions() {
        // LeNet-5's second layer, unfolded in chunks (nine samples: three chunks). On shifted
        // rows of the padded input: 3x3 with padding 1 from 5 channels on 14 pixels, 3x3
        // without padding, 5x5 with padding 2 on 28 pixels, 1x1 with padding 1, and 3x3 with
        // padding 1 from 16 and 32 channels on an odd side (28x27, 15x14). Unfolded: a padded
        // 5x5 on a narrow input. By Winograd's method: the CNN's 3x3 on 28 pixels, 32 channels
        // on 14 (two groups of samples), 8 channels on 6x4, 4x2 and 2x2 (one tile across). One
        // buffer and scratch per level serve every shape, as a tape's do.
        let cases = [
            (shape(6, 14, 14, 16, 5, 1, 0), 9),
            (shape(16, 28, 28, 4, 3, 1, 1), 3),
            (shape(5, 14, 14, 6, 3, 1, 1), 4),
            (shape(3, 20, 20, 5, 3, 1, 0), 2),
            (shape(2, 28, 28, 3, 5, 1, 2), 2),
            (shape(2, 16, 16, 3, 1, 1, 1), 2),
            (shape(2, 6, 9, 3, 5, 1, 2), 2),
            (shape(32, 14, 14, 8, 3, 1, 1), 3),
            (shape(8, 6, 4, 3, 3, 1, 1), 5),
            (shape(8, 4, 2, 3, 3, 1, 1), 2),
            (shape(8, 2, 2, 3, 3, 1, 1), 3),
            (shape(16, 28, 27, 4, 3, 1, 1), 2),
            (shape(32, 15, 14, 8, 3, 1, 1), 3),
        ];
        assert!(chunks(9, cases[0].0.patch_len() * cases[0].0.positions()).count() > 1);
        let padded: Vec<bool> = cases.iter().map(|(sh, _)| crate::padded::fits(sh)).collect();
        assert_eq!(padded, [false, true, true, true, true, true, false, true, false, false, false, true, true]);
        let winograd: Vec<bool> = cases.iter().map(|(sh, _)| crate::winograd::fits(sh)).collect();
        assert_eq!(winograd, [false, true, false, false, false, false, false, true, true, true, true, false, false]);
        for simd in Simd::every() {
            let (mut cols, mut scratch) = (Vec::new(), ConvScratch::default());
            for (sh, n) in cases {
                let (o, c, k) = (sh.out_channels, sh.in_channels, sh.kernel);
                let x = Array2::from_shape_fn((n, sh.in_len()), |(a, b)| ((a * 31 + b * 7) % 11) as f32 - 5.0);
                let w = Array2::from_shape_fn((o, sh.patch_len()), |(a, b)| ((a * 5 + b * 3) % 7) as f32 - 3.0);
                let dy = Array2::from_shape_fn((n, sh.out_len()), |(a, b)| ((a * 3 + b * 11) % 5) as f32 - 2.0);
                // Accumulating into gradients (first pass), then overwriting them (second).
                for (beta_w, beta_b, beta_x) in [(0.5, 0.5, 1.0), (0.0, 0.0, 0.0)] {
                    // Integers: the sums are exact in any order.
                    let (oh, ow) = (sh.out_height(), sh.out_width());
                    let mut want_dw = Array2::from_elem(w.dim(), beta_w);
                    let mut want_dx = Array2::from_elem(x.dim(), 2.0 * beta_x);
                    let mut want_db = Array1::from_elem(o, -2.0 * beta_b);
                    for s in 0..n {
                        for oc in 0..o {
                            for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                                let g = dy[[s, (oc * oh + oy) * ow + ox]];
                                want_db[oc] += g;
                                let taps =
                                    (0..c).flat_map(|ci| (0..k).flat_map(move |i| (0..k).map(move |j| (ci, i, j))));
                                for (ci, i, j) in taps {
                                    if let Some(xi) = source(&sh, ci, i, j, oy, ox) {
                                        want_dw[[oc, (ci * k + i) * k + j]] += g * x[[s, xi]];
                                        want_dx[[s, xi]] += g * w[[oc, (ci * k + i) * k + j]];
                                    }
                                }
                            }
                        }
                    }
                    let mut y = Array2::zeros((n, sh.out_len()));
                    conv2d_at(simd, x.view(), w.view(), None, &sh, &mut cols, &mut scratch, y.view_mut());
                    let (mut dw, mut dx) = (Array2::from_elem(w.dim(), 1.0), Array2::from_elem(x.dim(), 2.0));
                    let mut db = Array1::from_elem(o, -2.0);
                    conv2d_backward_at(
                        simd,
                        x.view(),
                        w.view(),
                        dy.view(),
                        &sh,
                        &mut cols,
                        &mut scratch,
                        (dw.view_mut(), beta_w),
                        Some((db.view_mut(), beta_b)),
                        Some((dx.view_mut(), beta_x)),
                    );
                    for s in 0..n {
                        let want = naive(x.row(s).as_slice().unwrap(), w.as_slice().unwrap(), &vec![0.0; o], &sh);
                        assert_eq!(y.row(s).to_vec(), want, "{simd}, {sh:?}");
                    }
                    assert_eq!(dw, want_dw, "{simd}, {sh:?}, beta {beta_w}");
                    assert_eq!(dx, want_dx, "{simd}, {sh:?}, beta {beta_x}");
                    assert_eq!(db, want_db, "{simd}, {sh:?}, beta {beta_b}");
                }
                // An empty batch leaves only the scaling.
                let (x0, dy0) = (Array2::zeros((0, sh.in_len())), Array2::zeros((0, sh.out_len())));
                conv2d_at(
                    simd,
                    x0.view(),
                    w.view(),
                    None,
                    &sh,
                    &mut cols,
                    &mut scratch,
                    Array2::zeros((0, sh.out_len())).view_mut(),
                );
                let (mut dw, mut db) = (Array2::from_elem(w.dim(), 3.0), Array1::from_elem(o, 3.0));
                let dw_beta = (dw.view_mut(), 0.5);
                conv2d_backward_at(
                    simd,
                    x0.view(),
                    w.view(),
                    dy0.view(),
                    &sh,
                    &mut cols,
                    &mut scratch,
                    dw_beta,
                    Some((db.view_mut(), 0.5)),
                    None,
                );
                assert!(dw.iter().chain(&db).all(|&v| v == 1.5), "{simd}, {sh:?}, no samples");
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> = <x, col2im(c)> for any x and c.
        let sh = shape(2, 5, 4, 1, 3, 2, 1);
        let x: Vec<f32> = (0..sh.in_len()).map(|v| (v % 7) as f32 - 3.0).collect();
        let c: Vec<f32> = (0..sh.patch_len() * sh.positions()).map(|v| (v % 5) as f32 - 2.0).collect();
        let mut cols = vec![0.0; c.len()];
        im2col(&x, &sh, &mut cols);
        let mut back = vec![0.0; x.len()];
        col2im_add(&c, &sh, &mut back);
        let left: f32 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
        let right: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert_eq!(left, right);
    }
}
