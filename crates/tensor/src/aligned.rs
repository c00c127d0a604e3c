//! A buffer of `f32` that starts on a cache line.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// Sixteen `f32`s on a 64-byte boundary: a cache line, and the widest vector register.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A fixed-length buffer of `f32` whose first element starts a cache line, so that a row of a
/// matrix stored in it whose length is a multiple of 16 loads as whole lines. An allocator
/// gives a `Vec<f32>` no such promise: large ones often start 16 bytes into a page, and
/// then every 64-byte load of a kernel reads two lines.
///
/// ```
/// let mut b = tensor::AlignedVec::from(vec![1.0f32, 2.0, 3.0]);
/// b[1] = 5.0;
/// assert_eq!(&b[..], &[1.0, 5.0, 3.0]);
/// assert_eq!(b.as_ptr() as usize % 64, 0);
/// ```
#[derive(Clone, Default)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        Self { lines: vec![Line::default(); len.div_ceil(16)], len }
    }

    /// Changes the length to `len`, filling new elements with `value`, like `Vec::resize`:
    /// without allocating when the buffer has held as many before.
    pub fn resize(&mut self, len: usize, value: f32) {
        let old = self.len;
        self.lines.resize(len.div_ceil(16), Line::default());
        self.len = len;
        if len > old {
            self[old..].fill(value);
        }
    }
}

impl From<&[f32]> for AlignedVec {
    fn from(values: &[f32]) -> Self {
        let mut buffer = Self::zeros(values.len());
        buffer.copy_from_slice(values);
        buffer
    }
}

impl From<Vec<f32>> for AlignedVec {
    fn from(values: Vec<f32>) -> Self {
        Self::from(&values[..])
    }
}

impl Deref for AlignedVec {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is sixteen `f32`s without padding (`repr(C)`, 64 bytes), so the
        // lines are `16 * lines.len()` consecutive, initialised `f32`s, of which `len` are used.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl<'a> IntoIterator for &'a AlignedVec {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut AlignedVec {
    type Item = &'a mut f32;
    type IntoIter = std::slice::IterMut<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl PartialEq for AlignedVec {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self[..].fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_it_was_given_from_a_line_boundary() {
        for len in [0, 1, 15, 16, 17, 100_352] {
            let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let buffer = AlignedVec::from(values.clone());
            assert_eq!(&buffer[..], &values[..]);
            assert_eq!(buffer.as_ptr() as usize % 64, 0, "{len}");
            assert_eq!(buffer.clone(), buffer);
            assert_eq!(AlignedVec::zeros(len).iter().filter(|v| **v != 0.0).count(), 0);
        }
    }

    #[test]
    fn resizing_keeps_the_prefix_and_fills_the_rest() {
        let mut b = AlignedVec::from(vec![1.0f32; 20]);
        b.resize(3, 0.0);
        assert_eq!(&b[..], &[1.0; 3]);
        let start = b.as_ptr();
        b.resize(30, 2.0);
        assert_eq!(b.as_ptr(), start, "grown within what it held");
        assert_eq!(&b[..3], &[1.0; 3]);
        assert!(b[3..].iter().all(|&v| v == 2.0), "{b:?}");
        b.resize(100, 5.0);
        assert_eq!((b.len(), b[29], b[30], b[99]), (100, 2.0, 5.0, 5.0));
        assert_eq!(b.as_ptr() as usize % 64, 0);
    }
}
