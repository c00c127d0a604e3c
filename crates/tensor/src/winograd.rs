//! 3x3 convolutions with padding 1 and stride 1 by Winograd's minimal filtering, F(2x2, 3x3):
//! each 2x2 block of outputs takes 16 multiplications per pair of channels instead of 36.
//!
//! Each 4x4 patch `d` of the padded input (patches overlap by two) becomes `V = Bᵀ·d·B`, each
//! 3x3 kernel `g` becomes `U = G·g·Gᵀ`, and for each of the 16 positions `ξ` of a 4x4 tile the
//! sum over input channels is one matrix product, `M_ξ[out, patch] = U_ξ[out, in]·V_ξ[in, patch]`,
//! run by this crate's dense kernels over the patches of several samples at once. The outputs
//! are `Aᵀ·M·A`. The transforms only add, subtract and halve: with integer inputs and kernels
//! whose transforms are exact, the results are exact, which the tests use.
//!
//! The same product gives the input gradient of such a convolution: the output gradient padded
//! by 1, convolved with the kernels turned by 180 degrees and their channel axes swapped.

use ndarray::{ArrayView2, ArrayViewMut2};
use simd::Simd;

use crate::conv::Conv2dShape;
use crate::matmul::matmul_at;

/// Values of a transformed 4x4 tile.
const TILE: usize = 16;

/// Whether `shape` is convolved this way: a 3x3 kernel, stride 1, padding 1, and an even height
/// and width (whole 2x2 blocks of output).
pub(crate) fn fits(shape: &Conv2dShape) -> bool {
    shape.kernel == 3
        && shape.stride == 1
        && shape.padding == 1
        && shape.height.is_multiple_of(2)
        && shape.width.is_multiple_of(2)
}

/// Buffers reused from call to call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    /// The transformed patches of a chunk of samples, `[16][in][patches]`.
    patches: Vec<f32>,
    /// The products, `[16][out][patches]`.
    products: Vec<f32>,
    /// One row of a patch row's column transform, four at a time.
    rows: Vec<f32>,
}

/// `U = G·g·Gᵀ` of one 3x3 kernel `g` (row-major), `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`.
fn transform_kernel(g: [f32; 9]) -> [f32; TILE] {
    let mut t = [[0.0f32; 3]; 4];
    for j in 0..3 {
        let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
        t[0][j] = a;
        t[1][j] = (a + b + c) * 0.5;
        t[2][j] = (a - b + c) * 0.5;
        t[3][j] = c;
    }
    let mut u = [0.0; TILE];
    for (i, [a, b, c]) in t.into_iter().enumerate() {
        u[4 * i] = a;
        u[4 * i + 1] = (a + b + c) * 0.5;
        u[4 * i + 2] = (a - b + c) * 0.5;
        u[4 * i + 3] = c;
    }
    u
}

/// Transforms the kernels of `w` (`[out, in·3·3]`, PyTorch's layout) into `u`, `[16][out][in]`;
/// with `turned`, the kernels of the input gradient instead: `[16][in][out]`, each kernel turned
/// by 180 degrees.
pub(crate) fn transform_kernels(w: ArrayView2<f32>, in_channels: usize, turned: bool, u: &mut Vec<f32>) {
    let out_channels = w.nrows();
    let pairs = out_channels * in_channels;
    u.resize(TILE * pairs, 0.0);
    for o in 0..out_channels {
        for c in 0..in_channels {
            let mut g: [f32; 9] = std::array::from_fn(|i| w[[o, c * 9 + i]]);
            let at = if turned {
                g.reverse();
                c * out_channels + o
            } else {
                o * in_channels + c
            };
            for (xi, v) in transform_kernel(g).into_iter().enumerate() {
                u[xi * pairs + at] = v;
            }
        }
    }
}

/// The sizes of one sample.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Output height and width (the input's).
    height: usize,
    width: usize,
    /// Padded width and values per padded plane.
    wp: usize,
    plane: usize,
    /// 2x2 blocks per row and per sample.
    blocks_w: usize,
    blocks: usize,
}

impl Geometry {
    fn new(height: usize, width: usize) -> Self {
        let wp = width + 2;
        Self { height, width, wp, plane: wp * (height + 2), blocks_w: width / 2, blocks: height / 2 * (width / 2) }
    }
}

/// Samples per chunk: as many as keep the chunk's transformed patches and products within
/// about 1 MiB, half of a core's L2 cache on recent CPUs.
pub(crate) fn chunk_len(shape: &Conv2dShape, n: usize) -> usize {
    let per_sample = TILE * (shape.in_channels + shape.out_channels) * (shape.height / 2) * (shape.width / 2) * 4;
    (1024 * 1024 / per_sample.max(1)).clamp(1, n.max(1))
}

