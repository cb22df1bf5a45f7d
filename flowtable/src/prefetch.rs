//! Cache prefetch hints: the per-packet path asks for the memory of packets a few places
//! ahead (their bytes, their hash bucket, their flow slot) so those loads overlap the work on
//! the packet at hand instead of stalling it.

/// Asks the CPU to bring the cache line holding `p` into all cache levels. A hint only: it
/// never faults, changes nothing a program can observe, and does nothing on targets without
/// one.
#[inline(always)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and never faults, whatever the
    // address (a bad or unmapped one is ignored); SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches every cache line of `v`.
#[inline(always)]
pub fn value<T>(v: &T) {
    let start = std::ptr::from_ref(v).cast::<u8>();
    let len = std::mem::size_of::<T>();
    let mut off = 0;
    while off < len {
        line(start.wrapping_add(off));
        off += 64;
    }
    // The last line, when `v` does not start on a line boundary.
    if len > 0 {
        line(start.wrapping_add(len - 1));
    }
}

/// Prefetches the two cache lines from the start of `bytes` on: whatever its alignment,
/// they hold its first 65 bytes at least (a frame's Ethernet, IP and TCP headers, options
/// included, in most frames). Lines past the end of a short slice are asked for too,
/// harmlessly.
#[inline(always)]
pub fn head(bytes: &[u8]) {
    line(bytes.as_ptr());
    line(bytes.as_ptr().wrapping_add(64));
}
