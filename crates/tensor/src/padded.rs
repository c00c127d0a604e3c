//! Stride-1 convolutions without unfolding. Each sample's input is copied once into
//! zero-padded planes, and the output is computed on the padded width: a few surplus columns at
//! the end of each row, dropped afterwards. Then the input values that weight `(c, ky, kx)`
//! meets, across every output position, are channel `c`'s padded plane shifted by
//! `ky·Wp + kx`: the convolution is a matrix product whose second operand's rows are shifted
//! views of the padded input ([`Rows`]), read where they lie instead of copied nine times as
//! unfolding does.
//!
//! The gradients take the same views: the weight gradient dots the output gradient, laid on the
//! padded width with zeros in the surplus columns, with the input's shifted rows; the input
//! gradient is the convolution of the output gradient, padded by `kernel - 1` on every side,
//! with the weights turned by 180 degrees and their two channel axes swapped.
//!
//! This pays when the surplus is small (3x3 convolutions with padding 1 on 28 or 14 pixels:
//! 7% and 14% more products; 5x5 with padding 2 on 28, 12.5%) and not for LeNet-5's unpadded
//! 5x5 on 14 pixels (40%), which [`fits`] leaves to unfolding.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, ShapeBuilder};
use simd::Simd;

use crate::AlignedVec;
use crate::conv::Conv2dShape;
use crate::matmul::{Rows, matmul_nt_rows_at, matmul_rows_at};

/// Whether `shape` is convolved this way: stride 1, and outputs at least 7/8 of the padded
/// width (the rest is computed and dropped).
pub(crate) fn fits(shape: &Conv2dShape) -> bool {
    shape.stride == 1 && shape.out_width() * 8 >= (shape.width + 2 * shape.padding) * 7
}

/// Values per sample of the padded input: what [`forward`] keeps for [`backward`].
pub(crate) fn padded_len(shape: &Conv2dShape) -> usize {
    shape.in_channels * Geometry::of(shape).plane
}

/// Buffers reused from call to call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    /// Where each weight's input row starts in the padded input.
    starts: Vec<usize>,
    /// Where each turned weight's row starts in the padded output gradient.
    turned_starts: Vec<usize>,
    /// The output on the padded width, before its surplus columns are dropped.
    grid: Vec<f32>,
    /// The output gradient of one sample, padded by `kernel - 1` on every side: laid on the
    /// padded width, it is also what the weight gradient reads, from a cache line's start.
    padded_dy: AlignedVec,
    /// The weights turned by 180 degrees, `[in, out·kH·kW]`.
    turned: Vec<f32>,
    /// One sample's input gradient on the padded width.
    dx: Vec<f32>,
    /// The bias gradient's sums.
    bias_sums: Vec<f32>,
}

/// The sizes of one sample's padded planes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Padded width.
    wp: usize,
    /// Values per padded plane.
    plane: usize,
    /// Output positions on the padded width: from the first to the last that is kept.
    grid: usize,
}

impl Geometry {
    fn of(shape: &Conv2dShape) -> Self {
        let (wp, hp) = (shape.width + 2 * shape.padding, shape.height + 2 * shape.padding);
        let grid = (shape.out_height() - 1) * wp + shape.out_width();
        Self { wp, plane: wp * hp, grid }
    }
}

/// Copies sample `x` (`C·H·W` values) into `out`, its zero-padded planes.
fn pad(x: &[f32], shape: &Conv2dShape, g: Geometry, out: &mut [f32]) {
    let (w, p) = (shape.width, shape.padding);
    for (plane, x) in out.chunks_exact_mut(g.plane).zip(x.chunks_exact(shape.height * w)) {
        let (top, rest) = plane.split_at_mut(p * g.wp);
        top.fill(0.0);
        let (middle, bottom) = rest.split_at_mut(shape.height * g.wp);
        bottom.fill(0.0);
        for (row, x) in middle.chunks_exact_mut(g.wp).zip(x.chunks_exact(w)) {
            row[..p].fill(0.0);
            row[p..p + w].copy_from_slice(x);
            row[p + w..].fill(0.0);
        }
    }
}