/// `out = beta·out + conv(planes, kernels)` for a chunk of samples: `planes` holds each sample's
/// `in` zero-padded planes (`(H+2)·(W+2)` values each), `kernels` the transformed kernels
/// (`[16][out][in]`, see [`transform_kernels`]), and `out` each sample's `[out, H, W]` values in a
/// row. `bias` is added to each output channel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn convolve(
    simd: Simd,
    planes: &[f32],
    (in_channels, out_channels): (usize, usize),
    (height, width): (usize, usize),
    kernels: &[f32],
    bias: Option<&[f32]>,
    scratch: &mut Scratch,
    beta: f32,
    mut out: ArrayViewMut2<f32>,
) {
    let g = Geometry::new(height, width);
    let samples = out.nrows();
    assert_eq!(planes.len(), samples * in_channels * g.plane, "winograd: padded planes for {samples} samples");
    assert_eq!(kernels.len(), TILE * in_channels * out_channels, "winograd: transformed kernels");
    assert_eq!(out.ncols(), out_channels * height * width, "winograd: output rows");
    let patches = samples * g.blocks;
    scratch.patches.resize(TILE * in_channels * patches, 0.0);
    scratch.products.resize(TILE * out_channels * patches, 0.0);
    scratch.rows.resize(4 * g.wp, 0.0);
    simd::dispatch!(simd, V => transform_patches(planes, in_channels, g, &mut scratch.rows, &mut scratch.patches));
    for xi in 0..TILE {
        let u = &kernels[xi * out_channels * in_channels..(xi + 1) * out_channels * in_channels];
        let u = ArrayView2::from_shape((out_channels, in_channels), u).expect("sized above");
        let v = &scratch.patches[xi * in_channels * patches..(xi + 1) * in_channels * patches];
        let v = ArrayView2::from_shape((in_channels, patches), v).expect("sized above");
        let m = &mut scratch.products[xi * out_channels * patches..(xi + 1) * out_channels * patches];
        let m = ArrayViewMut2::from_shape((out_channels, patches), m).expect("sized above");
        matmul_at(simd, 1.0, u, v, 0.0, m);
    }
    let out = out.as_slice_mut().expect("standard rows");
    simd::dispatch!(simd, V => transform_products(&scratch.products, out_channels, g, samples, bias, beta, out));
}

