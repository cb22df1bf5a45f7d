//! The TCP state machine: per-endpoint states (as Zeek keeps them), sequence analysis that
//! classifies every segment the way Wireshark's TCP analysis does, and the Zeek
//! `conn_state` derived from the two endpoint states.
//!
//! Directions are indexed 0 and 1 by the flow table (the canonical key's `lo -> hi` and
//! `hi -> lo`); which one is the client is decided elsewhere and only matters for
//! [`conn_state`].
//!
//! # The analysis, rule by rule
//!
//! Each endpoint keeps what Wireshark keeps per direction to classify a segment: the next
//! expected sequence number and when it last moved, the end of the data seen without a
//! hole, the last ACK number and window it sent and when, how many duplicate ACKs it has
//! sent for that ACK number, its window scale, and whether its last segment was a keep-alive
//! or a zero-window probe. The connection keeps the initial RTT. That is all the rules below
//! need: no list of segments, 48 bytes per endpoint, nothing allocated.
//!
//! In the order they are applied, for a segment of `len` payload bytes sent by one endpoint
//! (SYN and FIN each take one sequence number; "the peer" is the other endpoint):
//!
//! - **zero-window probe**: 1 byte at the next expected sequence number while the peer's
//!   window is 0. It does not move the next expected number, and none of the rules up to
//!   duplicate ACK apply to it.
//! - **zero window**: the segment advertises window 0 and has no SYN, FIN or RST.
//! - **lost segment** ("previous segment not captured"): it starts beyond the next
//!   expected number (not for RST).
//! - **keep-alive**: 0 or 1 byte starting one below the next expected number, no SYN, FIN
//!   or RST. A keep-alive is never a retransmission.
//! - **window full**: the data reaches exactly the right edge of the peer's window (its last
//!   ACK plus its window, scaled when both SYNs negotiated scaling).
//! - **keep-alive ACK** and **zero-window-probe ACK**: a repeat of this endpoint's last ACK,
//!   window and sequence number right after the peer's keep-alive (probe). Not duplicate
//!   ACKs.
//! - **duplicate ACK**: no payload, no SYN, FIN or RST, a non-zero window, and the same
//!   sequence number, ACK number and window as this endpoint's previous segment. A new ACK
//!   number starts the count again.
//! - **ACKed unseen segment**: it acknowledges data of the peer beyond what was seen without
//!   a hole; the peer's duplicate-ACK count is cancelled.
//! - Then, for a segment with payload, SYN or FIN that is not a keep-alive, the first of:
//!   - **spurious retransmission**: all its data is at or below the peer's last ACK;
//!   - **fast retransmission**: it starts below the next expected number, the peer sent at
//!     least two duplicate ACKs for exactly its sequence number, the last of them less than
//!     20 ms ago;
//!   - **out-of-order**: it starts below the next expected number, less than the initial
//!     RTT (3 ms while the RTT is not known) after the next expected number last moved, and
//!     does not end exactly there;
//!   - **retransmission**: any other segment starting below the next expected number.
//!
//!   A segment of more than one byte starting one below the next expected number follows a
//!   zero-window probe and is new data. All three kinds of retransmission count in the
//!   record's `retrans`.
//! - A SYN sent again with the same initial sequence number (a new attempt after a reset,
//!   say) first takes the next expected number back to the end of the data seen without a
//!   hole.
//! - The initial RTT is the time from the latest SYN (without ACK) to the first segment
//!   with ACK and without SYN, measured after that segment is classified.
//!
//! As in Wireshark, a sequence or ACK number of 0 reads as "none seen yet". One rule is left
//! out: Wireshark stops counting SYN and FIN in the next expected number once 1000 segments
//! are unacknowledged (it lists them); we always count them.

use crate::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};
use crate::record::ConnState;

/// The state of one endpoint, with Zeek's meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndpointState {
    #[default]
    Inactive,
    SynSent,
    SynAckSent,
    /// Seen mid-stream, without a SYN.
    Partial,
    Established,
    Closed,
    Reset,
}

const BASE_SET: u8 = 1;
const FIN_SEEN: u8 = 1 << 1;
/// A window was seen (before that, no window value equals it).
const WINDOW_SET: u8 = 1 << 2;
/// The window came with a SYN, which is never scaled.
const SYN_WINDOW: u8 = 1 << 3;
const LAST_KEEP_ALIVE: u8 = 1 << 4;
const LAST_ZERO_WINDOW_PROBE: u8 = 1 << 5;

