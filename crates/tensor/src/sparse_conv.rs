//! Convolution of data that is mostly zeros: MNIST's pixels are 81% zeros, so a first
//! convolution only needs the terms of its nonzero pixels. Each nonzero input value is
//! scattered into the outputs its kernel window reaches (forward), and gathered with the output
//! gradients there (weight gradient): the same sums as [`conv2d`](crate::conv2d), in another
//! order, without the terms that are exactly zero.
//!
//! Output channels are kept contiguous (padded to a multiple of 8) while summing, so that each
//! term is one vector operation over the channels.
//!
//! With one input channel (MNIST's case), both directions work row by row instead: the forward
//! pass keeps a row's outputs in vectors and skips input rows without ink (at every level), and
//! the weight gradient keeps its sums in registers while visiting the nonzero pixels (where the
//! level's vectors hold a kernel row).

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

use simd::{F32s, Simd};

use crate::Conv2dShape;

/// Lanes of one vector operation over output channels.
const LANES: usize = 8;

/// Buffers for the sparse convolution, reused from call to call.
#[derive(Debug, Clone, Default)]
pub struct SparseConvScratch {
    /// The weight, transposed to `patch_len x channels` (channels padded).
    weight: Vec<f32>,
    /// One sample's outputs or output gradients, `positions x channels` (padded).
    outputs: Vec<f32>,
    /// Whether each row of one sample's input has a nonzero value.
    inked: Vec<bool>,
    /// One sample's input rows with ink, each between zero margins.
    margined: Vec<f32>,
}

fn padded(channels: usize) -> usize {
    channels.div_ceil(LANES) * LANES
}

/// Calls `f(kernel_index, position)` for every output position that input value `(c, yy, xx)`
/// takes part in, with the index of the kernel entry it meets there.
#[inline(always)]
fn windows(shape: &Conv2dShape, c: usize, yy: usize, xx: usize, mut f: impl FnMut(usize, usize)) {
    let (k, s, p) = (shape.kernel, shape.stride, shape.padding);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    // Kernel rows i with (yy + p - i) a multiple of s below s·oh: i from i_lo to min(k - 1, yy + p).
    let (ty, tx) = (yy + p, xx + p);
    let i_lo = (ty + 1).saturating_sub(s * oh);
    let j_lo = (tx + 1).saturating_sub(s * ow);
    if s == 1 {
        // Every kernel entry in range meets an output: no remainders to test.
        for i in i_lo..k.min(ty + 1) {
            let (row, kernel_row) = ((ty - i) * ow, (c * k + i) * k);
            for j in j_lo..k.min(tx + 1) {
                f(kernel_row + j, row + tx - j);
            }
        }
        return;
    }
    for i in i_lo..k.min(ty + 1) {
        if (ty - i) % s != 0 {
            continue;
        }
        let (row, kernel_row) = ((ty - i) / s * ow, (c * k + i) * k);
        for j in j_lo..k.min(tx + 1) {
            if (tx - j) % s == 0 {
                f(kernel_row + j, row + (tx - j) / s);
            }
        }
    }
}

/// `dst += v * src`, vector by vector (fused on AVX2/FMA machines, which round once per term).
#[inline(always)]
fn axpy<const FUSED: bool>(v: f32, src: &[[f32; LANES]], dst: &mut [[f32; LANES]]) {
    #[cfg(target_arch = "x86_64")]
    if FUSED {
        // SAFETY: the fused path is only taken on CPUs with AVX2 and FMA (see its callers).
        return unsafe { axpy_fma(v, src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = if FUSED { v.mul_add(s, *d) } else { *d + v * s };
        }
    }
}

/// [`axpy`] with one fused multiply-add per vector: what `mul_add` lane by lane computes. Sound
/// to call only where the CPU has AVX2 and FMA: [`axpy`] calls it from code compiled for them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn axpy_fma(v: f32, src: &[[f32; LANES]], dst: &mut [[f32; LANES]]) {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps};
    let v = _mm256_set1_ps(v);
    for (d, s) in dst.iter_mut().zip(src) {
        // SAFETY: each pointer is to eight f32s of an array.
        unsafe {
            _mm256_storeu_ps(
                d.as_mut_ptr(),
                _mm256_fmadd_ps(v, _mm256_loadu_ps(s.as_ptr()), _mm256_loadu_ps(d.as_ptr())),
            )
        };
    }
}

