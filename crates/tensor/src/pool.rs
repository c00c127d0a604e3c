//! 2-D max pooling as PyTorch's `F.max_pool2d` computes it (no padding, output sizes rounded
//! down), with the position of each window's maximum kept for the gradient. On a tie the first
//! maximum in row-major order wins, as in PyTorch.

use ndarray::{ArrayView2, ArrayViewMut2};

/// The geometry of a pooling (max or average) over one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dShape {
    /// Channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl Pool2dShape {
    /// Output height: `(H - kernel) / stride + 1`, rounded down.
    pub fn out_height(&self) -> usize {
        (self.height - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        (self.width - self.kernel) / self.stride + 1
    }

    /// Values per input sample.
    pub fn in_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Values per output sample.
    pub fn out_len(&self) -> usize {
        self.channels * self.out_height() * self.out_width()
    }

    /// Whether the window fits the input and every size is positive.
    pub fn is_valid(&self) -> bool {
        self.channels > 0
            && self.kernel > 0
            && self.stride > 0
            && self.height >= self.kernel
            && self.width >= self.kernel
    }
}

/// `y` = the maximum of each window of `x` (both a batch of rows), and in `argmax` the index
/// within its row of the input each maximum came from.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn max_pool2d(x: ArrayView2<f32>, shape: &Pool2dShape, y: ArrayViewMut2<f32>, argmax: &mut Vec<u32>) {
    max_pool2d_at(simd::Simd::get(), x, shape, y, argmax);
}

#[track_caller]
fn max_pool2d_at(
    simd: simd::Simd,
    x: ArrayView2<f32>,
    shape: &Pool2dShape,
    mut y: ArrayViewMut2<f32>,
    argmax: &mut Vec<u32>,
) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd; // no vector path of its own here
    assert!(shape.is_valid(), "max_pool2d: invalid shape {shape:?}");
    assert_eq!(x.ncols(), shape.in_len(), "max_pool2d: input rows of {} for {shape:?}", x.ncols());
    assert_eq!(y.dim(), (x.nrows(), shape.out_len()), "max_pool2d: output for {shape:?}");
    let (k, s) = (shape.kernel, shape.stride);
    argmax.resize(x.nrows() * shape.out_len(), 0);
    for ((xn, mut yn), index) in x.rows().into_iter().zip(y.rows_mut()).zip(argmax.chunks_exact_mut(shape.out_len())) {
        let xn = xn.to_slice().expect("standard rows");
        let yn = yn.as_slice_mut().expect("standard rows");
        #[cfg(target_arch = "x86_64")]
        if k == 2 && s == 2 && simd.avx512() {
            // SAFETY: the CPU has AVX-512F (`simd` says so).
            unsafe { pool_2x2_avx512(xn, shape, yn, index) };
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if k == 2 && s == 2 && simd.avx2() {
            // SAFETY: the CPU has AVX2 (`simd` says so).
            unsafe { pool_2x2_avx2(xn, shape, yn, index) };
            continue;
        }
        if k == 2 && s == 2 && !has_nan(xn) {
            pool_2x2(xn, shape, yn, index);
            continue;
        }
        pool_any(xn, shape, yn, index);
    }
}

/// Whether `x` holds a NaN, looked for in blocks without stopping inside one: a search that
/// stops at the first NaN tests one value at a time, this one whole vectors.
fn has_nan(x: &[f32]) -> bool {
    x.chunks(64).any(|block| block.iter().fold(false, |nan, v| nan | v.is_nan()))
}

/// One sample of [`max_pool2d`], for any window and stride.
fn pool_any(xn: &[f32], shape: &Pool2dShape, yn: &mut [f32], index: &mut [u32]) {
    let (h, w, k, s) = (shape.height, shape.width, shape.kernel, shape.stride);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    let mut o = 0;
    for c in 0..shape.channels {
        let plane = &xn[c * h * w..(c + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let first = oy * s * w + ox * s;
                let (mut best, mut value) = (first, plane[first]);
                for i in 0..k {
                    let row = &plane[first + i * w..first + i * w + k];
                    for (j, &v) in row.iter().enumerate() {
                        // Strictly greater: on a tie the first in row-major order stays. A
                        // NaN wins, as it does in PyTorch.
                        if v > value || (v.is_nan() && !value.is_nan()) {
                            (best, value) = (first + i * w + j, v);
                        }
                    }
                }
                yn[o] = value;
                index[o] = (c * h * w + best) as u32;
                o += 1;
            }
        }
    }
}