/// No SYN of this endpoint seen: its window scale is not known.
const SCALE_UNKNOWN: i8 = -1;
/// Window scaling was not negotiated.
const SCALE_NONE: i8 = -2;

/// Fast retransmissions follow the duplicate ACKs within this time.
const FAST_RETRANSMISSION_NS: u64 = 20_000_000;
/// The out-of-order threshold while the initial RTT is not known.
pub const DEFAULT_OOO_NS: u64 = 3_000_000;

/// What one endpoint has sent so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpDir {
    pub state: EndpointState,
    bits: u8,
    /// Number of SYNs (or SYN-ACKs) this endpoint sent.
    pub syns: u8,
    scale: i8,
    window: u16,
    /// Duplicate ACKs sent for the current ACK number; -1 once the peer's unseen data was
    /// acknowledged.
    dup_acks: i16,
    /// First sequence number seen (the ISN for a SYN).
    base_seq: u32,
    /// Highest sequence number + segment length seen (SYN and FIN count one); 0 for none.
    next_seq: u32,
    /// The end of the data seen without a hole; 0 for none.
    max_to_ack: u32,
    last_ack: u32,
    /// When `next_seq` last moved forward.
    next_seq_at: Clock,
    /// This endpoint's latest segment.
    last_seg_at: Clock,
}

impl Default for TcpDir {
    fn default() -> TcpDir {
        TcpDir {
            state: EndpointState::Inactive,
            bits: 0,
            syns: 0,
            scale: SCALE_UNKNOWN,
            window: 0,
            dup_acks: 0,
            base_seq: 0,
            next_seq: 0,
            max_to_ack: 0,
            last_ack: 0,
            next_seq_at: Clock::ZERO,
            last_seg_at: Clock::ZERO,
        }
    }
}

impl TcpDir {
    pub fn base_seq(&self) -> Option<u32> {
        (self.bits & BASE_SET != 0).then_some(self.base_seq)
    }

    pub fn fin_seen(&self) -> bool {
        self.bits & FIN_SEEN != 0
    }

    /// Duplicate ACKs this endpoint sent for its current ACK number.
    pub fn dup_acks(&self) -> u16 {
        self.dup_acks.max(0) as u16
    }

    fn window_is(&self, window: u16) -> bool {
        self.bits & WINDOW_SET != 0 && self.window == window
    }

    /// The right edge of this endpoint's receive window, if its scale is known.
    fn window_edge(&self) -> Option<u32> {
        if self.scale == SCALE_UNKNOWN || self.bits & WINDOW_SET == 0 {
            return None;
        }
        let shift = if self.scale == SCALE_NONE || self.bits & SYN_WINDOW != 0 {
            0
        } else {
            self.scale as u32
        };
        Some(self.last_ack.wrapping_add(u32::from(self.window) << shift))
    }
}

/// A packet time in 48 bits of nanoseconds, which wrap every 78 hours: the time between two
/// of them is exact up to that. The rules only ask whether such a time is under a threshold
/// of milliseconds, so 6 bytes do what 8 would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Clock([u16; 3]);

impl Clock {
    const ZERO: Clock = Clock([0; 3]);

    #[inline]
    fn of(ns: u64) -> Clock {
        Clock([ns as u16, (ns >> 16) as u16, (ns >> 32) as u16])
    }

    #[inline]
    fn ns(self) -> u64 {
        let [a, b, c] = self.0;
        u64::from(c) << 32 | u64::from(b) << 16 | u64::from(a)
    }

    /// The time from this one to `now_ns`, modulo 78 hours.
    #[inline]
    fn until(self, now_ns: u64) -> u64 {
        now_ns.wrapping_sub(self.ns()) & ((1 << 48) - 1)
    }
}

/// No SYN seen yet.
const RTT_UNKNOWN: u8 = 0;
/// `Tcp::rtt` holds the latest SYN's time.
const RTT_SYN_AT: u8 = 1;
/// `Tcp::rtt` holds the initial RTT (never 0).
const RTT_KNOWN: u8 = 2;

/// A connection's TCP state: both endpoints and the initial RTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub dirs: [TcpDir; 2],
    rtt: Clock,
    rtt_state: u8,
}

impl Default for Tcp {
    fn default() -> Tcp {
        Tcp {
            dirs: [TcpDir::default(); 2],
            rtt: Clock::ZERO,
            rtt_state: RTT_UNKNOWN,
        }
    }
}

