//! 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2x2, 3x3):
//! each 2x2 block of outputs takes 16 multiplications per input channel instead of 36.
//!
//! Every 4x4 input tile `d` (tiles overlap by two pixels) becomes `V = Bᵀ·d·B`, every 3x3
//! weight `g` becomes `U = G·g·Gᵀ`, and a 2x2 output block is `Aᵀ·M·A` where `M` is the sum
//! over input channels of `U ⊙ V`. Summed over channels, each of the 16 positions of `M` is a
//! matrix product, `M_ξ [out, tiles] = U_ξ [out, in] · V_ξ [in, tiles]`: the work that remains.
//! The gradients run the same steps transposed: `dM = A·dY·Aᵀ`, `dU_ξ = dM_ξ·V_ξᵀ` (then
//! `dg = Gᵀ·dU·G`), `dV_ξ = U_ξᵀ·dM_ξ` (then `dd = B·dV·Bᵀ`, added up where tiles overlap).
//!
//! The transforms only add and subtract (`G`'s halves are exact), so for finite values the
//! results differ from the direct sums in rounding (the transformed values can be four times
//! as large as the inputs, and an infinite input gives NaN where the direct sum gives
//! infinity). They run on whole vectors of tiles: each sample's padded input is written as
//! eight phases, `phase(p, s)[y][j]` holding padded pixel `(2y + p, 2j + s)`, so that value
//! `(r, s)` of tile `(i, j)` is `phase(r mod 2, s)[i + r/2][j]`, and tile `t = i·n + j` (`n`
//! tiles across) reads it at `t + (r/2)·n`: one run of values for every tile of a sample.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};
use simd::{F32s, Simd};

use crate::conv::Conv2dShape;
use crate::matmul::{matmul_at, matmul_nt_at, matmul_tn_at};

/// Positions of a transformed tile.
const TILE: usize = 16;

/// Values after each phase that nothing reads: room for a vector (of any level) that a row's
/// last store writes past its end.
const SLACK: usize = 16;

/// Transformed values kept at once: each group of samples' `V` and `M` within about this many
/// bytes, so that the products read them from the cache.
const GROUP_BYTES: usize = 256 * 1024;

/// Whether `shape` is convolved this way: 3x3, stride 1, padding 1, even sides (whole 2x2
/// output blocks), and enough input channels for the products to outweigh the transforms.
/// The CNN's layers take 12% to 43% less time this way below AVX-512 (one thread, `cargo bench
/// -p tensor --bench convolutions`). At AVX-512 a Xeon (Sapphire Rapids), whose direct
/// products run closest to its vector units' peak, took 3-11% longer for the 16-to-16 layer
/// on 28x28 and up to 16% less for the others, an epoch no faster; an EPYC (Zen 4), which runs
/// AVX-512 in two halves, takes about 18% less for the three layers together.
pub(crate) fn fits(shape: &Conv2dShape) -> bool {
    shape.kernel == 3
        && shape.stride == 1
        && shape.padding == 1
        && shape.height.is_multiple_of(2)
        && shape.width.is_multiple_of(2)
        && shape.in_channels >= 8
}

/// Values per sample of the phases of the padded input.
fn padded_len(shape: &Conv2dShape) -> usize {
    shape.in_channels * Geometry::of(shape).channel
}

/// Buffers reused from call to call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    /// The transformed weights, `[16][out][in]`.
    u: Vec<f32>,
    /// Their gradient, summed over the batch.
    du: Vec<f32>,
    /// A group's transformed inputs, `[16][in][group·tiles]`.
    v: Vec<f32>,
    /// A group's products `[16][out][group·tiles]` (forward), or their gradient (backward).
    m: Vec<f32>,
    /// A group's transformed input gradients, `[16][in][group·tiles]`.
    dv: Vec<f32>,
    /// One channel's 2x2 output blocks (or output gradient), `[4][tiles]`.
    blocks: Vec<f32>,
    /// One sample's padded input in phases, written just before it is transformed: padding
    /// again in the backward pass reads the input (under half as many values as its phases) once,
    /// in order, where phases kept from the forward pass came back from memory in sixteen
    /// runs at once, and took four times as long to transform. The backward pass also
    /// gathers each sample's input gradient here, once that sample's input is transformed.
    phases: Vec<f32>,
}

/// The sizes of one sample's tiles and phases.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Tiles across, and in all.
    across: usize,
    tiles: usize,
    /// Values per phase: `H/2 + 1` rows of `across`, then [`SLACK`] that [`pad`]'s whole-vector
    /// stores may overrun.
    phase: usize,
    /// Values per channel: eight phases.
    channel: usize,
}

impl Geometry {
    /// The geometry of a shape [`fits`] takes: the kernels' loads and stores stay within the
    /// buffers it sizes only for those (output as large as the input, whole tiles).
    fn checked(shape: &Conv2dShape) -> Self {
        assert!(fits(shape), "Winograd's convolution for {shape:?}");
        Self::of(shape)
    }

    fn of(shape: &Conv2dShape) -> Self {
        let across = shape.width / 2;
        let phase = (shape.height / 2 + 1) * across + SLACK;
        Self { across, tiles: across * shape.height / 2, phase, channel: 8 * phase }
    }

    /// Where phase `(p, s)` starts within a channel's.
    fn phase_at(&self, p: usize, s: usize) -> usize {
        (p * 4 + s) * self.phase
    }

