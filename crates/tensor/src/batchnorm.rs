//! Batch normalisation over rows of `channels` equal planes (`[C, H, W]` values; a plane of one
//! value for `[N, C]`), as PyTorch's `BatchNorm1d` and `BatchNorm2d` compute it: each channel is
//! normalised over the batch and its plane, then scaled by a weight and shifted by a bias.
//!
//! The batch's statistics come from per-channel sums, so that parts of a batch computed apart
//! can add theirs before normalising ([`channel_sums`] then [`batch_norm_normalize`]); the
//! backward pass likewise needs two per-channel sums over the whole batch
//! ([`batch_norm_backward_sums`], then [`batch_norm_backward`]). A ReLU that follows can run in
//! the same passes ([`Normalization::relu`]), and the backward pass recomputes `x̂` (and the
//! ReLU's mask) from the input rather than reading them back. Each loop is compiled once per
//! vector level; the sums run in eight f64 lanes, in the same order at every level.

use ndarray::{ArrayView2, ArrayViewMut2};
use simd::{F32s, Simd};

/// Lanes of the f64 sums: one AVX-512 register's worth, so that the loops vectorise.
const LANES: usize = 8;

/// `Σ a` and `Σ a·b` in f64 over the pairs `f(u, v)` makes of `us` and `vs`, in `LANES` running
/// sums (every product exact in f64, so the sums lose only what f64 rounding loses).
#[inline(always)]
fn sums(us: &[f32], vs: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut s, mut d) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (uc, vc) = (us.chunks_exact(LANES), vs.chunks_exact(LANES));
    let (ur, vr) = (uc.remainder(), vc.remainder());
    for (u, v) in uc.zip(vc) {
        for i in 0..LANES {
            let (a, b) = f(u[i], v[i]);
            s[i] += f64::from(a);
            d[i] += f64::from(a) * f64::from(b);
        }
    }
    for (&u, &v) in ur.iter().zip(vr) {
        let (a, b) = f(u, v);
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
            let (s, q) = self::sums(values, values, |v, _| (v, v));
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

/// A batch normalisation's per-channel factors, `x̂ = (x - mean)·inv_std` and
/// `y = weight·x̂ + bias`, and whether a ReLU follows in the same pass: `y = max(y, 0)`.
///
/// The backward pass recomputes `x̂` (and the ReLU's mask) from `x` rather than reading them
/// from memory: the same operations give the same values, and a pass that stored them would
/// cost more than the arithmetic saves.
#[derive(Debug, Clone, Copy)]
pub struct Normalization<'a> {
    /// Each channel's mean.
    pub mean: &'a [f32],
    /// Each channel's `1/√(variance + eps)`.
    pub inv_std: &'a [f32],
    /// Each channel's scale.
    pub weight: &'a [f32],
    /// Each channel's shift.
    pub bias: &'a [f32],
    /// Whether `max(·, 0)` follows.
    pub relu: bool,
}

impl Normalization<'_> {
    /// The channels, checking that every per-channel slice has one value for each.
    #[track_caller]
    fn channels(&self) -> usize {
        let channels = self.mean.len();
        assert!(
            self.inv_std.len() == channels && self.weight.len() == channels && self.bias.len() == channels,
            "batch norm: per-channel values for {channels} channels"
        );
        channels
    }

    /// Channel `c`'s `(mean, inv_std, weight, bias)`.
    #[inline(always)]
    fn at(&self, c: usize) -> (f32, f32, f32, f32) {
        (self.mean[c], self.inv_std[c], self.weight[c], self.bias[c])
    }
}

/// `dy` where the ReLU passed its input (`weight·x̂ + bias > 0`), else 0: the same values as
/// the ReLU's own backward pass, whose mask is `max(y, 0) > 0`.
#[inline(always)]
fn masked(dy: f32, pre: f32) -> f32 {
    if pre > 0.0 { dy } else { 0.0 }
}

/// `y = weight[c]·x̂ + bias[c]` with `x̂ = (x - mean[c])·inv_std[c]`, then `max(y, 0)` when
/// `n.relu`.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn batch_norm_normalize(x: ArrayView2<f32>, n: &Normalization, y: ArrayViewMut2<f32>) {
    let plane = planes(x.ncols(), n.channels());
    assert_eq!(y.dim(), x.dim(), "batch norm: output of {:?} for input of {:?}", y.dim(), x.dim());
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { normalize_at(Simd::get(), x, plane, n, y) };
}

simd::kernel! {
    /// [`batch_norm_normalize`]'s loop at a level.
    unsafe fn normalize_at(x: ArrayView2<f32>, plane: usize, n: &Normalization, y: ArrayViewMut2<f32>) => normalize_any;
}