impl Tcp {
    /// The out-of-order threshold: the initial RTT, or [`DEFAULT_OOO_NS`] before it is
    /// known.
    pub fn ooo_threshold_ns(&self) -> u64 {
        if self.rtt_state == RTT_KNOWN {
            self.rtt.ns()
        } else {
            DEFAULT_OOO_NS
        }
    }

    /// After a segment: a SYN restarts the clock, the first ACK without SYN stops it.
    #[inline]
    fn time_rtt(&mut self, flags: u8, ts_ns: u64) {
        if self.rtt_state == RTT_KNOWN {
            return;
        }
        if flags & (SYN | ACK) == SYN {
            self.rtt = Clock::of(ts_ns);
            self.rtt_state = RTT_SYN_AT;
        } else if flags & (SYN | ACK) == ACK && self.rtt_state == RTT_SYN_AT {
            // As Wireshark: a time that runs backwards gives a huge threshold.
            let rtt = self.rtt.until(ts_ns);
            if rtt != 0 {
                self.rtt = Clock::of(rtt);
                self.rtt_state = RTT_KNOWN;
            }
        }
    }
}

/// A TCP segment as the analysis needs it.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// The window-scale option of a SYN or SYN-ACK, if it had one.
    pub wscale: Option<u8>,
    pub payload_len: u32,
}

/// What the analysis found in one segment: a set of the constants below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Findings(pub u16);

impl Findings {
    pub const RETRANSMISSION: u16 = 1;
    pub const FAST_RETRANSMISSION: u16 = 1 << 1;
    pub const SPURIOUS_RETRANSMISSION: u16 = 1 << 2;
    pub const OUT_OF_ORDER: u16 = 1 << 3;
    pub const DUP_ACK: u16 = 1 << 4;
    pub const ZERO_WINDOW: u16 = 1 << 5;
    pub const ZERO_WINDOW_PROBE: u16 = 1 << 6;
    pub const ZERO_WINDOW_PROBE_ACK: u16 = 1 << 7;
    pub const WINDOW_FULL: u16 = 1 << 8;
    pub const KEEP_ALIVE: u16 = 1 << 9;
    pub const KEEP_ALIVE_ACK: u16 = 1 << 10;
    pub const LOST_SEGMENT: u16 = 1 << 11;
    pub const ACKED_UNSEEN: u16 = 1 << 12;
    /// An illegal flag combination (see [`illegal_flags`]).
    pub const BAD_FLAGS: u16 = 1 << 13;
    /// Payload beyond this endpoint's FIN.
    pub const DATA_AFTER_FIN: u16 = 1 << 14;
    /// Every kind of retransmission.
    pub const ANY_RETRANSMISSION: u16 =
        Self::RETRANSMISSION | Self::FAST_RETRANSMISSION | Self::SPURIOUS_RETRANSMISSION;

    pub fn has(self, bits: u16) -> bool {
        self.0 & bits != 0
    }

