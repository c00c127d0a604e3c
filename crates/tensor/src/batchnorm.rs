//! Batch normalisation over rows of `channels` equal planes (`[C, H, W]` values; a plane of one
//! value for `[N, C]`), as PyTorch's `BatchNorm1d` and `BatchNorm2d` compute it: each channel is
//! normalised over the batch and its plane, then scaled by a weight and shifted by a bias.
//!
//! The batch's statistics come from per-channel sums, so that parts of a batch computed apart
//! can add theirs before normalising ([`channel_sums`] then [`batch_norm_normalize`]); the
//! backward pass likewise needs two per-channel sums over the whole batch
//! ([`batch_norm_backward_sums`], then [`batch_norm_backward`]). Each loop is compiled once per
//! vector level; the sums run in eight f64 lanes, in the same order at every level.

use ndarray::{ArrayView2, ArrayViewMut2};
use simd::{F32s, Simd};

/// Lanes of the f64 sums: one AVX-512 register's worth, so that the loops vectorise.
const LANES: usize = 8;

/// `Σ a` and `Σ a·b` in f64, in `LANES` running sums (every product exact in f64, so the
/// sums lose only what f64 rounding loses).
#[inline(always)]
fn sums(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut s, mut d) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (a, b) in ac.zip(bc) {
        for i in 0..LANES {
            s[i] += f64::from(a[i]);
            d[i] += f64::from(a[i]) * f64::from(b[i]);
        }
    }
    for (&a, &b) in ar.iter().zip(br) {
        s[0] += f64::from(a);
        d[0] += f64::from(a) * f64::from(b);
    }
    (s.iter().sum(), d.iter().sum())
}

/// The channels' planes of a row: `channels` runs of `row.len() / channels` values.
fn planes(row_len: usize, channels: usize) -> usize {
    assert!(channels > 0 && row_len.is_multiple_of(channels), "batch norm: rows of {row_len} for {channels} channels");
    row_len / channels
}

/// Adds each channel's sum of values and sum of squared values, in f64, to `sums` (`2·C`
/// values: the `C` sums, then the `C` sums of squares).
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn channel_sums(x: ArrayView2<f32>, channels: usize, sums: &mut [f64]) {
    let plane = planes(x.ncols(), channels);
    assert_eq!(sums.len(), 2 * channels, "batch norm: {} sums for {channels} channels", sums.len());
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { channel_sums_at(Simd::get(), x, plane, sums) };
}

simd::kernel! {
    /// [`channel_sums`]'s loop at a level.
    unsafe fn channel_sums_at(x: ArrayView2<f32>, plane: usize, sums: &mut [f64]) => channel_sums_any;
}

/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters, reason = "a copy per level: V's instructions compile the loop")]
unsafe fn channel_sums_any<V: F32s>(x: ArrayView2<f32>, plane: usize, sums: &mut [f64]) {
    let channels = sums.len() / 2;
    let (sum, squares) = sums.split_at_mut(channels);
    for row in x.rows() {
        let row = row.to_slice().expect("standard rows");
        for (c, values) in row.chunks_exact(plane).enumerate() {
            let (s, q) = self::sums(values, values);
            sum[c] += s;
            squares[c] += q;
        }
    }
}

/// A channel's mean and biased variance from [`channel_sums`] over `count` values each.
pub fn mean_and_variance(sums: &[f64], channels: usize, count: usize, c: usize) -> (f64, f64) {
    let n = count as f64;
    let mean = sums[c] / n;
    // E[x²] - E[x]², clamped: rounding can take a constant channel's variance below 0.
    let variance = (sums[channels + c] / n - mean * mean).max(0.0);
    (mean, variance)
}

/// Per-channel factors of a normalisation: `x̂ = (x - mean)·inv_std`, `y = weight·x̂ + bias`.
#[derive(Debug, Clone, Copy)]
struct Factors<'a> {
    mean: &'a [f32],
    inv_std: &'a [f32],
    weight: &'a [f32],
    bias: &'a [f32],
}

