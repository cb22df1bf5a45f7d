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

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    /// Slot the entry is linked into, or NIL.
    slot: u32,
}

/// What the owner says about an entry whose slot came due.
pub enum Due {
    /// Expire it: it is unlinked, the owner closes the flow.
    Expire,
    /// Its deadline moved to this time: it is linked into that slot.
    Later(u64),
}

pub struct Wheel {
    heads: Box<[u32]>,
    links: Box<[Link]>,
    tick_ns: u64,
    /// Ticks strictly below this have been processed.
    current_tick: u64,
    started: bool,
}

impl Wheel {
    /// A wheel for entry indices `0..capacity`, with `slots` slots (rounded up to a power
    /// of two) of `tick_ns` each.
    pub fn new(capacity: usize, slots: usize, tick_ns: u64) -> Wheel {
        let slots = slots.next_power_of_two().max(2);
        Wheel {
            heads: vec![NIL; slots].into_boxed_slice(),
            links: vec![
                Link {
                    prev: NIL,
                    next: NIL,
                    slot: NIL,
                };
                capacity
            ]
            .into_boxed_slice(),
            tick_ns: tick_ns.max(1),
            current_tick: 0,
            started: false,
        }
    }

    fn slot_of(&self, deadline_ns: u64) -> u32 {
        let tick = (deadline_ns / self.tick_ns).max(self.current_tick);
        (tick & (self.heads.len() as u64 - 1)) as u32
    }

    /// Links entry `idx` into the slot of `deadline_ns` (it must not be linked already).
    pub fn schedule(&mut self, idx: u32, deadline_ns: u64) {
        if !self.started {
            self.current_tick = deadline_ns / self.tick_ns;
            self.started = true;
        }
        let slot = self.slot_of(deadline_ns);
        let head = self.heads[slot as usize];
        if let Some(l) = self.links.get_mut(idx as usize) {
            *l = Link {
                prev: NIL,
                next: head,
                slot,
            };
        } else {
            return;
        }
        if head != NIL {
            self.links[head as usize].prev = idx;
        }
        self.heads[slot as usize] = idx;
    }

    /// Unlinks entry `idx` if it is linked.
    pub fn cancel(&mut self, idx: u32) {
        let Some(&Link { prev, next, slot }) = self.links.get(idx as usize) else {
            return;
        };
        if slot == NIL {
            return;
        }
        if prev == NIL {
            self.heads[slot as usize] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
        self.links[idx as usize] = Link {
            prev: NIL,
            next: NIL,
            slot: NIL,
        };
    }

    /// Moves time forward to `now_ns` and offers every entry of each tick that has fully
    /// passed to `due(idx, horizon_ns)`: an entry whose deadline is before `horizon_ns` is
    /// due. Cheap when no tick boundary was crossed.
    pub fn advance(&mut self, now_ns: u64, mut due: impl FnMut(u32, u64) -> Due) {
        let now_tick = now_ns / self.tick_ns;
        if !self.started {
            self.current_tick = now_tick;
            self.started = true;
            return;
        }
        if now_tick <= self.current_tick {
            return;
        }
        let expire_before = now_tick * self.tick_ns;
        let slots = self.heads.len() as u64;
        let steps = (now_tick - self.current_tick).min(slots);
        let first = self.current_tick;
        // Rescheduled entries land at or after `now_tick`, never in a slot still to visit
        // in this call (at most one revolution is visited).
        self.current_tick = now_tick;
        for t in first..first + steps {
            let slot = (t & (slots - 1)) as usize;
            let mut idx = std::mem::replace(&mut self.heads[slot], NIL);
            while idx != NIL {
                let next = self.links[idx as usize].next;
                self.links[idx as usize] = Link {
                    prev: NIL,
                    next: NIL,
                    slot: NIL,
                };
                match due(idx, expire_before) {
                    Due::Expire => {}
                    Due::Later(deadline) if deadline < expire_before => {
                        // Overdue but the owner keeps it: look again next tick.
                        self.schedule(idx, expire_before);
                    }
                    Due::Later(deadline) => self.schedule(idx, deadline),
                }
                idx = next;
            }
        }
    }

    /// The entry that is due soonest (the head of the first non-empty slot from now on),
    /// for eviction under pressure. Visits at most one revolution of slots.
    pub fn soonest(&self) -> Option<u32> {
        let slots = self.heads.len() as u64;
        (0..slots)
            .map(|i| self.heads[((self.current_tick + i) & (slots - 1)) as usize])
            .find(|&h| h != NIL)
    }

    /// Is entry `idx` linked?
    /// Bytes this wheel holds (slot heads and per-entry links).
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.heads) + std::mem::size_of_val(&*self.links)
    }

    pub fn is_scheduled(&self, idx: u32) -> bool {
        self.links.get(idx as usize).is_some_and(|l| l.slot != NIL)
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