    /// Samples per group: as many as keep the larger of `V` and `M` within [`GROUP_BYTES`].
    fn group(&self, shape: &Conv2dShape, n: usize) -> usize {
        let per_sample = TILE * shape.in_channels.max(shape.out_channels) * self.tiles * size_of::<f32>();
        (GROUP_BYTES / per_sample).clamp(1, n.max(1))
    }
}

/// Where tile position `ξ` of channel `c` starts in a `[16][channels][cols]` buffer, from
/// column `at`.
fn start(xi: usize, c: usize, channels: usize, cols: usize, at: usize) -> usize {
    (xi * channels + c) * cols + at
}

simd::kernel! {
    /// [`pad`] at a level.
    unsafe fn pad_at(x: &[f32], shape: &Conv2dShape, out: &mut [f32]) => pad;
}

/// Writes sample `x` (`C·H·W` values) into `out` as the phases of its zero-padded planes. Rows
/// go in whole vectors where the input has values enough after them, so the stores overrun
/// each phase's run into its next row or its slack, which then holds anything.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn pad<V: F32s>(x: &[f32], shape: &Conv2dShape, out: &mut [f32]) {
    let (g, w) = (Geometry::checked(shape), shape.width);
    let n = g.across;
    assert!(x.len() == shape.in_len() && out.len() == shape.in_channels * g.channel);
    let plane = shape.height * w;
    // A row's whole vectors: values each store loop writes to a phase, half what it reads.
    const { assert!(V::LANES <= SLACK, "a phase's slack holds a vector's overrun") };
    let whole = n.div_ceil(V::LANES) * V::LANES;
    for (c, phases) in out.chunks_exact_mut(g.channel).enumerate() {
        // The next plane, read soon: padding reads the input from memory (the backward pass
        // long after it was written), faster when asked for ahead (7.5% of a CNN epoch's
        // samples against 9.1% at AVX-512).
        if let Some(next) = x.get((c + 1) * plane..(c + 2) * plane) {
            simd::prefetch(next);
        }
        for y in 0..shape.height + 2 {
            let (p, row) = (y % 2, y / 2);
            // Padded pixel (y, 2j + s) is x[y - 1][2j + s - 1], zero outside.
            let from = (1..=shape.height).contains(&y).then(|| (c * shape.height + y - 1) * w);
            if let Some(from) = from.filter(|&from| from + 2 * whole < x.len()) {
                let at = [0, 1, 2, 3].map(|s| g.phase_at(p, s) + row * n);
                let (src, dst) = (x[from..].as_ptr(), phases.as_mut_ptr());
                // SAFETY: the loads read up to `from + 2·whole` (checked above), the stores
                // write `whole` values from each phase's run (phase 0's one later): past the
                // run's n, into the phase's next row (written after this one) or its slack.
                // A multiple of the lanes, `whole` splits in whole vectors.
                unsafe {
                    split::<V>(src, whole, dst.add(at[1]), dst.add(at[2]));
                    split::<V>(src.add(1), whole, dst.add(at[0] + 1), dst.add(at[3]));
                    *dst.add(at[0]) = 0.0;
                    *dst.add(at[3] + n - 1) = 0.0;
                }
                continue;
            }
            let source = from.map(|from| &x[from..][..w]);
            let runs = [0, 1, 2, 3].map(|s| {
                let at = g.phase_at(p, s) + row * n;
                at..at + n
            });
            let [s0, s1, s2, s3] = phases.get_disjoint_mut(runs).expect("four phases");
            let Some(src) = source else {
                [s0, s1, s2, s3].into_iter().for_each(|s| s.fill(0.0));
                continue;
            };
            // Phase 1 holds the even pixels, phase 2 the odd ones; phase 0 the odd ones a tile
            // later (after the padding), phase 3 the even ones a tile earlier (before it).
            s0[0] = 0.0;
            s3[n - 1] = 0.0;
            // SAFETY: `src` holds w = 2n values, each phase's run n.
            unsafe {
                split::<V>(src.as_ptr(), n, s1.as_mut_ptr(), s2.as_mut_ptr());
                split::<V>(src[1..].as_ptr(), n - 1, s0[1..].as_mut_ptr(), s3.as_mut_ptr());
            }
        }
    }
}

/// `U = G·g·Gᵀ` for every weight, into `u` (`[16][out][in]`).
fn transform_weights(w: ArrayView2<f32>, out: usize, inputs: usize, u: &mut Vec<f32>) {
    u.resize(TILE * out * inputs, 0.0);
    for o in 0..out {
        for c in 0..inputs {
            let g = |y: usize, x: usize| w[[o, c * 9 + y * 3 + x]];
            // G·g, then (G·g)·Gᵀ: G·x is x0, (x0 + x1 + x2)/2, (x0 - x1 + x2)/2, x2.
            let filter = |x: [f32; 3]| [x[0], 0.5 * (x[0] + x[1] + x[2]), 0.5 * (x[0] - x[1] + x[2]), x[2]];
            let columns = [0, 1, 2].map(|x| filter([g(0, x), g(1, x), g(2, x)]));
            for r in 0..4 {
                let row = filter([columns[0][r], columns[1][r], columns[2][r]]);
                for (s, &value) in row.iter().enumerate() {
                    u[start(r * 4 + s, o, out, inputs, c)] = value;
                }
            }
        }
    }
}