/// [`max_pool2d`] for 2x2 windows with stride 2 and no NaN, the common case, without the
/// general loops.
fn pool_2x2(xn: &[f32], shape: &Pool2dShape, yn: &mut [f32], index: &mut [u32]) {
    let (h, w) = (shape.height, shape.width);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    let mut o = 0;
    for c in 0..shape.channels {
        for oy in 0..oh {
            let top = c * h * w + 2 * oy * w;
            let (upper, lower) = (&xn[top..top + w], &xn[top + w..top + 2 * w]);
            let (yn, index) = (&mut yn[o..o + ow], &mut index[o..o + ow]);
            for (ox, (y, index)) in yn.iter_mut().zip(index.iter_mut()).enumerate() {
                let x = 2 * ox;
                // In row-major order, replacing only on a strictly greater value: selections
                // rather than branches, which the compiler turns into vector code.
                let (mut best, mut value) = (0, upper[x]);
                for (v, offset) in [(upper[x + 1], 1), (lower[x], w), (lower[x + 1], w + 1)] {
                    let replace = v > value;
                    best = if replace { offset } else { best };
                    value = if replace { v } else { value };
                }
                *y = value;
                *index = (top + x + best) as u32;
            }
            o += ow;
        }
    }
}

/// [`max_pool2d`] for 2x2 windows with stride 2, sixteen windows of a row at a time: the
/// even and odd columns of both input rows are separated by permutations, and the four
/// candidates compared in row-major order with the general loop's rule (strictly greater
/// replaces, a NaN replaces a number), without a branch per window.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_2x2_avx512(xn: &[f32], shape: &Pool2dShape, yn: &mut [f32], index: &mut [u32]) {
    use std::arch::x86_64::*;
    let (h, w) = (shape.height, shape.width);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    assert!(xn.len() == shape.in_len() && yn.len() == shape.out_len() && index.len() == yn.len());
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
    let lane_x = _mm512_slli_epi32::<1>(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    let replaces = |v: __m512, value: __m512| {
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, value)
            | (_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v) & _mm512_cmp_ps_mask::<_CMP_ORD_Q>(value, value))
    };
    let mut o = 0;
    for c in 0..shape.channels {
        for oy in 0..oh {
            let top = c * h * w + 2 * oy * w;
            for ox in (0..ow).step_by(16) {
                let count = (ow - ox).min(16);
                let (outs, ins) = (((1u32 << count) - 1) as u16, (1u64 << (2 * count)) - 1);
                let (lo, hi) = ((ins & 0xffff) as u16, (ins >> 16) as u16);
                // SAFETY: the masks keep the loads within the window rows' 2·count values, in
                // `xn` (asserted lengths), and the stores within the row's `count` outputs.
                unsafe {
                    let at = xn.as_ptr().add(top + 2 * ox);
                    let load = |p: *const f32| {
                        let (a, b) = (_mm512_maskz_loadu_ps(lo, p), _mm512_maskz_loadu_ps(hi, p.wrapping_add(16)));
                        (_mm512_permutex2var_ps(a, evens, b), _mm512_permutex2var_ps(a, odds, b))
                    };
                    let ((u0, u1), (l0, l1)) = (load(at), load(at.add(w)));
                    let first = _mm512_add_epi32(_mm512_set1_epi32((top + 2 * ox) as i32), lane_x);
                    let (mut value, mut best) = (u0, first);
                    for (v, offset) in [(u1, 1), (l0, w as i32), (l1, w as i32 + 1)] {
                        let m = replaces(v, value);
                        value = _mm512_mask_mov_ps(value, m, v);
                        best = _mm512_mask_mov_epi32(best, m, _mm512_add_epi32(first, _mm512_set1_epi32(offset)));
                    }
                    _mm512_mask_storeu_ps(yn.as_mut_ptr().add(o), outs, value);
                    _mm512_mask_storeu_epi32(index.as_mut_ptr().add(o).cast(), outs, best);
                }
                o += count;
            }
        }
    }
}

