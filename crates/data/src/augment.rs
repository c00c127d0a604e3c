//! Random affine augmentation: each training image rotated, shifted and scaled a little, a
//! fresh draw per image, sampled bilinearly with zeros outside. The draws come from the
//! caller's generator, so that a run stays reproducible from its seed.

use simd::Simd;
use std::ops::Range;

use rand::RngCore;

use crate::Dataset;
use crate::batch::fill_labels;

/// How far the random transforms go. The default is `--rotate 10 --shift 2 --scale 0.1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// The largest rotation either way, in degrees.
    pub rotate: f32,
    /// The largest shift either way, along each axis, in pixels.
    pub shift: f32,
    /// The largest change of size either way, as a fraction (0.1: from 90% to 110%).
    pub scale: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self { rotate: 10.0, shift: 2.0, scale: 0.1 }
    }
}

/// A uniform draw in `[-1, 1)`.
fn symmetric(rng: &mut dyn RngCore) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

thread_local! {
    /// Each thread's buffers for [`Augment::warp`], kept from image to image.
    static WARPER: std::cell::RefCell<Warper> = std::cell::RefCell::default();
}

/// The buffers of [`Augment::warp`], reused from image to image.
#[derive(Debug, Clone, Default)]
pub(crate) struct Warper {
    /// The source's pixels inside a border of zeros: a row above, a column to the left, zeros
    /// to the right up to `pitch`, and rows of zeros below ([`SPARE_ROWS`] more than one).
    padded: Vec<u8>,
    /// The distance from one padded row to the next.
    pitch: usize,
    /// The width of the images the border was laid out for.
    cols: usize,
    /// Each column's pixels OR-ed together: nonzero where the column has ink.
    columns: Vec<u8>,
    /// Where each output row to compute starts reading the source.
    starts: Vec<(f32, f32)>,
}

/// Rows of zeros below the bottom border: the byte-permuting sampler reads four rows from any
/// padded row, and the gathering one four bytes from any pixel.
const SPARE_ROWS: usize = 3;

/// The padded row length that suits the byte-permuting sampler: a block of four rows fills two
/// 64-byte registers.
const PITCH: usize = 32;

/// The rows and columns an image's ink spans, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ink {
    x_lo: usize,
    x_hi: usize,
    y_lo: usize,
    y_hi: usize,
}

impl Warper {
    /// Copies `image` into the padded source and finds its ink; `None` if it has none.
    fn load(&mut self, simd: Simd, image: &[u8], rows: usize, cols: usize) -> Option<Ink> {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd; // no vector path of its own here
        self.fit(rows, cols);
        #[cfg(target_arch = "x86_64")]
        if self.pitch == PITCH && simd.avx512() {
            // SAFETY: the CPU has AVX-512 F, BW and VL (`simd` says so), and a row fits in one
            // 32-byte register.
            return unsafe { self.load_avx512(image, rows, cols) };
        }
        self.load_portable(image, cols)
    }

    /// Sizes the padded source for `rows x cols` images.
    fn fit(&mut self, rows: usize, cols: usize) {
        let pitch = if cols + 2 <= PITCH { PITCH } else { cols + 2 };
        let len = (rows + 2 + SPARE_ROWS) * pitch;
        if self.pitch != pitch || self.padded.len() != len || self.cols != cols {
            // The border stays zero from here on: loads write the interior only. A narrower
            // image on the same pitch would otherwise read a wider one's last column.
            self.pitch = pitch;
            self.cols = cols;
            self.padded.clear();
            self.padded.resize(len, 0);
        }
    }

    fn load_portable(&mut self, image: &[u8], cols: usize) -> Option<Ink> {
        let pitch = self.pitch;
        // The ink's rows and columns, by OR-ing bytes (which vectorises), not by searching.
        self.columns.clear();
        self.columns.resize(cols, 0);
        let (mut y_lo, mut y_hi) = (usize::MAX, 0);
        for (y, row) in image.chunks_exact(cols).enumerate() {
            self.padded[(y + 1) * pitch + 1..(y + 1) * pitch + 1 + cols].copy_from_slice(row);
            if row.iter().fold(0u8, |a, &p| a | p) != 0 {
                (y_lo, y_hi) = (y_lo.min(y), y);
                self.columns.iter_mut().zip(row).for_each(|(c, &p)| *c |= p);
            }
        }
        let x_lo = self.columns.iter().position(|&c| c != 0)?;
        let x_hi = self.columns.iter().rposition(|&c| c != 0)?;
        (y_lo <= y_hi).then_some(Ink { x_lo, x_hi, y_lo, y_hi })
    }