/// `dg = Gᵀ·dU·G` for one 4x4 `dU`: the 3x3 weight gradient, row-major.
fn filter_gradient(du: impl Fn(usize, usize) -> f32) -> [f32; 9] {
    // Gᵀ·x is x0 + (x1 + x2)/2, (x1 - x2)/2, (x1 + x2)/2 + x3.
    let t = |x: [f32; 4]| [x[0] + 0.5 * (x[1] + x[2]), 0.5 * (x[1] - x[2]), 0.5 * (x[1] + x[2]) + x[3]];
    let rows = [0, 1, 2, 3].map(|r| t([du(r, 0), du(r, 1), du(r, 2), du(r, 3)]));
    let columns = [0, 1, 2].map(|x| t([rows[0][x], rows[1][x], rows[2][x], rows[3][x]]));
    [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|i| columns[i % 3][i / 3])
}

// The kernels below run in `#[target_feature]` code into which everything they call must
// inline: closures and arrays' `map` may not, so their loops are written out.

/// Four runs of `k` lanes, from `t` after each of `p`.
///
/// # Safety
/// The level's (see [`F32s`]); each `p + t` must be valid for reading `k <= LANES` values.
#[inline(always)]
unsafe fn load4<V: F32s>(p: &[*const f32; 4], t: usize, k: usize) -> [V; 4] {
    // SAFETY: the caller's promise.
    unsafe { [load(p[0].add(t), k), load(p[1].add(t), k), load(p[2].add(t), k), load(p[3].add(t), k)] }
}

/// `k` lanes from `p`.
///
/// # Safety
/// The level's (see [`F32s`]); `p` must be valid for reading `k <= LANES` values.
#[inline(always)]
unsafe fn load<V: F32s>(p: *const f32, k: usize) -> V {
    // SAFETY: the caller's promise.
    unsafe { if k == V::LANES { V::load(p) } else { V::load_first(p, k) } }
}

/// Writes `k` lanes of `v` to `p`.
///
/// # Safety
/// The level's (see [`F32s`]); `p` must be valid for writing `k <= LANES` values.
#[inline(always)]
unsafe fn store<V: F32s>(v: V, p: *mut f32, k: usize) {
    // SAFETY: the caller's promise.
    unsafe { if k == V::LANES { v.store(p) } else { v.store_first(p, k) } }
}

/// Splits the `2·len` values from `src` by position: the even ones to `even`, the odd ones to
/// `odd` (`len` each).
///
/// # Safety
/// The level's (see [`F32s`]); `src` must be valid for reading `2·len` values, `even` and
/// `odd` for writing `len`.
#[inline(always)]
unsafe fn split<V: F32s>(src: *const f32, len: usize, even: *mut f32, odd: *mut f32) {
    let mut j = 0;
    while j < len {
        let k = (len - j).min(V::LANES);
        let m = 2 * k;
        // SAFETY: the caller's promise; the loads read the 2k values from 2j, the stores write
        // k from j (a second load of no values reads nothing).
        unsafe {
            let a = load::<V>(src.add(2 * j), m.min(V::LANES));
            let b = load::<V>(src.wrapping_add(2 * j + V::LANES), m.saturating_sub(V::LANES));
            let (e, o) = a.deinterleave(b);
            store(e, even.add(j), k);
            store(o, odd.add(j), k);
        }
        j += k;
    }
}

/// Writes `k` values of `even` and of `odd` in turn, `2·k` in all, to `dst`.
///
/// # Safety
/// The level's (see [`F32s`]); `dst` must be valid for writing `2·k` values, `k <= LANES`.
#[inline(always)]
unsafe fn merge<V: F32s>(even: V, odd: V, k: usize, dst: *mut f32) {
    // SAFETY: the caller's promise (a second store of no values writes nothing).
    unsafe {
        let (first, second) = V::interleave(even, odd);
        store(first, dst, (2 * k).min(V::LANES));
        store(second, dst.wrapping_add(V::LANES), (2 * k).saturating_sub(V::LANES));
    }
}

/// The 16 runs of channel `c` in a `[16][channels][cols]` buffer, from column `at`, as
/// `[r][s]` for tile position `r·4 + s`.
fn tile_sources(data: &[f32], c: usize, channels: usize, cols: usize, at: usize) -> [[*const f32; 4]; 4] {
    [0, 1, 2, 3].map(|r| [0, 1, 2, 3].map(|s| data[start(r * 4 + s, c, channels, cols, at)..].as_ptr()))
}

/// The runs of `k` lanes from `t` after each of `p`, as `[r][s]`.
///
/// # Safety
/// The level's (see [`F32s`]); each `p + t` must be valid for reading `k <= LANES` values.
#[inline(always)]
unsafe fn load16<V: F32s>(p: &[[*const f32; 4]; 4], t: usize, k: usize) -> [[V; 4]; 4] {
    // SAFETY: the caller's promise.
    unsafe { [load4(&p[0], t, k), load4(&p[1], t, k), load4(&p[2], t, k), load4(&p[3], t, k)] }
}

/// `Bᵀ·x` along one axis: `x0 - x2, x1 + x2, x2 - x1, x1 - x3`.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn input_1d<V: F32s>([x0, x1, x2, x3]: [V; 4]) -> [V; 4] {
    // SAFETY: the caller's promise.
    unsafe { [x0.sub(x2), x1.add(x2), x2.sub(x1), x1.sub(x3)] }
}

/// `B·x` along one axis, the transpose of [`input_1d`]: `x0, x1 - x2 + x3, x1 + x2 - x0, -x3`.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn input_1d_t<V: F32s>([x0, x1, x2, x3]: [V; 4]) -> [V; 4] {
    // SAFETY: the caller's promise.
    unsafe { [x0, x1.sub(x2).add(x3), x1.add(x2).sub(x0), x3.mul(V::splat(-1.0))] }
}