/// Where the input row of each weight `(c, ky, kx)` starts: `c·plane + ky·Wp + kx`.
fn weight_starts(shape: &Conv2dShape, g: Geometry, starts: &mut Vec<usize>) {
    let k = shape.kernel;
    starts.clear();
    starts.extend(
        (0..shape.in_channels)
            .flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| c * g.plane + ky * g.wp + kx))),
    );
}

/// `y = conv2d(x, w) + bias` for a batch (the shapes of [`crate::conv2d`]), a sample at a
/// time. Each sample's padded input is left in `padded` for [`backward`] (`keep`), or
/// overwritten by the next.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    padded: &mut Vec<f32>,
    keep: bool,
    scratch: &mut Scratch,
    mut y: ArrayViewMut2<f32>,
) {
    let (g, o, per_sample) = (Geometry::of(shape), shape.out_channels, padded_len(shape));
    let (ho, wo) = (shape.out_height(), shape.out_width());
    padded.resize(per_sample * if keep { x.nrows() } else { 1 }, 0.0);
    weight_starts(shape, g, &mut scratch.starts);
    scratch.grid.resize(o * g.grid, 0.0);
    for (s, (xn, mut yn)) in x.rows().into_iter().zip(y.rows_mut()).enumerate() {
        let at = if keep { s * per_sample } else { 0 };
        let sample = &mut padded[at..at + per_sample];
        pad(xn.to_slice().expect("rows of a standard matrix"), shape, g, sample);
        let rows = Rows { data: sample, starts: &scratch.starts, n: g.grid };
        let out = ArrayViewMut2::from_shape((o, g.grid), &mut scratch.grid[..]).expect("sized above");
        matmul_rows_at(simd, 1.0, w, rows, 0.0, out);
        // From the padded width to the output's, with the bias (in the level's vectors).
        let yn = yn.as_slice_mut().expect("standard rows");
        simd::dispatch!(simd, V => {
            for (oc, (yc, grid)) in yn.chunks_exact_mut(ho * wo).zip(scratch.grid.chunks_exact(g.grid)).enumerate() {
                let b = bias.map_or(0.0, |b| b[oc]);
                for (yr, gr) in yc.chunks_exact_mut(wo).zip(grid.chunks(g.wp)) {
                    yr.iter_mut().zip(&gr[..wo]).for_each(|(y, &v)| *y = v + b);
                }
            }
        });
    }
}