/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters, reason = "a copy per level: V's instructions compile the loop")]
unsafe fn normalize_any<V: F32s>(x: ArrayView2<f32>, plane: usize, n: &Normalization, mut y: ArrayViewMut2<f32>) {
    for (row, mut out) in x.rows().into_iter().zip(y.rows_mut()) {
        let (row, out) = (row.to_slice().expect("standard rows"), out.as_slice_mut().expect("standard rows"));
        for (c, (out, row)) in out.chunks_exact_mut(plane).zip(row.chunks_exact(plane)).enumerate() {
            let (m, s, w, b) = n.at(c);
            let values = out.iter_mut().zip(row);
            if n.relu {
                values.for_each(|(o, &v)| *o = (w * ((v - m) * s) + b).max(0.0));
            } else {
                values.for_each(|(o, &v)| *o = w * ((v - m) * s) + b);
            }
        }
    }
}

/// Adds each channel's `Σ dy` and `Σ dy·x̂` to `sums` (`2·C` values, in that order), `dy` the
/// gradient of the normalisation's output (masked by the ReLU's when `n.relu`) and `x̂`
/// recomputed from `x`: what the backward pass of a batch normalised with its own statistics
/// needs over the whole batch, and the gradients of the weight and bias.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn batch_norm_backward_sums(dy: ArrayView2<f32>, x: ArrayView2<f32>, n: &Normalization, sums: &mut [f64]) {
    let channels = n.channels();
    let plane = planes(dy.ncols(), channels);
    assert_eq!(x.dim(), dy.dim(), "batch norm backward: input of {:?} for gradient of {:?}", x.dim(), dy.dim());
    assert_eq!(sums.len(), 2 * channels, "batch norm backward: {} sums for {channels} channels", sums.len());
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { backward_sums_at(Simd::get(), dy, x, n, plane, sums) };
}

simd::kernel! {
    /// [`batch_norm_backward_sums`]'s loop at a level.
    unsafe fn backward_sums_at(dy: ArrayView2<f32>, x: ArrayView2<f32>, n: &Normalization, plane: usize, sums: &mut [f64])
        => backward_sums_any;
}

/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters, reason = "a copy per level: V's instructions compile the loop")]
unsafe fn backward_sums_any<V: F32s>(
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    n: &Normalization,
    plane: usize,
    sums: &mut [f64],
) {
    let channels = sums.len() / 2;
    let (sum, dot) = sums.split_at_mut(channels);
    for (dy, x) in dy.rows().into_iter().zip(x.rows()) {
        let (dy, x) = (dy.to_slice().expect("standard rows"), x.to_slice().expect("standard rows"));
        for (c, (dy, x)) in dy.chunks_exact(plane).zip(x.chunks_exact(plane)).enumerate() {
            let (m, s, w, b) = n.at(c);
            let (total, product) = if n.relu {
                self::sums(dy, x, |g, v| {
                    let h = (v - m) * s;
                    (masked(g, w * h + b), h)
                })
            } else {
                self::sums(dy, x, |g, v| (g, (v - m) * s))
            };
            sum[c] += total;
            dot[c] += product;
        }
    }
}

/// `dx = beta·dx + weight[c]·inv_std[c]·(dy - shift[c] - x̂·slope[c])`: batch norm's input
/// gradient, `dy` masked by the ReLU's when `n.relu` and `x̂` recomputed from `x`. With the
/// batch's own statistics, `shift = Σdy / M` and `slope = Σdy·x̂ / M` over the batch's `M`
/// values per channel; with fixed (running) statistics, `shift = slope = 0`.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn batch_norm_backward(
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    n: &Normalization,
    shift: &[f32],
    slope: &[f32],
    beta: f32,
    dx: ArrayViewMut2<f32>,
) {
    let channels = n.channels();
    let plane = planes(dy.ncols(), channels);
    assert!(shift.len() == channels && slope.len() == channels, "batch norm backward: per-channel values");
    assert_eq!(dx.dim(), dy.dim(), "batch norm backward: gradient of {:?} for {:?}", dx.dim(), dy.dim());
    assert_eq!(x.dim(), dy.dim(), "batch norm backward: input of {:?} for gradient of {:?}", x.dim(), dy.dim());
    // SAFETY: the loop has no requirement beyond the level, which `Simd::get` vouches for.
    unsafe { backward_at(Simd::get(), dy, x, n, [shift, slope], plane, beta, dx) };
}

