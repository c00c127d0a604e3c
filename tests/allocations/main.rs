//! Tests that count allocations: hostile files (arbitrary bytes, truncations and bit flips of
//! valid IDX files and checkpoints give an error or a consistent result, never a panic, and
//! never make the parser allocate far beyond what the input can hold), and the training step,
//! which allocates nothing once warm.
//!
//! The allocator counts bytes for the whole process, so the tests in this binary take turns;
//! calls to it are counted per thread as well, since proptest draws its cases (allocating)
//! outside the turns.

mod checkpoint;
mod idx;
mod image;
mod training_step;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// Calls to `alloc` and `realloc` on this thread. A `const` cell: no allocation, no
    /// destructor, so the allocator may touch it at any time.
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

fn count_call() {
    let _ = CALLS.try_with(|calls| calls.set(calls.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        count_call();
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
        count_call();
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

/// Held by a test for as long as it measures.
pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes `f` allocated at its peak, beyond what was live before it, and its result.
pub(crate) fn peak_allocation<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let result = f();
    (PEAK.load(Ordering::SeqCst) - base, result)
}

/// Calls to the allocator so far on this thread.
pub(crate) fn allocation_calls() -> usize {
    CALLS.with(Cell::get)
}

/// Flips the bits `flips` (taken modulo the input's length in bits), then keeps at most `cut`
/// bytes (at least one, unless the input is empty).
pub(crate) fn damage(mut input: Vec<u8>, flips: &[usize], cut: usize) -> Vec<u8> {
    for &f in flips {
        if !input.is_empty() {
            let i = f % (input.len() * 8);
            input[i / 8] ^= 1 << (i % 8);
        }
    }
    input.truncate(cut.max(1).min(input.len()));
    input
}