/// `Aᵀ·x` along one axis: `x0 + x1 + x2, x1 - x2 - x3`.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn output_1d<V: F32s>([x0, x1, x2, x3]: [V; 4]) -> [V; 2] {
    // SAFETY: the caller's promise.
    unsafe { [x0.add(x1).add(x2), x1.sub(x2).sub(x3)] }
}

/// `A·y` along one axis, the transpose of [`output_1d`]: `y0, y0 + y1, y0 - y1, -y1`.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn output_1d_t<V: F32s>([y0, y1]: [V; 2]) -> [V; 4] {
    // SAFETY: the caller's promise.
    unsafe { [y0, y0.add(y1), y0.sub(y1), y1.mul(V::splat(-1.0))] }
}

/// The columns of a 4x4 block of vectors: `t(x)[s][r] = x[r][s]`.
#[inline(always)]
fn transpose<V: Copy>(x: [[V; 4]; 4]) -> [[V; 4]; 4] {
    [
        [x[0][0], x[1][0], x[2][0], x[3][0]],
        [x[0][1], x[1][1], x[2][1], x[3][1]],
        [x[0][2], x[1][2], x[2][2], x[3][2]],
        [x[0][3], x[1][3], x[2][3], x[3][3]],
    ]
}

simd::kernel! {
    /// [`transform_input`] at a level.
    unsafe fn transform_input_at(phases: &[f32], shape: &Conv2dShape, v: &mut [f32], cols: usize, at: usize) => transform_input;
}

simd::kernel! {
    /// [`transform_output`] at a level.
    unsafe fn transform_output_at(
        m: &[f32],
        shape: &Conv2dShape,
        bias: Option<ArrayView1<f32>>,
        cols: usize,
        at: usize,
        blocks: &mut [f32],
        y: &mut [f32],
    ) => transform_output;
}

simd::kernel! {
    /// [`transform_output_gradient`] at a level.
    unsafe fn transform_output_gradient_at(
        dy: &[f32],
        shape: &Conv2dShape,
        m: &mut [f32],
        cols: usize,
        at: usize,
        blocks: &mut [f32],
    ) => transform_output_gradient;
}

simd::kernel! {
    /// [`transform_input_gradient`] at a level.
    unsafe fn transform_input_gradient_at(
        dv: &[f32],
        shape: &Conv2dShape,
        cols: usize,
        at: usize,
        dphases: &mut [f32],
        dx: &mut [f32],
        beta: f32,
    ) => transform_input_gradient;
}

/// `V = Bᵀ·d·B` for every tile of one sample (`phases`, as [`pad`] writes them) into `v`
/// (`[16][in][cols]`) from column `at`.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn transform_input<V: F32s>(phases: &[f32], shape: &Conv2dShape, v: &mut [f32], cols: usize, at: usize) {
    let (g, channels) = (Geometry::checked(shape), shape.in_channels);
    assert!(phases.len() == channels * g.channel && at + g.tiles <= cols && v.len() >= TILE * channels * cols);
    for (c, phases) in phases.chunks_exact(g.channel).enumerate() {
        // Value (r, s) of every tile: phase (r mod 2, s) from row r/2.
        let from = |r: usize, s: usize| phases[g.phase_at(r % 2, s) + r / 2 * g.across..][..g.tiles].as_ptr();
        let sources = [0, 1, 2, 3].map(|r| [0, 1, 2, 3].map(|s| from(r, s)));
        let dst = v.as_mut_ptr();
        let targets = [0, 1, 2, 3].map(|s| [0, 1, 2, 3].map(|r| start(r * 4 + s, c, channels, cols, at)));
        let mut t = 0;
        while t < g.tiles {
            let k = (g.tiles - t).min(V::LANES);
            // SAFETY: each source holds `tiles` values and each destination run (the check
            // above) `tiles` from `at`; t + k <= tiles.
            unsafe {
                let d = load16::<V>(&sources, t, k);
                // Along each row, then down each column.
                let across = transpose([input_1d(d[0]), input_1d(d[1]), input_1d(d[2]), input_1d(d[3])]);
                let down = [input_1d(across[0]), input_1d(across[1]), input_1d(across[2]), input_1d(across[3])];
                for s in 0..4 {
                    for r in 0..4 {
                        store(down[s][r], dst.add(targets[s][r] + t), k);
                    }
                }
            }
            t += k;
        }
    }
}

