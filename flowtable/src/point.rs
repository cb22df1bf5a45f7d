//! Tracking points and the preallocated arena that holds each flow's trail.
//!
//! A point is 16 bytes in a record: time offset from the flow start, kind, direction,
//! severity and one argument; the arena packs it into 12. Each flow owns one fixed slot of the arena. When a trail outgrows its slot the
//! first half of the slot keeps the start of the story and the second half becomes a ring of
//! the most recent points; the number of points dropped in between is counted.

use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};

/// What happened at a tracking point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum PointKind {
    Syn,
    SynAck,
    HandshakeDone,
    FirstData,
    Fin,
    Rst,
    Retransmission,
    OutOfOrder,
    DupAck,
    ZeroWindow,
    WindowShrink,
    KeepAlive,
    /// TLS ClientHello; arg = hash of the SNI (0 when absent).
    TlsClientHello,
    /// TLS ServerHello; arg = negotiated version.
    TlsServerHello,
    /// TLS alert; arg = level << 8 | description.
    TlsAlert,
    /// ICMP error quoting this flow; arg = type << 8 | code.
    IcmpError,
    /// IP fragment seen in this flow; arg = fragment offset.
    Fragment,
    /// TTL / hop limit changed; arg = new TTL.
    TtlChange,
    /// The measurement of the point just before this one (syn-ack, handshake-done or
    /// first-data) exceeded a latency threshold; arg = the threshold in microseconds.
    Threshold,
    /// The trail outgrew its arena slot.
    Truncated,
    Timeout,
    Eviction,
    /// A segment with an illegal flag combination; arg = the flags.
    BadFlags,
    /// Payload after this direction's FIN.
    DataAfterFin,
    /// SYN sent again; arg = SYN count so far.
    SynRetransmission,
    /// VLAN tag changed mid-flow; arg = new outer VLAN.
    VlanChange,
    /// First packet of a flow picked up mid-stream (no SYN seen).
    Midstream,
    /// Echo request/reply or first datagram of a UDP/ICMP flow.
    Start,
    /// A retransmission soon after the receiver's duplicate ACKs; arg = sequence number.
    FastRetransmission,
    /// Data the receiver had already acknowledged, sent again; arg = sequence number.
    SpuriousRetransmission,
    /// One byte sent into a zero window to see whether it opened; arg = sequence number.
    ZeroWindowProbe,
    /// Data up to the right edge of the receiver's window; arg = its length.
    WindowFull,
    /// A segment that starts beyond the next expected byte: the one before it was not
    /// captured; arg = sequence number.
    LostSegment,
    /// The end of a silence longer than the stall threshold while neither side had sent a
    /// FIN or RST; arg = its length in microseconds.
    Stall,
}

impl PointKind {
    /// Every kind, in the order of their numbers.
    pub const ALL: [PointKind; 34] = [
        PointKind::Syn,
        PointKind::SynAck,
        PointKind::HandshakeDone,
        PointKind::FirstData,
        PointKind::Fin,
        PointKind::Rst,
        PointKind::Retransmission,
        PointKind::OutOfOrder,
        PointKind::DupAck,
        PointKind::ZeroWindow,
        PointKind::WindowShrink,
        PointKind::KeepAlive,
        PointKind::TlsClientHello,
        PointKind::TlsServerHello,
        PointKind::TlsAlert,
        PointKind::IcmpError,
        PointKind::Fragment,
        PointKind::TtlChange,
        PointKind::Threshold,
        PointKind::Truncated,
        PointKind::Timeout,
        PointKind::Eviction,
        PointKind::BadFlags,
        PointKind::DataAfterFin,
        PointKind::SynRetransmission,
        PointKind::VlanChange,
        PointKind::Midstream,
        PointKind::Start,
        PointKind::FastRetransmission,
        PointKind::SpuriousRetransmission,
        PointKind::ZeroWindowProbe,
        PointKind::WindowFull,
        PointKind::LostSegment,
        PointKind::Stall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Syn => "syn",
            PointKind::SynAck => "syn-ack",
            PointKind::HandshakeDone => "handshake-done",
            PointKind::FirstData => "first-data",
            PointKind::Fin => "fin",
            PointKind::Rst => "rst",
            PointKind::Retransmission => "retransmission",
            PointKind::OutOfOrder => "out-of-order",
            PointKind::DupAck => "dup-ack",
            PointKind::ZeroWindow => "zero-window",
            PointKind::WindowShrink => "window-shrink",
            PointKind::KeepAlive => "keep-alive",
            PointKind::TlsClientHello => "tls-client-hello",
            PointKind::TlsServerHello => "tls-server-hello",
            PointKind::TlsAlert => "tls-alert",
            PointKind::IcmpError => "icmp-error",
            PointKind::Fragment => "fragment",
            PointKind::TtlChange => "ttl-change",
            PointKind::Threshold => "threshold",
            PointKind::Truncated => "truncated",
            PointKind::Timeout => "timeout",
            PointKind::Eviction => "eviction",
            PointKind::BadFlags => "bad-flags",
            PointKind::DataAfterFin => "data-after-fin",
            PointKind::SynRetransmission => "syn-retransmission",
            PointKind::VlanChange => "vlan-change",
            PointKind::Midstream => "midstream",
            PointKind::Start => "start",
            PointKind::FastRetransmission => "fast-retransmission",
            PointKind::SpuriousRetransmission => "spurious-retransmission",
            PointKind::ZeroWindowProbe => "zero-window-probe",
            PointKind::WindowFull => "window-full",
            PointKind::LostSegment => "lost-segment",
            PointKind::Stall => "stall",
        }
    }
}