    /// A row at a time in a register: copied, OR-ed into the columns' and tested for ink.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_avx512(&mut self, image: &[u8], rows: usize, cols: usize) -> Option<Ink> {
        use std::arch::x86_64::*;
        assert!(self.pitch == PITCH && cols + 2 <= PITCH && image.len() == rows * cols);
        assert!(self.padded.len() >= (rows + 2) * PITCH);
        let row_mask = ((1u64 << cols) - 1) as u32;
        let mut columns = _mm256_setzero_si256();
        let (mut y_lo, mut y_hi) = (usize::MAX, 0);
        for y in 0..rows {
            // SAFETY: the mask keeps the load within row `y` of the image, and the store
            // within the interior of row `y + 1` of the padded image (asserted lengths).
            unsafe {
                let bytes = _mm256_maskz_loadu_epi8(row_mask, image.as_ptr().add(y * cols).cast());
                columns = _mm256_or_si256(columns, bytes);
                if _mm256_test_epi8_mask(bytes, bytes) != 0 {
                    (y_lo, y_hi) = (y_lo.min(y), y);
                }
                _mm256_mask_storeu_epi8(self.padded.as_mut_ptr().add((y + 1) * PITCH + 1).cast(), row_mask, bytes);
            }
        }
        let inked = _mm256_test_epi8_mask(columns, columns);
        (inked != 0).then(|| Ink {
            x_lo: inked.trailing_zeros() as usize,
            x_hi: 31 - inked.leading_zeros() as usize,
            y_lo,
            y_hi,
        })
    }
}

/// An augmentation range out of bounds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("augmentation {name} must be in [0, {max}], got {value}")]
pub struct AugmentError {
    /// The range: `rotate`, `shift` or `scale`.
    pub name: &'static str,
    /// Its value.
    pub value: f32,
    /// The largest value accepted.
    pub max: f32,
}

