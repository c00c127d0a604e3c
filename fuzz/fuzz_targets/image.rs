//! Image decoding and MNIST-style preprocessing on arbitrary bytes (what `predict` reads and
//! `mnist serve` receives): it must return, never panic, and stay within its limits; an image it
//! accepts gives 784 values in [0, 1]. A counting allocator measures each input's peak
//! allocation, which must stay within the bound the README states for one image: twice the
//! decoding limit plus 4 MiB.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fuzz_target!(|bytes: &[u8]| {
    let limits = data::digit::Limits { max_side: 1024, max_bytes: 16 << 20 };
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = data::digit::from_image_bytes(bytes, limits);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let bound = 2 * limits.max_bytes as usize + (4 << 20);
    assert!(peak <= bound, "{} bytes in, {peak} bytes allocated at the peak, above {bound}", bytes.len());
    if let Ok(pixels) = result {
        assert_eq!(pixels.len(), 784);
        assert!(pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
