//! Random affine augmentation: each training image rotated, shifted and scaled a little, a
//! fresh draw per image, sampled bilinearly with zeros outside. The draws come from the
//! caller's generator, so that a run stays reproducible from its seed.

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

/// The buffers of [`Augment::warp`], reused from image to image.
#[derive(Debug, Clone, Default)]
pub struct Warper {
    /// The source image in `[0, 1]` with a border of zeros, one pixel wide.
    padded: Vec<f32>,
    /// Each column's pixels OR-ed together: nonzero where the column has ink.
    columns: Vec<u8>,
}

impl Augment {
    /// Checks the ranges: finite, not negative, and a scale below 1.
    ///
    /// # Errors
    /// The first value out of range, named.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v, max) in [("rotate", self.rotate, 180.0), ("shift", self.shift, 1e3), ("scale", self.scale, 0.99)]
        {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(format!("augmentation {name} must be in [0, {max}], got {v}"));
            }
        }
        Ok(())
    }

    /// Draws a transform from `rng` and writes `image` (`rows x cols` bytes) transformed into
    /// `out`, as `f32` in `[0, 1]`.
    ///
    /// # Panics
    /// If the lengths do not fit.
    #[track_caller]
    pub fn warp(
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

        // The source with a zero border, and the extent of its ink.
        let width = cols + 2;
        warper.padded.clear();
        warper.padded.resize((rows + 2) * width, 0.0);
        // The ink's rows and columns, by OR-ing bytes (which vectorises), not by searching.
        warper.columns.clear();
        warper.columns.resize(cols, 0);
        let (mut y_lo, mut y_hi) = (usize::MAX, 0);
        for (y, row) in image.chunks_exact(cols).enumerate() {
            if row.iter().fold(0u8, |a, &p| a | p) == 0 {
                continue;
            }
            (y_lo, y_hi) = (y_lo.min(y), y);
            warper.columns.iter_mut().zip(row).for_each(|(c, &p)| *c |= p);
            let dst = &mut warper.padded[(y + 1) * width + 1..(y + 1) * width + 1 + cols];
            crate::batch::pixels_to_f32(row, dst);
        }
        out.fill(0.0);
        if y_lo == usize::MAX {
            return;
        }
        let x_lo = warper.columns.iter().position(|&c| c != 0).expect("a row has ink");
        let x_hi = warper.columns.iter().rposition(|&c| c != 0).expect("a row has ink");

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

        let geometry = Row { a, b, rows: rows as f32, cols: cols as f32, width };
        for oy in oy_lo..=oy_hi {
            let (sx, sy) = source(ox_lo as f32, oy as f32);
            geometry.sample(&warper.padded, sx, sy, &mut out[oy * cols + ox_lo..=oy * cols + ox_hi]);
        }
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
    width: usize,
}

