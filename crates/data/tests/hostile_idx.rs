//! Hostile IDX files: arbitrary bytes, truncations and bit flips of valid files, plain and
//! gzip-compressed, give an error or a consistent file, never a panic, and never make the
//! parser allocate far beyond what the input can hold. A counting allocator measures the
//! parser's peak allocation, so this file holds a single test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(new_size, Ordering::SeqCst) + new_size;
            PEAK.fetch_max(now, Ordering::SeqCst);
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes the parse of `input` allocated at its peak, beyond what was live before it.
fn peak_allocation(input: &[u8], rank: u8) -> (usize, bool) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let ok = data::parse_idx_u8(input, rank, Path::new("x")).is_ok();
    (PEAK.load(Ordering::SeqCst) - base, ok)
}

fn valid_idx() -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5];
    out.extend((0..60u8).map(|i| i.wrapping_mul(37)));
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The inflater's own state, whatever the input.
const DECODER_STATE: usize = 256 << 10;

/// Plain input: about its own size. Gzip input: no more than deflate's 1032:1 can expand it.
fn bound(input: &[u8]) -> usize {
    let factor = if input.starts_with(&[0x1f, 0x8b]) { 1032 } else { 2 };
    factor * input.len() + DECODER_STATE
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn hostile_idx_never_panics_nor_over_allocates(
        which in 0usize..4,
        cut in 0usize..200,
        flips in proptest::collection::vec(0usize..2000, 0..4),
        random in proptest::collection::vec(any::<u8>(), 0..200),
        rank in 0u8..4,
    ) {
        let valid = valid_idx();
        let mut input = match which {
            0 => random,
            1 => valid.clone(),
            2 => gzip(&valid),
            // A header claiming 2^32 - 1 images on a file of a few bytes.
            _ => { let mut v = valid.clone(); v[4..8].copy_from_slice(&u32::MAX.to_be_bytes()); gzip(&v) }
        };
        for f in flips {
            if !input.is_empty() {
                let i = f % (input.len() * 8);
                input[i / 8] ^= 1 << (i % 8);
            }
        }
        input.truncate(cut.max(1).min(input.len()));
        let (peak, _) = peak_allocation(&input, rank);
        prop_assert!(peak <= bound(&input), "{} bytes in, {peak} allocated", input.len());
    }
}