/// `y = conv2d(x, w) + bias` for a batch whose rows are mostly zeros.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn sparse_conv2d(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    y: ArrayViewMut2<f32>,
) {
    sparse_conv2d_at(Simd::get(), x, w, bias, shape, scratch, y);
}

#[track_caller]
fn sparse_conv2d_at(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    y: ArrayViewMut2<f32>,
) {
    crate::conv::check(x.dim(), w.dim(), y.dim(), shape);
    if rows_fit(shape) {
        // SAFETY: `forward_rows` needs only the level, which `simd` vouches for.
        return unsafe { forward_rows_at(simd, x, w, bias, shape, scratch, y) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`simd` says so).
        return unsafe { forward_avx2(x, w, bias, shape, scratch, y) };
    }
    forward::<false>(x, w, bias, shape, scratch, y);
}

/// Output channels computed together by [`forward_rows`]: LeNet-5's first layer has six.
const GROUP: usize = 6;

/// Whether [`forward_rows`] (and, where its kernel fits the vectors, [`backward_rows`]) handles
/// `shape`: one input channel, stride 1, and input and output rows of at most 32 values (the
/// backward pass keeps a bit per input column).
fn rows_fit(shape: &Conv2dShape) -> bool {
    shape.in_channels == 1 && shape.stride == 1 && shape.width <= 32 && shape.out_width() <= 32
}