impl Row {
    /// Samples `out[k]` at source `(sx + a·k, sy - b·k)`, bilinearly, zero outside the image.
    /// Every path computes the same operations in the same order, so results do not depend on
    /// the CPU.
    fn sample(&self, padded: &[f32], sx: f32, sy: f32, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.sample_avx2(padded, sx, sy, out) };
        }
        self.sample_portable(padded, sx, sy, out, 0);
    }

    #[inline(always)]
    fn sample_portable(&self, padded: &[f32], sx0: f32, sy0: f32, out: &mut [f32], from: usize) {
        for (k, o) in out.iter_mut().enumerate().skip(from) {
            let kf = k as f32;
            let (sx, sy) = (sx0 + self.a * kf, sy0 - self.b * kf);
            let (fx, fy) = (sx.floor(), sy.floor());
            // Inside the padded image: a corner at -1 or at the last column reads zeros.
            *o = if fx >= -1.0 && fy >= -1.0 && fx < self.cols && fy < self.rows {
                let (wx, wy) = (sx - fx, sy - fy);
                let i = (fy + 1.0) as usize * self.width + (fx + 1.0) as usize;
                let (p00, p01, p10, p11) =
                    (padded[i], padded[i + 1], padded[i + self.width], padded[i + self.width + 1]);
                let top = p00 + (p01 - p00) * wx;
                let bottom = p10 + (p11 - p10) * wx;
                top + (bottom - top) * wy
            } else {
                0.0
            };
        }
    }

    /// Eight outputs at a time, the four neighbours gathered.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn sample_avx2(&self, padded: &[f32], sx0: f32, sy0: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let chunks = out.len() / 8;
        let lanes = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
        let (a, b) = (_mm256_set1_ps(self.a), _mm256_set1_ps(self.b));
        let (minus_one, one) = (_mm256_set1_ps(-1.0), _mm256_set1_ps(1.0));
        let (cols, rows) = (_mm256_set1_ps(self.cols), _mm256_set1_ps(self.rows));
        let width = _mm256_set1_epi32(self.width as i32);
        let (x0, y0) = (_mm256_set1_ps(sx0), _mm256_set1_ps(sy0));
        for c in 0..chunks {
            let kf = _mm256_add_ps(lanes, _mm256_set1_ps((c * 8) as f32));
            let sx = _mm256_add_ps(x0, _mm256_mul_ps(a, kf));
            let sy = _mm256_sub_ps(y0, _mm256_mul_ps(b, kf));
            let (fx, fy) = (_mm256_floor_ps(sx), _mm256_floor_ps(sy));
            let inside = _mm256_and_ps(
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(fx, minus_one), _mm256_cmp_ps::<_CMP_GE_OQ>(fy, minus_one)),
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(fx, cols), _mm256_cmp_ps::<_CMP_LT_OQ>(fy, rows)),
            );
            let ix = _mm256_cvttps_epi32(_mm256_add_ps(fx, one));
            let iy = _mm256_cvttps_epi32(_mm256_add_ps(fy, one));
            // Lanes outside read index 0, which is in bounds; their result is masked to 0.
            let index =
                _mm256_and_si256(_mm256_add_epi32(_mm256_mullo_epi32(iy, width), ix), _mm256_castps_si256(inside));
            let base = padded.as_ptr();
            // SAFETY: inside lanes index the padded image's interior and its right and bottom
            // neighbours (fx < cols, fy < rows), within its (rows + 2)·(cols + 2) values; the
            // other lanes read index 0 and its neighbours, also within it.
            let (p00, p01, p10, p11) = unsafe {
                (
                    _mm256_i32gather_ps::<4>(base, index),
                    _mm256_i32gather_ps::<4>(base.add(1), index),
                    _mm256_i32gather_ps::<4>(base.add(self.width), index),
                    _mm256_i32gather_ps::<4>(base.add(self.width + 1), index),
                )
            };
            let (wx, wy) = (_mm256_sub_ps(sx, fx), _mm256_sub_ps(sy, fy));
            let top = _mm256_add_ps(p00, _mm256_mul_ps(_mm256_sub_ps(p01, p00), wx));
            let bottom = _mm256_add_ps(p10, _mm256_mul_ps(_mm256_sub_ps(p11, p10), wx));
            let value = _mm256_add_ps(top, _mm256_mul_ps(_mm256_sub_ps(bottom, top), wy));
            // SAFETY: `c * 8 + 8 <= out.len()`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c * 8), _mm256_and_ps(value, inside)) };
        }
        self.sample_portable(padded, sx0, sy0, out, chunks * 8);
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
                self.warp(image, rows, cols, &mut rng, &mut warper, &mut out);
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
    warper: &mut Warper,
    x: &mut [f32],
    labels: &mut Vec<usize>,
) {
    let width = data.image_len();
    assert_eq!(x.len(), indices.len() * width, "{} values for {} images of {width}", x.len(), indices.len());
    for (row, &i) in x.chunks_exact_mut(width).zip(indices) {
        augment.warp(data.image(i), data.rows(), data.cols(), rng, warper, row);
    }
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
        none.warp(&digit(), 12, 12, &mut ChaCha8Rng::seed_from_u64(0), &mut Warper::default(), &mut out);
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
        shift.warp(&digit(), 12, 12, &mut rng, &mut Warper::default(), &mut out);
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
            aug.warp(&digit(), 12, 12, &mut rng, &mut warper, &mut a);
            aug.warp(&digit(), 12, 12, &mut rng, &mut warper, &mut b);
            (a, b)
        };
        assert_eq!(run(1), run(1));
        let (a, b) = run(1);
        assert_ne!(a, b, "each image gets its own draw");
        assert_ne!(run(1).0, run(2).0);
    }

    #[test]
    fn the_vector_path_computes_what_the_portable_one_does() {
        let image: Vec<u8> = (0..28 * 28).map(|i| ((i * 37) % 251) as u8).collect();
        let mut padded = vec![0.0; 30 * 30];
        for y in 0..28 {
            crate::batch::pixels_to_f32(&image[y * 28..(y + 1) * 28], &mut padded[(y + 1) * 30 + 1..(y + 1) * 30 + 29]);
        }
        let row = Row { a: 0.93, b: 0.21, rows: 28.0, cols: 28.0, width: 30 };
        for (sx, sy) in [(-3.2f32, 4.7f32), (0.0, 0.0), (10.5, 27.9), (-1.5, -1.0), (20.0, 13.3)] {
            let (mut fast, mut plain) = (vec![7.0; 28], vec![7.0; 28]);
            row.sample(&padded, sx, sy, &mut fast);
            row.sample_portable(&padded, sx, sy, &mut plain, 0);
            assert_eq!(fast, plain, "{sx}, {sy}");
        }
    }

    #[test]
    fn bad_ranges_are_named() {
        assert_eq!(
            Augment { scale: 1.5, ..Augment::default() }.validate().unwrap_err(),
            "augmentation scale must be in [0, 0.99], got 1.5"
        );
        assert!(Augment { rotate: f32::NAN, ..Augment::default() }.validate().is_err());
        assert!(Augment::default().validate().is_ok());
    }
}