/// `x̂ = (x - mean[c]) · inv_std[c]` into `normalized` (when given: the backward pass reads it),
/// then `y = weight[c]·x̂ + bias[c]`.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn batch_norm_normalize(
    x: ArrayView2<f32>,
    mean: &[f32],
    inv_std: &[f32],
    weight: &[f32],
    bias: &[f32],
    normalized: Option<&mut [f32]>,
    y: ArrayViewMut2<f32>,
) {
    let channels = mean.len();
    let plane = planes(x.ncols(), channels);
    assert!(
        inv_std.len() == channels && weight.len() == channels && bias.len() == channels,
        "batch norm: per-channel values for {channels} channels"
    );
    assert_eq!(y.dim(), x.dim(), "batch norm: output of {:?} for input of {:?}", y.dim(), x.dim());
    if let Some(normalized) = &normalized {
        assert_eq!(normalized.len(), x.len(), "batch norm: {} normalised values for {}", normalized.len(), x.len());
    }
    let factors = Factors { mean, inv_std, weight, bias };
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { normalize_at(Simd::get(), x, plane, factors, normalized, y) };
}

simd::kernel! {
    /// [`batch_norm_normalize`]'s loop at a level.
    unsafe fn normalize_at(
        x: ArrayView2<f32>,
        plane: usize,
        factors: Factors,
        normalized: Option<&mut [f32]>,
        y: ArrayViewMut2<f32>
    ) => normalize_any;
}

/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters, reason = "a copy per level: V's instructions compile the loop")]
unsafe fn normalize_any<V: F32s>(
    x: ArrayView2<f32>,
    plane: usize,
    f: Factors,
    normalized: Option<&mut [f32]>,
    mut y: ArrayViewMut2<f32>,
) {
    let (width, channels) = (x.ncols(), f.mean.len());
    match normalized {
        None => {
            for (row, mut out) in x.rows().into_iter().zip(y.rows_mut()) {
                let (row, out) = (row.to_slice().expect("standard rows"), out.as_slice_mut().expect("standard rows"));
                for c in 0..channels {
                    let span = c * plane..(c + 1) * plane;
                    let (m, s, w, b) = (f.mean[c], f.inv_std[c], f.weight[c], f.bias[c]);
                    out[span.clone()].iter_mut().zip(&row[span]).for_each(|(o, &v)| *o = w * ((v - m) * s) + b);
                }
            }
        }
        Some(normalized) => {
            let rows = x.rows().into_iter().zip(y.rows_mut()).zip(normalized.chunks_exact_mut(width));
            for ((row, mut out), xhat) in rows {
                let (row, out) = (row.to_slice().expect("standard rows"), out.as_slice_mut().expect("standard rows"));
                for c in 0..channels {
                    let span = c * plane..(c + 1) * plane;
                    let (m, s, w, b) = (f.mean[c], f.inv_std[c], f.weight[c], f.bias[c]);
                    for ((o, h), &v) in out[span.clone()].iter_mut().zip(&mut xhat[span.clone()]).zip(&row[span]) {
                        *h = (v - m) * s;
                        *o = w * *h + b;
                    }
                }
            }
        }
    }
}

/// Adds each channel's `Σ dy` and `Σ dy·x̂` to `sums` (`2·C` values, in that order): what the
/// backward pass of a batch normalised with its own statistics needs over the whole batch.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn batch_norm_backward_sums(dy: ArrayView2<f32>, normalized: &[f32], channels: usize, sums: &mut [f64]) {
    let plane = planes(dy.ncols(), channels);
    assert_eq!(
        normalized.len(),
        dy.len(),
        "batch norm backward: {} normalised values for {}",
        normalized.len(),
        dy.len()
    );
    assert_eq!(sums.len(), 2 * channels, "batch norm backward: {} sums for {channels} channels", sums.len());
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { backward_sums_at(Simd::get(), dy, normalized, plane, sums) };
}

simd::kernel! {
    /// [`batch_norm_backward_sums`]'s loop at a level.
    unsafe fn backward_sums_at(dy: ArrayView2<f32>, normalized: &[f32], plane: usize, sums: &mut [f64])
        => backward_sums_any;
}

/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters, reason = "a copy per level: V's instructions compile the loop")]
unsafe fn backward_sums_any<V: F32s>(dy: ArrayView2<f32>, normalized: &[f32], plane: usize, sums: &mut [f64]) {
    let channels = sums.len() / 2;
    let (sum, dot) = sums.split_at_mut(channels);
    for (row, xhat) in dy.rows().into_iter().zip(normalized.chunks_exact(dy.ncols())) {
        let row = row.to_slice().expect("standard rows");
        for c in 0..channels {
            let span = c * plane..(c + 1) * plane;
            let (s, d) = self::sums(&row[span.clone()], &xhat[span]);
            sum[c] += s;
            dot[c] += d;
        }
    }
}

