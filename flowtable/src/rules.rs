//! The anomaly rules: which triggers a closed connection trips, and so whether its record is
//! kept. Evaluated once per connection, at close.

use crate::config::{Limit, Triggers};
use crate::record::{CloseReason, ConnState, Flags, Proto, Record};

/// Facts about a connection that its record does not carry in full (its trail may have been
/// truncated), collected while it was open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events(pub u16);

impl Events {
    pub const BAD_FLAGS: u16 = 1;
    pub const DATA_AFTER_FIN: u16 = 1 << 1;
    pub const FRAGMENT: u16 = 1 << 2;
    pub const TTL_CHANGE: u16 = 1 << 3;
    pub const VLAN_CHANGE: u16 = 1 << 4;
    pub const ICMP_ERROR: u16 = 1 << 5;
    pub const FRAG_NEEDED: u16 = 1 << 6;
    pub const TLS_FATAL: u16 = 1 << 7;
    pub const DUP_ACK_RUN: u16 = 1 << 8;
    pub const SYN_RETRANSMIT: u16 = 1 << 9;
    pub const CLIENT_SYN: u16 = 1 << 10;
    /// SYN and SYN-ACK both seen, in that order: SYN to SYN-ACK is measured.
    pub const SYN_SYNACK: u16 = 1 << 11;
    /// The server answered the client's first byte: the flow holds the time to it.
    pub const TTFB: u16 = 1 << 12;
    /// A silence longer than the stall threshold before the connection closed.
    pub const STALL: u16 = 1 << 13;
    /// The client's FIN was seen.
    pub const FIN_C: u16 = 1 << 14;
    /// The server's FIN was seen.
    pub const FIN_S: u16 = 1 << 15;

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    pub fn set(&mut self, bit: u16) {
        self.0 |= bit;
    }
}

fn over(value_ns: Option<u64>, limit: Limit) -> bool {
    value_ns.is_some_and(|v| limit.over(v))
}

/// The flags a connection earns under `t` (without `all` and `user`, which are the
/// engine's business).
pub fn evaluate(rec: &Record<'_>, ev: Events, t: &Triggers) -> Flags {
    let mut flags = Flags::default();
    let tcp = rec.proto == Proto::Tcp;

    let e = &t.error;
    let rejected = rec.conn_state == ConnState::REJ;
    let error = match rec.close_reason {
        CloseReason::TcpRstServer if rejected => e.rejected,
        CloseReason::TcpRstServer => e.rst_server,
        CloseReason::TcpRstClient => e.rst_client,
        _ => false,
    } || (e.unanswered && tcp && ev.has(Events::CLIENT_SYN) && rec.s2c.pkts == 0)
        || (e.icmp_error && ev.has(Events::ICMP_ERROR))
        || (e.tls_fatal_alert && ev.has(Events::TLS_FATAL));
    if error {
        flags.insert(Flags::ERROR);
    }

    let l = &t.latency;
    let lat = &rec.latency;
    if over(lat.syn_synack_ns, l.syn_synack)
        || over(lat.synack_ack_ns, l.synack_ack)
        || over(lat.ttfb_ns, l.ttfb)
        || (tcp && l.stall.is_on() && ev.has(Events::STALL))
        || (l.syn_retransmit && ev.has(Events::SYN_RETRANSMIT))
    {
        flags.insert(Flags::LATENCY);
    }

    let p = &t.protocol;
    let retrans = rec.c2s.retrans + rec.s2c.retrans;
    let ooo = rec.c2s.out_of_order + rec.s2c.out_of_order;
    let zero = rec.c2s.zero_window + rec.s2c.zero_window;
    if (p.retransmissions > 0 && retrans >= p.retransmissions)
        || (p.out_of_order > 0 && ooo >= p.out_of_order)
        || (p.dup_acks > 0 && ev.has(Events::DUP_ACK_RUN))
        || (p.zero_window && zero > 0)
        || (p.bad_flags && ev.has(Events::BAD_FLAGS))
        || (p.data_after_fin && ev.has(Events::DATA_AFTER_FIN))
    {
        flags.insert(Flags::PROTOCOL);
    }

    let r = &t.resource;
    let pkts = rec.c2s.pkts + rec.s2c.pkts;
    let bytes = rec.c2s.bytes + rec.s2c.bytes;
    if (r.truncated && rec.points_dropped > 0)
        || (r.evicted && rec.close_reason == CloseReason::ResourceLimit)
        || (r.max_packets > 0 && pkts > r.max_packets)
        || (r.max_bytes > 0 && bytes > r.max_bytes)
        || (r.max_duration_s > 0.0 && rec.duration_ns() as f64 > r.max_duration_s * 1e9)
    {
        flags.insert(Flags::RESOURCE);
    }

    let pa = &t.path;
    if (pa.fragments && ev.has(Events::FRAGMENT))
        || (pa.ttl_change && ev.has(Events::TTL_CHANGE))
        || (pa.frag_needed && ev.has(Events::FRAG_NEEDED))
        || (pa.vlan_change && ev.has(Events::VLAN_CHANGE))
    {
        flags.insert(Flags::PATH);
    }
    flags
}