impl Augment {
    /// Checks the ranges: finite, not negative, and a scale below 1.
    ///
    /// ```
    /// let wild = data::Augment { scale: 1.5, ..data::Augment::default() };
    /// assert_eq!(wild.validate().unwrap_err().to_string(), "augmentation scale must be in [0, 0.99], got 1.5");
    /// ```
    ///
    /// # Errors
    /// The first value out of range, named.
    pub fn validate(&self) -> Result<(), AugmentError> {
        for (name, value, max) in
            [("rotate", self.rotate, 180.0), ("shift", self.shift, 1e3), ("scale", self.scale, 0.99)]
        {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                return Err(AugmentError { name, value, max });
            }
        }
        Ok(())
    }

    /// Draws a transform from `rng` and writes `image` (`rows x cols` bytes) transformed into
    /// `out`, as `f32` in `[0, 1]`. Allocates nothing once a thread has warped an image of
    /// this size.
    ///
    /// # Panics
    /// If the lengths do not fit.
    #[track_caller]
    pub fn warp(&self, image: &[u8], rows: usize, cols: usize, rng: &mut dyn RngCore, out: &mut [f32]) {
        WARPER.with_borrow_mut(|warper| self.warp_with(image, rows, cols, rng, warper, out));
    }

    /// [`Self::warp`] with the buffers given.
    #[track_caller]
    pub(crate) fn warp_with(
        &self,
        image: &[u8],
        rows: usize,
        cols: usize,
        rng: &mut dyn RngCore,
        warper: &mut Warper,
        out: &mut [f32],
    ) {
        assert!(image.len() == rows * cols && out.len() == rows * cols, "warp: {rows}x{cols} image and output");
        let angle = (symmetric(rng) * self.rotate).to_radians();
        let (tx, ty) = (symmetric(rng) * self.shift, symmetric(rng) * self.shift);
        let scale = 1.0 + symmetric(rng) * self.scale;
        let (sin, cos) = angle.sin_cos();

        out.fill(0.0);
        let simd = Simd::get();
        let Some(Ink { x_lo, x_hi, y_lo, y_hi }) = warper.load(simd, image, rows, cols) else {
            return;
        };

        // Output (ox, oy) reads source c + Rᵀ·(o - c - t) / scale.
        let (cx, cy) = ((cols as f32 - 1.0) / 2.0, (rows as f32 - 1.0) / 2.0);
        let (a, b) = (cos / scale, sin / scale);
        let source = |ox: f32, oy: f32| {
            let (dx, dy) = (ox - cx - tx, oy - cy - ty);
            (cx + a * dx + b * dy, cy - b * dx + a * dy)
        };
        // Only outputs whose source lies within a pixel of the ink can be nonzero: the ink's
        // box, mapped forward, bounds them.
        let forward = |sx: f32, sy: f32| {
            let (dx, dy) = ((sx - cx) * scale, (sy - cy) * scale);
            (cx + tx + cos * dx - sin * dy, cy + ty + sin * dx + cos * dy)
        };
        let corners = [
            forward(x_lo as f32 - 1.0, y_lo as f32 - 1.0),
            forward(x_hi as f32 + 1.0, y_lo as f32 - 1.0),
            forward(x_lo as f32 - 1.0, y_hi as f32 + 1.0),
            forward(x_hi as f32 + 1.0, y_hi as f32 + 1.0),
        ];
        let clamp = |v: f32, n: usize| v.clamp(0.0, n as f32 - 1.0) as usize;
        let ox_lo = clamp(corners.iter().map(|c| c.0).fold(f32::INFINITY, f32::min).floor(), cols);
        let ox_hi = clamp(corners.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max).ceil(), cols);
        let oy_lo = clamp(corners.iter().map(|c| c.1).fold(f32::INFINITY, f32::min).floor(), rows);
        let oy_hi = clamp(corners.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max).ceil(), rows);

        let geometry = Row { a, b, rows: rows as f32, cols: cols as f32, pitch: warper.pitch };
        warper.starts.clear();
        warper.starts.extend((oy_lo..=oy_hi).map(|oy| source(ox_lo as f32, oy as f32)));
        let lines = Lines { starts: &warper.starts, stride: cols, span: 0..ox_hi - ox_lo + 1 };
        geometry.sample(simd, &warper.padded, &lines, &mut out[oy_lo * cols + ox_lo..]);
    }
}

/// The output rows to sample: row `i` starts reading the source at `starts[i]` and is
/// written to `out[i·stride + k]` for `k` in `span`.
struct Lines<'a> {
    starts: &'a [(f32, f32)],
    stride: usize,
    span: Range<usize>,
}

impl Lines<'_> {
    /// Each row's start in the source and its outputs, `span` of which are written.
    fn rows<'o>(&self, out: &'o mut [f32]) -> impl Iterator<Item = ((f32, f32), &'o mut [f32])> {
        let needed = self.starts.len().saturating_sub(1) * self.stride + self.span.end;
        assert!(out.len() >= needed, "{} outputs for {} rows of {}", out.len(), self.starts.len(), self.stride);
        self.starts.iter().copied().zip(out.chunks_mut(self.stride))
    }
}

/// What every output row of one warp shares.
struct Row {
    /// The source's step per output column: `(a, -b)`.
    a: f32,
    b: f32,
    rows: f32,
    cols: f32,
    /// The padded source's row length.
    pitch: usize,
}

