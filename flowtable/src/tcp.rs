//! The TCP state machine: per-endpoint states (as Zeek keeps them), sequence analysis
//! (retransmission, out-of-order, duplicate ACK, zero window, keep-alive, as Wireshark
//! flags them), and the Zeek `conn_state` derived from the two endpoint states.
//!
//! Directions are indexed 0 and 1 by the flow table (the canonical key's `lo -> hi` and
//! `hi -> lo`); which one is the client is decided elsewhere and only matters for
//! [`conn_state`].

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

const NEXT_SET: u8 = 1;
const BASE_SET: u8 = 2;
const ACK_SET: u8 = 4;
const FIN_SEEN: u8 = 8;

/// What one endpoint has sent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpDir {
    pub state: EndpointState,
    bits: u8,
    /// Number of SYNs (or SYN-ACKs) this endpoint sent.
    pub syns: u8,
    pub last_win: u16,
    /// Consecutive duplicate ACKs.
    pub dup_run: u16,
    /// First sequence number seen (the ISN for a SYN).
    pub base_seq: u32,
    /// Highest sequence number + segment length seen.
    pub next_seq: u32,
    pub last_ack: u32,
    /// Sequence number of this endpoint's FIN.
    pub fin_seq: u32,
    pub last_seg_ns: u64,
}

impl TcpDir {
    pub fn base_seq(&self) -> Option<u32> {
        (self.bits & BASE_SET != 0).then_some(self.base_seq)
    }

    pub fn fin_seen(&self) -> bool {
        self.bits & FIN_SEEN != 0
    }
}

/// A TCP segment as the analysis needs it.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload_len: u32,
}

/// What the analysis found in one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentFindings {
    pub retransmission: bool,
    pub out_of_order: bool,
    pub dup_ack: bool,
    pub zero_window: bool,
    pub keep_alive: bool,
    pub bad_flags: bool,
    pub data_after_fin: bool,
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Is this flag combination illegal (SYN+FIN, SYN+RST, no flags, FIN/PSH/URG without ACK)?
pub fn illegal_flags(flags: u8) -> bool {
    let f = flags & (FIN | SYN | RST | PSH | ACK | URG);
    f == 0
        || f & (SYN | FIN) == SYN | FIN
        || f & (SYN | RST) == SYN | RST
        || (f & ACK == 0 && f & (FIN | PSH | URG) != 0 && f & RST == 0)
}

/// The segment most packets of a connection are: ACK (maybe PSH), no SYN, FIN, RST or URG,
/// exactly at the next expected sequence number of an established (or mid-stream) endpoint
/// that has not sent its FIN, an open window, and either payload or news (a new ACK or
/// window), so not a duplicate ACK. Applies it and returns true when it is one, with the same
/// effect as [`analyse`] (which finds nothing in it); otherwise changes nothing and returns
/// false, and the segment goes through [`analyse`].
#[inline]
pub fn steady(dirs: &mut [TcpDir; 2], d: usize, seg: &Segment, ts_ns: u64) -> bool {
    const ALL_SET: u8 = NEXT_SET | BASE_SET | ACK_SET;
    let me = &mut dirs[d & 1];
    let plain = seg.flags & (SYN | FIN | RST | URG | ACK) == ACK;
    let known = me.bits & (ALL_SET | FIN_SEEN) == ALL_SET
        && matches!(
            me.state,
            EndpointState::Established | EndpointState::Partial
        );
    let news = seg.payload_len > 0 || seg.ack != me.last_ack || seg.window != me.last_win;
    if !(plain && known && news && seg.window != 0 && seg.seq == me.next_seq) {
        return false;
    }
    let end = seg.seq.wrapping_add(seg.payload_len);
    if seq_lt(me.next_seq, end) {
        me.next_seq = end;
    }
    me.last_ack = seg.ack;
    me.last_win = seg.window;
    me.dup_run = 0;
    me.last_seg_ns = ts_ns;
    true
}