/// [`pool_2x2_avx512`] with AVX2: eight windows at a time, the even and odd columns separated
/// by a permutation of each half and a blend. Written with intrinsics: the lane permutations
/// and mask blends have no counterpart in `simd::F32s`.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_2x2_avx2(xn: &[f32], shape: &Pool2dShape, yn: &mut [f32], index: &mut [u32]) {
    use std::arch::x86_64::*;
    let (h, w) = (shape.height, shape.width);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    assert!(xn.len() == shape.in_len() && yn.len() == shape.out_len() && index.len() == yn.len());
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let first_lanes = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), iota);
    let (evens, odds) = (_mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6), _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7));
    let lane_x = _mm256_slli_epi32::<1>(iota);
    // Strictly greater replaces, and a NaN replaces a number.
    let replaces = |v: __m256, value: __m256| {
        _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(v, value),
            _mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v), _mm256_cmp_ps::<_CMP_ORD_Q>(value, value)),
        )
    };
    let mut o = 0;
    for c in 0..shape.channels {
        for oy in 0..oh {
            let top = c * h * w + 2 * oy * w;
            for ox in (0..ow).step_by(8) {
                let count = (ow - ox).min(8);
                let (outs, lo, hi) =
                    (first_lanes(count), first_lanes(2 * count), first_lanes((2 * count).saturating_sub(8)));
                // SAFETY: the masks keep the loads within the window rows' 2·count values, in
                // `xn` (asserted lengths), and the stores within `yn` and `index`.
                unsafe {
                    let at = xn.as_ptr().add(top + 2 * ox);
                    let load = |p: *const f32| {
                        let (a, b) = (_mm256_maskload_ps(p, lo), _mm256_maskload_ps(p.wrapping_add(8), hi));
                        (
                            _mm256_blend_ps::<0xF0>(
                                _mm256_permutevar8x32_ps(a, evens),
                                _mm256_permutevar8x32_ps(b, evens),
                            ),
                            _mm256_blend_ps::<0xF0>(
                                _mm256_permutevar8x32_ps(a, odds),
                                _mm256_permutevar8x32_ps(b, odds),
                            ),
                        )
                    };
                    let ((u0, u1), (l0, l1)) = (load(at), load(at.add(w)));
                    let first = _mm256_add_epi32(_mm256_set1_epi32((top + 2 * ox) as i32), lane_x);
                    let (mut value, mut best) = (u0, _mm256_castsi256_ps(first));
                    for (v, offset) in [(u1, 1), (l0, w as i32), (l1, w as i32 + 1)] {
                        let m = replaces(v, value);
                        value = _mm256_blendv_ps(value, v, m);
                        let at = _mm256_castsi256_ps(_mm256_add_epi32(first, _mm256_set1_epi32(offset)));
                        best = _mm256_blendv_ps(best, at, m);
                    }
                    // Masked stores are slow on AMD's cores: where eight values fit, the lanes
                    // past the row's outputs land on later outputs, which are stored after.
                    let (y_at, i_at) = (yn.as_mut_ptr().add(o), index.as_mut_ptr().add(o).cast());
                    if o + 8 <= yn.len() {
                        _mm256_storeu_ps(y_at, value);
                        _mm256_storeu_si256(i_at, _mm256_castps_si256(best));
                    } else {
                        _mm256_maskstore_ps(y_at, outs, value);
                        _mm256_maskstore_epi32(i_at.cast(), outs, _mm256_castps_si256(best));
                    }
                }
                o += count;
            }
        }
    }
}