simd::kernel! {
    /// [`batch_norm_backward`]'s loop at a level.
    unsafe fn backward_at(
        dy: ArrayView2<f32>,
        x: ArrayView2<f32>,
        n: &Normalization,
        factors: [&[f32]; 2],
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
    x: ArrayView2<f32>,
    n: &Normalization,
    [shift, slope]: [&[f32]; 2],
    plane: usize,
    beta: f32,
    mut dx: ArrayViewMut2<f32>,
) {
    for ((dy, x), mut out) in dy.rows().into_iter().zip(x.rows()).zip(dx.rows_mut()) {
        let (dy, x) = (dy.to_slice().expect("standard rows"), x.to_slice().expect("standard rows"));
        let out = out.as_slice_mut().expect("standard rows");
        let planes = out.chunks_exact_mut(plane).zip(dy.chunks_exact(plane)).zip(x.chunks_exact(plane));
        for (c, ((out, dy), x)) in planes.enumerate() {
            let (m, s, w, b) = n.at(c);
            let (k, t, l) = (w * s, shift[c], slope[c]);
            let gradient = |g: f32, v: f32| {
                let h = (v - m) * s;
                let g = if n.relu { masked(g, w * h + b) } else { g };
                k * (g - t - h * l)
            };
            let values = out.iter_mut().zip(dy).zip(x);
            if beta == 0.0 {
                values.for_each(|((d, &g), &v)| *d = gradient(g, v));
            } else {
                values.for_each(|((d, &g), &v)| *d = beta * *d + gradient(g, v));
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
        let mean = [3.5, 10.0];
        let unit =
            Normalization { mean: &mean, inv_std: &inv_std, weight: &[1.0, 1.0], bias: &[0.0, 0.0], relu: false };
        let mut xhat = Array2::zeros((2, 6));
        batch_norm_normalize(x.view(), &unit, xhat.view_mut());
        let n = Normalization { weight: &[2.0, 1.0], bias: &[0.5, 0.0], ..unit };
        let mut y = Array2::zeros((2, 6));
        batch_norm_normalize(x.view(), &n, y.view_mut());
        let first: Vec<f32> = [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]].iter().map(|&i| xhat[i]).collect();
        let mean: f32 = first.iter().sum::<f32>() / 6.0;
        let var: f32 = first.iter().map(|v| v * v).sum::<f32>() / 6.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{mean} {var}");
        assert_eq!(y[[0, 0]], 2.0 * xhat[[0, 0]] + 0.5);
        assert!(y.row(0).iter().skip(3).all(|&v| v == 0.0), "a constant channel normalises to 0");
    }

    /// `batches x (channels · plane)` values with ties, zeros and a tail past the vectors.
    fn values(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(r, c)| ((r * 31 + c * 17 + seed) % 23) as f32 * 0.25 - 2.5)
    }

    #[test]
    fn a_relu_in_the_same_pass_gives_the_relus_values_and_gradients_at_every_level() {
        // 3 channels of 21 values; channel 1's mean and zero bias make some outputs exactly 0.
        let (rows, channels, plane) = (4, 3, 21);
        let x = values(rows, channels * plane, 0);
        let dy = values(rows, channels * plane, 5);
        let (mean, inv_std) = ([0.3, x[[0, plane]], -0.7], [1.3, 0.9, 2.1]);
        let (weight, bias) = ([1.5, -0.8, 0.6], [0.2, 0.0, -0.4]);
        let plain = Normalization { mean: &mean, inv_std: &inv_std, weight: &weight, bias: &bias, relu: false };
        let fused = Normalization { relu: true, ..plain };
        let (shift, slope) = ([0.1, -0.2, 0.3], [0.05, 0.5, -0.25]);
        let mut first = None;
        for simd in Simd::every() {
            // Unfused: the normalisation, then ReLU's forward and backward passes.
            let mut y = Array2::zeros(x.dim());
            unsafe { normalize_at(simd, x.view(), plane, &plain, y.view_mut()) };
            let mut relu = vec![0.0; y.len()];
            crate::relu_into(y.as_slice().unwrap(), &mut relu);
            let relu = Array2::from_shape_vec(x.dim(), relu).unwrap();
            assert!(relu.iter().filter(|&&v| v == 0.0).count() > 10, "some outputs are cut");
            assert!(y.iter().any(|&v| v == 0.0), "some pre-activation is exactly 0");
            let mut g = Array2::zeros(x.dim());
            crate::relu_backward(dy.view(), relu.view(), 0.0, g.view_mut());
            let mut unfused = vec![0.0; 2 * channels];
            unsafe { backward_sums_at(simd, g.view(), x.view(), &plain, plane, &mut unfused) };
            // Fused: the same values and sums.
            let mut out = Array2::zeros(x.dim());
            unsafe { normalize_at(simd, x.view(), plane, &fused, out.view_mut()) };
            let bits = |a: &Array2<f32>| a.mapv(f32::to_bits);
            assert_eq!(bits(&out), bits(&relu), "{simd:?}");
            let mut sums = vec![0.0; 2 * channels];
            unsafe { backward_sums_at(simd, dy.view(), x.view(), &fused, plane, &mut sums) };
            let wide_bits = |s: &[f64]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(wide_bits(&sums), wide_bits(&unfused), "{simd:?}");
            let mut dxs = Vec::new();
            for beta in [0.0, 0.5] {
                let (mut a, mut b) = (values(rows, channels * plane, 9), values(rows, channels * plane, 9));
                let factors = [&shift[..], &slope[..]];
                unsafe { backward_at(simd, g.view(), x.view(), &plain, factors, plane, beta, a.view_mut()) };
                unsafe { backward_at(simd, dy.view(), x.view(), &fused, factors, plane, beta, b.view_mut()) };
                assert_eq!(bits(&a), bits(&b), "{simd:?} beta {beta}");
                dxs.push(b);
            }
            // Every level gives the portable path's bits.
            let results = (bits(&out), wide_bits(&sums), dxs.iter().map(bits).collect::<Vec<_>>());
            match &first {
                None => first = Some(results),
                Some(expected) => assert!(expected == &results, "{simd:?} differs from the portable path"),
            }
        }
    }
}