/// `y = Aᵀ·M·A + bias` for every tile of one sample, from `m` (`[16][out][cols]`) at column
/// `at`; `blocks` holds a channel's 2x2 blocks before they are laid out.
///
/// # Safety
/// The level's (see [`F32s`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn transform_output<V: F32s>(
    m: &[f32],
    shape: &Conv2dShape,
    bias: Option<ArrayView1<f32>>,
    cols: usize,
    at: usize,
    blocks: &mut [f32],
    y: &mut [f32],
) {
    let (g, channels, w) = (Geometry::checked(shape), shape.out_channels, shape.width);
    let n = g.across;
    assert!(at + g.tiles <= cols && m.len() >= TILE * channels * cols && blocks.len() >= 4 * g.tiles);
    assert_eq!(y.len(), shape.out_len(), "one sample's output");
    for (o, yo) in y.chunks_exact_mut(shape.height * w).enumerate() {
        let b = bias.map_or(0.0, |b| b[o]);
        let sources = tile_sources(m, o, channels, cols, at);
        let dst = blocks.as_mut_ptr();
        let mut t = 0;
        while t < g.tiles {
            let k = (g.tiles - t).min(V::LANES);
            // SAFETY: each source run holds `tiles` values (the check above), `blocks` four
            // runs of `tiles`; t + k <= tiles.
            unsafe {
                let x = load16::<V>(&sources, t, k);
                // Down each column, then along the two rows.
                let x = transpose(x);
                let down = [output_1d(x[0]), output_1d(x[1]), output_1d(x[2]), output_1d(x[3])];
                let bias = V::splat(b);
                let [y00, y01] = output_1d([down[0][0], down[1][0], down[2][0], down[3][0]]);
                let [y10, y11] = output_1d([down[0][1], down[1][1], down[2][1], down[3][1]]);
                for (ab, value) in [y00, y01, y10, y11].into_iter().enumerate() {
                    store(value.add(bias), dst.add(ab * g.tiles + t), k);
                }
            }
            t += k;
        }
        // Block (i, j)'s value (a, b) is output pixel (2i + a, 2j + b).
        for (i, rows) in yo.chunks_exact_mut(2 * w).enumerate() {
            for (a, row) in rows.chunks_exact_mut(w).enumerate() {
                let (even, odd) =
                    (&blocks[2 * a * g.tiles + i * n..][..n], &blocks[(2 * a + 1) * g.tiles + i * n..][..n]);
                let mut j = 0;
                while j < n {
                    let k = (n - j).min(V::LANES);
                    // SAFETY: both runs hold n values, the row 2n.
                    unsafe {
                        merge(
                            load::<V>(even[j..].as_ptr(), k),
                            load(odd[j..].as_ptr(), k),
                            k,
                            row[2 * j..].as_mut_ptr(),
                        )
                    };
                    j += k;
                }
            }
        }
    }
}

/// `dM = A·dY·Aᵀ` for every tile of one sample's output gradient `dy`, into `m`
/// (`[16][out][cols]`) from column `at`; `blocks` holds a channel's 2x2 blocks of `dy`.
///
/// # Safety
/// The level's (see [`F32s`]).
#[inline(always)]
unsafe fn transform_output_gradient<V: F32s>(
    dy: &[f32],
    shape: &Conv2dShape,
    m: &mut [f32],
    cols: usize,
    at: usize,
    blocks: &mut [f32],
) {
    let (g, channels, w) = (Geometry::checked(shape), shape.out_channels, shape.width);
    let n = g.across;
    assert!(at + g.tiles <= cols && m.len() >= TILE * channels * cols && blocks.len() >= 4 * g.tiles);
    assert_eq!(dy.len(), shape.out_len(), "one sample's output gradient");
    for (o, dyo) in dy.chunks_exact(shape.height * w).enumerate() {
        for (i, rows) in dyo.chunks_exact(2 * w).enumerate() {
            for (a, row) in rows.chunks_exact(w).enumerate() {
                let (even, odd) = blocks[2 * a * g.tiles..4 * g.tiles].split_at_mut(g.tiles);
                let (even, odd) = (&mut even[i * n..][..n], &mut odd[i * n..][..n]);
                // SAFETY: the row holds 2n values, each run n.
                unsafe { split::<V>(row.as_ptr(), n, even.as_mut_ptr(), odd.as_mut_ptr()) };
            }
        }
        let (dst, src) = (m.as_mut_ptr(), blocks.as_ptr());
        let sources = [0, 1, 2, 3].map(|ab| src.wrapping_add(ab * g.tiles));
        let targets = [0, 1, 2, 3].map(|r| [0, 1, 2, 3].map(|s| start(r * 4 + s, o, channels, cols, at)));
        let mut t = 0;
        while t < g.tiles {
            let k = (g.tiles - t).min(V::LANES);
            // SAFETY: `blocks` holds four runs of `tiles`, each destination run `tiles` values
            // from `at` (the check above); t + k <= tiles.
            unsafe {
                let block = load4::<V>(&sources, t, k);
                // Down the two rows, then along each of the four.
                let down = [output_1d_t([block[0], block[2]]), output_1d_t([block[1], block[3]])];
                for r in 0..4 {
                    let row = output_1d_t([down[0][r], down[1][r]]);
                    for s in 0..4 {
                        store(row[s], dst.add(targets[r][s] + t), k);
                    }
                }
            }
            t += k;
        }
    }
}

