//! The memory budget every fuzz input must stay under: a global allocator that counts live
//! heap bytes and aborts the process, naming the budget, the moment an input asks for more.
//! (A huge allocation that is never touched does not raise the RSS that libFuzzer watches, so
//! counting requested bytes is what finds over-allocation.) Used by the fuzz binaries and the
//! replay test alike.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Live heap bytes no input may exceed: 1 GiB. The largest legitimate allocation a loader
/// makes for a small input is a decoded image at the pixel budget (64 Mpx of 16-bit RGBA,
/// 512 MiB); everything else is bounded by the input's own length.
pub const BUDGET: usize = 1 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

pub struct Budgeted;

#[global_allocator]
static ALLOCATOR: Budgeted = Budgeted;

fn over_budget(size: usize) -> ! {
    // No formatting here: it would allocate inside the allocator.
    use std::io::Write;
    let _ = std::io::stderr().write_all(
        b"fuzz budget: an input asked for more than 1 GiB of live heap (tests/fuzz/budget.rs)\n",
    );
    let _ = size;
    std::process::abort()
}

fn grow(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if live > BUDGET {
        over_budget(size);
    }
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The most live heap seen since the last `reset_peak`.
#[allow(dead_code)]
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from what is live now.
#[allow(dead_code)]
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}