/// `dx = beta·dx + (dy routed to each window's maximum)`, with `argmax` from [`max_pool2d`].
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn max_pool2d_backward(dy: ArrayView2<f32>, argmax: &[u32], beta: f32, mut dx: ArrayViewMut2<f32>) {
    assert_eq!(dy.len(), argmax.len(), "max_pool2d_backward: {} gradients for {} maxima", dy.len(), argmax.len());
    assert_eq!(dy.nrows(), dx.nrows(), "max_pool2d_backward: batch sizes differ");
    if beta == 0.0 {
        dx.fill(0.0);
    } else if beta != 1.0 {
        dx *= beta;
    }
    let per_row = dy.ncols();
    for ((dy_n, mut dx_n), idx) in dy.rows().into_iter().zip(dx.rows_mut()).zip(argmax.chunks_exact(per_row.max(1))) {
        for (&g, &i) in dy_n.iter().zip(idx) {
            dx_n[i as usize] += g;
        }
    }
}

/// `y` = the mean of each window of `x` (both a batch of rows): PyTorch's `F.avg_pool2d(x,
/// kernel, stride)`, which divides by the window's size.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn avg_pool2d(x: ArrayView2<f32>, shape: &Pool2dShape, mut y: ArrayViewMut2<f32>) {
    assert!(shape.is_valid(), "avg_pool2d: invalid shape {shape:?}");
    assert_eq!(x.ncols(), shape.in_len(), "avg_pool2d: input rows of {} for {shape:?}", x.ncols());
    assert_eq!(y.dim(), (x.nrows(), shape.out_len()), "avg_pool2d: output for {shape:?}");
    let (k, s, w) = (shape.kernel, shape.stride, shape.width);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    let scale = 1.0 / (k * k) as f32;
    for (xn, mut yn) in x.rows().into_iter().zip(y.rows_mut()) {
        let xn = xn.to_slice().expect("standard rows");
        let yn = yn.as_slice_mut().expect("standard rows");
        for (xc, yc) in xn.chunks_exact(shape.height * w).zip(yn.chunks_exact_mut(oh * ow)) {
            for (i, out) in yc.iter_mut().enumerate() {
                let (r0, c0) = ((i / ow) * s, (i % ow) * s);
                let sum: f32 =
                    (0..k).map(|dr| xc[(r0 + dr) * w + c0..(r0 + dr) * w + c0 + k].iter().sum::<f32>()).sum();
                *out = sum * scale;
            }
        }
    }
}

/// `dx = beta·dx + (each window's dy spread evenly over the window)`: [`avg_pool2d`]'s gradient.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn avg_pool2d_backward(dy: ArrayView2<f32>, shape: &Pool2dShape, beta: f32, mut dx: ArrayViewMut2<f32>) {
    assert_eq!(dy.dim(), (dx.nrows(), shape.out_len()), "avg_pool2d_backward: gradient for {shape:?}");
    assert_eq!(dx.ncols(), shape.in_len(), "avg_pool2d_backward: input gradient for {shape:?}");
    scale_by(&mut dx, beta);
    let (k, s, w) = (shape.kernel, shape.stride, shape.width);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    let scale = 1.0 / (k * k) as f32;
    for (dyn_, mut dxn) in dy.rows().into_iter().zip(dx.rows_mut()) {
        let dxn = dxn.as_slice_mut().expect("standard rows");
        for (dyc, dxc) in
            dyn_.to_slice().expect("standard rows").chunks_exact(oh * ow).zip(dxn.chunks_exact_mut(shape.height * w))
        {
            for (i, &g) in dyc.iter().enumerate() {
                let (r0, c0) = ((i / ow) * s, (i % ow) * s);
                for dr in 0..k {
                    dxc[(r0 + dr) * w + c0..(r0 + dr) * w + c0 + k].iter_mut().for_each(|d| *d += g * scale);
                }
            }
        }
    }
}

/// `y[n, c]` = the mean of channel `c` of sample `n`, whose `channels` channels of `plane`
/// values each fill a row of `x`: PyTorch's `F.adaptive_avg_pool2d(x, 1).flatten(1)`.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn global_avg_pool(x: ArrayView2<f32>, channels: usize, mut y: ArrayViewMut2<f32>) {
    assert_eq!(y.dim(), (x.nrows(), channels), "global_avg_pool: output of {:?} for {channels} channels", y.dim());
    assert!(
        channels > 0 && x.ncols().is_multiple_of(channels),
        "global_avg_pool: rows of {} for {channels} channels",
        x.ncols()
    );
    let plane = x.ncols() / channels;
    for (xn, mut yn) in x.rows().into_iter().zip(y.rows_mut()) {
        let xn = xn.to_slice().expect("standard rows");
        for (out, xc) in yn.iter_mut().zip(xn.chunks_exact(plane)) {
            *out = xc.iter().sum::<f32>() / plane as f32;
        }
    }
}

