//! The one place that decides which vector instructions kernels use. [`Simd::get`] is the
//! level in force: the widest the CPU has, detected once, capped by the environment variable
//! [`VARIABLE`] (`MNIST_SIMD=portable|avx2|avx512`) so that tests and benchmarks can run the
//! lower levels on any machine. A kernel takes a [`Simd`], whose flags are true only where the
//! CPU has the instructions, and picks its path from it; tests walk [`Simd::every`].
//!
//! ```
//! let simd = simd::Simd::get();
//! assert!(simd.level() <= simd::Level::detected());
//! // Every level up to the one in force, portable first.
//! assert_eq!(simd::Simd::every().last(), Some(simd));
//! ```
//!
//! [`F32s`] is a vector of `f32` lanes with one implementation per level, so that a kernel
//! written once over it compiles to each level inside a `#[target_feature]` function.

mod vector;

/// Defines `$name`, which runs the generic kernel `$kernel::<V>` compiled for the level a
/// [`Simd`] names: one `#[target_feature]` function per level calls the kernel with that
/// level's [`F32s`], and the kernel (marked `#[inline(always)]`) inlines into it, so that its
/// loops are compiled for the level's instructions. `$name` takes the [`Simd`] first, then the
/// kernel's arguments; it is as unsafe as the kernel, except for the CPU, which the [`Simd`]
/// vouches for.
///
/// This is the form for kernels of any size; [`dispatch!`] suits a short loop.
///
/// ```
/// use simd::F32s;
///
/// /// `y += a·x`.
/// ///
/// /// # Safety
/// /// The CPU must have `V`'s level.
/// #[inline(always)]
/// unsafe fn axpy<V: F32s>(a: f32, x: &[f32], y: &mut [f32]) {
///     for (x, y) in x.chunks(V::LANES).zip(y.chunks_mut(V::LANES)) {
///         let n = x.len().min(y.len());
///         // SAFETY: n values in both; the caller's promise for the level.
///         unsafe {
///             let v = V::splat(a).mul_add(V::load_first(x.as_ptr(), n), V::load_first(y.as_ptr(), n));
///             v.store_first(y.as_mut_ptr(), n);
///         }
///     }
/// }
///
/// simd::kernel! {
///     /// [`axpy`] at a level.
///     unsafe fn axpy_at(a: f32, x: &[f32], y: &mut [f32]) => axpy;
/// }
///
/// for level in simd::Simd::every() {
///     let mut y = vec![1.0; 20];
///     // SAFETY: axpy has no other requirement.
///     unsafe { axpy_at(level, 2.0, &[3.0; 20], &mut y) };
///     assert_eq!(y, vec![7.0; 20]);
/// }
/// ```
#[macro_export]
macro_rules! kernel {
    (
        $(#[$meta:meta])*
        $vis:vis unsafe fn $name:ident $(<$($lt:lifetime),*>)? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?
            => $kernel:ident;
    ) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// The kernel's requirements, except the CPU's level, which `simd` vouches for.
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name $(<$($lt),*>)? (simd: $crate::Simd, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512 $(<$($lt),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: the caller's promise, and this function's features.
                    unsafe { $kernel::<$crate::Avx512>($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2 $(<$($lt),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: the caller's promise, and this function's features.
                    unsafe { $kernel::<$crate::Avx2>($($arg),*) }
                }
                if simd.avx512() {
                    // SAFETY: `simd` says the CPU has AVX-512; the rest is the caller's promise.
                    return unsafe { avx512($($arg),*) };
                }
                if simd.avx2() {
                    // SAFETY: `simd` says the CPU has AVX2 and FMA; the rest is the caller's
                    // promise.
                    return unsafe { avx2($($arg),*) };
                }
            }
            // SAFETY: the portable level runs anywhere; the rest is the caller's promise.
            unsafe { $kernel::<$crate::Portable>($($arg),*) }
        }
    };
}

/// Runs `$body` compiled for the level `$simd` names, with `$V` the [`F32s`] type of that
/// level: the loop is written once, generic over `$V`, and each level gets its own copy.
/// `$body` runs inside a `#[target_feature]` function of the level, as a closure called there:
/// it is compiled for the level only if the closure inlines, which a short loop does and a
/// large kernel may not. A kernel's function goes through [`kernel!`] instead.
///
/// ```
/// use simd::F32s;
///
/// /// The sum of `x`, a vector at a time.
/// ///
/// /// # Safety
/// /// The CPU must have `V`'s level.
/// #[inline(always)]
/// unsafe fn total<V: F32s>(x: &[f32]) -> f32 {
///     let mut chunks = x.chunks_exact(V::LANES);
///     // SAFETY: the caller's promise; each chunk has LANES values.
///     let sum = unsafe { chunks.by_ref().fold(V::zero(), |acc, c| acc.add(V::load(c.as_ptr()))).sum() };
///     sum + chunks.remainder().iter().sum::<f32>()
/// }
///
/// let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
/// for level in simd::Simd::every() {
///     // SAFETY: `dispatch!` runs each level's copy only on a CPU that has it.
///     assert_eq!(simd::dispatch!(level, V => unsafe { total::<V>(&x) }), 4950.0);
/// }
/// ```
#[macro_export]
macro_rules! dispatch {
    ($simd:expr, $V:ident => $body:expr) => {{
        let simd: $crate::Simd = $simd;
        #[allow(unused_labels)]
        'dispatch: {
            #[cfg(target_arch = "x86_64")]
            {
                if simd.avx512() {
                    // Sound to call only where the CPU has AVX-512: the call below checks `simd`.
                    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
                    #[inline]
                    fn run<R>(f: impl FnOnce() -> R) -> R {
                        f()
                    }
                    #[allow(dead_code)]
                    type $V = $crate::Avx512;
                    let body = || $body;
                    // SAFETY: `simd` is a level the CPU has (see `Simd`), and it includes AVX-512.
                    break 'dispatch unsafe { run(body) };
                }
                if simd.avx2() {
                    // Sound to call only where the CPU has AVX2 and FMA: the call below checks `simd`.
                    #[target_feature(enable = "avx2,fma")]
                    #[inline]
                    fn run<R>(f: impl FnOnce() -> R) -> R {
                        f()
                    }
                    #[allow(dead_code)]
                    type $V = $crate::Avx2;
                    let body = || $body;
                    // SAFETY: `simd` is a level the CPU has (see `Simd`), and it includes AVX2.
                    break 'dispatch unsafe { run(body) };
                }
            }
            #[allow(dead_code)]
            type $V = $crate::Portable;
            $body
        }
    }};
}

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use vector::{Avx2, Avx512, F32s, Portable};

/// Asks the CPU to start loading `data` into its caches, a hint that costs a few cycles per
/// 64-byte line and changes no result: for data a kernel reads soon in an order the hardware
/// prefetchers do not follow (rows in random order), or that comes back from memory faster
/// when asked for ahead. Does nothing outside x86-64 (stable Rust has no such instruction for
/// ARM).
///
/// ```
/// let next = vec![1.0f32; 1000];
/// simd::prefetch(&next);
/// assert_eq!(next.iter().sum::<f32>(), 1000.0);
/// ```
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (start, bytes) = (data.as_ptr().cast::<u8>(), size_of_val(data));
        // Every 64 bytes, and the last byte: its line is a line further when `data` does not
        // start on one.
        for offset in (0..bytes).step_by(64).chain(bytes.checked_sub(1)) {
            // SAFETY: SSE is part of x86-64; prefetching is only a hint, and the address is
            // within `data`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.add(offset).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The environment variable that caps the level: `portable`, `avx2` or `avx512`.
pub const VARIABLE: &str = "MNIST_SIMD";

/// A set of vector instructions, from the narrowest. Ordered: a CPU with a level has every
/// level below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// No intrinsics: code the compiler vectorises for the target's baseline (SSE2 on x86-64,
    /// NEON on 64-bit ARM). What every machine that is not x86-64 runs.
    Portable,
    /// AVX2 with FMA: eight lanes of `f32`, fused multiply-adds (Haswell, Zen and later).
    Avx2,
    /// AVX-512 F, BW, DQ and VL: sixteen lanes and masked loads (Skylake-SP, Ice Lake,
    /// Sapphire Rapids, Zen 4 and later).
    Avx512,
}

impl Level {
    /// Every level, narrowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The widest level this CPU has, detected once.
    pub fn detected() -> Level {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The level [`VARIABLE`] asks for, or the detected one where it is unset or empty.
    ///
    /// # Errors
    /// If the variable names no level, or a level above the CPU's.
    pub fn from_env() -> Result<Level, Error> {
        match std::env::var(VARIABLE) {
            Ok(value) => Level::capped(Some(&value), Level::detected()),
            Err(std::env::VarError::NotPresent) => Ok(Level::detected()),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Unknown { value: "(not UTF-8)".into() }),
        }
    }

    /// The level `cap` asks for on a CPU whose widest level is `detected`.
    fn capped(cap: Option<&str>, detected: Level) -> Result<Level, Error> {
        let Some(value) = cap.filter(|v| !v.trim().is_empty()) else { return Ok(detected) };
        let wanted: Level = value.parse()?;
        if wanted > detected {
            return Err(Error::Unsupported { wanted, detected });
        }
        Ok(wanted)
    }

    /// The name [`VARIABLE`] takes: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Level::ALL
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::Unknown { value: s.to_owned() })
    }
}