/// `dd = B·dV·Bᵀ` for every tile of one sample, from `dv` (`[16][in][cols]`) at column `at`,
/// added up where tiles overlap in `dphases`, then into `dx` (`beta·dx` first; `dx` is
/// overwritten when `beta` is 0).
///
/// # Safety
/// The level's (see [`F32s`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn transform_input_gradient<V: F32s>(
    dv: &[f32],
    shape: &Conv2dShape,
    cols: usize,
    at: usize,
    dphases: &mut [f32],
    dx: &mut [f32],
    beta: f32,
) {
    let (g, channels, w) = (Geometry::checked(shape), shape.in_channels, shape.width);
    let n = g.across;
    assert!(at + g.tiles <= cols && dv.len() >= TILE * channels * cols && dphases.len() == channels * g.channel);
    assert_eq!(dx.len(), shape.in_len(), "one sample's input gradient");
    for (c, phases) in dphases.chunks_exact_mut(g.channel).enumerate() {
        // Rows 0 are the only values that a row r = 0 or 1 reaches before anything is stored
        // there: they start at zero. Every other value's first write is a store (below).
        for p in 0..2 {
            for s in 0..4 {
                phases[g.phase_at(p, s)..][..n].fill(0.0);
            }
        }
        let sources = tile_sources(dv, c, channels, cols, at);
        let dst = phases.as_mut_ptr();
        let targets = [0, 1, 2, 3].map(|r| [0, 1, 2, 3].map(|s| g.phase_at(r % 2, s) + r / 2 * n));
        let mut t = 0;
        while t < g.tiles {
            let k = (g.tiles - t).min(V::LANES);
            // SAFETY: each source run holds `tiles` values (the check above); value (r, s)
            // goes to phase (r mod 2, s) from row r/2, within the phase's rows.
            unsafe {
                let x = load16::<V>(&sources, t, k);
                // Down each column, then along each row.
                let x = transpose(x);
                let down = transpose([input_1d_t(x[0]), input_1d_t(x[1]), input_1d_t(x[2]), input_1d_t(x[3])]);
                let across = [input_1d_t(down[0]), input_1d_t(down[1]), input_1d_t(down[2]), input_1d_t(down[3])];
                // Rows r and r + 2 go to the same phase, n tiles apart. Tiles run in order, so
                // row r + 2 of tile t is the first to reach value t + n of its phase (row r of
                // tile t + n comes later, in this run or a later one): a store. Row r then adds
                // to what row r + 2 of tile t - n left (or to the zeros of rows 0).
                for r in 2..4 {
                    for s in 0..4 {
                        store(across[r][s], dst.add(targets[r][s] + t), k);
                    }
                }
                for r in 0..2 {
                    for s in 0..4 {
                        let p = dst.add(targets[r][s] + t);
                        store(load::<V>(p, k).add(across[r][s]), p, k);
                    }
                }
            }
            t += k;
        }
    }
    // Input pixel (y, x) is padded (y + 1, x + 1): x = 2m lies in phase s = 1 of tile m and
    // s = 3 of tile m - 1, x = 2m + 1 in s = 2 of tile m and s = 0 of tile m + 1.
    for (dc, phases) in dx.chunks_exact_mut(shape.height * w).zip(dphases.chunks_exact(g.channel)) {
        for (y, row) in dc.chunks_exact_mut(w).enumerate() {
            let padded = y + 1;
            let (p, at) = (padded % 2, padded / 2 * n);
            let phase = |s: usize| phases[g.phase_at(p, s) + at..][..n].as_ptr();
            let (s0, s1, s2, s3) = (phase(0), phase(1), phase(2), phase(3));
            let (mut m, dst) = (0, row.as_mut_ptr());
            assert_eq!(row.len(), 2 * n);
            while m < n {
                let k = (n - m).min(V::LANES);
                // SAFETY: each phase's run holds n values and the row 2n; tile m - 1 of phase 3
                // (before the first) and tile m + 1 of phase 0 (after the last) are masked out.
                unsafe {
                    let before = if m == 0 {
                        V::load_masked(s3.wrapping_sub(1), V::lanes(1, k))
                    } else {
                        load(s3.add(m - 1), k)
                    };
                    let after = load::<V>(s0.add(m + 1), if m + k == n { k - 1 } else { k });
                    let (mut even, mut odd) = (load::<V>(s1.add(m), k).add(before), load::<V>(s2.add(m), k).add(after));
                    if beta != 0.0 {
                        // As dx is laid out: the pairs of this run, split back.
                        let first = load::<V>(dst.add(2 * m), (2 * k).min(V::LANES));
                        let second = load::<V>(dst.wrapping_add(2 * m + V::LANES), (2 * k).saturating_sub(V::LANES));
                        let (old_even, old_odd) = first.deinterleave(second);
                        even = old_even.mul(V::splat(beta)).add(even);
                        odd = old_odd.mul(V::splat(beta)).add(odd);
                    }
                    merge(even, odd, k, dst.add(2 * m));
                }
                m += k;
            }
        }
    }
}

/// The 16 products of a group: `c_ξ = op(a_ξ)·b_ξ` for every tile position, `a` `[16][m][k]`
/// read as `op` says, `b` `[16][k][n]`, `c` `[16][m][n]`.
fn products(simd: Simd, a: &[f32], (m, k): (usize, usize), transpose_a: bool, b: &[f32], n: usize, c: &mut [f32]) {
    let (rows, inner) = if transpose_a { (k, m) } else { (m, k) };
    for ((a, b), c) in a.chunks_exact(m * k).zip(b.chunks_exact(inner * n)).zip(c.chunks_exact_mut(rows * n)) {
        let a = ArrayView2::from_shape((m, k), a).expect("sized by the caller");
        let b = ArrayView2::from_shape((inner, n), b).expect("sized by the caller");
        let c = ArrayViewMut2::from_shape((rows, n), c).expect("sized by the caller");
        if transpose_a {
            matmul_tn_at(simd, 1.0, a, b, 0.0, c);
        } else {
            matmul_at(simd, 1.0, a, b, 0.0, c);
        }
    }
}

