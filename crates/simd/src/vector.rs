//! One `f32` vector type per level, behind one trait, so that a kernel is written once and
//! compiled per level: a generic function marked `#[inline(always)]`, called from a
//! `#[target_feature]` function of each level, inlines these methods and the intrinsics in
//! them into code compiled for that level.

/// A vector of `f32` lanes at one level.
///
/// # Safety
/// Every method may run the level's instructions: call them only on a CPU that has the level
/// (a [`Simd`](crate::Simd) says so), best from code compiled for it
/// ([`dispatch!`](crate::dispatch)), into which they inline. Loads and stores read or write the
/// lanes they name and no others.
pub unsafe trait F32s: Copy {
    /// Lanes per vector.
    const LANES: usize;

    /// Whether [`mul_add`](F32s::mul_add) rounds once, and `f32::mul_add` compiles to one
    /// instruction in code compiled for the level.
    const FUSED: bool;

    /// All lanes zero.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn zero() -> Self;

    /// All lanes `v`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn splat(v: f32) -> Self;

    /// `LANES` values from `p`, which need not be aligned.
    ///
    /// # Safety
    /// See the trait; `p` must be valid for reading `LANES` values.
    unsafe fn load(p: *const f32) -> Self;

    /// The first `n` lanes from `p` (`n <= LANES`), the others zero. Nothing past them is read.
    ///
    /// # Safety
    /// See the trait; `p` must be valid for reading `n` values.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;

    /// Which lanes a masked load reads: a range of them.
    type Mask: Copy;

    /// The lanes `lo..hi` (`lo <= hi <= LANES`).
    ///
    /// # Safety
    /// See the trait.
    unsafe fn lanes(lo: usize, hi: usize) -> Self::Mask;

    /// The lanes `mask` names from `p` (lane `i` from `p + i`), the others zero. Nothing else
    /// is read: `p` may point outside the data where the mask keeps the lanes inside it.
    ///
    /// # Safety
    /// See the trait; `p + i` must be valid for reading for each lane `i` of the mask.
    unsafe fn load_masked(p: *const f32, mask: Self::Mask) -> Self;

    /// Writes the lanes to `p`, which need not be aligned.
    ///
    /// # Safety
    /// See the trait; `p` must be valid for writing `LANES` values.
    unsafe fn store(self, p: *mut f32);

    /// Writes the first `n` lanes (`n <= LANES`) to `p`, and nothing past them.
    ///
    /// # Safety
    /// See the trait; `p` must be valid for writing `n` values.
    unsafe fn store_first(self, p: *mut f32, n: usize);

    /// `self * b + c`, rounded once where the level has fused multiply-adds (AVX2, AVX-512,
    /// and the portable level on 64-bit ARM), twice on the portable level on x86-64.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;

    /// `self * b`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn mul(self, b: Self) -> Self;

    /// `self + b`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn add(self, b: Self) -> Self;

    /// `self - b`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn sub(self, b: Self) -> Self;

    /// One bit per lane, lane `i` at bit `i`: set where the lane is not zero (NaN included).
    ///
    /// # Safety
    /// See the trait.
    unsafe fn nonzero(self) -> u32;

    /// The sum of the lanes, in an order fixed for the level: halves added lane by lane, then
    /// the halves of that, down to one lane.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn sum(self) -> f32;

    /// The `2·LANES` values of `self` then `b` split by position: the even ones (0, 2, ...)
    /// and the odd ones, each in order.
    ///
    /// # Safety
    /// See the trait.
    #[inline(always)]
    unsafe fn deinterleave(self, b: Self) -> (Self, Self) {
        const { assert!(Self::LANES <= 16, "deinterleave takes at most 16 lanes") };
        let mut values = [0.0f32; 32];
        let mut halves = [[0.0f32; 16]; 2];
        // SAFETY: `values` holds 2·LANES values and each half LANES.
        unsafe {
            self.store(values.as_mut_ptr());
            b.store(values.as_mut_ptr().add(Self::LANES));
            for (i, &v) in values[..2 * Self::LANES].iter().enumerate() {
                halves[i % 2][i / 2] = v;
            }
            (Self::load(halves[0].as_ptr()), Self::load(halves[1].as_ptr()))
        }
    }

