//! A hashed timer wheel for idle timeouts, driven by packet time.
//!
//! Each flow sits in the slot of the tick its deadline falls in, on an intrusive doubly
//! linked list, so scheduling and cancelling are O(1) and no scan of the table is ever
//! needed. Deadlines move on every packet without touching the wheel: when a slot comes due,
//! the owner is asked for each entry's current deadline and the entry either expires or moves
//! to its new slot (lazy rescheduling). Deadlines beyond one revolution simply come round
//! again. An entry expires at the first tick boundary after its deadline: never early, at most
//! one tick late.

const NIL: u32 = u32::MAX;

/// Links of an entry on its slot's circular list (both NIL when it is on none). Each slot
/// and the expired stack have a sentinel node after the entries, so an entry needs no
/// field saying which list it is on.
#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

/// What the owner says about an entry whose slot came due.
pub enum Due {
    /// Expire it: it moves to the expired stack ([`Wheel::pop_expired`]), where the owner
    /// takes it to close the flow.
    Expire,
    /// Its deadline moved to this time: it is linked into that slot.
    Later(u64),
}

pub struct Wheel {
    /// Entries `0..capacity`, then one sentinel per slot, then the expired stack's.
    links: Box<[Link]>,
    capacity: u32,
    slots: u32,
    tick_ns: u64,
    /// Ticks strictly below this have been processed.
    current_tick: u64,
    /// Where the tick after `current_tick` starts, 0 before the first time is seen (after
    /// it, never 0): a time below it crosses no boundary, which one comparison tells without
    /// a division.
    next_tick_ns: u64,
}

impl Wheel {
    /// A wheel for entry indices `0..capacity`, with `slots` slots (rounded up to a power
    /// of two) of `tick_ns` each.
    pub fn new(capacity: usize, slots: usize, tick_ns: u64) -> Wheel {
        let slots = slots.next_power_of_two().max(2);
        let capacity = capacity.min(NIL as usize - slots - 1);
        let mut links = vec![UNLINKED; capacity + slots + 1].into_boxed_slice();
        for (s, l) in links.iter_mut().enumerate().skip(capacity) {
            *l = Link {
                prev: s as u32,
                next: s as u32,
            };
        }
        Wheel {
            links,
            capacity: capacity as u32,
            slots: slots as u32,
            tick_ns: tick_ns.max(1),
            current_tick: 0,
            next_tick_ns: 0,
        }
    }

    fn sentinel_of(&self, deadline_ns: u64) -> u32 {
        let tick = (deadline_ns / self.tick_ns).max(self.current_tick);
        self.capacity + (tick & u64::from(self.slots - 1)) as u32
    }

    fn set_current_tick(&mut self, tick: u64) {
        self.current_tick = tick;
        self.next_tick_ns = tick.saturating_add(1).saturating_mul(self.tick_ns);
    }

    /// Whether a time has been seen (a deadline scheduled or a packet's time).
    fn started(&self) -> bool {
        self.next_tick_ns != 0
    }

    fn expired_sentinel(&self) -> u32 {
        self.capacity + self.slots
    }

    /// Links `idx` right after sentinel `s`.
    fn push_front(&mut self, s: u32, idx: u32) {
        let first = self.links[s as usize].next;
        self.links[idx as usize] = Link {
            prev: s,
            next: first,
        };
        self.links[first as usize].prev = idx;
        self.links[s as usize].next = idx;
    }

    /// Links entry `idx` into the slot of `deadline_ns` (it must not be linked already).
    pub fn schedule(&mut self, idx: u32, deadline_ns: u64) {
        if !self.started() {
            self.set_current_tick(deadline_ns / self.tick_ns);
        }
        if idx < self.capacity {
            let s = self.sentinel_of(deadline_ns);
            self.push_front(s, idx);
        }
    }

    /// Unlinks entry `idx` if it is linked (on a slot or on the expired stack).
    pub fn cancel(&mut self, idx: u32) {
        if idx >= self.capacity {
            return;
        }
        let Link { prev, next } = self.links[idx as usize];
        if prev == NIL {
            return;
        }
        self.links[prev as usize].next = next;
        self.links[next as usize].prev = prev;
        self.links[idx as usize] = UNLINKED;
    }

    /// Moves time forward to `now_ns` and offers every entry of each tick that has fully
    /// passed to `due(idx, horizon_ns)`: an entry whose deadline is before `horizon_ns` is
    /// due. Cheap when no tick boundary was crossed. Says whether any entry expired.
    #[inline]
    pub fn advance(&mut self, now_ns: u64, due: impl FnMut(u32, u64) -> Due) -> bool {
        if now_ns < self.next_tick_ns {
            return false;
        }
        self.cross(now_ns, due)
    }

    /// [`Wheel::advance`] once `now_ns` may have reached another tick.
    #[cold]
    fn cross(&mut self, now_ns: u64, mut due: impl FnMut(u32, u64) -> Due) -> bool {
        let now_tick = now_ns / self.tick_ns;
        if !self.started() {
            self.set_current_tick(now_tick);
            return false;
        }
        if now_tick <= self.current_tick {
            return false;
        }
        let mut any = false;
        let expire_before = now_tick * self.tick_ns;
        let slots = u64::from(self.slots);
        let steps = (now_tick - self.current_tick).min(slots);
        let first = self.current_tick;
        let expired = self.expired_sentinel();
        // Rescheduled entries land at or after `now_tick`, never in a slot still to visit
        // in this call (at most one revolution is visited).
        self.set_current_tick(now_tick);
        for t in first..first + steps {
            let s = self.capacity + (t & (slots - 1)) as u32;
            // Detach the slot's list, then walk it to its end (the sentinel).
            let mut idx = self.links[s as usize].next;
            self.links[s as usize] = Link { prev: s, next: s };
            while idx != s {
                let next = self.links[idx as usize].next;
                self.links[idx as usize] = UNLINKED;
                match due(idx, expire_before) {
                    Due::Expire => {
                        self.push_front(expired, idx);
                        any = true;
                    }
                    Due::Later(deadline) if deadline < expire_before => {
                        // Overdue but the owner keeps it: look again next tick.
                        self.schedule(idx, expire_before);
                    }
                    Due::Later(deadline) => self.schedule(idx, deadline),
                }
                idx = next;
            }
        }
        any
    }