/// The gradients of [`forward`] (with `keep`), as [`crate::conv2d_backward`] defines them,
/// given the padded inputs it left in `padded`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    simd: Simd,
    w: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    padded: &[f32],
    scratch: &mut Scratch,
    (mut dw, beta_w): (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
    mut dx: Option<(ArrayViewMut2<f32>, f32)>,
) {
    let (g, n, o, c, k) = (Geometry::of(shape), dy.nrows(), shape.out_channels, shape.in_channels, shape.kernel);
    let (ho, wo, per_sample) = (shape.out_height(), shape.out_width(), padded_len(shape));
    assert_eq!(padded.len(), n * per_sample, "conv2d_backward: the padded inputs conv2d left for this batch");
    if n == 0 {
        dw.map_inplace(|v| *v = if beta_w == 0.0 { 0.0 } else { beta_w * *v });
    }
    weight_starts(shape, g, &mut scratch.starts);
    // The input gradient's geometry: the output gradient padded by k - 1 on every side (`edge`
    // values before the first output), and the positions from the first input value to the
    // last on the padded width.
    let edge = (k - 1) * g.wp + (k - 1);
    let first = shape.padding * g.wp + shape.padding;
    let span = (shape.height - 1) * g.wp + shape.width;
    // Each channel's run starts `lead` values before its padding so that the weight gradient's
    // rows (`lead + edge` into runs of whole lines) start cache lines: its loads then read one
    // line each.
    let lead = (16 - edge % 16) % 16;
    let padded_dy_len = (lead + (edge + g.grid).max(first + span + edge)).next_multiple_of(16);
    // Zeros everywhere but the positions each sample's output gradient is copied to, which
    // are the same for every sample.
    scratch.padded_dy.resize(o * padded_dy_len, 0.0);
    scratch.padded_dy.fill(0.0);
    if dx.is_some() {
        // Turned weights: turned[c][(oc, ky, kx)] = w[oc][(c, k-1-ky, k-1-kx)].
        scratch.turned.resize(c * o * k * k, 0.0);
        for (ci, row) in scratch.turned.chunks_exact_mut(o * k * k).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                let (oc, ky, kx) = (i / (k * k), i / k % k, i % k);
                *v = w[[oc, (ci * k + k - 1 - ky) * k + k - 1 - kx]];
            }
        }
        scratch.turned_starts.clear();
        scratch.turned_starts.extend((0..o).flat_map(|oc| {
            (0..k).flat_map(move |ky| (0..k).map(move |kx| oc * padded_dy_len + lead + ky * g.wp + kx + first))
        }));
        scratch.dx.resize(c * span, 0.0);
    }
    if let Some((dx, beta_x)) = dx.as_mut() {
        assert_eq!(dx.dim(), (n, shape.in_len()), "conv2d_backward: input gradient shape");
        // With beta 0 each sample's gradient is written over dx below, without zeroing first.
        if *beta_x != 0.0 && *beta_x != 1.0 {
            *dx *= *beta_x;
        }
    }
    let bias_sums = &mut scratch.bias_sums;
    bias_sums.clear();
    bias_sums.resize(if db.is_some() { o } else { 0 }, 0.0);
    for (s, dyn_) in dy.rows().into_iter().enumerate() {
        let dyn_ = dyn_.to_slice().expect("standard rows");
        // The output gradient on the padded width, zeros in the surplus columns, `lead + edge`
        // values into each channel's run of the padded output gradient.
        let channels = scratch.padded_dy.chunks_exact_mut(padded_dy_len).zip(dyn_.chunks_exact(ho * wo));
        for (oc, (pd, d)) in channels.enumerate() {
            for (gr, dr) in pd[lead + edge..lead + edge + g.grid].chunks_mut(g.wp).zip(d.chunks_exact(wo)) {
                gr[..wo].copy_from_slice(dr);
            }
            if let Some(sum) = bias_sums.get_mut(oc) {
                *sum += d.iter().sum::<f32>();
            }
        }
        let sample = &padded[s * per_sample..(s + 1) * per_sample];
        let grid = ArrayView2::from_shape((o, g.grid).strides((padded_dy_len, 1)), &scratch.padded_dy[lead + edge..])
            .expect("each channel's run holds the grid");
        let rows = Rows { data: sample, starts: &scratch.starts, n: g.grid };
        matmul_nt_rows_at(simd, 1.0, grid, rows, if s == 0 { beta_w } else { 1.0 }, dw.view_mut());
        if let Some((dx, beta_x)) = dx.as_mut() {
            let turned = ArrayView2::from_shape((c, o * k * k), &scratch.turned[..]).expect("sized above");
            let rows = Rows { data: &scratch.padded_dy, starts: &scratch.turned_starts, n: span };
            let out = ArrayViewMut2::from_shape((c, span), &mut scratch.dx[..]).expect("sized above");
            matmul_rows_at(simd, 1.0, turned, rows, 0.0, out);
            let mut dxn = dx.row_mut(s);
            let dxn = dxn.as_slice_mut().expect("standard rows");
            let plane = shape.height * shape.width;
            simd::dispatch!(simd, V => {
                for (dc, src) in dxn.chunks_exact_mut(plane).zip(scratch.dx.chunks_exact(span)) {
                    for (dr, sr) in dc.chunks_exact_mut(shape.width).zip(src.chunks(g.wp)) {
                        let values = dr.iter_mut().zip(&sr[..shape.width]);
                        if *beta_x == 0.0 {
                            values.for_each(|(d, &v)| *d = v);
                        } else {
                            values.for_each(|(d, &v)| *d += v);
                        }
                    }
                }
            });
        }
    }
    if let Some((mut db, beta_b)) = db {
        for (g, &sum) in db.iter_mut().zip(&scratch.bias_sums) {
            *g = if beta_b == 0.0 { sum } else { beta_b * *g + sum };
        }
    }
}
