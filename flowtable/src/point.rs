//! Tracking points and the preallocated arena that holds each flow's trail.
//!
//! A point is 16 bytes: time offset from the flow start, kind, direction, severity and one
//! argument. Each flow owns one fixed slot of the arena. When a trail outgrows its slot the
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
}

impl PointKind {
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

/// The tracking-point arena: `slots` slots of `per_slot` points, allocated once.
pub struct Arena {
    /// Reserved for every slot at start; initialised up to the highest slot written so far
    /// (slots are handed out in order), so unused capacity is never touched.
    points: Vec<Point>,
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
        self.slots * self.per_slot * std::mem::size_of::<Point>()
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
            self.points.resize(base + self.per_slot, Point::EMPTY);
        }
        if let Some(p) = self.points.get_mut(base + idx) {
            *p = point;
        }
        trail.written = trail.written.saturating_add(1);
    }

    /// The points of `slot`'s trail in time order, as (head, tail-older, tail-newer) slices,
    /// and the number dropped between head and tail.
    pub fn trail(&self, slot: u32, trail: Trail) -> ([&[Point]; 3], u32) {
        let base = slot as usize * self.per_slot;
        let all = self.points.get(base..base + self.per_slot).unwrap_or(&[]);
        let n = trail.written as usize;
        if n <= self.per_slot {
            return ([all.get(..n).unwrap_or(&[]), &[], &[]], 0);
        }
        let head = self.head_len();
        let ring_len = self.per_slot - head;
        let start = (n - head) % ring_len;
        let ring = &all[head..];
        let dropped = (n - self.per_slot) as u32;
        ([&all[..head], &ring[start..], &ring[..start]], dropped)
    }

    /// Copies `slot`'s trail into `out` in time order; returns the number of points dropped.
    pub fn copy_trail(&self, slot: u32, trail: Trail, out: &mut Vec<Point>) -> u32 {
        let (parts, dropped) = self.trail(slot, trail);
        out.clear();
        for p in parts {
            out.extend_from_slice(p);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t: u64) -> Point {
        Point {
            t_ns: t,
            ..Point::EMPTY
        }
    }

    #[test]
    fn point_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Point>(), 16);
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
        assert_eq!(out.len(), 5);
    }
}