/// Which way the packet behind a point travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum Dir {
    C2s,
    S2c,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::C2s => "c2s",
            Dir::S2c => "s2c",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Dir::C2s => 0,
            Dir::S2c => 1,
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize_repr, Deserialize_repr,
)]
#[repr(u8)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// One tracking point: 16 bytes in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// Nanoseconds since the flow's first packet.
    pub t_ns: u64,
    pub kind: PointKind,
    pub dir: Dir,
    pub severity: Severity,
    pub arg: u32,
}

impl Point {
    pub const EMPTY: Point = Point {
        t_ns: 0,
        kind: PointKind::Start,
        dir: Dir::C2s,
        severity: Severity::Info,
        arg: 0,
    };
}

/// Per-flow bookkeeping of its arena slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trail {
    /// Points written so far (including dropped ones).
    pub written: u32,
}

/// A point as the arena keeps it: 12 bytes, the time offset in 48 bits (78 hours; a point
/// later than that in a longer connection says 78 hours), direction and severity in one byte.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Stored {
    t_lo: u32,
    t_hi: u16,
    kind: PointKind,
    /// Bit 0: direction; bits 1-2: severity.
    dir_severity: u8,
    arg: u32,
}

impl Stored {
    const EMPTY: Stored = Stored::pack(Point::EMPTY);
    const T_MAX: u64 = (1 << 48) - 1;

    #[inline]
    const fn pack(p: Point) -> Stored {
        let t = if p.t_ns > Self::T_MAX {
            Self::T_MAX
        } else {
            p.t_ns
        };
        Stored {
            t_lo: t as u32,
            t_hi: (t >> 32) as u16,
            kind: p.kind,
            dir_severity: p.dir as u8 | (p.severity as u8) << 1,
            arg: p.arg,
        }
    }

    #[inline]
    fn unpack(self) -> Point {
        Point {
            t_ns: u64::from(self.t_hi) << 32 | u64::from(self.t_lo),
            kind: self.kind,
            dir: if self.dir_severity & 1 == 0 {
                Dir::C2s
            } else {
                Dir::S2c
            },
            severity: match self.dir_severity >> 1 {
                0 => Severity::Info,
                1 => Severity::Warn,
                _ => Severity::Error,
            },
            arg: self.arg,
        }
    }
}

/// The tracking-point arena: `slots` slots of `per_slot` points, allocated once.
pub struct Arena {
    /// Reserved for every slot at start; initialised up to the highest slot written so far
    /// (slots are handed out in order), so unused capacity is never touched.
    points: Vec<Stored>,
    slots: usize,
    per_slot: usize,
}

impl Arena {
    /// Allocates `slots * per_slot` points up front. `per_slot` is at least 2.
    pub fn new(slots: usize, per_slot: usize) -> Arena {
        let per_slot = per_slot.max(2);
        Arena {
            points: Vec::with_capacity(slots * per_slot),
            slots,
            per_slot,
        }
    }

    pub fn per_slot(&self) -> usize {
        self.per_slot
    }

    /// Bytes of memory this arena holds.
    pub fn bytes(&self) -> usize {
        self.slots * self.per_slot * std::mem::size_of::<Stored>()
    }

    fn head_len(&self) -> usize {
        self.per_slot / 2
    }

    /// Appends a point to `slot`'s trail; once the slot is full the oldest point of the tail
    /// ring is overwritten.
    pub fn push(&mut self, slot: u32, trail: &mut Trail, point: Point) {
        let base = slot as usize * self.per_slot;
        let n = trail.written as usize;
        let idx = if n < self.per_slot {
            n
        } else {
            let head = self.head_len();
            head + (n - head) % (self.per_slot - head)
        };
        if base + self.per_slot > self.points.len() && (slot as usize) < self.slots {
            // First point of a slot past the initialised ones: within the reservation, so
            // this never allocates.
            self.points.resize(base + self.per_slot, Stored::EMPTY);
        }
        if let Some(p) = self.points.get_mut(base + idx) {
            *p = Stored::pack(point);
        }
        trail.written = trail.written.saturating_add(1);
    }

    /// Points of `trail` that no longer fit its slot (dropped from the middle), as
    /// [`Arena::copy_trail`] reports them, without copying anything.
    pub fn dropped(&self, trail: Trail) -> u32 {
        (trail.written as usize).saturating_sub(self.per_slot) as u32
    }