impl Row {
    /// Samples each row of `lines`: output `k` of a row starting at `(sx, sy)` reads the
    /// source at `(sx + a·k, sy - b·k)`, bilinearly, zero outside the image, and divides by 255.
    /// Every path computes the same operations in the same order, so results do not depend on
    /// the CPU.
    fn sample(&self, simd: Simd, padded: &[u8], lines: &Lines, out: &mut [f32]) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd; // no vector path of its own here
        assert!(padded.len() >= (self.rows as usize + 2 + SPARE_ROWS) * self.pitch, "a padded source");
        #[cfg(target_arch = "x86_64")]
        if self.pitch == PITCH && simd.avx512_vbmi() {
            // SAFETY: the CPU has AVX-512 F, BW and VBMI (`simd` says so), and the rows are
            // PITCH apart.
            return unsafe { self.sample_vbmi(padded, lines, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if simd.avx2() {
            // SAFETY: the CPU has AVX2 (`simd` says so).
            return unsafe { self.sample_avx2(padded, lines, out) };
        }
        self.sample_portable(padded, lines, out);
    }

    fn sample_portable(&self, padded: &[u8], lines: &Lines, out: &mut [f32]) {
        for ((sx, sy), out) in lines.rows(out) {
            self.sample_row(padded, sx, sy, out, lines.span.clone());
        }
    }

    #[inline(always)]
    fn sample_row(&self, padded: &[u8], sx0: f32, sy0: f32, out: &mut [f32], span: Range<usize>) {
        let pixel = |i: usize| f32::from(padded[i]);
        for (k, o) in out[..span.end].iter_mut().enumerate().skip(span.start) {
            let kf = k as f32;
            let (sx, sy) = (sx0 + self.a * kf, sy0 - self.b * kf);
            let (fx, fy) = (sx.floor(), sy.floor());
            // Inside the padded image: a corner at -1 or at the last column reads zeros.
            *o = if fx >= -1.0 && fy >= -1.0 && fx < self.cols && fy < self.rows {
                let (wx, wy) = (sx - fx, sy - fy);
                let i = (fy + 1.0) as usize * self.pitch + (fx + 1.0) as usize;
                let (p00, p01, p10, p11) = (pixel(i), pixel(i + 1), pixel(i + self.pitch), pixel(i + self.pitch + 1));
                let top = p00 + (p01 - p00) * wx;
                let bottom = p10 + (p11 - p10) * wx;
                (top + (bottom - top) * wy) / 255.0
            } else {
                0.0
            };
        }
    }

    /// Eight outputs at a time, each pair of horizontal neighbours gathered as one 32-bit word.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sample_avx2(&self, padded: &[u8], lines: &Lines, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let span = lines.span.clone();
        let chunks = (span.end - span.start) / 8;
        let lanes = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
        let (a, b) = (_mm256_set1_ps(self.a), _mm256_set1_ps(self.b));
        let (minus_one, one) = (_mm256_set1_ps(-1.0), _mm256_set1_ps(1.0));
        let (cols, rows) = (_mm256_set1_ps(self.cols), _mm256_set1_ps(self.rows));
        let pitch = _mm256_set1_epi32(self.pitch as i32);
        let (byte, scale) = (_mm256_set1_epi32(0xff), _mm256_set1_ps(255.0));
        let base = padded.as_ptr();
        for ((sx0, sy0), out) in lines.rows(out) {
            let (x0, y0) = (_mm256_set1_ps(sx0), _mm256_set1_ps(sy0));
            for start in (span.start..).step_by(8).take(chunks) {
                let kf = _mm256_add_ps(lanes, _mm256_set1_ps(start as f32));
                let sx = _mm256_add_ps(x0, _mm256_mul_ps(a, kf));
                let sy = _mm256_sub_ps(y0, _mm256_mul_ps(b, kf));
                let (fx, fy) = (_mm256_floor_ps(sx), _mm256_floor_ps(sy));
                let inside = _mm256_and_ps(
                    _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_GE_OQ>(fx, minus_one),
                        _mm256_cmp_ps::<_CMP_GE_OQ>(fy, minus_one),
                    ),
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(fx, cols), _mm256_cmp_ps::<_CMP_LT_OQ>(fy, rows)),
                );
                let ix = _mm256_cvttps_epi32(_mm256_add_ps(fx, one));
                let iy = _mm256_cvttps_epi32(_mm256_add_ps(fy, one));
                // Lanes outside read index 0, which is in bounds; their result is masked to 0.
                let index =
                    _mm256_and_si256(_mm256_add_epi32(_mm256_mullo_epi32(iy, pitch), ix), _mm256_castps_si256(inside));
                // SAFETY: each gather reads four bytes from a pixel of the padded image's
                // interior or its right neighbour (fx < cols, fy < rows), or from index 0, or
                // from the row below those: within the spare rows (asserted by `sample`).
                let (upper, lower) = unsafe {
                    (
                        _mm256_i32gather_epi32::<1>(base.cast(), index),
                        _mm256_i32gather_epi32::<1>(base.add(self.pitch).cast(), index),
                    )
                };
                let low = |w| _mm256_cvtepi32_ps(_mm256_and_si256(w, byte));
                let high = |w| _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<8>(w), byte));
                let (p00, p01, p10, p11) = (low(upper), high(upper), low(lower), high(lower));
                let (wx, wy) = (_mm256_sub_ps(sx, fx), _mm256_sub_ps(sy, fy));
                let top = _mm256_add_ps(p00, _mm256_mul_ps(_mm256_sub_ps(p01, p00), wx));
                let bottom = _mm256_add_ps(p10, _mm256_mul_ps(_mm256_sub_ps(p11, p10), wx));
                let value = _mm256_div_ps(_mm256_add_ps(top, _mm256_mul_ps(_mm256_sub_ps(bottom, top), wy)), scale);
                // SAFETY: `start + 8 <= span.end`, within `out` (see `Lines::rows`).
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(start), _mm256_and_ps(value, inside)) };
            }
            self.sample_row(padded, sx0, sy0, out, span.start + chunks * 8..span.end);
        }
    }

    /// Sixteen outputs at a time, without gathers (slow on many CPUs): four padded rows fill
    /// two registers, and one byte permutation picks the four neighbours of every output whose
    /// upper neighbours are on the first three of them; the outputs of one vector usually span
    /// that few rows, else another block of rows follows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VBMI.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn sample_vbmi(&self, padded: &[u8], lines: &Lines, out: &mut [f32]) {
        use std::arch::x86_64::*;
        const FLOOR: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
        /// Rows of a block whose outputs it completes (the fourth holds lower neighbours).
        const BLOCK: i32 = 3;
        assert!(self.pitch == PITCH);
        let lanes =
            _mm512_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0);
        let (a, b) = (_mm512_set1_ps(self.a), _mm512_set1_ps(self.b));
        let one = _mm512_set1_epi32(1);
        let (cols, rows) = (_mm512_set1_epi32(self.cols as i32), _mm512_set1_epi32(self.rows as i32));
        let scale = _mm512_set1_ps(255.0);
        let last_row = self.rows as i32 + 1;
        // What each vector of a row adds to the row's start is the same for every row. A row
        // is at most 30 pixels (the padded row holds it): two vectors.
        let span = lines.span.clone();
        assert!(span.len() <= 32);
        let vector = |start: usize| {
            let count = span.end.saturating_sub(start).min(16);
            let kf = _mm512_add_ps(lanes, _mm512_set1_ps(start as f32));
            (start, count, ((1u32 << count) - 1) as u16, _mm512_mul_ps(a, kf), _mm512_mul_ps(b, kf))
        };
        let vectors = [vector(span.start), vector(span.start + 16)];
        let vectors = &vectors[..span.len().div_ceil(16)];
        for ((sx0, sy0), out) in lines.rows(out) {
            let (x0, y0) = (_mm512_set1_ps(sx0), _mm512_set1_ps(sy0));
            for &(start, count, lanes_used, ak, bk) in vectors {
                let sx = _mm512_add_ps(x0, ak);
                let sy = _mm512_sub_ps(y0, bk);
                // Padded coordinates of the upper-left neighbour. Inside the padded image they
                // run from 0 to `cols` and `rows`; below, and beyond `i32` (which converts to
                // `i32::MIN`), they compare as large unsigned numbers.
                let ix = _mm512_add_epi32(_mm512_cvt_roundps_epi32::<FLOOR>(sx), one);
                let iy = _mm512_add_epi32(_mm512_cvt_roundps_epi32::<FLOOR>(sy), one);
                let inside = _mm512_cmple_epu32_mask(ix, cols) & _mm512_cmple_epu32_mask(iy, rows) & lanes_used;
                // `sy` is monotonic in the lane, so the first and last lanes bound the rows.
                let first = _mm_cvtsi128_si32(_mm512_castsi512_si128(iy));
                let last = _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_permutexvar_epi32(
                    _mm512_set1_epi32(count as i32 - 1),
                    iy,
                )));
                let (least, most) = if self.b >= 0.0 { (last, first) } else { (first, last) };
                let (mut block, most) = (least.clamp(0, last_row), most.min(last_row));
                let zero = _mm512_setzero_ps();
                let (mut p00, mut p01, mut p10, mut p11) = (zero, zero, zero, zero);
                loop {
                    // SAFETY: the block's four rows start at a padded row at most `rows + 1`,
                    // and the spare rows below it complete them (asserted by `sample`).
                    let (left, right) = unsafe {
                        let at = padded.as_ptr().add(block as usize * PITCH);
                        (_mm512_loadu_si512(at.cast()), _mm512_loadu_si512(at.add(64).cast()))
                    };
                    let row = _mm512_sub_epi32(iy, _mm512_set1_epi32(block));
                    // Unsigned: rows above the block compare as large.
                    let here = _mm512_cmplt_epu32_mask(row, _mm512_set1_epi32(BLOCK));
                    // Each neighbour's byte lands in the low byte of its lane. In the lanes of
                    // this block inside the image the index is below 128, so the lane's three
                    // upper index bytes are 0, which pick the block's first byte: the left
                    // border's zero. So the lane holds the byte zero-extended. (Other lanes are
                    // masked out, here or by `inside`.)
                    let index = _mm512_add_epi32(_mm512_slli_epi32::<5>(row), ix);
                    let tap = |to: __m512, offset: i32| {
                        let at = _mm512_add_epi32(index, _mm512_set1_epi32(offset));
                        _mm512_mask_cvtepi32_ps(to, here, _mm512_permutex2var_epi8(left, at, right))
                    };
                    (p00, p01) = (tap(p00, 0), tap(p01, 1));
                    (p10, p11) = (tap(p10, PITCH as i32), tap(p11, PITCH as i32 + 1));
                    block += BLOCK;
                    if block > most {
                        break;
                    }
                }
                let (fx, fy) = (_mm512_roundscale_ps::<FLOOR>(sx), _mm512_roundscale_ps::<FLOOR>(sy));
                let (wx, wy) = (_mm512_sub_ps(sx, fx), _mm512_sub_ps(sy, fy));
                let top = _mm512_add_ps(p00, _mm512_mul_ps(_mm512_sub_ps(p01, p00), wx));
                let bottom = _mm512_add_ps(p10, _mm512_mul_ps(_mm512_sub_ps(p11, p10), wx));
                let value = _mm512_div_ps(_mm512_add_ps(top, _mm512_mul_ps(_mm512_sub_ps(bottom, top), wy)), scale);
                // SAFETY: the mask keeps the store within `out[start..start + count]`, within
                // `out` (see `Lines::rows`).
                unsafe {
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(start), lanes_used, _mm512_maskz_mov_ps(inside, value))
                };
            }
        }
    }
}