    /// The inverse of [`deinterleave`](F32s::deinterleave): `even`'s and `odd`'s lanes in
    /// turn, `even[0], odd[0], even[1], ...`, the first `LANES` of them then the rest.
    ///
    /// # Safety
    /// See the trait.
    #[inline(always)]
    unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
        const { assert!(Self::LANES <= 16, "interleave takes at most 16 lanes") };
        let mut halves = [[0.0f32; 16]; 2];
        let mut values = [0.0f32; 32];
        // SAFETY: each half holds LANES values and `values` 2·LANES.
        unsafe {
            even.store(halves[0].as_mut_ptr());
            odd.store(halves[1].as_mut_ptr());
            for (i, v) in values[..2 * Self::LANES].iter_mut().enumerate() {
                *v = halves[i % 2][i / 2];
            }
            (Self::load(values.as_ptr()), Self::load(values.as_ptr().add(Self::LANES)))
        }
    }

    /// The sums of `LANES` vectors, lane `i` holding `v[i]`'s, each added in [`sum`](F32s::sum)'s
    /// order, so bit for bit the same: the vectors are transposed as they are added, which
    /// takes a few shuffles for all of them where `sum` takes as many for each.
    ///
    /// # Safety
    /// See the trait.
    ///
    /// # Panics
    /// Unless `v` holds `LANES` vectors.
    #[inline(always)]
    unsafe fn sums(v: &[Self]) -> Self {
        const { assert!(Self::LANES <= 16, "sums gathers at most 16 lanes") };
        assert_eq!(v.len(), Self::LANES, "sums takes a vector per lane");
        let mut lanes = [0.0f32; 16];
        for (lane, v) in lanes.iter_mut().zip(v) {
            // SAFETY: the caller's promise.
            *lane = unsafe { v.sum() };
        }
        // SAFETY: `lanes` holds at least `LANES` values.
        unsafe { Self::load(lanes.as_ptr()) }
    }
}

/// The portable level on 64-bit ARM: NEON (see the x86-64 one for the other architectures).
#[cfg(target_arch = "aarch64")]
pub use arm::Portable;
/// The portable level: four lanes of the 128-bit vectors every CPU of an architecture has,
/// SSE2 on x86-64 and NEON on 64-bit ARM (written with their intrinsics, so that the compiler
/// keeps one vector per value rather than regrouping lanes), an array elsewhere. Multiply-adds
/// are fused on ARM, whose baseline has them, and not on x86-64, whose baseline lacks them.
#[cfg(target_arch = "x86_64")]
pub use x86::Portable;

/// The portable level on CPUs other than x86-64 and 64-bit ARM: four lanes in an array.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub use Lanes4 as Portable;

/// Four lanes in an array, for the compiler to vectorise as it can: the portable level on CPUs
/// other than x86-64 and 64-bit ARM, compiled for tests everywhere so that they check it.
#[cfg(any(test, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
#[derive(Clone, Copy, Debug)]
pub struct Lanes4([f32; 4]);

