//! The index of a flow table: the slot of an open flow, found by the hash of its key.
//!
//! Open addressing over buckets of one cache line each: eight entries of an 8-bit tag (bits
//! of the hash) and a slot number. A hash has a home bucket; an entry goes to the first
//! bucket from its home on that has room, and every full bucket it passes counts one more
//! entry that overflowed past it. A lookup scans the home bucket's tags at once (the eight
//! bytes of one 64-bit word) and goes on to the next bucket only while the one it left has
//! overflowed, so removal needs no tombstones: it takes the entry out and counts the passed
//! buckets down again.
//!
//! The index is sized once for the table's capacity at most 80 % full and never grows
//! (10 bytes per connection slot, as much as hashbrown's at its load factor). What it gives
//! that a general hash map does not is the address of a hash's bucket before the lookup, so
//! the worker can prefetch the buckets and flow slots of the packets a few places ahead.
//! Keys live in the flow slots: the caller compares them.

use zerocopy::FromZeros;

use crate::prefetch;

const WAYS: usize = 8;
/// A tag in every lane.
const LANES_ONE: u64 = 0x0101_0101_0101_0101;
const LANES_LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// Entries per bucket at the most: the index is sized so that it stays this full.
const MAX_LOAD: f64 = 0.8;

/// All zeros is an empty bucket: the index is allocated zeroed, so the pages of buckets no
/// flow ever hashes to are never touched.
#[derive(Clone, Copy, FromZeros)]
#[repr(C, align(64))]
struct Bucket {
    /// Lane `w` (bits `8w..8w+8`) is way `w`'s tag; 0 is a free way.
    tags: u64,
    slots: [u32; WAYS],
    /// Entries whose home is this bucket or an earlier one and that live past it.
    overflow: u32,
}

impl Bucket {
    /// The ways whose tag is `tag`, as the top bit of their lane (exact: no lane borrows
    /// from another).
    #[inline]
    fn ways_tagged(&self, tag: u8) -> u64 {
        zero_lanes(self.tags ^ (LANES_ONE * u64::from(tag)))
    }

    #[inline]
    fn free_ways(&self) -> u64 {
        zero_lanes(self.tags)
    }
}

/// The top bit of every byte of `x` that is zero.
#[inline]
fn zero_lanes(x: u64) -> u64 {
    !(((x & LANES_LOW) + LANES_LOW) | x | LANES_LOW)
}

/// The way of the lowest lane set in `lanes` (not 0).
#[inline]
fn first_way(lanes: u64) -> usize {
    (lanes.trailing_zeros() / 8) as usize
}

/// A hash's tag: its low 8 bits, never 0 (the free mark).
#[inline]
fn tag_of(hash: u64) -> u8 {
    (hash as u8).max(1)
}

/// Slot numbers found by hash, for at most a fixed number of entries.
pub struct FlowIndex {
    buckets: Box<[Bucket]>,
    len: usize,
}