impl Augment {
    /// `count` transformed versions of one image, drawn from a generator seeded with `seed`:
    /// what a person looks at to see what a model trains on.
    pub fn preview(&self, image: &[u8], rows: usize, cols: usize, seed: u64, count: usize) -> Vec<Vec<f32>> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut warper = Warper::default();
        (0..count)
            .map(|_| {
                let mut out = vec![0.0; rows * cols];
                self.warp_with(image, rows, cols, &mut rng, &mut warper, &mut out);
                out
            })
            .collect()
    }
}

/// [`fill_rows`](crate::fill_rows) with every image transformed by `augment`, each with a fresh
/// draw from `rng`, and the labels into `labels`.
///
/// # Panics
/// If `x` is not `indices.len() * data.image_len()` long, or an index is out of range.
#[track_caller]
pub fn fill_rows_augmented(
    data: &Dataset,
    indices: &[usize],
    augment: &Augment,
    rng: &mut dyn RngCore,
    x: &mut [f32],
    labels: &mut Vec<usize>,
) {
    let width = data.image_len();
    assert_eq!(x.len(), indices.len() * width, "{} values for {} images of {width}", x.len(), indices.len());
    WARPER.with_borrow_mut(|warper| {
        for (k, (row, &i)) in x.chunks_exact_mut(width).zip(indices).enumerate() {
            crate::batch::prefetch_ahead(data, indices, k);
            augment.warp_with(data.image(i), data.rows(), data.cols(), rng, warper, row);
        }
    });
    fill_labels(data, indices, labels);
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn digit() -> Vec<u8> {
        // A 3-pixel-wide vertical bar in a 12x12 image.
        (0..144).map(|i| if (5..8).contains(&(i % 12)) && (2..10).contains(&(i / 12)) { 200 } else { 0 }).collect()
    }

    #[test]
    fn no_transform_gives_the_image_back() {
        let none = Augment { rotate: 0.0, shift: 0.0, scale: 0.0 };
        let mut out = vec![0.0; 144];
        none.warp_with(&digit(), 12, 12, &mut ChaCha8Rng::seed_from_u64(0), &mut Warper::default(), &mut out);
        let want: Vec<f32> = digit().iter().map(|&p| f32::from(p) / 255.0).collect();
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn a_pure_shift_moves_the_ink_and_keeps_it() {
        // A whole-pixel shift: draw until the shift rounds to (-2, 0) or so, then check mass.
        let shift = Augment { rotate: 0.0, shift: 2.0, scale: 0.0 };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut out = vec![0.0; 144];
        shift.warp_with(&digit(), 12, 12, &mut rng, &mut Warper::default(), &mut out);
        let mass: f32 = out.iter().sum();
        let want: f32 = digit().iter().map(|&p| f32::from(p) / 255.0).sum();
        assert!((mass - want).abs() < 1e-3 * want, "a shift within the image keeps the ink: {mass} vs {want}");
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn draws_repeat_by_seed_and_differ_by_image() {
        let aug = Augment::default();
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut warper = Warper::default();
            let (mut a, mut b) = (vec![0.0; 144], vec![0.0; 144]);
            aug.warp_with(&digit(), 12, 12, &mut rng, &mut warper, &mut a);
            aug.warp_with(&digit(), 12, 12, &mut rng, &mut warper, &mut b);
            (a, b)
        };
        assert_eq!(run(1), run(1));
        let (a, b) = run(1);
        assert_ne!(a, b, "each image gets its own draw");
        assert_ne!(run(1).0, run(2).0);
    }

    #[test]
    fn the_vector_path_computes_what_the_portable_one_does() {
        // Sources of 28x28, 12x12 and 31x31 (too wide for the byte permutation): every pixel
        // inked, so that any neighbour read wrong shows.
        let source = |size: usize| {
            let image: Vec<u8> = (0..size * size).map(|i| ((i * 37) % 251 + 3) as u8).collect();
            let mut warper = Warper::default();
            warper.load(Simd::get(), &image, size, size).expect("ink");
            (warper.padded, warper.pitch)
        };
        let ((big, big_pitch), (small, small_pitch), (wide, wide_pitch)) = (source(28), source(12), source(31));
        // Inside, across the borders, far outside, and beyond what `i32` holds.
        let starts = [
            (-3.2f32, 4.7f32),
            (0.0, 0.0),
            (10.5, 27.9),
            (-1.5, -1.0),
            (20.0, 13.3),
            (-30.0, 5.0),
            (3.0, 9.5),
            (5e3, -4e3),
            (3e9, 2.0),
            (4.0, -3e9),
        ];
        for (row, padded) in [
            (Row { a: 0.93, b: 0.21, rows: 28.0, cols: 28.0, pitch: big_pitch }, &big),
            (Row { a: 1.08, b: -0.17, rows: 28.0, cols: 28.0, pitch: big_pitch }, &big),
            (Row { a: 0.0, b: 1.0, rows: 28.0, cols: 28.0, pitch: big_pitch }, &big),
            (Row { a: -0.3, b: -0.8, rows: 28.0, cols: 28.0, pitch: big_pitch }, &big),
            (Row { a: 0.97, b: 0.05, rows: 12.0, cols: 12.0, pitch: small_pitch }, &small),
            (Row { a: 0.9, b: 0.3, rows: 31.0, cols: 31.0, pitch: wide_pitch }, &wide),
        ] {
            for (stride, span) in [
                (1, 0..1),
                (7, 0..7),
                (16, 0..16),
                (23, 0..23),
                (28, 0..28),
                (28, 3..28),
                (28, 5..9),
                (30, 13..30),
                (20, 20..20),
            ] {
                let lines = Lines { starts: &starts, stride, span: span.clone() };
                let mut plain = vec![7.0; starts.len() * stride];
                row.sample_portable(padded, &lines, &mut plain);
                // Every path at every level, the VBMI one where the CPU has it.
                for simd in Simd::every() {
                    let mut fast = vec![7.0; starts.len() * stride];
                    row.sample(simd, padded, &lines, &mut fast);
                    assert_eq!(fast, plain, "{simd}: {span:?}");
                }
            }
        }
    }

    #[test]
    fn only_outputs_that_cannot_reach_ink_are_skipped() {
        // Every output, computed the plain way from the same draws, against the warp, which
        // skips what it proves to be zero; strokes of noise in a 28x28 image, wide transforms.
        let mut noise = ChaCha8Rng::seed_from_u64(9);
        let aug = Augment { rotate: 40.0, shift: 4.0, scale: 0.3 };
        let mut warper = Warper::default();
        let mut out = vec![0.0; 28 * 28];
        for draw in 0..400u64 {
            let (y0, x0, h, w) =
                (3 + draw as usize % 9, 2 + draw as usize % 13, 4 + draw as usize % 17, 2 + draw as usize % 11);
            let image: Vec<u8> = (0..28 * 28)
                .map(|i| {
                    let (y, x) = (i / 28, i % 28);
                    let ink = (y0..y0 + h).contains(&y) && (x0..x0 + w).contains(&x);
                    if ink && noise.next_u32() % 3 != 0 { (noise.next_u32() % 255 + 1) as u8 } else { 0 }
                })
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(draw);
            let mut same = rng.clone();
            aug.warp_with(&image, 28, 28, &mut rng, &mut warper, &mut out);

            let angle = (symmetric(&mut same) * aug.rotate).to_radians();
            let (tx, ty) = (symmetric(&mut same) * aug.shift, symmetric(&mut same) * aug.shift);
            let scale = 1.0 + symmetric(&mut same) * aug.scale;
            let (sin, cos) = angle.sin_cos();
            let pixel = |x: f32, y: f32| {
                let inside = (0.0..28.0).contains(&x) && (0.0..28.0).contains(&y);
                if inside { f32::from(image[y as usize * 28 + x as usize]) / 255.0 } else { 0.0 }
            };
            for (i, &got) in out.iter().enumerate() {
                let (dx, dy) = ((i % 28) as f32 - 13.5 - tx, (i / 28) as f32 - 13.5 - ty);
                let (sx, sy) = (13.5 + (cos * dx + sin * dy) / scale, 13.5 + (-sin * dx + cos * dy) / scale);
                let (fx, fy) = (sx.floor(), sy.floor());
                let (wx, wy) = (sx - fx, sy - fy);
                let top = pixel(fx, fy) * (1.0 - wx) + pixel(fx + 1.0, fy) * wx;
                let bottom = pixel(fx, fy + 1.0) * (1.0 - wx) + pixel(fx + 1.0, fy + 1.0) * wx;
                let want = top * (1.0 - wy) + bottom * wy;
                assert!((got - want).abs() < 1e-3, "draw {draw}, output {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn the_vector_load_computes_what_the_portable_one_does() {
        let mut noise = ChaCha8Rng::seed_from_u64(4);
        for (rows, cols) in [(28, 28), (12, 12), (5, 32), (3, 1), (30, 17)] {
            // One warper per level, each holding the previous image, so that a store the vector
            // path misses shows as a stale byte.
            let mut plain = Warper::default();
            let mut fast: Vec<(Simd, Warper)> = Simd::every().map(|simd| (simd, Warper::default())).collect();
            for ink in [0, 1, 3, 50] {
                let image: Vec<u8> = (0..rows * cols)
                    .map(|_| if noise.next_u32() % 100 < ink { noise.next_u32() as u8 } else { 0 })
                    .collect();
                // Fresh buffers, and buffers holding the previous image.
                for _ in 0..2 {
                    plain.fit(rows, cols);
                    let want = plain.load_portable(&image, cols);
                    for (simd, fast) in &mut fast {
                        let got = fast.load(*simd, &image, rows, cols);
                        assert_eq!(got, want, "{simd}, {rows}x{cols}, {ink}%");
                        assert_eq!(fast.padded, plain.padded, "{simd}, {rows}x{cols}, {ink}%");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_ranges_are_named() {
        assert_eq!(
            Augment { scale: 1.5, ..Augment::default() }.validate().unwrap_err(),
            AugmentError { name: "scale", value: 1.5, max: 0.99 }
        );
        assert!(Augment { rotate: f32::NAN, ..Augment::default() }.validate().is_err());
        assert!(Augment::default().validate().is_ok());
    }
}