    fn set(&mut self, bits: u16) {
        self.0 |= bits;
    }
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_gt(a: u32, b: u32) -> bool {
    seq_lt(b, a)
}

/// Is this flag combination illegal (SYN+FIN, SYN+RST, no flags, FIN/PSH/URG without ACK)?
pub fn illegal_flags(flags: u8) -> bool {
    let f = flags & (FIN | SYN | RST | PSH | ACK | URG);
    f == 0
        || f & (SYN | FIN) == SYN | FIN
        || f & (SYN | RST) == SYN | RST
        || (f & ACK == 0 && f & (FIN | PSH | URG) != 0 && f & RST == 0)
}

/// What every segment leaves behind in its sender's state, once classified: the next
/// expected number (not moved by a zero-window probe), the data seen without a hole, its
/// ACK, window and time.
#[inline]
fn remember(me: &mut TcpDir, seg: &Segment, next: u32, found: Findings, ts_ns: u64) {
    let probe = found.has(Findings::ZERO_WINDOW_PROBE);
    if (me.next_seq == 0 || seq_gt(next, me.next_seq)) && !probe {
        me.next_seq = next;
        me.next_seq_at = Clock::of(ts_ns);
    }
    if (seg.seq == me.max_to_ack || me.max_to_ack == 0) && !probe {
        me.max_to_ack = me.next_seq;
    }
    me.window = seg.window;
    me.last_ack = seg.ack;
    me.last_seg_at = Clock::of(ts_ns);
    let mut bits =
        (me.bits | WINDOW_SET) & !(SYN_WINDOW | LAST_KEEP_ALIVE | LAST_ZERO_WINDOW_PROBE);
    if seg.flags & SYN != 0 {
        bits |= SYN_WINDOW;
    }
    if found.has(Findings::KEEP_ALIVE) {
        bits |= LAST_KEEP_ALIVE;
    }
    if probe {
        bits |= LAST_ZERO_WINDOW_PROBE;
    }
    me.bits = bits;
}

/// The segment most packets of a connection are: ACK (maybe PSH), no SYN, FIN, RST or URG,
/// exactly at the next expected sequence number of an established (or mid-stream) endpoint
/// that has not sent its FIN, an open window, either payload or a new ACK (so not a
/// duplicate ACK), and nothing that [`analyse`] would flag. Applies it and returns true when
/// it is one, with the same effect as [`analyse`] (which finds nothing in it); otherwise
/// changes nothing and returns false, and the segment goes through [`analyse`].
#[inline]
pub fn steady(tcp: &mut Tcp, d: usize, seg: &Segment, ts_ns: u64) -> bool {
    let (me, peer) = pair(&mut tcp.dirs, d);
    let plain = seg.flags & (SYN | FIN | RST | URG | ACK) == ACK;
    let known = me.bits & (BASE_SET | FIN_SEEN) == BASE_SET
        && matches!(
            me.state,
            EndpointState::Established | EndpointState::Partial
        );
    let len = seg.payload_len;
    let end = seg.seq.wrapping_add(len);
    let news = len > 0 || seg.ack != me.last_ack;
    let probe = len == 1 && peer.window_is(0);
    let spurious = len > 0 && peer.last_ack != 0 && !seq_gt(end, peer.last_ack);
    let full = len > 0 && peer.window_edge() == Some(end);
    let unseen = peer.max_to_ack != 0 && seq_gt(seg.ack, peer.max_to_ack);
    if !(plain && known && news && seg.window != 0 && me.next_seq != 0 && seg.seq == me.next_seq)
        || probe
        || spurious
        || full
        || unseen
    {
        return false;
    }
    if seg.ack != me.last_ack {
        me.dup_acks = 0;
    }
    remember(me, seg, end, Findings::default(), ts_ns);
    tcp.time_rtt(seg.flags, ts_ns);
    true
}

/// The sending endpoint and its peer.
#[inline]
fn pair(dirs: &mut [TcpDir; 2], d: usize) -> (&mut TcpDir, &mut TcpDir) {
    let [a, b] = dirs;
    if d & 1 == 0 {
        (a, b)
    } else {
        (b, a)
    }
}

/// Sequence analysis of one segment sent by `tcp.dirs[d]` (the rules of the module
/// documentation), updating both endpoints' states.
pub fn analyse(tcp: &mut Tcp, d: usize, seg: &Segment, ts_ns: u64) -> Findings {
    let ooo_ns = tcp.ooo_threshold_ns();
    let (me, peer) = pair(&mut tcp.dirs, d);
    let mut out = Findings::default();
    let fl = seg.flags;
    let (syn, fin, rst, ack) = (fl & SYN != 0, fl & FIN != 0, fl & RST != 0, fl & ACK != 0);
    let control = syn || fin || rst;
    let (seq, len) = (seg.seq, seg.payload_len);
    if illegal_flags(fl) {
        out.set(Findings::BAD_FLAGS);
    }
    if me.bits & BASE_SET == 0 {
        me.base_seq = seq;
        me.bits |= BASE_SET;
    } else if fl & (SYN | ACK) == SYN && seq == me.base_seq {
        // The same SYN again, as after a reset: expected next is the end of what was seen
        // without a hole, whatever the reset's sequence number moved it to.
        me.next_seq = me.max_to_ack;
    }
    if syn {
        negotiate_scale(me, peer, ack, seg.wscale);
    }

    let repeat = len == 0
        && !control
        && seq == me.next_seq
        && seg.ack == me.last_ack
        && me.window_is(seg.window);
    if len == 1 && seq == me.next_seq && peer.window_is(0) {
        out.set(Findings::ZERO_WINDOW_PROBE);
    } else {
        if seg.window == 0 && !control {
            out.set(Findings::ZERO_WINDOW);
        }
        if me.next_seq != 0 && seq_gt(seq, me.next_seq) && !rst {
            out.set(Findings::LOST_SEGMENT);
        }
        if len <= 1 && seq == me.next_seq.wrapping_sub(1) && !control {
            out.set(Findings::KEEP_ALIVE);
        }
        if len > 0 && !control && peer.window_edge() == Some(seq.wrapping_add(len)) {
            out.set(Findings::WINDOW_FULL);
        }
        if repeat && seg.window != 0 && peer.bits & LAST_KEEP_ALIVE != 0 {
            out.set(Findings::KEEP_ALIVE_ACK);
        } else if repeat && seg.window == 0 && peer.bits & LAST_ZERO_WINDOW_PROBE != 0 {
            out.set(Findings::ZERO_WINDOW_PROBE_ACK);
        } else if repeat && seg.window != 0 {
            me.dup_acks = if me.dup_acks < 0 {
                1
            } else {
                me.dup_acks.saturating_add(1)
            };
            out.set(Findings::DUP_ACK);
        }
    }
    if seg.ack != me.last_ack {
        me.dup_acks = 0;
    }
    if ack && peer.max_to_ack != 0 && seq_gt(seg.ack, peer.max_to_ack) {
        // Plain comparison, as Wireshark makes it.
        if peer.max_to_ack > peer.next_seq {
            peer.max_to_ack = peer.next_seq;
            out.set(Findings::ACKED_UNSEEN);
        } else {
            if peer.dup_acks == 0 {
                out.set(Findings::ACKED_UNSEEN);
            }
            peer.dup_acks = -1;
        }
    }

    let seq_space = len + u32::from(syn || fin);
    if (len > 0 || syn || fin) && !out.has(Findings::KEEP_ALIVE) {
        let end = seq.wrapping_add(len);
        let below = me.next_seq != 0
            && seq_lt(seq, me.next_seq)
            && !(len > 1 && me.next_seq.wrapping_sub(1) == seq);
        if len > 0 && peer.last_ack != 0 && !seq_gt(end, peer.last_ack) {
            out.set(Findings::SPURIOUS_RETRANSMISSION);
        } else if below
            && peer.dup_acks >= 2
            && peer.last_ack == seq
            && peer.last_seg_at.until(ts_ns) < FAST_RETRANSMISSION_NS
        {
            out.set(Findings::FAST_RETRANSMISSION);
        } else if below
            && me.next_seq_at.until(ts_ns) < ooo_ns
            && me.next_seq != seq.wrapping_add(seq_space)
        {
            out.set(Findings::OUT_OF_ORDER);
        } else if below {
            out.set(Findings::RETRANSMISSION);
        }
    }

    // After its FIN, new data beyond all this endpoint sent.
    if me.fin_seen() && len > 0 && me.next_seq != 0 && !seq_lt(seq, me.next_seq) {
        out.set(Findings::DATA_AFTER_FIN);
    }
    remember(me, seg, seq.wrapping_add(seq_space), out, ts_ns);
    if fin {
        me.bits |= FIN_SEEN;
    }
    if syn {
        me.syns = me.syns.saturating_add(1);
    }
    move_states(&mut tcp.dirs, d, fl);
    tcp.time_rtt(fl, ts_ns);
    out
}

/// Window scaling is in effect only when both SYNs carry the option: a SYN without it turns
/// it off for both endpoints, and so does a SYN-ACK answering a SYN that had none.
fn negotiate_scale(me: &mut TcpDir, peer: &mut TcpDir, ack: bool, wscale: Option<u8>) {
    if let Some(shift) = wscale {
        me.scale = shift.min(14) as i8;
    }
    if me.scale == SCALE_UNKNOWN {
        me.scale = SCALE_NONE;
        peer.scale = SCALE_NONE;
    } else if ack && peer.scale == SCALE_NONE {
        me.scale = SCALE_NONE;
    }
}

/// Endpoint states, as Zeek's TCP analyzer moves them.
fn move_states(dirs: &mut [TcpDir; 2], d: usize, fl: u8) {
    let (syn, fin, rst, ack) = (fl & SYN != 0, fl & FIN != 0, fl & RST != 0, fl & ACK != 0);
    let (me, peer) = pair(dirs, d);
    if rst {
        me.state = EndpointState::Reset;
    } else if fin {
        if me.state != EndpointState::Reset {
            me.state = EndpointState::Closed;
        }
    } else if syn && !ack {
        if me.state == EndpointState::Inactive {
            me.state = EndpointState::SynSent;
        }
    } else if syn {
        if matches!(me.state, EndpointState::Inactive | EndpointState::SynSent) {
            me.state = EndpointState::SynAckSent;
        }
    } else {
        match me.state {
            EndpointState::Inactive => me.state = EndpointState::Partial,
            EndpointState::SynSent | EndpointState::SynAckSent
                if ack
                    && matches!(
                        peer.state,
                        EndpointState::SynSent
                            | EndpointState::SynAckSent
                            | EndpointState::Established
                    ) =>
            {
                me.state = EndpointState::Established;
                if matches!(
                    peer.state,
                    EndpointState::SynSent | EndpointState::SynAckSent
                ) {
                    peer.state = EndpointState::Established;
                }
            }
            _ => {}
        }
    }
}
/// Zeek's `conn_state` from the originator's (client's) and responder's (server's)
/// endpoint states, the payload each sent, and whether the history starts with a client SYN
/// followed by a RST with nothing from the server in between.
pub fn conn_state(
    orig: EndpointState,
    resp: EndpointState,
    orig_payload: u64,
    resp_payload: u64,
    syn_then_rst: bool,
) -> ConnState {
    use EndpointState::*;
    let o_inactive = matches!(orig, Inactive | Partial);
    let r_inactive = matches!(resp, Inactive | Partial);
    if resp == Reset {
        if matches!(orig, SynSent | SynAckSent)
            || (orig == Reset && orig_payload == 0 && resp_payload == 0)
        {
            ConnState::REJ
        } else if o_inactive {
            ConnState::RSTRH
        } else {
            ConnState::RSTR
        }
    } else if orig == Reset {
        if r_inactive {
            if syn_then_rst {
                ConnState::RSTOS0
            } else {
                ConnState::OTH
            }
        } else {
            ConnState::RSTO
        }
    } else if resp == Closed && orig == Closed {
        ConnState::SF
    } else if orig == Closed {
        if r_inactive {
            ConnState::SH
        } else {
            ConnState::S2
        }
    } else if resp == Closed {
        if o_inactive {
            ConnState::SHR
        } else {
            ConnState::S3
        }
    } else if orig == SynSent && resp == Inactive {
        ConnState::S0
    } else if orig == Established && resp == Established {
        ConnState::S1
    } else {
        ConnState::OTH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(seq: u32, ack: u32, flags: u8, payload_len: u32) -> Segment {
        Segment {
            seq,
            ack,
            flags,
            window: 1000,
            wscale: None,
            payload_len,
        }
    }

    const C: usize = 0;
    const S: usize = 1;
    const MS: u64 = 1_000_000;

    fn state_of(t: &Tcp) -> ConnState {
        conn_state(t.dirs[C].state, t.dirs[S].state, 1, 1, false)
    }

    fn handshake(t: &mut Tcp) {
        analyse(t, C, &seg(100, 0, SYN, 0), 0);
        analyse(t, S, &seg(500, 101, SYN | ACK, 0), MS);
        analyse(t, C, &seg(101, 501, ACK, 0), 2 * MS);
    }

    #[test]
    fn normal_close_is_sf() {
        let mut t = Tcp::default();
        handshake(&mut t);
        assert_eq!(state_of(&t), ConnState::S1);
        analyse(&mut t, C, &seg(101, 501, FIN | ACK, 0), 3 * MS);
        assert_eq!(state_of(&t), ConnState::S2);
        analyse(&mut t, S, &seg(501, 102, FIN | ACK, 0), 4 * MS);
        assert_eq!(state_of(&t), ConnState::SF);
    }

    #[test]
    fn every_conn_state_is_reachable() {
        use EndpointState::*;
        let cases = [
            (SynSent, Inactive, ConnState::S0),
            (Established, Established, ConnState::S1),
            (Closed, Closed, ConnState::SF),
            (SynSent, Reset, ConnState::REJ),
            (Closed, Established, ConnState::S2),
            (Established, Closed, ConnState::S3),
            (Reset, Established, ConnState::RSTO),
            (Established, Reset, ConnState::RSTR),
            (Inactive, Reset, ConnState::RSTRH),
            (Closed, Inactive, ConnState::SH),
            (Inactive, Closed, ConnState::SHR),
            (Partial, Partial, ConnState::OTH),
        ];
        for (o, r, want) in cases {
            assert_eq!(conn_state(o, r, 1, 1, false), want, "{o:?} {r:?}");
        }
        assert_eq!(conn_state(Reset, Inactive, 0, 0, true), ConnState::RSTOS0);
    }

    #[test]
    fn packets_drive_states() {
        // Rejected: SYN answered by RST.
        let mut t = Tcp::default();
        analyse(&mut t, C, &seg(1, 0, SYN, 0), 0);
        assert_eq!(state_of(&t), ConnState::S0);
        analyse(&mut t, S, &seg(0, 2, RST | ACK, 0), MS);
        assert_eq!(state_of(&t), ConnState::REJ);
        // Client abort after the handshake.
        let mut t = Tcp::default();
        handshake(&mut t);
        analyse(&mut t, C, &seg(101, 501, RST | ACK, 0), 5 * MS);
        assert_eq!(state_of(&t), ConnState::RSTO);
        // SYN then FIN, never answered.
        let mut t = Tcp::default();
        analyse(&mut t, C, &seg(1, 0, SYN, 0), 0);
        analyse(&mut t, C, &seg(2, 0, FIN | ACK, 0), MS);
        assert_eq!(state_of(&t), ConnState::SH);
        // Mid-stream traffic.
        let mut t = Tcp::default();
        analyse(&mut t, C, &seg(1000, 77, ACK | PSH, 10), 0);
        analyse(&mut t, S, &seg(77, 1010, ACK, 0), MS);
        assert_eq!(state_of(&t), ConnState::OTH);
    }

    #[test]
    fn the_initial_rtt_runs_from_the_latest_syn_to_the_first_ack() {
        let mut t = Tcp::default();
        assert_eq!(t.ooo_threshold_ns(), DEFAULT_OOO_NS);
        analyse(&mut t, C, &seg(100, 0, SYN, 0), 0);
        analyse(&mut t, C, &seg(100, 0, SYN, 0), 1000 * MS);
        analyse(&mut t, S, &seg(500, 101, SYN | ACK, 0), 1001 * MS);
        assert_eq!(
            t.ooo_threshold_ns(),
            DEFAULT_OOO_NS,
            "a SYN-ACK does not stop it"
        );
        analyse(&mut t, C, &seg(101, 501, ACK, 0), 1007 * MS);
        assert_eq!(t.ooo_threshold_ns(), 7 * MS);
        analyse(&mut t, C, &seg(100, 0, SYN, 0), 2000 * MS);
        analyse(&mut t, C, &seg(101, 501, ACK, 0), 2100 * MS);
        assert_eq!(t.ooo_threshold_ns(), 7 * MS, "measured once");
    }

    #[test]
    fn illegal_flag_combinations() {
        assert!(illegal_flags(0));
        assert!(illegal_flags(SYN | FIN));
        assert!(illegal_flags(SYN | RST));
        assert!(illegal_flags(FIN | PSH | URG));
        assert!(!illegal_flags(SYN));
        assert!(!illegal_flags(SYN | ACK));
        assert!(!illegal_flags(FIN | ACK));
        assert!(!illegal_flags(RST));
    }

    #[test]
    fn data_after_fin_is_found() {
        let mut t = Tcp::default();
        handshake(&mut t);
        analyse(&mut t, C, &seg(101, 501, FIN | ACK, 0), 3 * MS);
        let f = analyse(&mut t, C, &seg(102, 501, ACK, 10), 4 * MS);
        assert!(f.has(Findings::DATA_AFTER_FIN));
    }

    #[test]
    fn duplicate_acks_count_per_ack_number() {
        let mut t = Tcp::default();
        handshake(&mut t);
        analyse(&mut t, C, &seg(101, 501, ACK, 100), 3 * MS);
        for n in 1..=3 {
            let f = analyse(&mut t, S, &seg(501, 101, ACK, 0), (3 + n) * MS);
            assert!(f.has(Findings::DUP_ACK));
            assert_eq!(t.dirs[S].dup_acks(), n as u16);
        }
        // Data with the same ACK keeps the count; a new ACK number ends it.
        analyse(&mut t, S, &seg(501, 101, ACK, 10), 7 * MS);
        assert_eq!(t.dirs[S].dup_acks(), 3);
        analyse(&mut t, S, &seg(511, 201, ACK, 0), 8 * MS);
        assert_eq!(t.dirs[S].dup_acks(), 0);
    }

    /// A segment `steady` takes changes the connection exactly as `analyse` does, and
    /// `analyse` finds nothing in it; one it refuses it leaves alone.
    fn steady_agrees(t: &Tcp, d: usize, s: &Segment, ts: u64) -> bool {
        let mut fast = *t;
        let taken = steady(&mut fast, d, s, ts);
        if taken {
            let mut slow = *t;
            let found = analyse(&mut slow, d, s, ts);
            assert_eq!(found, Findings::default(), "{s:?} on {t:?}");
            assert_eq!(fast, slow, "{s:?} on {t:?}");
        } else {
            assert_eq!(&fast, t, "refused {s:?} but changed {t:?}");
        }
        taken
    }

    #[test]
    fn steady_takes_in_order_data_and_new_acks_only() {
        let mut t = Tcp::default();
        handshake(&mut t);
        assert!(steady_agrees(&t, C, &seg(101, 501, ACK | PSH, 100), 3 * MS));
        // An ACK of data not seen is flagged, so it is not steady; of data seen, it is.
        assert!(!steady_agrees(&t, C, &seg(101, 502, ACK, 0), 3 * MS));
        analyse(&mut t, S, &seg(501, 101, ACK | PSH, 100), 3 * MS);
        assert!(steady_agrees(&t, C, &seg(101, 601, ACK, 0), 4 * MS));
        // A duplicate ACK, a keep-alive, a retransmission, a gap, a FIN, a zero window.
        assert!(!steady_agrees(&t, C, &seg(101, 501, ACK, 0), 3 * MS));
        assert!(!steady_agrees(&t, C, &seg(100, 501, ACK, 0), 3 * MS));
        assert!(!steady_agrees(&t, C, &seg(51, 501, ACK, 50), 3 * MS));
        assert!(!steady_agrees(&t, C, &seg(201, 501, ACK, 50), 3 * MS));
        assert!(!steady_agrees(&t, C, &seg(101, 501, ACK | FIN, 0), 3 * MS));
        let mut z = seg(101, 501, ACK, 10);
        z.window = 0;
        assert!(!steady_agrees(&t, C, &z, 3 * MS));
        // Before the handshake is done.
        let mut t = Tcp::default();
        analyse(&mut t, C, &seg(100, 0, SYN, 0), 0);
        assert!(!steady_agrees(&t, C, &seg(101, 0, ACK, 10), MS));
    }

    proptest! {
        #[test]
        fn steady_is_analyse_on_the_segments_it_takes(
            segs in proptest::collection::vec(
                (0usize..2, 0u32..4, 0u32..4, any::<u8>(), 0u16..3, 0u32..3), 0..48),
            near in proptest::collection::vec(
                (0usize..2, 0u32..3, 0u32..3, 0u8..4, 0u16..3, 0u32..3), 1..16)) {
            // Small numbers so that sequence numbers, ACKs and windows meet often.
            let mut t = Tcp::default();
            for (i, (dir, seq, ack, flags, window, len)) in segs.into_iter().enumerate() {
                let s = Segment { seq, ack, flags, window, wscale: None, payload_len: len };
                analyse(&mut t, dir, &s, i as u64 * MS);
            }
            // Then segments around each endpoint's next expected one.
            let flags = [ACK, ACK | PSH, ACK | FIN, ACK | URG];
            for (i, (dir, off, ack, fl, window, len)) in near.into_iter().enumerate() {
                let me = t.dirs[dir];
                let s = Segment {
                    seq: me.next_seq.wrapping_add(off).wrapping_sub(1),
                    ack: me.last_ack.wrapping_add(ack).wrapping_sub(1),
                    flags: flags[usize::from(fl)],
                    window: me.window.wrapping_add(window).wrapping_sub(1),
                    wscale: None,
                    payload_len: len,
                };
                let ts = (100 + i as u64) * MS;
                steady_agrees(&t, dir, &s, ts);
                analyse(&mut t, dir, &s, ts);
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(segs in proptest::collection::vec(
            (0usize..2, any::<u32>(), any::<u32>(), any::<u8>(), any::<u16>(), 0u32..70000,
             proptest::option::of(any::<u8>())), 0..64)) {
            let mut t = Tcp::default();
            for (i, (dir, seq, ack, flags, window, len, wscale)) in segs.into_iter().enumerate() {
                let s = Segment { seq, ack, flags, window, wscale, payload_len: len };
                analyse(&mut t, dir, &s, i as u64 * MS);
            }
            let _ = conn_state(t.dirs[0].state, t.dirs[1].state, 0, 0, false);
        }
    }
}