impl FlowIndex {
    /// An index for up to `capacity` entries.
    pub fn with_capacity(capacity: usize) -> FlowIndex {
        let buckets = ((capacity as f64 / (WAYS as f64 * MAX_LOAD)).ceil() as usize).max(1);
        FlowIndex {
            // Out of memory: the same end as a `Vec` of that size.
            buckets: <[Bucket]>::new_box_zeroed_with_elems(buckets).unwrap_or_else(|_| {
                std::alloc::handle_alloc_error(std::alloc::Layout::new::<Bucket>())
            }),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// The home bucket of `hash`: its high 32 bits scaled to the bucket count (the tag takes
    /// the low bits).
    #[inline]
    fn home(&self, hash: u64) -> usize {
        (((hash >> 32) * self.buckets.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Asks for `hash`'s home bucket to be brought into the cache.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(b) = self.buckets.get(self.home(hash)) {
            prefetch::line(b);
        }
    }

    /// The first slot in `hash`'s home bucket whose tag matches: most likely the one a lookup
    /// will find, to prefetch it (a guess; nothing is compared).
    #[inline]
    pub fn likely_slot(&self, hash: u64) -> Option<u32> {
        let b = self.buckets.get(self.home(hash))?;
        let ways = b.ways_tagged(tag_of(hash));
        (ways != 0).then(|| b.slots[first_way(ways)])
    }

    /// The slot with hash `hash` for which `is_it` says yes.
    #[inline]
    pub fn find(&self, hash: u64, mut is_it: impl FnMut(u32) -> bool) -> Option<u32> {
        self.locate(hash, &mut is_it)
            .map(|(b, way)| self.buckets[b].slots[way])
    }

    /// Where (bucket, way) the slot with hash `hash` for which `is_it` says yes is: its
    /// home bucket first, then on while the bucket left has overflowed.
    #[inline]
    fn locate(&self, hash: u64, is_it: &mut impl FnMut(u32) -> bool) -> Option<(usize, usize)> {
        let tag = tag_of(hash);
        let mut b = self.home(hash);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            let mut ways = bucket.ways_tagged(tag);
            while ways != 0 {
                let way = first_way(ways);
                if is_it(bucket.slots[way]) {
                    return Some((b, way));
                }
                ways &= ways - 1;
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// Adds `slot` under `hash`. The caller keeps at most the capacity in the index (the
    /// flow table never holds more flows), so there is always room: false if there was not.
    pub fn insert(&mut self, hash: u64, slot: u32) -> bool {
        let tag = tag_of(hash);
        let home = self.home(hash);
        let mut b = home;
        for _ in 0..self.buckets.len() {
            let free = self.buckets[b].free_ways();
            if free != 0 {
                let way = first_way(free);
                let bucket = &mut self.buckets[b];
                bucket.tags |= u64::from(tag) << (8 * way);
                bucket.slots[way] = slot;
                self.len += 1;
                // Only now count the passed buckets: a full index changes nothing.
                let mut p = home;
                while p != b {
                    self.buckets[p].overflow += 1;
                    p = self.next(p);
                }
                return true;
            }
            b = self.next(b);
        }
        false
    }

    /// Takes `slot` out from under `hash`: false if it was not there.
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let Some((b, way)) = self.locate(hash, &mut |s| s == slot) else {
            return false;
        };
        self.buckets[b].tags &= !(0xff_u64 << (8 * way));
        self.len -= 1;
        let mut p = self.home(hash);
        while p != b {
            self.buckets[p].overflow -= 1;
            p = self.next(p);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of 64-bit values (splitmix64).
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    #[test]
    fn zero_lanes_marks_exactly_the_zero_lanes() {
        for (x, want) in [
            (0u64, 0x8080_8080_8080_8080u64),
            (1, 0x8080_8080_8080_8000),
            (0x80, 0x8080_8080_8080_8000),
            (0xff00, 0x8080_8080_8080_0080),
            (0x0001_0000_0000_0100, 0x8000_8080_8080_0080),
            (u64::MAX, 0),
        ] {
            assert_eq!(zero_lanes(x), want, "{x:#x}");
        }
    }

    #[test]
    fn finds_what_was_inserted_and_nothing_after_removal() {
        let cap = 10_000;
        let mut index = FlowIndex::with_capacity(cap);
        let hashes: Vec<u64> = (0..cap as u64).map(mix).collect();
        for (slot, &h) in hashes.iter().enumerate() {
            assert!(index.insert(h, slot as u32));
        }
        assert_eq!(index.len(), cap);
        for (slot, &h) in hashes.iter().enumerate() {
            assert_eq!(index.find(h, |s| s == slot as u32), Some(slot as u32));
        }
        // Remove every other entry: the rest are still found, the removed ones are not.
        for (slot, &h) in hashes.iter().enumerate().step_by(2) {
            assert!(index.remove(h, slot as u32));
            assert!(!index.remove(h, slot as u32));
        }
        assert_eq!(index.len(), cap / 2);
        for (slot, &h) in hashes.iter().enumerate() {
            let found = index.find(h, |s| s == slot as u32);
            assert_eq!(found.is_some(), slot % 2 == 1, "slot {slot}");
        }
    }

    #[test]
    fn overflow_chains_survive_removal_from_their_middle_and_wrap_around() {
        // Two buckets; every hash homes in the last one, so entries overflow into the first
        // (wrapping) and share one tag, so only the slot tells them apart.
        let mut index = FlowIndex::with_capacity(12);
        assert_eq!(index.buckets.len(), 2);
        let hash = u64::MAX << 32 | 7;
        for slot in 0..12 {
            assert!(index.insert(hash, slot));
        }
        assert_eq!(index.buckets[1].overflow, 4);
        for slot in [3, 9, 0] {
            assert!(index.remove(hash, slot));
        }
        for slot in 0..12 {
            let want = ![3, 9, 0].contains(&slot);
            assert_eq!(
                index.find(hash, |s| s == slot).is_some(),
                want,
                "slot {slot}"
            );
        }
        // Room again: fill every way, then one more is refused.
        for slot in 20..27 {
            assert!(index.insert(hash, slot));
        }
        assert_eq!(index.len(), 16);
        assert!(!index.insert(hash, 99), "no room left: refused");
        assert_eq!(index.len(), 16);
        let present: Vec<u32> = (1..12)
            .filter(|s| ![3, 9].contains(s))
            .chain(20..27)
            .collect();
        for &slot in &present {
            assert!(index.remove(hash, slot), "slot {slot}");
        }
        assert_eq!(index.len(), 0);
        assert!(index.buckets.iter().all(|b| b.overflow == 0 && b.tags == 0));
    }

    #[test]
    fn agrees_with_a_model_under_churn() {
        // Random inserts and removals near capacity, with hashes crowded into few values so
        // tags collide and chains form; checked against a plain list after every step.
        let cap = 2_000;
        let mut index = FlowIndex::with_capacity(cap);
        let mut live: Vec<(u32, u64)> = Vec::new();
        let mut free: Vec<u32> = (0..cap as u32).collect();
        for step in 0..50_000u64 {
            let r = mix(step);
            let pick = (r >> 8) as usize;
            if !free.is_empty() && (live.len() < cap / 2 || r & 3 != 0) {
                let slot = free.swap_remove(pick % free.len());
                let hash = mix(r % 3_000) & 0xffff_ffff_ffff_ff0f;
                assert!(index.insert(hash, slot));
                live.push((slot, hash));
            } else {
                let (slot, hash) = live.swap_remove(pick % live.len());
                assert!(index.remove(hash, slot));
                assert_eq!(index.find(hash, |s| s == slot), None);
                free.push(slot);
            }
            if step % 1_000 == 0 {
                for &(slot, hash) in &live {
                    assert_eq!(index.find(hash, |s| s == slot), Some(slot));
                }
                let used: usize = index
                    .buckets
                    .iter()
                    .map(|b| WAYS - b.free_ways().count_ones() as usize)
                    .sum();
                assert_eq!(used, live.len());
            }
        }
        assert_eq!(index.len(), live.len());
    }
}
