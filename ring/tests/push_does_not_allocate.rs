//! `Producer::push` and `Consumer::pop` must not touch the allocator (hot-path rule).

#![cfg(not(loom))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts allocations.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn push_and_pop_do_not_allocate() {
    let path = std::env::temp_dir().join(format!("conntrail-ring-noalloc-{}", std::process::id()));
    let (mut producer, mut consumer) = ring::create(&path, 4096).unwrap();
    let frame = [0xA5u8; 100];
    let before = ALLOCATIONS.with(Cell::get);
    let mut pushed = 0u64;
    let mut bytes = 0usize;
    for i in 0..100_000 {
        if producer.push(&frame[..i % 101]).is_ok() {
            pushed += 1;
        }
        if i % 3 == 0 {
            while consumer.pop(|f| bytes += f.len()) {}
        }
    }
    let after = ALLOCATIONS.with(Cell::get);
    std::fs::remove_file(&path).ok();
    assert!(pushed > 50_000 && bytes > 0);
    assert_eq!(after - before, 0, "allocations during push/pop");
}