// SAFETY: plain arithmetic on arrays; the loads and stores touch only the lanes they name.
#[cfg(any(test, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
unsafe impl F32s for Lanes4 {
    const LANES: usize = 4;
    const FUSED: bool = false;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Lanes4([0.0; 4])
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Lanes4([v; 4])
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's promise: four values to read.
        Lanes4(unsafe { p.cast::<[f32; 4]>().read_unaligned() })
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        let mut v = [0.0; 4];
        for (i, v) in v.iter_mut().enumerate().take(n) {
            // SAFETY: the caller's promise: n values to read.
            *v = unsafe { *p.add(i) };
        }
        Lanes4(v)
    }

    type Mask = (usize, usize);

    #[inline(always)]
    unsafe fn lanes(lo: usize, hi: usize) -> Self::Mask {
        (lo, hi)
    }

    #[inline(always)]
    unsafe fn load_masked(p: *const f32, (lo, hi): Self::Mask) -> Self {
        let mut v = [0.0; 4];
        for (i, v) in v.iter_mut().enumerate().take(hi).skip(lo) {
            // SAFETY: the caller's promise: the mask's lanes are readable.
            *v = unsafe { *p.wrapping_add(i) };
        }
        Lanes4(v)
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's promise: four values to write.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(self.0) }
    }

    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        for (i, &v) in self.0.iter().enumerate().take(n) {
            // SAFETY: the caller's promise: n values to write.
            unsafe { *p.add(i) = v };
        }
    }

    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // Unfused: `f32::mul_add` would call a library function where the CPU has no FMA.
        Lanes4(std::array::from_fn(|i| self.0[i] * b.0[i] + c.0[i]))
    }

    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Lanes4(std::array::from_fn(|i| self.0[i] * b.0[i]))
    }

    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Lanes4(std::array::from_fn(|i| self.0[i] + b.0[i]))
    }

    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Lanes4(std::array::from_fn(|i| self.0[i] - b.0[i]))
    }

    #[inline(always)]
    unsafe fn nonzero(self) -> u32 {
        self.0.iter().enumerate().fold(0, |bits, (i, &v)| bits | u32::from(v != 0.0) << i)
    }

    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        let [a, b, c, d] = self.0;
        (a + c) + (b + d)
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