/// `dx = beta·dx + scale[c]·(dy - shift[c] - x̂·slope[c])`: batch norm's input gradient. With
/// the batch's own statistics, `scale = weight·inv_std`, `shift = Σdy / M` and
/// `slope = Σdy·x̂ / M` over the batch's `M` values per channel; with fixed (running)
/// statistics, `shift = slope = 0`.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn batch_norm_backward(
    dy: ArrayView2<f32>,
    normalized: &[f32],
    scale: &[f32],
    shift: &[f32],
    slope: &[f32],
    beta: f32,
    dx: ArrayViewMut2<f32>,
) {
    let channels = scale.len();
    let plane = planes(dy.ncols(), channels);
    assert!(shift.len() == channels && slope.len() == channels, "batch norm backward: per-channel values");
    assert_eq!(dx.dim(), dy.dim(), "batch norm backward: gradient of {:?} for {:?}", dx.dim(), dy.dim());
    assert_eq!(
        normalized.len(),
        dy.len(),
        "batch norm backward: {} normalised values for {}",
        normalized.len(),
        dy.len()
    );
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { backward_at(Simd::get(), dy, normalized, [scale, shift, slope], plane, beta, dx) };
}

simd::kernel! {
    /// [`batch_norm_backward`]'s loop at a level.
    unsafe fn backward_at(
        dy: ArrayView2<f32>,
        normalized: &[f32],
        factors: [&[f32]; 3],
        plane: usize,
        beta: f32,
        dx: ArrayViewMut2<f32>
    ) => backward_any;
}

/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters, reason = "a copy per level: V's instructions compile the loop")]
unsafe fn backward_any<V: F32s>(
    dy: ArrayView2<f32>,
    normalized: &[f32],
    [scale, shift, slope]: [&[f32]; 3],
    plane: usize,
    beta: f32,
    mut dx: ArrayViewMut2<f32>,
) {
    let width = dy.ncols();
    for ((row, mut out), xhat) in dy.rows().into_iter().zip(dx.rows_mut()).zip(normalized.chunks_exact(width)) {
        let row = row.to_slice().expect("standard rows");
        let out = out.as_slice_mut().expect("standard rows");
        for c in 0..scale.len() {
            let span = c * plane..(c + 1) * plane;
            let (k, m, s) = (scale[c], shift[c], slope[c]);
            let values = out[span.clone()].iter_mut().zip(&row[span.clone()]).zip(&xhat[span]);
            if beta == 0.0 {
                values.for_each(|((d, &g), &h)| *d = k * (g - m - h * s));
            } else {
                values.for_each(|((d, &g), &h)| *d = beta * *d + k * (g - m - h * s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    #[test]
    fn a_normalised_channel_has_mean_0_and_variance_1() {
        // Two samples of two channels of three values.
        let x = Array2::from_shape_vec((2, 6), vec![1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 4.0, 5.0, 6.0, 10.0, 10.0, 10.0])
            .unwrap();
        let mut sums = vec![0.0; 4];
        channel_sums(x.view(), 2, &mut sums);
        let (mean, var) = mean_and_variance(&sums, 2, 6, 0);
        assert_eq!(mean, 3.5);
        assert!((var - 17.5 / 6.0).abs() < 1e-12, "{var}");
        assert_eq!(mean_and_variance(&sums, 2, 6, 1), (10.0, 0.0));
        let inv_std = [(1.0 / (var + 1e-5).sqrt()) as f32, (1.0 / 1e-5f64.sqrt()) as f32];
        let (mut xhat, mut y) = (vec![0.0; 12], Array2::zeros((2, 6)));
        batch_norm_normalize(x.view(), &[3.5, 10.0], &inv_std, &[2.0, 1.0], &[0.5, 0.0], Some(&mut xhat), y.view_mut());
        let mut alone = Array2::zeros((2, 6));
        batch_norm_normalize(x.view(), &[3.5, 10.0], &inv_std, &[2.0, 1.0], &[0.5, 0.0], None, alone.view_mut());
        assert_eq!(alone, y, "the same values without keeping x̂");
        let first: Vec<f32> = [0, 1, 2, 6, 7, 8].iter().map(|&i| xhat[i]).collect();
        let mean: f32 = first.iter().sum::<f32>() / 6.0;
        let var: f32 = first.iter().map(|v| v * v).sum::<f32>() / 6.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{mean} {var}");
        assert_eq!(y[[0, 0]], 2.0 * xhat[0] + 0.5);
        assert!(y.row(0).iter().skip(3).all(|&v| v == 0.0), "a constant channel normalises to 0");
    }
}