    /// `slot`'s trail as a record carries it: [`Arena::copy_trail`], with a `Truncated` point
    /// (its argument: how many) where points were dropped, after the kept head.
    pub fn copy_record_trail(&self, slot: u32, trail: Trail, out: &mut Vec<Point>) {
        let dropped = self.copy_trail(slot, trail, out);
        let at = self.per_slot / 2;
        if dropped > 0 && at <= out.len() && out.len() < out.capacity() {
            let t_ns = out.get(at).map_or(0, |p| p.t_ns);
            out.insert(
                at,
                Point {
                    t_ns,
                    kind: PointKind::Truncated,
                    dir: Dir::C2s,
                    severity: Severity::Warn,
                    arg: dropped,
                },
            );
        }
    }

    /// Copies `slot`'s trail into `out` in time order (the kept head, then the ring of the
    /// most recent points from its oldest); returns the number of points dropped between.
    pub fn copy_trail(&self, slot: u32, trail: Trail, out: &mut Vec<Point>) -> u32 {
        out.clear();
        let base = slot as usize * self.per_slot;
        let all = self.points.get(base..base + self.per_slot).unwrap_or(&[]);
        let n = trail.written as usize;
        let unpack = |s: &[Stored], out: &mut Vec<Point>| out.extend(s.iter().map(|p| p.unpack()));
        if n <= self.per_slot {
            unpack(all.get(..n).unwrap_or(&[]), out);
            return 0;
        }
        let head = self.head_len();
        let ring_len = self.per_slot - head;
        let start = (n - head) % ring_len;
        let (kept, ring) = all.split_at(head.min(all.len()));
        unpack(kept, out);
        unpack(ring.get(start..).unwrap_or(&[]), out);
        unpack(ring.get(..start).unwrap_or(&[]), out);
        (n - self.per_slot) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_once_in_number_order() {
        for (n, kind) in PointKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, n, "{kind:?}");
        }
        // The number after the last is no kind: a new one must join `ALL`.
        let next = rmp_serde::to_vec(&(PointKind::ALL.len() as u8)).unwrap();
        assert!(rmp_serde::from_slice::<PointKind>(&next).is_err());
    }

    fn pt(t: u64) -> Point {
        Point {
            t_ns: t,
            ..Point::EMPTY
        }
    }

    #[test]
    fn points_are_16_bytes_and_12_in_the_arena() {
        assert_eq!(std::mem::size_of::<Point>(), 16);
        assert_eq!(std::mem::size_of::<Stored>(), 12);
    }

    #[test]
    fn stored_points_keep_every_field() {
        for (t, dir, severity) in [
            (0, Dir::C2s, Severity::Info),
            (u64::from(u32::MAX) + 7, Dir::S2c, Severity::Warn),
            (Stored::T_MAX, Dir::S2c, Severity::Error),
        ] {
            let p = Point {
                t_ns: t,
                kind: PointKind::TlsAlert,
                dir,
                severity,
                arg: 0xdead_beef,
            };
            assert_eq!(Stored::pack(p).unpack(), p);
        }
        let late = Point {
            t_ns: Stored::T_MAX + 1,
            ..Point::EMPTY
        };
        assert_eq!(Stored::pack(late).unpack().t_ns, Stored::T_MAX);
    }

    #[test]
    fn trail_keeps_start_and_end_when_full() {
        let mut arena = Arena::new(3, 8);
        let mut trail = Trail::default();
        for t in 0..20 {
            arena.push(1, &mut trail, pt(t));
        }
        let mut out = Vec::new();
        let dropped = arena.copy_trail(1, trail, &mut out);
        let times: Vec<u64> = out.iter().map(|p| p.t_ns).collect();
        assert_eq!(times, vec![0, 1, 2, 3, 16, 17, 18, 19]);
        assert_eq!(dropped, 12);
        assert_eq!(arena.dropped(trail), dropped);
        // As a record carries it: a truncation point after the kept head.
        let mut rec = Vec::with_capacity(9);
        arena.copy_record_trail(1, trail, &mut rec);
        let kinds: Vec<(u64, PointKind)> = rec.iter().map(|p| (p.t_ns, p.kind)).collect();
        assert_eq!(kinds.len(), 9);
        assert_eq!(kinds[4], (16, PointKind::Truncated));
        assert_eq!(rec[4].arg, 12);
        assert_eq!(rec[5].t_ns, 16);
        // Neighbouring slots are untouched.
        let mut other = Vec::new();
        assert_eq!(arena.copy_trail(0, Trail::default(), &mut other), 0);
        assert!(other.is_empty());
    }

    #[test]
    fn short_trail_is_returned_whole() {
        let mut arena = Arena::new(1, 8);
        let mut trail = Trail::default();
        for t in 0..5 {
            arena.push(0, &mut trail, pt(t));
        }
        let mut out = Vec::new();
        assert_eq!(arena.copy_trail(0, trail, &mut out), 0);
        assert_eq!(arena.dropped(trail), 0);
        assert_eq!(out.len(), 5);
    }
}