/// Stand-ins on other CPUs, never used: no [`Simd`](crate::Simd) there says AVX2 or AVX-512.
#[cfg(not(target_arch = "x86_64"))]
pub use Portable as Avx2;
#[cfg(not(target_arch = "x86_64"))]
pub use Portable as Avx512;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::F32s;

    /// Four lanes of SSE2, part of every x86-64 CPU.
    #[derive(Clone, Copy, Debug)]
    pub struct Portable(__m128);

    impl Portable {
        /// The values `from..n` at `p` (all of the first `n` with `from` 0), zeros elsewhere.
        ///
        /// # Safety
        /// `p + i` must be valid for reading for each `i` in `from..n.min(4)`.
        #[inline(always)]
        unsafe fn gather(p: *const f32, from: usize, n: usize) -> Self {
            let mut v = [0.0f32; 4];
            for (i, v) in v.iter_mut().enumerate().take(n).skip(from) {
                // SAFETY: the caller's promise.
                *v = unsafe { *p.wrapping_add(i) };
            }
            // SAFETY: SSE2 is part of x86-64.
            Portable(unsafe { _mm_loadu_ps(v.as_ptr()) })
        }
    }

    // SAFETY: each method runs SSE2 instructions, which every x86-64 CPU has; the partial
    // loads and stores touch only the lanes they name.
    unsafe impl F32s for Portable {
        const LANES: usize = 4;
        const FUSED: bool = false;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Portable(unsafe { _mm_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Portable(unsafe { _mm_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's promise: four values to read.
            Portable(unsafe { _mm_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { Self::gather(p, 0, n) }
        }

        type Mask = (usize, usize);

        #[inline(always)]
        unsafe fn lanes(lo: usize, hi: usize) -> Self::Mask {
            (lo, hi)
        }

        #[inline(always)]
        unsafe fn load_masked(p: *const f32, (lo, hi): Self::Mask) -> Self {
            unsafe { Self::gather(p, lo, hi) }
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's promise: four values to write.
            unsafe { _mm_storeu_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            let mut v = [0.0f32; 4];
            // SAFETY: `v` has the four values to write.
            unsafe { _mm_storeu_ps(v.as_mut_ptr(), self.0) };
            for (i, &v) in v.iter().enumerate().take(n) {
                // SAFETY: the caller's promise: n values to write.
                unsafe { *p.add(i) = v };
            }
        }

        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Portable(unsafe { _mm_add_ps(_mm_mul_ps(self.0, b.0), c.0) })
        }

        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Portable(unsafe { _mm_mul_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Portable(unsafe { _mm_add_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            Portable(unsafe { _mm_sub_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn nonzero(self) -> u32 {
            unsafe { _mm_movemask_ps(_mm_cmpneq_ps(self.0, _mm_setzero_ps())) as u32 }
        }

        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // (a + c) + (b + d), as the wider levels pair their lanes.
            unsafe {
                let pairs = _mm_add_ps(self.0, _mm_movehl_ps(self.0, self.0));
                _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<0b01_01_01_01>(pairs, pairs)))
            }
        }

        #[inline(always)]
        unsafe fn deinterleave(self, b: Self) -> (Self, Self) {
            // SAFETY: SSE2 is x86-64's baseline.
            unsafe {
                (
                    Portable(_mm_shuffle_ps::<0b10_00_10_00>(self.0, b.0)),
                    Portable(_mm_shuffle_ps::<0b11_01_11_01>(self.0, b.0)),
                )
            }
        }

        #[inline(always)]
        unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
            // SAFETY: SSE2 is x86-64's baseline.
            unsafe { (Portable(_mm_unpacklo_ps(even.0, odd.0)), Portable(_mm_unpackhi_ps(even.0, odd.0))) }
        }

        #[inline(always)]
        unsafe fn sums(v: &[Self]) -> Self {
            let [a, b, c, d]: [Self; 4] = v.try_into().expect("sums takes a vector per lane");
            // SAFETY: SSE2 is part of x86-64.
            unsafe {
                // Halves: [a0 + a2, a1 + a3, b0 + b2, b1 + b3], and likewise c and d.
                let ab = _mm_add_ps(_mm_movelh_ps(a.0, b.0), _mm_movehl_ps(b.0, a.0));
                let cd = _mm_add_ps(_mm_movelh_ps(c.0, d.0), _mm_movehl_ps(d.0, c.0));
                // Then each pair: [a, b, c, d].
                let evens = _mm_shuffle_ps::<0b10_00_10_00>(ab, cd);
                let odds = _mm_shuffle_ps::<0b11_01_11_01>(ab, cd);
                Portable(_mm_add_ps(evens, odds))
            }
        }
    }

    /// Eight lanes of AVX2, with FMA.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(__m256);

    /// The first `n` lanes of eight, as AVX2's masked loads and stores take them.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    unsafe fn first_lanes(n: usize) -> __m256i {
        // SAFETY: the trait's contract (AVX2 is enabled where this inlines).
        unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
    }

    // SAFETY: each method runs AVX2 or FMA instructions, which the trait's contract allows;
    // masked loads and stores touch only the lanes the mask enables.
    unsafe impl F32s for Avx2 {
        const LANES: usize = 8;
        const FUSED: bool = true;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx2(unsafe { _mm256_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(unsafe { _mm256_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            Avx2(unsafe { _mm256_maskload_ps(p, first_lanes(n)) })
        }

        type Mask = __m256i;

        #[inline(always)]
        unsafe fn lanes(lo: usize, hi: usize) -> Self::Mask {
            unsafe { _mm256_andnot_si256(first_lanes(lo), first_lanes(hi)) }
        }

        #[inline(always)]
        unsafe fn load_masked(p: *const f32, mask: Self::Mask) -> Self {
            Avx2(unsafe { _mm256_maskload_ps(p, mask) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }

        /// Plain stores of four, two and one lanes: AVX2's masked store is slow on AMD's cores
        /// (it took most of the time of the loops that used it, on the Zen 4 measured).
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe {
                if n >= 8 {
                    return _mm256_storeu_ps(p, self.0);
                }
                let (mut p, mut half) = (p, _mm256_castps256_ps128(self.0));
                if n & 4 != 0 {
                    _mm_storeu_ps(p, half);
                    (p, half) = (p.add(4), _mm256_extractf128_ps::<1>(self.0));
                }
                if n & 2 != 0 {
                    _mm_storel_epi64(p.cast(), _mm_castps_si128(half));
                    (p, half) = (p.add(2), _mm_movehl_ps(half, half));
                }
                if n & 1 != 0 {
                    _mm_store_ss(p, half);
                }
            }
        }

        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }

        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_mul_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_add_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_sub_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn nonzero(self) -> u32 {
            unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(self.0, _mm256_setzero_ps())) as u32 }
        }

        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // SAFETY: the trait's contract.
            unsafe {
                let half = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
                _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
            }
        }

        #[inline(always)]
        unsafe fn deinterleave(self, b: Self) -> (Self, Self) {
            // SAFETY: the trait's promise that the CPU has AVX2. Within each 128-bit half
            // the shuffles take a's then b's evens (odds); the permutation puts a's halves
            // before b's.
            unsafe {
                let even = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(self.0, b.0));
                let odd = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(self.0, b.0));
                (
                    Avx2(_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(even))),
                    Avx2(_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(odd))),
                )
            }
        }

        #[inline(always)]
        unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
            // SAFETY: the trait's promise that the CPU has AVX2. The unpacks pair lanes within
            // each 128-bit half: the first four pairs are the low halves of both.
            unsafe {
                let (lo, hi) = (_mm256_unpacklo_ps(even.0, odd.0), _mm256_unpackhi_ps(even.0, odd.0));
                (Avx2(_mm256_permute2f128_ps::<0x20>(lo, hi)), Avx2(_mm256_permute2f128_ps::<0x31>(lo, hi)))
            }
        }

        #[inline(always)]
        unsafe fn sums(v: &[Self]) -> Self {
            let v: [Self; 8] = v.try_into().expect("sums takes a vector per lane");
            // SAFETY: the trait's contract.
            unsafe {
                // Halves: v[2k]'s four sums in the low 128 bits, v[2k + 1]'s in the high.
                let halves: [__m256; 4] = std::array::from_fn(|k| {
                    let (a, b) = (v[2 * k].0, v[2 * k + 1].0);
                    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
                });
                // Quarters, within each 128 bits: [v0, v0, v2, v2 | v1, v1, v3, v3], then v4..v7.
                let quarters: [__m256; 2] = std::array::from_fn(|k| {
                    let (a, b) = (halves[2 * k], halves[2 * k + 1]);
                    _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(a, b), _mm256_shuffle_ps::<0b11_10_11_10>(a, b))
                });
                // Lanes: [v0, v2, v4, v6 | v1, v3, v5, v7], then in order.
                let (a, b) = (quarters[0], quarters[1]);
                let sums =
                    _mm256_add_ps(_mm256_shuffle_ps::<0b10_00_10_00>(a, b), _mm256_shuffle_ps::<0b11_01_11_01>(a, b));
                Avx2(_mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)))
            }
        }
    }

    /// Sixteen lanes of AVX-512.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512(__m512);

    /// The first `n` lanes of sixteen.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    // SAFETY: each method runs AVX-512F instructions, which the trait's contract allows;
    // masked loads and stores touch only the lanes the mask enables.
    unsafe impl F32s for Avx512 {
        const LANES: usize = 16;
        const FUSED: bool = true;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            Avx512(unsafe { _mm512_maskz_loadu_ps(mask(n), p) })
        }

        type Mask = __mmask16;

        #[inline(always)]
        unsafe fn lanes(lo: usize, hi: usize) -> Self::Mask {
            mask(hi) & !mask(lo)
        }

        #[inline(always)]
        unsafe fn load_masked(p: *const f32, mask: Self::Mask) -> Self {
            Avx512(unsafe { _mm512_maskz_loadu_ps(mask, p) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, mask(n), self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
        }

        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Avx512(unsafe { _mm512_mul_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            Avx512(unsafe { _mm512_sub_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn nonzero(self) -> u32 {
            unsafe { u32::from(_mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(self.0, _mm512_setzero_ps())) }
        }

        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // Written out, not `_mm512_reduce_add_ps`, whose order is the standard library's
            // to change: the halves added, then the sum of that as AVX2 adds its lanes.
            // SAFETY: the trait's contract; AVX-512F includes AVX2's instructions.
            unsafe {
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0)));
                Avx2(_mm256_add_ps(_mm512_castps512_ps256(self.0), high)).sum()
            }
        }

        #[inline(always)]
        unsafe fn deinterleave(self, b: Self) -> (Self, Self) {
            // SAFETY: the trait's promise that the CPU has AVX-512. Indices 16 and up pick b's
            // lanes.
            unsafe {
                let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                (Avx512(_mm512_permutex2var_ps(self.0, even, b.0)), Avx512(_mm512_permutex2var_ps(self.0, odd, b.0)))
            }
        }

        #[inline(always)]
        unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
            // SAFETY: the trait's promise that the CPU has AVX-512. Indices 16 and up pick
            // odd's lanes.
            unsafe {
                let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                (
                    Avx512(_mm512_permutex2var_ps(even.0, first, odd.0)),
                    Avx512(_mm512_permutex2var_ps(even.0, second, odd.0)),
                )
            }
        }

        #[inline(always)]
        unsafe fn sums(v: &[Self]) -> Self {
            let v: [Self; 16] = v.try_into().expect("sums takes a vector per lane");
            // SAFETY: the trait's contract.
            unsafe {
                // Halves: v[2k]'s eight sums in the low 256 bits, v[2k + 1]'s in the high.
                let halves: [__m512; 8] = std::array::from_fn(|k| {
                    let (a, b) = (v[2 * k].0, v[2 * k + 1].0);
                    let lows = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
                    _mm512_add_ps(lows, _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
                });
                // Quarters: 128 bits q of the m-th holds v[4m + q]'s four sums.
                let quarters: [__m512; 4] = std::array::from_fn(|m| {
                    let (a, b) = (halves[2 * m], halves[2 * m + 1]);
                    let lows = _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
                    _mm512_add_ps(lows, _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
                });
                // Pairs, within each 128 bits q: [v[q], v[q], v[q + 4], v[q + 4]], then v[q + 8]
                // and v[q + 12].
                let pairs: [__m512; 2] = std::array::from_fn(|k| {
                    let (a, b) = (quarters[2 * k], quarters[2 * k + 1]);
                    _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(a, b), _mm512_shuffle_ps::<0b11_10_11_10>(a, b))
                });
                // Lane 4q + t holds v[4t + q]'s sum; then in order.
                let (a, b) = (pairs[0], pairs[1]);
                let sums =
                    _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b));
                let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                Avx512(_mm512_permutexvar_ps(order, sums))
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use super::F32s;

    /// Four lanes of NEON, part of every 64-bit ARM CPU, with fused multiply-adds.
    #[derive(Clone, Copy, Debug)]
    pub struct Portable(float32x4_t);

    impl Portable {
        /// The values `from..n` at `p` (all of the first `n` with `from` 0), zeros elsewhere.
        ///
        /// # Safety
        /// `p + i` must be valid for reading for each `i` in `from..n.min(4)`.
        #[inline(always)]
        unsafe fn gather(p: *const f32, from: usize, n: usize) -> Self {
            let mut v = [0.0f32; 4];
            for (i, v) in v.iter_mut().enumerate().take(n).skip(from) {
                // SAFETY: the caller's promise.
                *v = unsafe { *p.wrapping_add(i) };
            }
            // SAFETY: NEON is part of 64-bit ARM.
            Portable(unsafe { vld1q_f32(v.as_ptr()) })
        }
    }

    // SAFETY: each method runs NEON instructions, which every 64-bit ARM CPU has; the partial
    // loads and stores touch only the lanes they name.
    unsafe impl F32s for Portable {
        const LANES: usize = 4;
        const FUSED: bool = true;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Portable(unsafe { vdupq_n_f32(0.0) })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Portable(unsafe { vdupq_n_f32(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's promise: four values to read.
            Portable(unsafe { vld1q_f32(p) })
        }

        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { Self::gather(p, 0, n) }
        }

        type Mask = (usize, usize);

        #[inline(always)]
        unsafe fn lanes(lo: usize, hi: usize) -> Self::Mask {
            (lo, hi)
        }

        #[inline(always)]
        unsafe fn load_masked(p: *const f32, (lo, hi): Self::Mask) -> Self {
            unsafe { Self::gather(p, lo, hi) }
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's promise: four values to write.
            unsafe { vst1q_f32(p, self.0) }
        }

        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            let mut v = [0.0f32; 4];
            // SAFETY: `v` has the four values to write.
            unsafe { vst1q_f32(v.as_mut_ptr(), self.0) };
            for (i, &v) in v.iter().enumerate().take(n) {
                // SAFETY: the caller's promise: n values to write.
                unsafe { *p.add(i) = v };
            }
        }

        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            Portable(unsafe { vfmaq_f32(c.0, self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Portable(unsafe { vmulq_f32(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Portable(unsafe { vaddq_f32(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            Portable(unsafe { vsubq_f32(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn nonzero(self) -> u32 {
            // Each lane's "not equal to zero" (NaN included), as one bit per lane.
            unsafe {
                let zero = vceqq_f32(self.0, vdupq_n_f32(0.0));
                let bits = vandq_u32(vmvnq_u32(zero), vld1q_u32([1u32, 2, 4, 8].as_ptr()));
                vaddvq_u32(bits)
            }
        }

        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // (a + c) + (b + d), as the wider levels pair their lanes.
            unsafe {
                let pairs = vadd_f32(vget_low_f32(self.0), vget_high_f32(self.0));
                vget_lane_f32::<0>(pairs) + vget_lane_f32::<1>(pairs)
            }
        }

        #[inline(always)]
        unsafe fn deinterleave(self, b: Self) -> (Self, Self) {
            // SAFETY: NEON is 64-bit ARM's baseline.
            unsafe { (Portable(vuzp1q_f32(self.0, b.0)), Portable(vuzp2q_f32(self.0, b.0))) }
        }

        #[inline(always)]
        unsafe fn interleave(even: Self, odd: Self) -> (Self, Self) {
            // SAFETY: NEON is 64-bit ARM's baseline.
            unsafe { (Portable(vzip1q_f32(even.0, odd.0)), Portable(vzip2q_f32(even.0, odd.0))) }
        }

        #[inline(always)]
        unsafe fn sums(v: &[Self]) -> Self {
            let [a, b, c, d]: [Self; 4] = v.try_into().expect("sums takes a vector per lane");
            // SAFETY: NEON is part of every 64-bit ARM CPU.
            unsafe {
                // Halves: [a0 + a2, a1 + a3, b0 + b2, b1 + b3], and likewise c and d; then each
                // pair.
                let half = |a: Self, b: Self| {
                    let lows = vcombine_f32(vget_low_f32(a.0), vget_low_f32(b.0));
                    vaddq_f32(lows, vcombine_f32(vget_high_f32(a.0), vget_high_f32(b.0)))
                };
                Portable(vpaddq_f32(half(a, b), half(c, d)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Simd;

    /// The methods at one level, against plain arithmetic on the same lanes; `fused` says
    /// whether the level's multiply-adds round once.
    #[inline(always)]
    unsafe fn check<V: F32s>(fused: bool) {
        assert_eq!(V::FUSED, fused, "FUSED");
        let l = V::LANES;
        let a: Vec<f32> = (0..l).map(|i| i as f32 * 0.5 - 1.0).collect();
        let b: Vec<f32> = (0..l).map(|i| 3.0 - i as f32).collect();
        let mut out = vec![f32::NAN; l + 1];
        // SAFETY: the caller runs this at a level the CPU has; every pointer has `l` values.
        unsafe {
            let (va, vb) = (V::load(a.as_ptr()), V::load(b.as_ptr()));
            va.mul_add(vb, V::splat(2.0)).store(out.as_mut_ptr());
            for i in 0..l {
                assert_eq!(out[i], a[i].mul_add(b[i], 2.0), "mul_add lane {i}");
            }
            // (1 + 2⁻²³)(1 - 2⁻²³) - 1 is -2⁻⁴⁶ rounded once, 0 rounded twice.
            let (x, y) = (1.0 + f32::EPSILON, 1.0 - f32::EPSILON);
            V::splat(x).mul_add(V::splat(y), V::splat(-1.0)).store(out.as_mut_ptr());
            let want = if fused { x.mul_add(y, -1.0) } else { x * y - 1.0 };
            assert_ne!(x.mul_add(y, -1.0), x * y - 1.0, "the case must tell the two apart");
            assert!(out[..l].iter().all(|&v| v == want), "mul_add rounds {}", if fused { "once" } else { "twice" });
            va.add(vb).mul(V::splat(0.5)).store(out.as_mut_ptr());
            for i in 0..l {
                assert_eq!(out[i], (a[i] + b[i]) * 0.5, "add, mul lane {i}");
            }
            // Every value distinct, so that any lane out of place shows.
            let pair: Vec<f32> = (0..2 * l).map(|i| 100.0 + i as f32).collect();
            let (even, odd) = V::load(pair.as_ptr()).deinterleave(V::load(pair.as_ptr().add(l)));
            let mut halves = vec![f32::NAN; 2 * l];
            even.store(halves.as_mut_ptr());
            odd.store(halves.as_mut_ptr().add(l));
            let want: Vec<f32> = pair.iter().step_by(2).chain(pair.iter().skip(1).step_by(2)).copied().collect();
            assert_eq!(halves, want, "deinterleave");
            let (first, second) = V::interleave(even, odd);
            first.store(halves.as_mut_ptr());
            second.store(halves.as_mut_ptr().add(l));
            assert_eq!(halves, pair, "interleave");
            va.sub(vb).store(out.as_mut_ptr());
            for i in 0..l {
                assert_eq!(out[i], a[i] - b[i], "sub lane {i}");
            }
            assert_eq!(va.sum(), a.iter().sum::<f32>());
            // `sums` gives each vector's `sum` bit for bit, on values of many sizes whose
            // sums depend on the order of the additions.
            let values: Vec<f32> =
                (0..l * l).map(|i| ((i * 7919 % 97) as f32 - 48.3) * 2f32.powi((i % 23) as i32 - 11)).collect();
            let vectors: Vec<V> = values.chunks_exact(l).map(|v| V::load(v.as_ptr())).collect();
            V::sums(&vectors).store(out.as_mut_ptr());
            for (i, v) in vectors.iter().enumerate() {
                assert_eq!(out[i].to_bits(), v.sum().to_bits(), "sums lane {i}");
            }
            let in_turn = values.chunks_exact(l).map(|v| v.iter().fold(0.0f32, |s, &x| s + x));
            assert!(in_turn.zip(&out).any(|(s, &o)| s != o), "the values must tell orders of addition apart");
            let mut c = a.clone();
            c[l - 1] = f32::NAN;
            c[0] = -0.0;
            let want = c.iter().enumerate().fold(0u32, |bits, (i, &v)| bits | u32::from(v != 0.0) << i);
            assert_eq!(V::load(c.as_ptr()).nonzero(), want, "nonzero");
            for n in 0..=l {
                out.fill(-7.0);
                V::load_first(a.as_ptr(), n).store(out.as_mut_ptr());
                let want: Vec<f32> = (0..l).map(|i| if i < n { a[i] } else { 0.0 }).collect();
                assert_eq!(&out[..l], &want[..], "load_first({n})");
                for lo in 0..=n {
                    out.fill(-7.0);
                    V::load_masked(a.as_ptr(), V::lanes(lo, n)).store(out.as_mut_ptr());
                    let want: Vec<f32> = (0..l).map(|i| if (lo..n).contains(&i) { a[i] } else { 0.0 }).collect();
                    assert_eq!(&out[..l], &want[..], "load_masked({lo}..{n})");
                }
                out.fill(-7.0);
                V::zero().add(vb).store_first(out.as_mut_ptr(), n);
                assert!(out[..n] == b[..n] && out[n..].iter().all(|&v| v == -7.0), "store_first({n})");
            }
        }
    }

    #[test]
    fn every_level_computes_what_its_lanes_would() {
        for simd in Simd::every() {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2() {
                    unsafe { check::<Avx2>(true) }
                }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
                unsafe fn avx512() {
                    unsafe { check::<Avx512>(true) }
                }
                // SAFETY: each runs only where `simd` says the CPU has its level.
                match simd.level() {
                    crate::Level::Avx512 => unsafe { avx512() },
                    crate::Level::Avx2 => unsafe { avx2() },
                    crate::Level::Portable => {}
                }
            }
            if simd.level() == crate::Level::Portable {
                // SAFETY: the portable level runs anywhere.
                unsafe { check::<Portable>(cfg!(target_arch = "aarch64")) };
            }
        }
        // SAFETY: plain arithmetic on arrays runs anywhere.
        unsafe { check::<Lanes4>(false) };
    }
}