/// `V` for one sample `x` (`C·H·W` values) into `v` (`[16][in][cols]`) from column `at`, by
/// way of its phases in `phases` (sized by [`padded_len`]).
fn pad_and_transform(
    simd: Simd,
    x: ArrayView1<f32>,
    shape: &Conv2dShape,
    phases: &mut [f32],
    v: &mut [f32],
    cols: usize,
    at: usize,
) {
    let x = x.to_slice().expect("rows of a standard matrix");
    // SAFETY: padding and the transform have no requirement but the level, which `simd`
    // vouches for.
    unsafe {
        pad_at(simd, x, shape, phases);
        transform_input_at(simd, phases, shape, v, cols, at);
    }
}

/// `y = conv2d(x, w) + bias` for a batch (the shapes of [`crate::conv2d`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    shape: &Conv2dShape,
    scratch: &mut Scratch,
    mut y: ArrayViewMut2<f32>,
) {
    let (g, n, o, c) = (Geometry::of(shape), x.nrows(), shape.out_channels, shape.in_channels);
    let group = g.group(shape, n);
    transform_weights(w, o, c, &mut scratch.u);
    let Scratch { u, v, m, blocks, phases, .. } = scratch;
    blocks.resize(4 * g.tiles, 0.0);
    phases.resize(padded_len(shape), 0.0);
    v.resize(TILE * c * group * g.tiles, 0.0);
    m.resize(TILE * o * group * g.tiles, 0.0);
    for first in (0..n).step_by(group) {
        let samples = first..(first + group).min(n);
        let cols = samples.len() * g.tiles;
        let (v, m) = (&mut v[..TILE * c * cols], &mut m[..TILE * o * cols]);
        for (t, s) in samples.clone().enumerate() {
            pad_and_transform(simd, x.row(s), shape, phases, v, cols, t * g.tiles);
        }
        products(simd, u, (o, c), false, v, cols, m);
        for (t, s) in samples.enumerate() {
            let mut yn = y.row_mut(s);
            let yn = yn.as_slice_mut().expect("standard rows");
            // SAFETY: as above.
            unsafe { transform_output_at(simd, m, shape, bias, cols, t * g.tiles, blocks, yn) };
        }
    }
}