    /// Takes the entry expired last by [`Wheel::advance`], if any is left.
    pub fn pop_expired(&mut self) -> Option<u32> {
        let s = self.expired_sentinel();
        let idx = self.links[s as usize].next;
        (idx != s).then(|| {
            self.cancel(idx);
            idx
        })
    }

    /// The entry that is due soonest (the newest of the first non-empty slot from now on),
    /// for eviction under pressure. Visits at most one revolution of slots.
    pub fn soonest(&self) -> Option<u32> {
        let slots = u64::from(self.slots);
        (0..slots)
            .map(|i| self.capacity + ((self.current_tick + i) & (slots - 1)) as u32)
            .map(|s| (s, self.links[s as usize].next))
            .find(|&(s, first)| first != s)
            .map(|(_, first)| first)
    }

    /// Bytes this wheel holds (per-entry links and the sentinels).
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.links)
    }

    /// Is entry `idx` linked (on a slot or on the expired stack)?
    pub fn is_scheduled(&self, idx: u32) -> bool {
        idx < self.capacity && self.links[idx as usize].prev != NIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn expires_after_deadline_never_before() {
        let mut w = Wheel::new(4, 8, S);
        w.advance(0, |_, _| unreachable!());
        w.schedule(1, 5 * S + 10);
        let mut fired = Vec::new();
        for t in 0..10 {
            w.advance(t * S, |i, _| {
                fired.push((t, i));
                Due::Expire
            });
        }
        assert_eq!(fired, vec![(6, 1)]);
        assert!(w.is_scheduled(1), "on the expired stack");
        assert_eq!(w.pop_expired(), Some(1));
        assert_eq!(w.pop_expired(), None);
        assert!(!w.is_scheduled(1));
    }

    #[test]
    fn deadlines_past_one_revolution_come_round() {
        let mut w = Wheel::new(2, 4, S);
        w.advance(0, |_, _| Due::Expire);
        w.schedule(0, 10 * S);
        let mut fired = None;
        for t in 0..=12 {
            w.advance(t * S, |_, _| {
                if t * S > 10 * S {
                    fired = Some(t);
                    Due::Expire
                } else {
                    Due::Later(10 * S)
                }
            });
        }
        assert_eq!(fired, Some(11));
    }

    #[test]
    fn cancel_unlinks() {
        let mut w = Wheel::new(3, 4, S);
        w.advance(0, |_, _| Due::Expire);
        w.schedule(0, S);
        w.schedule(1, S);
        w.schedule(2, S);
        w.cancel(1);
        let mut fired = Vec::new();
        w.advance(3 * S, |i, _| {
            fired.push(i);
            Due::Expire
        });
        fired.sort();
        assert_eq!(fired, vec![0, 2]);
    }

    #[test]
    fn huge_time_jump_visits_every_slot_once() {
        let mut w = Wheel::new(8, 4, S);
        w.advance(0, |_, _| Due::Expire);
        for i in 0..8 {
            w.schedule(i, u64::from(i) * S);
        }
        let mut n = 0;
        w.advance(1_000_000 * S, |_, _| {
            n += 1;
            Due::Expire
        });
        assert_eq!(n, 8);
    }

    proptest! {
        /// Every entry expires exactly once, in the first tick after its (moving) deadline.
        #[test]
        fn model(deadlines in proptest::collection::vec(0u64..200, 1..40),
                 bumps in proptest::collection::vec((0usize..40, 0u64..100), 0..40)) {
            let n = deadlines.len();
            let mut dl: Vec<u64> = deadlines.iter().map(|d| d * S / 4).collect();
            let mut w = Wheel::new(n, 16, S);
            w.advance(0, |_, _| Due::Expire);
            for (i, d) in dl.iter().enumerate() {
                w.schedule(i as u32, *d);
            }
            let mut expired_at = vec![None; n];
            let mut bumps = bumps.into_iter();
            for t in 0..1200u64 {
                let now = t * S;
                if let Some((i, extra)) = bumps.next() {
                    let i = i % n;
                    if expired_at[i].is_none() && dl[i] >= now {
                        dl[i] += extra * S / 4;
                    }
                }
                let mut twice = false;
                w.advance(now, |i, _| {
                    let d = dl[i as usize];
                    if d < now {
                        twice |= expired_at[i as usize].is_some();
                        expired_at[i as usize] = Some(now);
                        Due::Expire
                    } else {
                        Due::Later(d)
                    }
                });
                prop_assert!(!twice, "an entry expired twice");
            }
            for i in 0..n {
                let at = expired_at[i].expect("expired");
                prop_assert!(at > dl[i], "early: {} <= {}", at, dl[i]);
                prop_assert!(at <= dl[i] + 2 * S, "late: {} vs {}", at, dl[i]);
            }
        }
    }
}