/// `dx = beta·dx + dy[n, c] / plane` over each channel: [`global_avg_pool`]'s gradient.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn global_avg_pool_backward(dy: ArrayView2<f32>, beta: f32, mut dx: ArrayViewMut2<f32>) {
    let channels = dy.ncols();
    assert!(
        dy.nrows() == dx.nrows() && channels > 0 && dx.ncols().is_multiple_of(channels),
        "global_avg_pool_backward: shapes"
    );
    scale_by(&mut dx, beta);
    let plane = dx.ncols() / channels;
    for (dyn_, mut dxn) in dy.rows().into_iter().zip(dx.rows_mut()) {
        let dxn = dxn.as_slice_mut().expect("standard rows");
        for (&g, dxc) in dyn_.iter().zip(dxn.chunks_exact_mut(plane)) {
            let g = g / plane as f32;
            dxc.iter_mut().for_each(|d| *d += g);
        }
    }
}

/// `dx *= beta`, 0 clearing whatever was there.
fn scale_by(dx: &mut ArrayViewMut2<f32>, beta: f32) {
    if beta == 0.0 {
        dx.fill(0.0);
    } else if beta != 1.0 {
        *dx *= beta;
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, array};

    use super::*;

    #[test]
    fn every_path_pools_as_the_general_loop() {
        // Few distinct values, so that ties are common, and some NaNs.
        let mut state = 7u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 16
        };
        for (channels, height, width) in [(6, 28, 28), (16, 10, 10), (2, 5, 7), (3, 9, 40), (1, 2, 2)] {
            let shape = Pool2dShape { channels, height, width, kernel: 2, stride: 2 };
            for nans in [false, true] {
                let x: Vec<f32> = (0..shape.in_len())
                    .map(|_| match next() % 50 {
                        0 if nans => f32::NAN,
                        v => (v % 5) as f32 - 2.0,
                    })
                    .collect();
                let (mut want, mut want_index) = (vec![0.0; shape.out_len()], vec![0; shape.out_len()]);
                pool_any(&x, &shape, &mut want, &mut want_index);
                let x = Array2::from_shape_vec((1, x.len()), x).unwrap();
                for simd in simd::Simd::every() {
                    let (mut got, mut got_index) = (Array2::zeros((1, shape.out_len())), Vec::new());
                    max_pool2d_at(simd, x.view(), &shape, got.view_mut(), &mut got_index);
                    assert_eq!(got_index, want_index, "{simd}, {shape:?}, NaNs: {nans}");
                    let same = |a: &f32, b: &f32| a == b || (a.is_nan() && b.is_nan());
                    assert!(got.iter().zip(&want).all(|(a, b)| same(a, b)), "{simd}, {shape:?}, NaNs: {nans}");
                }
            }
        }
    }

    #[test]
    fn windows_their_maxima_and_ties() {
        // One 1x3x4 sample, 2x2 windows with stride 2 (the last row is dropped: floor).
        let x = array![[1.0f32, 5.0, 2.0, 2.0, 3.0, 0.0, 2.0, 1.0, 9.0, 9.0, 9.0, 9.0]];
        let sh = Pool2dShape { channels: 1, height: 3, width: 4, kernel: 2, stride: 2 };
        let mut y = Array2::zeros((1, 2));
        let mut argmax = Vec::new();
        max_pool2d(x.view(), &sh, y.view_mut(), &mut argmax);
        assert_eq!(y, array![[5.0, 2.0]]);
        assert_eq!(argmax, [1, 2], "the tie 2, 2, 2 goes to the first");
        let mut dx = Array2::from_elem((1, 12), 1.0);
        max_pool2d_backward(array![[10.0f32, 20.0]].view(), &argmax, 1.0, dx.view_mut());
        assert_eq!(dx.row(0).to_vec(), [1.0, 11.0, 21.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }
}
