//! A counting global allocator for the allocation tests, and the frames of a capture in
//! memory. Included with `#[path]` by the tests that install it (not part of `common`, so
//! other test binaries keep the system allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations and reallocations counted while [`COUNTING`] is set on the calling thread.
pub static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations count.
    pub static COUNTING: Cell<bool> = const { Cell::new(false) };
}

pub struct Counting;

// SAFETY: delegates to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Reads a nanosecond legacy pcap (as `synth` writes it) into (ts_ns, wire_len, bytes).
pub fn frames(path: &std::path::Path) -> Vec<(u64, u32, Vec<u8>)> {
    let mut out = Vec::new();
    capture::read_capture(
        path,
        |_, ts, wire, bytes| out.push((ts, wire, bytes.to_vec())),
        |_| {},
    )
    .expect("capture reads");
    out
}

/// Hands `chunk` (frames of [`frames`]) to `worker` as one batch of Ethernet frames, as a
/// live socket hands over its RX ring.
pub fn feed(worker: &mut engine::pipeline::worker::Worker, chunk: &[(u64, u32, Vec<u8>)]) {
    worker.frames(chunk.len(), |i| {
        let (ts, wire, bytes) = &chunk[i];
        engine::pipeline::worker::SourceFrame {
            link: flowtable::packet::LinkType::Ethernet,
            ts_ns: *ts,
            wire_len: *wire,
            interface: 0,
            bytes,
        }
    });
}