/// The forward product a row of outputs at a time, for one-channel inputs such as MNIST's:
/// the sums of two vectors of an output row stay in registers for each of [`GROUP`] channels
/// (the whole row of 28 with AVX-512, half of it with AVX2) while every kernel row over an
/// input row with ink is added in, and the rows without ink, about a third of a digit, are
/// skipped. The outputs go straight into the channel-major layout, against one output channel
/// per lane and a transposition in the scattering path. Each row with ink is read from a copy
/// between zero margins, so that every load is a whole vector: the zeros stand for the padding.
///
/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
unsafe fn forward_rows<V: F32s>(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    mut y: ArrayViewMut2<f32>,
) {
    assert!(rows_fit(shape));
    let (o, k, p) = (shape.out_channels, shape.kernel, shape.padding);
    let (h, wd, oh, ow) = (shape.height, shape.width, shape.out_height(), shape.out_width());
    let (kk, lanes) = (k * k, V::LANES);
    // The weights and biases, in groups of GROUP channels, zero past the last channel.
    let groups = o.div_ceil(GROUP);
    let SparseConvScratch { weight, inked, margined, .. } = scratch;
    weight.clear();
    weight.resize(groups * GROUP * (kk + 1), 0.0);
    for ((oc, kidx), &v) in w.indexed_iter() {
        weight[oc * (kk + 1) + kidx] = v;
    }
    // Each channel's bias follows its weights.
    for oc in 0..o {
        weight[oc * (kk + 1) + kk] = bias.map_or(0.0, |b| b[oc]);
    }
    // Passes over a row's outputs, two vectors a pass. The output at column `col` meets input
    // column `col + j - p` with kernel column `j`: at `col + j` of a copy of the row after `p`
    // zeros, zeros after it as far as the last pass's loads reach.
    let passes = ow.div_ceil(2 * lanes);
    let pitch = (passes * 2 * lanes + k - 1).max(p + wd);
    margined.clear();
    margined.resize(h * pitch, 0.0);
    inked.resize(h, false);
    for (xn, mut yn) in x.rows().into_iter().zip(y.rows_mut()) {
        let (xn, yn) = (xn.to_slice().expect("standard rows"), yn.as_slice_mut().expect("standard rows"));
        for (r, row) in xn.chunks_exact(wd).enumerate() {
            inked[r] = row.iter().any(|&v| v != 0.0);
            if inked[r] {
                // Rows without ink are never read: what an earlier sample left there stays.
                margined[r * pitch + p..][..wd].iter_mut().zip(row).for_each(|(m, &v)| *m = v);
            }
        }
        for group in 0..groups {
            let wg = &weight[group * GROUP * (kk + 1)..(group + 1) * GROUP * (kk + 1)];
            for oy in 0..oh {
                for pass in 0..passes {
                    let base = pass * 2 * lanes;
                    let stored = [(ow - base).min(lanes), (ow - base).saturating_sub(lanes).min(lanes)];
                    let mut acc = [[unsafe { V::zero() }; 2]; GROUP];
                    for (c, acc) in acc.iter_mut().enumerate() {
                        *acc = [unsafe { V::splat(wg[c * (kk + 1) + kk]) }; 2];
                    }
                    for i in 0..k {
                        // Input row `oy + i - p`, if it is in the image and has ink.
                        let Some(r) = (oy + i).checked_sub(p).filter(|&r| r < h && inked[r]) else {
                            continue;
                        };
                        let row = &margined[r * pitch..(r + 1) * pitch];
                        for j in 0..k {
                            // SAFETY: `base + j + 2·lanes <= passes·2·lanes + k - 1 <= pitch`.
                            let (x0, x1) = unsafe {
                                let at = row.as_ptr().add(base + j);
                                (V::load(at), V::load(at.add(lanes)))
                            };
                            for (c, acc) in acc.iter_mut().enumerate() {
                                let wv = unsafe { V::splat(wg[c * (kk + 1) + i * k + j]) };
                                acc[0] = unsafe { wv.mul_add(x0, acc[0]) };
                                acc[1] = unsafe { wv.mul_add(x1, acc[1]) };
                            }
                        }
                    }
                    let at = oy * ow + base;
                    for (c, acc) in acc.iter().enumerate().take(o - group * GROUP) {
                        let plane = &mut yn[(group * GROUP + c) * oh * ow..][..oh * ow];
                        // SAFETY: within the channel's plane: both vectors whole where they
                        // fit (lanes past the pass's outputs land on outputs stored later, as
                        // passes and rows go up), else as many as `stored` says. AVX2's masked
                        // stores are slow on AMD's cores.
                        unsafe {
                            let out = plane.as_mut_ptr().add(at);
                            if at + 2 * lanes <= plane.len() {
                                acc[0].store(out);
                                acc[1].store(out.add(lanes));
                            } else {
                                acc[0].store_first(out, stored[0]);
                                acc[1].store_first(out.wrapping_add(lanes), stored[1]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`forward`] with fused multiply-adds.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    y: ArrayViewMut2<f32>,
) {
    forward::<true>(x, w, bias, shape, scratch, y);
}

#[inline(always)]
fn forward<const FUSED: bool>(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    mut y: ArrayViewMut2<f32>,
) {
    let (o, kk, p) = (shape.out_channels, shape.patch_len(), shape.positions());
    let lanes = padded(o);
    let SparseConvScratch { weight, outputs, .. } = scratch;
    weight.clear();
    weight.resize(kk * lanes, 0.0);
    for ((oc, kidx), &v) in w.indexed_iter() {
        weight[kidx * lanes + oc] = v;
    }
    outputs.resize(p * lanes, 0.0);
    let (hw, width) = (shape.height * shape.width, shape.width);
    for (xn, mut yn) in x.rows().into_iter().zip(y.rows_mut()) {
        outputs.fill(0.0);
        for (q, &v) in xn.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let (c, yy, xx) = (q / hw, (q % hw) / width, q % width);
            let (weight, outputs) = (weight.as_chunks::<LANES>().0, outputs.as_chunks_mut::<LANES>().0);
            let vectors = lanes / LANES;
            windows(shape, c, yy, xx, |kidx, pos| {
                let src = &weight[kidx * vectors..(kidx + 1) * vectors];
                axpy::<FUSED>(v, src, &mut outputs[pos * vectors..(pos + 1) * vectors]);
            });
        }
        let yn = yn.as_slice_mut().expect("standard rows");
        for oc in 0..o {
            let b = bias.map_or(0.0, |b| b[oc]);
            for (pos, out) in yn[oc * p..(oc + 1) * p].iter_mut().enumerate() {
                *out = outputs[pos * lanes + oc] + b;
            }
        }
    }
}

/// The weight and bias gradients of [`sparse_conv2d`] given `dy`: `dw = beta_w·dw + Σ` over the
/// nonzero inputs, `db = beta_b·db + Σ dy`. Data takes no gradient.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn sparse_conv2d_backward(
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    dw: (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
) {
    sparse_conv2d_backward_at(Simd::get(), x, dy, shape, scratch, dw, db);
}

#[track_caller]
fn sparse_conv2d_backward_at(
    simd: Simd,
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    dw: (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
) {
    crate::conv::check(x.dim(), dw.0.dim(), dy.dim(), shape);
    if rows_fit(shape) && shape.padding < shape.kernel && backward_rows_fit(shape.kernel, simd.lanes()) {
        // SAFETY: `backward_rows_any` needs only the level, which `simd` vouches for.
        return unsafe { backward_rows_at(simd, x, dy, shape, scratch, dw, db) };
    }
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`simd` says so).
        return unsafe { backward_avx2(x, dy, shape, scratch, dw, db) };
    }
    backward::<false>(x, dy, shape, scratch, dw, db);
}

simd::kernel! {
    /// [`forward_rows`] at a level.
    unsafe fn forward_rows_at<'a>(
        x: ArrayView2<'a, f32>,
        w: ArrayView2<'a, f32>,
        bias: Option<ArrayView1<'a, f32>>,
        shape: &Conv2dShape,
        scratch: &mut SparseConvScratch,
        y: ArrayViewMut2<'a, f32>,
    ) => forward_rows;
}

simd::kernel! {
    /// [`backward_rows_any`] at a level.
    unsafe fn backward_rows_at<'a>(
        x: ArrayView2<'a, f32>,
        dy: ArrayView2<'a, f32>,
        shape: &Conv2dShape,
        scratch: &mut SparseConvScratch,
        dw: (ArrayViewMut2<'a, f32>, f32),
        db: Option<(ArrayViewMut1<'a, f32>, f32)>,
    ) => backward_rows_any;
}

/// Whether [`backward_rows_any`] takes a kernel of `kernel` columns with vectors of `lanes`.
fn backward_rows_fit(kernel: usize, lanes: usize) -> bool {
    matches!((kernel, lanes), (3 | 5, 4 | 8 | 16))
}

/// [`backward_rows`] with the channels per pass that the level's registers hold: `G·K` sums
/// of `W` vectors each (as many as a kernel row needs), plus the loads (32 registers with
/// AVX-512, 16 otherwise), for the kernels [`backward_rows_fit`] takes.
///
/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
unsafe fn backward_rows_any<V: F32s>(
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    dw: (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
) {
    // SAFETY: the caller's promise.
    unsafe {
        match (shape.kernel, V::LANES) {
            (3, 16) => backward_rows::<V, 3, 10, 1>(x, dy, shape, scratch, dw, db),
            (5, 16) => backward_rows::<V, 5, 6, 1>(x, dy, shape, scratch, dw, db),
            (3, _) => backward_rows::<V, 3, 4, 1>(x, dy, shape, scratch, dw, db),
            (5, 8) => backward_rows::<V, 5, 2, 1>(x, dy, shape, scratch, dw, db),
            (5, _) => backward_rows::<V, 5, 1, 2>(x, dy, shape, scratch, dw, db),
            _ => unreachable!("backward_rows_fit takes kernels of 3 and 5"),
        }
    }
}

/// The weight gradient of a `K x K` kernel over one-channel inputs, `G` output channels at a
/// time: for each nonzero input value, each kernel row meets `K` neighbouring outputs of one
/// output row, which `W` unaligned vector loads read from a zero-margined copy of the output
/// gradient (lanes past `K` are ignored). The `G·K·W` sums stay in registers for the whole
/// batch, instead of being read and written back for every input value.
///
/// # Safety
/// The CPU must have `V`'s level, and `K <= W·V::LANES <= 16`.
#[inline(always)]
unsafe fn backward_rows<V: F32s, const K: usize, const G: usize, const W: usize>(
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    (mut dw, beta_w): (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
) {
    assert!(rows_fit(shape) && shape.kernel == K && shape.padding < K && K <= W * V::LANES && W * V::LANES <= 16);
    let (o, p, pad, lanes) = (shape.out_channels, shape.positions(), shape.padding, V::LANES);
    let (wd, oh, ow) = (shape.width, shape.out_height(), shape.out_width());
    // Each channel's output gradient inside a margin wide enough that every kernel row of
    // every input pixel reads within it (zeros where no output is), plus `W` vectors' slack.
    let margin = K - 1 - pad;
    let (pitch, plane_rows) = (ow + 2 * margin, oh + 2 * margin);
    let plane = pitch * plane_rows;
    let SparseConvScratch { outputs: planes, .. } = scratch;
    planes.clear();
    planes.resize(G * plane + W * lanes, 0.0);
    for group in (0..o).step_by(G) {
        let channels = (o - group).min(G);
        // SAFETY (all `V` methods): the CPU has V's level (the caller's promise).
        let mut acc = [[[unsafe { V::zero() }; W]; K]; G];
        for (xn, dy_n) in x.rows().into_iter().zip(dy.rows()) {
            let (xn, dy_n) = (xn.to_slice().expect("standard rows"), dy_n.to_slice().expect("standard rows"));
            for c in 0..channels {
                let src = &dy_n[(group + c) * p..(group + c + 1) * p];
                for (oy, row) in src.chunks_exact(ow).enumerate() {
                    let at = c * plane + (oy + margin) * pitch + margin;
                    // SAFETY: the row's `ow` values, into plane c's row oy + margin (asserted
                    // sizes), a vector at a time: a copy call per row of 28 costs more than
                    // the row. A vector past the row's end stores zeros beyond it, where the
                    // margins are zeros and the rows that follow are copied later, whole where
                    // that stays in `planes` (AVX2's masked stores are slow on AMD's cores).
                    unsafe {
                        let (from, to) = (row.as_ptr(), planes.as_mut_ptr().add(at));
                        for start in (0..ow).step_by(lanes) {
                            let n = (ow - start).min(lanes);
                            let v = V::load_first(from.add(start), n);
                            if at + start + lanes <= planes.len() {
                                v.store(to.add(start));
                            } else {
                                v.store_first(to.add(start), n);
                            }
                        }
                    }
                }
            }
            for (yy, row) in xn.chunks_exact(wd).enumerate() {
                // The nonzero values of the row (NaN kept, as the dense product would
                // propagate it), a vector of columns compared at a time.
                let mut nonzero = 0u32;
                for start in (0..wd).step_by(lanes) {
                    // SAFETY: the load stays within the row.
                    let v = unsafe { V::load_first(row.as_ptr().add(start), (wd - start).min(lanes)) };
                    nonzero |= unsafe { v.nonzero() } << start;
                }
                while nonzero != 0 {
                    let xx = nonzero.trailing_zeros() as usize;
                    nonzero &= nonzero - 1;
                    let v = unsafe { V::splat(row[xx]) };
                    // Kernel row i meets output row yy + pad - i, columns xx + pad - (K - 1)
                    // onwards (kernel columns K - 1 down to 0), in plane coordinates.
                    let first = (yy + pad + margin) * pitch + xx + pad + margin + 1 - K;
                    for (c, acc) in acc.iter_mut().enumerate().take(channels) {
                        for (i, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: within plane c: its rows yy + pad + margin - i are inside
                            // it (the margin), and the `W` vectors from any of its positions stay
                            // within the planes and their slack.
                            let at = unsafe { planes.as_ptr().add(c * plane + first - i * pitch) };
                            for (w, acc) in acc.iter_mut().enumerate() {
                                let g = unsafe { V::load(at.add(w * lanes)) };
                                *acc = unsafe { v.mul_add(g, *acc) };
                            }
                        }
                    }
                }
            }
        }
        for (c, acc) in acc.iter().enumerate().take(channels) {
            for (i, acc) in acc.iter().enumerate() {
                let mut sums = [0.0f32; 16];
                for (w, acc) in acc.iter().enumerate() {
                    // SAFETY: `W·LANES <= 16` floats into an array of sixteen (asserted).
                    unsafe { acc.store(sums.as_mut_ptr().add(w * lanes)) };
                }
                for j in 0..K {
                    let d = &mut dw[[group + c, i * K + j]];
                    let g = sums[K - 1 - j];
                    *d = if beta_w == 0.0 { g } else { beta_w * *d + g };
                }
            }
        }
    }
    bias_gradient(dy, shape, db);
}

/// `db = beta·db + Σ dy` over samples and positions, channel by channel.
#[inline]
fn bias_gradient(dy: ArrayView2<f32>, shape: &Conv2dShape, db: Option<(ArrayViewMut1<f32>, f32)>) {
    let p = shape.positions();
    if let Some((mut db, beta_b)) = db {
        for (oc, d) in db.iter_mut().enumerate() {
            let sum: f32 = dy
                .rows()
                .into_iter()
                .map(|r| lanes_sum(&r.to_slice().expect("standard rows")[oc * p..(oc + 1) * p]))
                .sum();
            *d = if beta_b == 0.0 { sum } else { beta_b * *d + sum };
        }
    }
}

/// The sum of `values` in sixteen running sums, added up at the end: one long chain of
/// dependent additions would take as many latencies as there are values.
#[inline]
fn lanes_sum(values: &[f32]) -> f32 {
    let mut sums = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        sums.iter_mut().zip(chunk).for_each(|(s, &v)| *s += v);
    }
    sums.iter_mut().zip(rest).for_each(|(s, &v)| *s += v);
    sums.iter().sum()
}

/// [`backward`] with fused multiply-adds.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    dw: (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
) {
    backward::<true>(x, dy, shape, scratch, dw, db);
}

#[inline(always)]
fn backward<const FUSED: bool>(
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut SparseConvScratch,
    (mut dw, beta_w): (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
) {
    let (o, kk, p) = (shape.out_channels, shape.patch_len(), shape.positions());
    let lanes = padded(o);
    // Here `weight` gathers the weight gradient, transposed, and `outputs` holds one sample's
    // output gradients, transposed.
    let SparseConvScratch { weight: grad, outputs: dyt, .. } = scratch;
    grad.clear();
    grad.resize(kk * lanes, 0.0);
    dyt.resize(p * lanes, 0.0);
    let (hw, width) = (shape.height * shape.width, shape.width);
    for (xn, dy_n) in x.rows().into_iter().zip(dy.rows()) {
        let dy_n = dy_n.to_slice().expect("standard rows");
        for oc in 0..o {
            for (pos, &g) in dy_n[oc * p..(oc + 1) * p].iter().enumerate() {
                dyt[pos * lanes + oc] = g;
            }
        }
        for (q, &v) in xn.iter().enumerate() {
            if v == 0.0 {
                continue;
            }
            let (c, yy, xx) = (q / hw, (q % hw) / width, q % width);
            let (dyt, grad) = (dyt.as_chunks::<LANES>().0, grad.as_chunks_mut::<LANES>().0);
            let vectors = lanes / LANES;
            windows(shape, c, yy, xx, |kidx, pos| {
                let src = &dyt[pos * vectors..(pos + 1) * vectors];
                axpy::<FUSED>(v, src, &mut grad[kidx * vectors..(kidx + 1) * vectors]);
            });
        }
    }
    for ((oc, kidx), d) in dw.indexed_iter_mut() {
        let g = grad[kidx * lanes + oc];
        *d = if beta_w == 0.0 { g } else { beta_w * *d + g };
    }
    bias_gradient(dy, shape, db);
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2};

    use super::*;

    #[test]
    fn sparse_and_dense_convolutions_agree() {
        for shape in [
            Conv2dShape { in_channels: 1, height: 9, width: 8, out_channels: 6, kernel: 5, stride: 1, padding: 2 },
            Conv2dShape { in_channels: 1, height: 28, width: 28, out_channels: 6, kernel: 5, stride: 1, padding: 2 },
            Conv2dShape { in_channels: 1, height: 12, width: 20, out_channels: 10, kernel: 3, stride: 1, padding: 0 },
            Conv2dShape { in_channels: 1, height: 6, width: 30, out_channels: 13, kernel: 5, stride: 1, padding: 2 },
            Conv2dShape { in_channels: 1, height: 7, width: 11, out_channels: 3, kernel: 4, stride: 1, padding: 1 },
            Conv2dShape { in_channels: 2, height: 7, width: 6, out_channels: 10, kernel: 3, stride: 2, padding: 1 },
            // No margin around the output gradient (padding = kernel - 1), rows of 16 outputs.
            Conv2dShape { in_channels: 1, height: 8, width: 14, out_channels: 9, kernel: 3, stride: 1, padding: 2 },
        ] {
            let n = 3;
            // About a fifth nonzero, and every third row blank, as around a digit: other rows
            // in each sample, so that a row with ink in one is blank in the next.
            let x = Array2::from_shape_fn((n, shape.in_len()), |(a, b)| {
                let blank = (b / shape.width + a) % 3 == 1;
                if (a * 13 + b * 7) % 5 == 0 && !blank { ((a + b) % 9) as f32 * 0.25 - 1.0 } else { 0.0 }
            });
            let w = Array2::from_shape_fn((shape.out_channels, shape.patch_len()), |(a, b)| {
                ((a * 3 + b * 5) % 11) as f32 * 0.1 - 0.5
            });
            let b = Array1::from_shape_fn(shape.out_channels, |o| o as f32 * 0.1);
            let dy = Array2::from_shape_fn((n, shape.out_len()), |(a, b)| ((a * 7 + b * 3) % 13) as f32 * 0.1 - 0.6);
            for simd in Simd::every() {
                let mut scratch = SparseConvScratch::default();
                let (mut dense, mut sparse) = (Array2::zeros(dy.dim()), Array2::zeros(dy.dim()));
                let (mut cols, mut tmp) = (Vec::new(), crate::ConvScratch::default());
                crate::conv2d(x.view(), w.view(), Some(b.view()), &shape, &mut cols, &mut tmp, dense.view_mut());
                sparse_conv2d_at(simd, x.view(), w.view(), Some(b.view()), &shape, &mut scratch, sparse.view_mut());
                let want = reference(&x, &w, &b, &dy, &shape);
                // Within what f32 sums of these terms can round to: a few ulps of their magnitude.
                let close = |got: f32, (value, magnitude): (f64, f64)| {
                    (f64::from(got) - value).abs() <= 1e-6 * magnitude + 1e-7
                };
                for ((&d, &s), &want) in dense.iter().zip(&sparse).zip(&want.y) {
                    assert!(close(d, want) && close(s, want), "{simd}, {shape:?}: forward {d} and {s} vs {want:?}");
                }
                let (mut dw_dense, mut dw_sparse) = (Array2::zeros(w.dim()), Array2::from_elem(w.dim(), 1.0));
                let (mut db_dense, mut db_sparse) = (Array1::zeros(b.dim()), Array1::from_elem(b.dim(), 1.0));
                crate::conv2d_backward(
                    x.view(),
                    w.view(),
                    dy.view(),
                    &shape,
                    &mut cols,
                    &mut tmp,
                    (dw_dense.view_mut(), 0.0),
                    Some((db_dense.view_mut(), 0.0)),
                    None,
                );
                sparse_conv2d_backward_at(
                    simd,
                    x.view(),
                    dy.view(),
                    &shape,
                    &mut scratch,
                    (dw_sparse.view_mut(), 0.0),
                    Some((db_sparse.view_mut(), 0.0)),
                );
                let pairs =
                    dw_dense.iter().zip(&dw_sparse).zip(&want.dw).chain(db_dense.iter().zip(&db_sparse).zip(&want.db));
                for ((&d, &s), &want) in pairs {
                    assert!(close(d, want) && close(s, want), "{simd}, {shape:?}: gradient {d} and {s} vs {want:?}");
                }
            }
        }
    }

    /// Each result in f64 with the sum of its terms' magnitudes.
    struct Reference {
        y: Vec<(f64, f64)>,
        dw: Vec<(f64, f64)>,
        db: Vec<(f64, f64)>,
    }

    /// The convolution's definition, loop by loop.
    fn reference(x: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>, dy: &Array2<f32>, s: &Conv2dShape) -> Reference {
        let (oh, ow, k) = (s.out_height(), s.out_width(), s.kernel);
        let mut y = vec![(0.0, 0.0); dy.len()];
        let mut dw = vec![(0.0, 0.0); w.len()];
        let mut db = vec![(0.0, 0.0); b.len()];
        for n in 0..x.nrows() {
            for oc in 0..s.out_channels {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let out = oc * oh * ow + oy * ow + ox;
                    let g = f64::from(dy[[n, out]]);
                    let y = &mut y[n * s.out_len() + out];
                    *y = (f64::from(b[oc]), f64::from(b[oc]).abs());
                    db[oc] = (db[oc].0 + g, db[oc].1 + g.abs());
                    for (c, i, j) in
                        (0..s.in_channels).flat_map(|c| (0..k).flat_map(move |i| (0..k).map(move |j| (c, i, j))))
                    {
                        let (iy, ix) =
                            ((oy * s.stride + i).checked_sub(s.padding), (ox * s.stride + j).checked_sub(s.padding));
                        let (Some(iy), Some(ix)) = (iy.filter(|&v| v < s.height), ix.filter(|&v| v < s.width)) else {
                            continue;
                        };
                        let xv = f64::from(x[[n, (c * s.height + iy) * s.width + ix]]);
                        let widx = (c * k + i) * k + j;
                        let t = xv * f64::from(w[[oc, widx]]);
                        *y = (y.0 + t, y.1 + t.abs());
                        let d = &mut dw[oc * s.patch_len() + widx];
                        *d = (d.0 + g * xv, d.1 + (g * xv).abs());
                    }
                }
            }
        }
        Reference { y, dw, db }
    }
}