/// Sequence analysis of one segment sent by `dirs[d]`, updating both endpoints' states.
/// `ooo_threshold_ns` separates out-of-order segments from retransmissions (the initial RTT
/// when known).
pub fn analyse(
    dirs: &mut [TcpDir; 2],
    d: usize,
    seg: &Segment,
    ts_ns: u64,
    ooo_threshold_ns: u64,
) -> SegmentFindings {
    let mut out = SegmentFindings::default();
    let peer = 1 - (d & 1);
    let d = d & 1;
    let fl = seg.flags;
    let syn = fl & SYN != 0;
    let fin = fl & FIN != 0;
    let rst = fl & RST != 0;
    let ack = fl & ACK != 0;
    out.bad_flags = illegal_flags(fl);

    let seglen = seg
        .payload_len
        .wrapping_add(u32::from(syn))
        .wrapping_add(u32::from(fin));
    let me = &mut dirs[d];
    if me.bits & BASE_SET == 0 {
        me.base_seq = seg.seq;
        me.bits |= BASE_SET;
    }
    if !rst && seg.window == 0 && !syn && !fin {
        out.zero_window = true;
    }
    if me.bits & NEXT_SET != 0 && !rst {
        let gap = ts_ns.saturating_sub(me.last_seg_ns);
        if seglen <= 1
            && seg.payload_len <= 1
            && !syn
            && !fin
            && seg.seq == me.next_seq.wrapping_sub(1)
        {
            out.keep_alive = true;
        } else if seglen > 0 && seq_lt(seg.seq, me.next_seq) {
            if gap < ooo_threshold_ns && me.next_seq != seg.seq.wrapping_add(seglen) {
                out.out_of_order = true;
            } else {
                out.retransmission = true;
            }
        } else if seglen == 0
            && ack
            && !syn
            && !fin
            && me.bits & ACK_SET != 0
            && seg.ack == me.last_ack
            && seg.window == me.last_win
            && seg.seq == me.next_seq
        {
            out.dup_ack = true;
        }
    }
    if me.fin_seen() && seg.payload_len > 0 && !seq_lt(seg.seq, me.fin_seq.wrapping_add(1)) {
        out.data_after_fin = true;
    }
    if !rst {
        let end = seg.seq.wrapping_add(seglen);
        if me.bits & NEXT_SET == 0 || seq_lt(me.next_seq, end) {
            me.next_seq = end;
            me.bits |= NEXT_SET;
        }
        if ack {
            me.last_ack = seg.ack;
            me.bits |= ACK_SET;
        }
        me.last_win = seg.window;
    }
    me.dup_run = if out.dup_ack {
        me.dup_run.saturating_add(1)
    } else {
        0
    };
    me.last_seg_ns = ts_ns;
    if fin && !me.fin_seen() {
        me.fin_seq = seg.seq.wrapping_add(seg.payload_len);
        me.bits |= FIN_SEEN;
    }
    if syn {
        me.syns = me.syns.saturating_add(1);
    }

    // Endpoint states, as Zeek's TCP analyzer moves them.
    let peer_state = dirs[peer].state;
    let me = &mut dirs[d];
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
                        peer_state,
                        EndpointState::SynSent
                            | EndpointState::SynAckSent
                            | EndpointState::Established
                    ) =>
            {
                me.state = EndpointState::Established;
                if matches!(
                    peer_state,
                    EndpointState::SynSent | EndpointState::SynAckSent
                ) {
                    dirs[peer].state = EndpointState::Established;
                }
            }
            _ => {}
        }
    }
    out
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
            payload_len,
        }
    }

    const C: usize = 0;
    const S: usize = 1;
    const MS: u64 = 1_000_000;

    fn state_of(dirs: &[TcpDir; 2]) -> ConnState {
        conn_state(dirs[C].state, dirs[S].state, 1, 1, false)
    }

    fn handshake(dirs: &mut [TcpDir; 2]) {
        analyse(dirs, C, &seg(100, 0, SYN, 0), 0, 3 * MS);
        analyse(dirs, S, &seg(500, 101, SYN | ACK, 0), MS, 3 * MS);
        analyse(dirs, C, &seg(101, 501, ACK, 0), 2 * MS, 3 * MS);
    }

    #[test]
    fn normal_close_is_sf() {
        let mut d = [TcpDir::default(); 2];
        handshake(&mut d);
        assert_eq!(state_of(&d), ConnState::S1);
        analyse(&mut d, C, &seg(101, 501, FIN | ACK, 0), 3 * MS, 3 * MS);
        assert_eq!(state_of(&d), ConnState::S2);
        analyse(&mut d, S, &seg(501, 102, FIN | ACK, 0), 4 * MS, 3 * MS);
        assert_eq!(state_of(&d), ConnState::SF);
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
        let mut d = [TcpDir::default(); 2];
        analyse(&mut d, C, &seg(1, 0, SYN, 0), 0, MS);
        assert_eq!(state_of(&d), ConnState::S0);
        analyse(&mut d, S, &seg(0, 2, RST | ACK, 0), MS, MS);
        assert_eq!(state_of(&d), ConnState::REJ);
        // Client abort after the handshake.
        let mut d = [TcpDir::default(); 2];
        handshake(&mut d);
        analyse(&mut d, C, &seg(101, 501, RST | ACK, 0), 5 * MS, MS);
        assert_eq!(state_of(&d), ConnState::RSTO);
        // SYN then FIN, never answered.
        let mut d = [TcpDir::default(); 2];
        analyse(&mut d, C, &seg(1, 0, SYN, 0), 0, MS);
        analyse(&mut d, C, &seg(2, 0, FIN | ACK, 0), MS, MS);
        assert_eq!(state_of(&d), ConnState::SH);
        // Mid-stream traffic.
        let mut d = [TcpDir::default(); 2];
        analyse(&mut d, C, &seg(1000, 77, ACK | PSH, 10), 0, MS);
        analyse(&mut d, S, &seg(77, 1010, ACK, 0), MS, MS);
        assert_eq!(state_of(&d), ConnState::OTH);
    }

    #[test]
    fn retransmission_out_of_order_dup_ack_keep_alive_zero_window() {
        let mut d = [TcpDir::default(); 2];
        handshake(&mut d);
        let f = analyse(&mut d, C, &seg(101, 501, ACK, 100), 10 * MS, 3 * MS);
        assert_eq!(f, SegmentFindings::default());
        analyse(&mut d, C, &seg(201, 501, ACK, 100), 11 * MS, 3 * MS);
        // Same segment again 200 ms later: retransmission.
        let f = analyse(&mut d, C, &seg(101, 501, ACK, 100), 211 * MS, 3 * MS);
        assert!(f.retransmission && !f.out_of_order);
        // A gap filled 1 ms after the later segment: out of order.
        analyse(&mut d, C, &seg(401, 501, ACK, 100), 212 * MS, 3 * MS);
        let f = analyse(&mut d, C, &seg(301, 501, ACK, 100), 213 * MS, 3 * MS);
        assert!(f.out_of_order && !f.retransmission);
        // Duplicate ACKs from the server.
        analyse(&mut d, S, &seg(501, 301, ACK, 0), 214 * MS, 3 * MS);
        let f = analyse(&mut d, S, &seg(501, 301, ACK, 0), 215 * MS, 3 * MS);
        assert!(f.dup_ack);
        let f = analyse(&mut d, S, &seg(501, 301, ACK, 0), 216 * MS, 3 * MS);
        assert!(f.dup_ack);
        assert_eq!(d[S].dup_run, 2);
        // Keep-alive: one byte below the next expected sequence number.
        let f = analyse(&mut d, C, &seg(500, 501, ACK, 0), 300 * MS, 3 * MS);
        assert!(f.keep_alive);
        // Zero window.
        let mut z = seg(501, 501, ACK, 0);
        z.window = 0;
        let f = analyse(&mut d, S, &z, 301 * MS, 3 * MS);
        assert!(f.zero_window);
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
        let mut d = [TcpDir::default(); 2];
        handshake(&mut d);
        analyse(&mut d, C, &seg(101, 501, FIN | ACK, 0), 3 * MS, MS);
        let f = analyse(&mut d, C, &seg(102, 501, ACK, 10), 4 * MS, MS);
        assert!(f.data_after_fin);
    }

    /// A segment `steady` takes changes both endpoints exactly as `analyse` does, and
    /// `analyse` finds nothing in it; one it refuses it leaves alone.
    fn steady_agrees(dirs: &[TcpDir; 2], d: usize, s: &Segment, ts: u64) -> bool {
        let mut fast = *dirs;
        let taken = steady(&mut fast, d, s, ts);
        if taken {
            let mut slow = *dirs;
            let found = analyse(&mut slow, d, s, ts, MS);
            assert_eq!(found, SegmentFindings::default(), "{s:?} on {dirs:?}");
            assert_eq!(fast, slow, "{s:?} on {dirs:?}");
        } else {
            assert_eq!(&fast, dirs, "refused {s:?} but changed {dirs:?}");
        }
        taken
    }

    #[test]
    fn steady_takes_in_order_data_and_new_acks_only() {
        let mut d = [TcpDir::default(); 2];
        handshake(&mut d);
        assert!(steady_agrees(&d, C, &seg(101, 501, ACK | PSH, 100), 3 * MS));
        assert!(steady_agrees(&d, C, &seg(101, 502, ACK, 0), 3 * MS));
        // A duplicate ACK, a keep-alive, a retransmission, a gap, a FIN, a zero window.
        assert!(!steady_agrees(&d, C, &seg(101, 501, ACK, 0), 3 * MS));
        assert!(!steady_agrees(&d, C, &seg(100, 501, ACK, 0), 3 * MS));
        assert!(!steady_agrees(&d, C, &seg(51, 501, ACK, 50), 3 * MS));
        assert!(!steady_agrees(&d, C, &seg(201, 501, ACK, 50), 3 * MS));
        assert!(!steady_agrees(&d, C, &seg(101, 501, ACK | FIN, 0), 3 * MS));
        let mut z = seg(101, 501, ACK, 10);
        z.window = 0;
        assert!(!steady_agrees(&d, C, &z, 3 * MS));
        // Before the handshake is done.
        let mut d = [TcpDir::default(); 2];
        analyse(&mut d, C, &seg(100, 0, SYN, 0), 0, MS);
        assert!(!steady_agrees(&d, C, &seg(101, 0, ACK, 10), MS));
    }

    proptest! {
        #[test]
        fn steady_is_analyse_on_the_segments_it_takes(
            segs in proptest::collection::vec(
                (0usize..2, 0u32..4, 0u32..4, any::<u8>(), 0u16..3, 0u32..3), 0..48),
            near in proptest::collection::vec(
                (0usize..2, 0u32..3, 0u32..3, 0u8..4, 0u16..3, 0u32..3), 1..16)) {
            // Small numbers so that sequence numbers, ACKs and windows meet often.
            let mut d = [TcpDir::default(); 2];
            for (i, (dir, seq, ack, flags, window, len)) in segs.into_iter().enumerate() {
                let s = Segment { seq, ack, flags, window, payload_len: len };
                analyse(&mut d, dir, &s, i as u64 * MS, MS);
            }
            // Then segments around each endpoint's next expected one.
            let flags = [ACK, ACK | PSH, ACK | FIN, ACK | URG];
            for (i, (dir, off, ack, fl, window, len)) in near.into_iter().enumerate() {
                let me = d[dir];
                let s = Segment {
                    seq: me.next_seq.wrapping_add(off).wrapping_sub(1),
                    ack: me.last_ack.wrapping_add(ack).wrapping_sub(1),
                    flags: flags[usize::from(fl)],
                    window: me.last_win.wrapping_add(window).wrapping_sub(1),
                    payload_len: len,
                };
                let ts = (100 + i as u64) * MS;
                steady_agrees(&d, dir, &s, ts);
                analyse(&mut d, dir, &s, ts, MS);
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(segs in proptest::collection::vec(
            (0usize..2, any::<u32>(), any::<u32>(), any::<u8>(), any::<u16>(), 0u32..70000), 0..64)) {
            let mut d = [TcpDir::default(); 2];
            for (i, (dir, seq, ack, flags, window, len)) in segs.into_iter().enumerate() {
                let s = Segment { seq, ack, flags, window, payload_len: len };
                analyse(&mut d, dir, &s, i as u64 * MS, MS);
            }
            let _ = conn_state(d[0].state, d[1].state, 0, 0, false);
        }
    }
}