/// The gradients of [`forward`] for the same input `x`, as [`crate::conv2d_backward`] defines
/// them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    simd: Simd,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    dy: ArrayView2<f32>,
    shape: &Conv2dShape,
    scratch: &mut Scratch,
    (mut dw, beta_w): (ArrayViewMut2<f32>, f32),
    db: Option<(ArrayViewMut1<f32>, f32)>,
    mut dx: Option<(ArrayViewMut2<f32>, f32)>,
) {
    let (g, n, o, c, per_sample) =
        (Geometry::of(shape), dy.nrows(), shape.out_channels, shape.in_channels, padded_len(shape));
    assert_eq!(x.dim(), (n, shape.in_len()), "conv2d_backward: input shape");
    if let Some((dx, _)) = dx.as_ref() {
        assert_eq!(dx.dim(), (n, shape.in_len()), "conv2d_backward: input gradient shape");
    }
    let group = g.group(shape, n);
    transform_weights(w, o, c, &mut scratch.u);
    let Scratch { u, du, v, m, dv, blocks, phases } = scratch;
    phases.resize(per_sample, 0.0);
    blocks.resize(4 * g.tiles, 0.0);
    du.clear();
    du.resize(TILE * o * c, 0.0);
    v.resize(TILE * c * group * g.tiles, 0.0);
    m.resize(TILE * o * group * g.tiles, 0.0);
    if dx.is_some() {
        dv.resize(TILE * c * group * g.tiles, 0.0);
    }
    for first in (0..n).step_by(group) {
        let samples = first..(first + group).min(n);
        let cols = samples.len() * g.tiles;
        let (v, m) = (&mut v[..TILE * c * cols], &mut m[..TILE * o * cols]);
        for (t, s) in samples.clone().enumerate() {
            pad_and_transform(simd, x.row(s), shape, phases, v, cols, t * g.tiles);
            let dys = dy.row(s);
            let dys = dys.to_slice().expect("standard rows");
            // SAFETY: the transform has no requirement but the level, which `simd` vouches for.
            unsafe { transform_output_gradient_at(simd, dys, shape, m, cols, t * g.tiles, blocks) };
        }
        // dU_ξ += dM_ξ·V_ξᵀ.
        for ((dm, v), du) in m.chunks_exact(o * cols).zip(v.chunks_exact(c * cols)).zip(du.chunks_exact_mut(o * c)) {
            let dm = ArrayView2::from_shape((o, cols), dm).expect("sized above");
            let v = ArrayView2::from_shape((c, cols), v).expect("sized above");
            let du = ArrayViewMut2::from_shape((o, c), du).expect("sized above");
            matmul_nt_at(simd, 1.0, dm, v, 1.0, du);
        }
        if let Some((dx, beta_x)) = dx.as_mut() {
            let dv = &mut dv[..TILE * c * cols];
            products(simd, u, (o, c), true, m, cols, dv);
            for (t, s) in samples.enumerate() {
                let mut dxn = dx.row_mut(s);
                let dxn = dxn.as_slice_mut().expect("standard rows");
                // SAFETY: as above.
                unsafe { transform_input_gradient_at(simd, dv, shape, cols, t * g.tiles, phases, dxn, *beta_x) };
            }
        }
    }
    for oc in 0..o {
        for ic in 0..c {
            let grad = filter_gradient(|r, s| du[start(r * 4 + s, oc, o, c, ic)]);
            for (k, &d) in grad.iter().enumerate() {
                let cell = &mut dw[[oc, ic * 9 + k]];
                *cell = if beta_w == 0.0 { d } else { beta_w * *cell + d };
            }
        }
    }
    if let Some((mut db, beta_b)) = db {
        for (oc, g) in db.iter_mut().enumerate() {
            let sum: f32 = dy
                .rows()
                .into_iter()
                .map(|r| {
                    r.as_slice().expect("standard rows")
                        [oc * shape.height * shape.width..(oc + 1) * shape.height * shape.width]
                        .iter()
                        .sum::<f32>()
                })
                .sum();
            *g = if beta_b == 0.0 { sum } else { beta_b * *g + sum };
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2};

    use super::*;

    /// Winograd's convolution at every level against the definition summed in f64, on values
    /// whose sums round: 15 tiles a sample (a partial vector at every level), three samples in
    /// one group.
    #[test]
    fn every_level_is_the_definition_within_rounding() {
        let sh =
            Conv2dShape { in_channels: 8, height: 6, width: 10, out_channels: 3, kernel: 3, stride: 1, padding: 1 };
        let (n, o, c, (h, w)) = (3, sh.out_channels, sh.in_channels, (sh.height, sh.width));
        let value = |i: usize| ((i as f32 * 0.618).fract() - 0.5) * 2.0;
        let x = Array2::from_shape_fn((n, sh.in_len()), |(s, i)| value(s * 1000 + i));
        let wt = Array2::from_shape_fn((o, sh.patch_len()), |(a, i)| value(7000 + a * 100 + i));
        let b = Array1::from_shape_fn(o, |a| value(9000 + a));
        let dy = Array2::from_shape_fn((n, sh.out_len()), |(s, i)| value(11000 + s * 1000 + i));
        // The definition: y[s, oc, oy, ox] = b + Σ w[oc, ci, ky, kx]·x[s, ci, oy + ky - 1, ox + kx - 1].
        let (mut want_y, mut want_dw, mut want_dx) =
            (Array2::<f64>::zeros(dy.dim()), Array2::<f64>::zeros(wt.dim()), Array2::<f64>::zeros(x.dim()));
        for (s, oc, oy, ox) in (0..n)
            .flat_map(|s| (0..o).flat_map(move |oc| (0..h).flat_map(move |oy| (0..w).map(move |ox| (s, oc, oy, ox)))))
        {
            let out = (oc * h + oy) * w + ox;
            want_y[[s, out]] += f64::from(b[oc]);
            for (ci, ky, kx) in (0..c).flat_map(|ci| (0..3).flat_map(move |ky| (0..3).map(move |kx| (ci, ky, kx)))) {
                let (Some(iy), Some(ix)) = ((oy + ky).checked_sub(1), (ox + kx).checked_sub(1)) else { continue };
                if iy >= h || ix >= w {
                    continue;
                }
                let (input, weight) = ((ci * h + iy) * w + ix, ci * 9 + ky * 3 + kx);
                want_y[[s, out]] += f64::from(wt[[oc, weight]]) * f64::from(x[[s, input]]);
                want_dw[[oc, weight]] += f64::from(dy[[s, out]]) * f64::from(x[[s, input]]);
                want_dx[[s, input]] += f64::from(dy[[s, out]]) * f64::from(wt[[oc, weight]]);
            }
        }
        let close = |got: &Array2<f32>, want: &Array2<f64>, what: &str| {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(want) {
                assert!((f64::from(*g) - w).abs() <= 1e-5 * scale, "{what}: {g} against {w}");
            }
        };
        for simd in Simd::every() {
            let mut scratch = Scratch::default();
            let mut y = Array2::zeros(dy.dim());
            forward(simd, x.view(), wt.view(), Some(b.view()), &sh, &mut scratch, y.view_mut());
            let (mut dw, mut dx) = (Array2::zeros(wt.dim()), Array2::zeros(x.dim()));
            let mut db = Array1::zeros(o);
            let (dw_beta, db_beta, dx_beta) =
                ((dw.view_mut(), 0.0), Some((db.view_mut(), 0.0)), Some((dx.view_mut(), 0.0)));
            backward(simd, x.view(), wt.view(), dy.view(), &sh, &mut scratch, dw_beta, db_beta, dx_beta);
            close(&y, &want_y, &format!("{simd} y"));
            close(&dw, &want_dw, &format!("{simd} dw"));
            close(&dx, &want_dx, &format!("{simd} dx"));
            // Added to half of what is there: one and a half times the gradients.
            let (mut dw2, mut dx2, mut db2) = (dw.clone(), dx.clone(), db.clone());
            let (dw_beta, db_beta, dx_beta) =
                ((dw2.view_mut(), 0.5), Some((db2.view_mut(), 0.5)), Some((dx2.view_mut(), 0.5)));
            backward(simd, x.view(), wt.view(), dy.view(), &sh, &mut scratch, dw_beta, db_beta, dx_beta);
            close(&dx2, &(&want_dx * 1.5), &format!("{simd} dx, beta 0.5"));
            close(&dw2, &(&want_dw * 1.5), &format!("{simd} dw, beta 0.5"));
            assert!(db2.iter().zip(&db).all(|(two, one)| (two - 1.5 * one).abs() <= 1e-5), "{simd} db, beta 0.5");
            for (oc, &g) in db.iter().enumerate() {
                let want: f32 = dy.rows().into_iter().map(|r| r.iter().skip(oc * h * w).take(h * w).sum::<f32>()).sum();
                assert!((g - want).abs() <= 1e-5 * want.abs().max(1.0), "{simd} db: {g} against {want}");
            }
        }
    }
}