/// `V = Bᵀ·d·B` of every 4x4 patch `d` at even offsets of each sample's padded planes, into
/// `patches` (`[16][in][sample·blocks + block]`), with
/// `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
#[inline(always)]
fn transform_patches(planes: &[f32], in_channels: usize, g: Geometry, rows: &mut [f32], patches: &mut [f32]) {
    let total = patches.len() / (TILE * in_channels);
    let (r0, rest) = rows.split_at_mut(g.wp);
    let (r1, rest) = rest.split_at_mut(g.wp);
    let (r2, r3) = rest.split_at_mut(g.wp);
    for (sample, planes) in planes.chunks_exact(in_channels * g.plane).enumerate() {
        for (c, plane) in planes.chunks_exact(g.plane).enumerate() {
            for by in 0..g.height / 2 {
                // Bᵀ·d down the columns of the four rows a row of patches covers, all at once.
                let d = |i: usize| &plane[(2 * by + i) * g.wp..(2 * by + i + 1) * g.wp];
                let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                for x in 0..g.wp {
                    r0[x] = d0[x] - d2[x];
                    r1[x] = d1[x] + d2[x];
                    r2[x] = d2[x] - d1[x];
                    r3[x] = d1[x] - d3[x];
                }
                // Then ·B along each patch's four columns.
                let first = sample * g.blocks + by * g.blocks_w;
                for (i, r) in [&*r0, &*r1, &*r2, &*r3].into_iter().enumerate() {
                    for bx in 0..g.blocks_w {
                        let (p0, p1, p2, p3) = (r[2 * bx], r[2 * bx + 1], r[2 * bx + 2], r[2 * bx + 3]);
                        let at = |j: usize| ((4 * i + j) * in_channels + c) * total + first + bx;
                        patches[at(0)] = p0 - p2;
                        patches[at(1)] = p1 + p2;
                        patches[at(2)] = p2 - p1;
                        patches[at(3)] = p1 - p3;
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ·M·A` of every tile of products, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`: each 2x2 block of
/// output, plus the bias, written over `beta·out`.
#[inline(always)]
fn transform_products(
    products: &[f32],
    out_channels: usize,
    g: Geometry,
    samples: usize,
    bias: Option<&[f32]>,
    beta: f32,
    out: &mut [f32],
) {
    let total = samples * g.blocks;
    let m = |xi: usize, o: usize, p: usize| products[(xi * out_channels + o) * total + p];
    let per_sample = out_channels * g.height * g.width;
    for (sample, out) in out.chunks_exact_mut(per_sample).enumerate() {
        for (o, out) in out.chunks_exact_mut(g.height * g.width).enumerate() {
            let b = bias.map_or(0.0, |b| b[o]);
            for by in 0..g.height / 2 {
                let (top, bottom) = out[2 * by * g.width..(2 * by + 2) * g.width].split_at_mut(g.width);
                for (bx, (top, bottom)) in top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2)).enumerate() {
                    let p = sample * g.blocks + by * g.blocks_w + bx;
                    let t: [f32; TILE] = std::array::from_fn(|xi| m(xi, o, p));
                    // Aᵀ·M: two rows of four.
                    let r0: [f32; 4] = std::array::from_fn(|j| t[j] + t[4 + j] + t[8 + j]);
                    let r1: [f32; 4] = std::array::from_fn(|j| t[4 + j] - t[8 + j] - t[12 + j]);
                    let y = [
                        r0[0] + r0[1] + r0[2] + b,
                        r0[1] - r0[2] - r0[3] + b,
                        r1[0] + r1[1] + r1[2] + b,
                        r1[1] - r1[2] - r1[3] + b,
                    ];
                    for (cell, y) in top.iter_mut().chain(bottom).zip(y) {
                        *cell = if beta == 0.0 { y } else { beta * *cell + y };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: `y[o, i, j] = b[o] + Σ w[o, c, a, e]·x[c, i + a - 1, j + e - 1]`.
    fn naive(x: &[f32], w: &[f32], b: &[f32], c: usize, o: usize, h: usize, wd: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; o * h * wd];
        for oc in 0..o {
            for i in 0..h {
                for j in 0..wd {
                    let mut acc = b[oc] as f64;
                    for ic in 0..c {
                        for a in 0..3 {
                            for e in 0..3 {
                                let (yy, xx) = ((i + a).wrapping_sub(1), (j + e).wrapping_sub(1));
                                if yy < h && xx < wd {
                                    acc += (w[(oc * c + ic) * 9 + a * 3 + e] * x[(ic * h + yy) * wd + xx]) as f64;
                                }
                            }
                        }
                    }
                    y[(oc * h + i) * wd + j] = acc as f32;
                }
            }
        }
        y
    }

    fn pad(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
        let mut p = vec![0.0; c * (h + 2) * (w + 2)];
        for ic in 0..c {
            for i in 0..h {
                for j in 0..w {
                    p[(ic * (h + 2) + i + 1) * (w + 2) + j + 1] = x[(ic * h + i) * w + j];
                }
            }
        }
        p
    }

    #[test]
    fn integer_convolutions_are_exact_at_every_level() {
        // Kernels of multiples of 4 keep every transformed value an integer; inputs small
        // integers: every sum is exact in f32, at any order.
        let mut scratch = Scratch::default();
        for (n, c, o, h, w) in [(2, 3, 5, 4, 6), (3, 1, 2, 2, 2), (1, 4, 3, 8, 10)] {
            let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7 + 3) % 11) as f32 - 5.0).collect();
            let wt: Vec<f32> = (0..o * c * 9).map(|i| 4.0 * (((i * 5 + 1) % 9) as f32 - 4.0)).collect();
            let b: Vec<f32> = (0..o).map(|i| i as f32 - 1.0).collect();
            let w2 = ArrayView2::from_shape((o, c * 9), &wt[..]).unwrap();
            let planes: Vec<f32> = x.chunks(c * h * w).flat_map(|s| pad(s, c, h, w)).collect();
            let want: Vec<f32> = x.chunks(c * h * w).flat_map(|s| naive(s, &wt, &b, c, o, h, w)).collect();
            for simd in Simd::every() {
                let mut u = Vec::new();
                transform_kernels(w2, c, false, &mut u);
                for beta in [0.0, 1.0] {
                    let mut y = ndarray::Array2::from_elem((n, o * h * w), 3.0f32);
                    convolve(simd, &planes, (c, o), (h, w), &u, Some(&b), &mut scratch, beta, y.view_mut());
                    let want: Vec<f32> = want.iter().map(|&v| v + 3.0 * beta).collect();
                    assert_eq!(y.as_slice().unwrap(), &want[..], "{simd} {n}x{c}x{h}x{w} to {o}, beta {beta}");
                }
                // The turned kernels: the convolution that gives the input gradient,
                // dx[c, i, j] = Σ w[o, c, a, e]·dy[o, i - a + 1, j - e + 1].
                let dy: Vec<f32> = (0..n * o * h * w).map(|i| ((i * 5 + 2) % 7) as f32 - 3.0).collect();
                let mut turned_w = vec![0.0; c * o * 9];
                for oc in 0..o {
                    for ic in 0..c {
                        for k in 0..9 {
                            turned_w[(ic * o + oc) * 9 + 8 - k] = wt[(oc * c + ic) * 9 + k];
                        }
                    }
                }
                let want_dx: Vec<f32> =
                    dy.chunks(o * h * w).flat_map(|s| naive(s, &turned_w, &vec![0.0; c], o, c, h, w)).collect();
                transform_kernels(w2, c, true, &mut u);
                let planes: Vec<f32> = dy.chunks(o * h * w).flat_map(|s| pad(s, o, h, w)).collect();
                let mut dx = ndarray::Array2::from_elem((n, c * h * w), f32::NAN);
                convolve(simd, &planes, (o, c), (h, w), &u, None, &mut scratch, 0.0, dx.view_mut());
                assert_eq!(dx.as_slice().unwrap(), &want_dx[..], "{simd} turned");
            }
        }
    }
}