/// Why [`VARIABLE`] cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The value names no level.
    #[error("{VARIABLE}={value:?}: expected portable, avx2 or avx512")]
    Unknown {
        /// What the variable holds.
        value: String,
    },
    /// The level is above what the CPU has.
    #[error("{VARIABLE}={wanted}: this CPU's widest level is {detected}")]
    Unsupported {
        /// The level asked for.
        wanted: Level,
        /// The CPU's widest level.
        detected: Level,
    },
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // Each level includes the ones below it: AVX-512 counts only with AVX2 and FMA too.
        let avx2 = has!("avx2") && has!("fma");
        if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// Whether the CPU has AVX-512 VBMI (byte permutations across a whole vector), which some
/// kernels use beside [`Level::Avx512`] (Ice Lake, Zen 4 and later have it; Skylake-SP not).
fn detected_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VBMI: OnceLock<bool> = OnceLock::new();
        *VBMI.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vbmi"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A level this CPU has: the proof a kernel needs before it runs a level's instructions.
/// Made only by [`Simd::get`] and [`Simd::every`], which never exceed [`Level::detected`], so
/// `simd.avx2()` being true means the CPU has AVX2 and FMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Simd {
    level: Level,
}

impl Simd {
    /// The level in force: [`Level::from_env`], read once.
    ///
    /// # Panics
    /// If [`VARIABLE`] holds an unknown level or one above the CPU's. A program that lets its
    /// users set the variable checks it first with [`Level::from_env`] to report the error.
    pub fn get() -> Simd {
        static IN_FORCE: OnceLock<Level> = OnceLock::new();
        let level = *IN_FORCE.get_or_init(|| Level::from_env().unwrap_or_else(|err| panic!("{err}")));
        Simd { level }
    }

