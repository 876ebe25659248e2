//! Counts heap allocations, for `bench/v8prof.cjs --count-allocs`: a
//! profiling build only (feature `alloc-count`), never the shipped module.
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/names \
//!   cargo build --release --target wasm32-wasip1 --features alloc-count
//! ```
//!
//! Every `alloc`, `alloc_zeroed` and `realloc` is counted (a `realloc` that
//! grows in place costs less, but is still a trip into the allocator); the
//! export `meshguard_alloc_count` returns the running total. The buffers the
//! host asks for (`proxy_on_memory_allocate`) are allocations too and are
//! counted here; the script also counts those calls on their own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; counting touches no memory it returns.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations so far (all of them, the host's buffers included).
#[no_mangle]
pub extern "C" fn meshguard_alloc_count() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}