    /// Every level from [`Level::Portable`] up to the one in force, narrowest first: what a
    /// test of a kernel's paths runs on this machine.
    pub fn every() -> impl Iterator<Item = Simd> {
        let top = Simd::get().level;
        Level::ALL.into_iter().filter(move |&level| level <= top).map(|level| Simd { level })
    }

    /// The level.
    pub fn level(self) -> Level {
        self.level
    }

    /// Lanes of the level's [`F32s`]: 4 portable, 8 with AVX2, 16 with AVX-512.
    pub fn lanes(self) -> usize {
        match self.level {
            Level::Portable => Portable::LANES,
            Level::Avx2 => Avx2::LANES,
            Level::Avx512 => Avx512::LANES,
        }
    }

    /// Whether kernels may use AVX2 and FMA.
    pub fn avx2(self) -> bool {
        self.level >= Level::Avx2
    }

    /// Whether kernels may use AVX-512 F, BW, DQ and VL.
    pub fn avx512(self) -> bool {
        self.level >= Level::Avx512
    }

    /// Whether kernels may use AVX-512 VBMI as well: the level is [`Level::Avx512`] and the CPU
    /// has it.
    pub fn avx512_vbmi(self) -> bool {
        self.avx512() && detected_vbmi()
    }
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.level.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for level in Level::ALL {
            assert_eq!(level.name().parse::<Level>(), Ok(level));
        }
        assert_eq!(" AVX2 ".parse::<Level>(), Ok(Level::Avx2));
        let err = "sse4".parse::<Level>().unwrap_err();
        assert_eq!(err.to_string(), "MNIST_SIMD=\"sse4\": expected portable, avx2 or avx512");
    }

    #[test]
    fn a_cap_lowers_the_level_and_never_raises_it() {
        assert_eq!(Level::capped(None, Level::Avx2), Ok(Level::Avx2));
        assert_eq!(Level::capped(Some(""), Level::Avx512), Ok(Level::Avx512));
        assert_eq!(Level::capped(Some("portable"), Level::Avx2), Ok(Level::Portable));
        assert_eq!(Level::capped(Some("avx2"), Level::Avx2), Ok(Level::Avx2));
        let err = Level::capped(Some("avx512"), Level::Avx2).unwrap_err();
        assert_eq!(err.to_string(), "MNIST_SIMD=avx512: this CPU's widest level is avx2");
        assert!(matches!(Level::capped(Some("neon"), Level::Avx512), Err(Error::Unknown { .. })));
    }

    #[test]
    fn the_levels_in_force_never_exceed_the_cpus() {
        let every: Vec<Simd> = Simd::every().collect();
        assert_eq!(every.first().map(|s| s.level()), Some(Level::Portable));
        assert_eq!(every.last(), Some(&Simd::get()));
        assert!(every.iter().all(|s| s.level() <= Level::detected()));
        assert!(every.windows(2).all(|w| w[0] < w[1]));
    }
}
