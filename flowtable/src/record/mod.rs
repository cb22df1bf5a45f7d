//! The connection record: what a worker hands to the recorder when an anomalous (or, in
//! record-all mode, any) connection closes.
//!
//! Records are encoded with MessagePack ([`codec`]) straight from a borrowed view of the
//! flow's tracking points, so closing a flow allocates nothing; decoding yields an owned record.
//! Every closed set is an enum here with exactly one place that maps it to its text form.

pub mod codec;

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_repr::{Deserialize_repr, Serialize_repr};

use crate::packet::Ip;
use crate::point::Point;

/// Transport protocol of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum CloseReason {
    /// FIN seen in both directions before any RST.
    TcpFin,
    /// The client sent the first RST.
    TcpRstClient,
    /// The server sent the first RST (including a SYN answered by RST).
    TcpRstServer,
    /// Idle longer than the protocol's timeout.
    AgedOut,
    /// An ICMP error for the flow was its last word.
    IcmpError,
    /// Evicted because the flow table was full.
    ResourceLimit,
    /// A new SYN reused the 5-tuple of a connection that had not closed.
    TcpReuse,
    /// Still open when the capture ended or the engine stopped.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::TcpFin,
        CloseReason::TcpRstClient,
        CloseReason::TcpRstServer,
        CloseReason::AgedOut,
        CloseReason::IcmpError,
        CloseReason::ResourceLimit,
        CloseReason::TcpReuse,
        CloseReason::Shutdown,
    ];

    /// The machine name (`show --json`, queries).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TcpFin => "tcp-fin",
            CloseReason::TcpRstClient => "tcp-rst-client",
            CloseReason::TcpRstServer => "tcp-rst-server",
            CloseReason::AgedOut => "aged-out",
            CloseReason::IcmpError => "icmp-error",
            CloseReason::ResourceLimit => "resource-limit",
            CloseReason::TcpReuse => "tcp-reuse",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// The reason in plain words (`show`).
    pub fn in_words(self) -> &'static str {
        match self {
            CloseReason::TcpFin => "closed normally (FIN both ways)",
            CloseReason::TcpRstClient => "reset by the client",
            CloseReason::TcpRstServer => "reset by the server",
            CloseReason::AgedOut => "aged out (idle timeout)",
            CloseReason::IcmpError => "ended by an ICMP error",
            CloseReason::ResourceLimit => "evicted: flow table full",
            CloseReason::TcpReuse => "5-tuple reused by a new SYN",
            CloseReason::Shutdown => "still open at shutdown",
        }
    }
}

/// Zeek-compatible connection state (`conn_state` of Zeek's conn.log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum ConnState {
    S0,
    S1,
    SF,
    REJ,
    S2,
    S3,
    RSTO,
    RSTR,
    RSTOS0,
    RSTRH,
    SH,
    SHR,
    OTH,
    /// Not TCP: Zeek gives UDP/ICMP states of the same letters; conntrail says `none`.
    None,
}

impl ConnState {
    /// Every state, in number order (what the log stores).
    pub const ALL: [ConnState; 14] = [
        ConnState::S0,
        ConnState::S1,
        ConnState::SF,
        ConnState::REJ,
        ConnState::S2,
        ConnState::S3,
        ConnState::RSTO,
        ConnState::RSTR,
        ConnState::RSTOS0,
        ConnState::RSTRH,
        ConnState::SH,
        ConnState::SHR,
        ConnState::OTH,
        ConnState::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::S0 => "S0",
            ConnState::S1 => "S1",
            ConnState::SF => "SF",
            ConnState::REJ => "REJ",
            ConnState::S2 => "S2",
            ConnState::S3 => "S3",
            ConnState::RSTO => "RSTO",
            ConnState::RSTR => "RSTR",
            ConnState::RSTOS0 => "RSTOS0",
            ConnState::RSTRH => "RSTRH",
            ConnState::SH => "SH",
            ConnState::SHR => "SHR",
            ConnState::OTH => "OTH",
            ConnState::None => "none",
        }
    }
}

/// Which triggers preserved a record (a bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flags(pub u8);

impl Flags {
    pub const ERROR: Flags = Flags(1);
    pub const LATENCY: Flags = Flags(2);
    pub const PROTOCOL: Flags = Flags(4);
    pub const RESOURCE: Flags = Flags(8);
    pub const PATH: Flags = Flags(16);
    pub const USER: Flags = Flags(32);
    pub const ALL: Flags = Flags(64);

    const NAMES: [(Flags, &'static str); 7] = [
        (Flags::ERROR, "error"),
        (Flags::LATENCY, "latency"),
        (Flags::PROTOCOL, "protocol"),
        (Flags::RESOURCE, "resource"),
        (Flags::PATH, "path"),
        (Flags::USER, "user"),
        (Flags::ALL, "all"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// The names of the set flags, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Flags::NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

/// An IP address on the wire of a record: 4 bytes for IPv4, 16 for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr(pub Ip);

impl Addr {
    pub fn to_ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }

    /// The bytes a record carries: the IPv4 address of an IPv4-mapped one, else all 16.
    pub fn wire_bytes(&self) -> &[u8] {
        match &self.0 {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4 @ ..] => v4,
            v6 => v6,
        }
    }

    pub fn from_ip(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Addr(v6.octets()),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_ip().fmt(f)
    }
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.wire_bytes())
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        struct AddrVisitor;
        impl<'de> Visitor<'de> for AddrVisitor {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("4 or 16 address bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Addr, E> {
                if let Ok(b4) = <[u8; 4]>::try_from(v) {
                    Ok(Addr::from_ip(IpAddr::V4(Ipv4Addr::from(b4))))
                } else if let Ok(b16) = <[u8; 16]>::try_from(v) {
                    Ok(Addr(b16))
                } else {
                    Err(E::invalid_length(v.len(), &self))
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Addr, A::Error> {
                let mut buf = [0u8; 16];
                let mut n = 0;
                while let Some(b) = seq.next_element::<u8>()? {
                    if n == 16 {
                        return Err(de::Error::invalid_length(17, &self));
                    }
                    buf[n] = b;
                    n += 1;
                }
                self.visit_bytes(&buf[..n])
            }
        }
        d.deserialize_bytes(AddrVisitor)
    }
}

/// One end of a connection. ICMP uses port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Addr,
    pub port: u16,
}

/// Counters of one direction of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirStats {
    pub pkts: u64,
    /// Frame bytes on the wire, as the capture records them.
    pub bytes: u64,
    /// Transport payload bytes.
    pub payload: u64,
    pub retrans: u32,
    pub out_of_order: u32,
    pub dup_ack: u32,
    pub zero_window: u32,
}

/// Measured latencies, each `None` when the connection never got that far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub syn_synack_ns: Option<u64>,
    pub synack_ack_ns: Option<u64>,
    pub ttfb_ns: Option<u64>,
    pub max_stall_ns: Option<u64>,
}

/// Zeek-compatible history letters; uppercase for the client, lowercase for the server.
/// Encoded as a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub len: u8,
    pub letters: [u8; History::CAP],
}

impl History {
    pub const CAP: usize = 24;

    pub fn push(&mut self, letter: u8) {
        if let Some(slot) = self.letters.get_mut(self.len as usize) {
            *slot = letter;
            self.len += 1;
        }
    }

    /// Has `letter` been pushed already? (The per-packet check; no UTF-8 validation.)
    #[inline]
    pub fn contains(&self, letter: u8) -> bool {
        let n = (self.len as usize).min(History::CAP);
        self.letters[..n].contains(&letter)
    }

    pub fn as_str(&self) -> &str {
        let n = (self.len as usize).min(History::CAP);
        std::str::from_utf8(&self.letters[..n]).unwrap_or("")
    }
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<History, D::Error> {
        struct HistoryVisitor;
        impl Visitor<'_> for HistoryVisitor {
            type Value = History;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an ASCII history of at most {} letters", History::CAP)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<History, E> {
                if v.len() > History::CAP || !v.is_ascii() {
                    return Err(E::invalid_value(de::Unexpected::Str(v), &self));
                }
                let mut h = History::default();
                for b in v.bytes() {
                    h.push(b);
                }
                Ok(h)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<History, E> {
                let s = std::str::from_utf8(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Bytes(v), &self))?;
                self.visit_str(s)
            }
        }
        d.deserialize_str(HistoryVisitor)
    }
}

/// A connection record. `points` borrows the flow's arena slot while encoding and owns its
/// points after decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record<'a> {
    pub id: u64,
    pub worker: u16,
    pub context: u16,
    pub proto: Proto,
    pub ip_version: u8,
    pub client: Endpoint,
    pub server: Endpoint,
    pub midstream: bool,
    pub vlans: Cow<'a, [u16]>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub c2s: DirStats,
    pub s2c: DirStats,
    pub close_reason: CloseReason,
    pub conn_state: ConnState,
    pub history: History,
    pub flags: Flags,
    pub irregular_point: Option<u16>,
    pub latency: Latency,
    pub points: Cow<'a, [Point]>,
    pub points_dropped: u32,
    /// ICMP type and code for ICMP flows (echo or message), else 0.
    pub icmp_type_code: u16,
}

impl Record<'_> {
    /// An owned copy, independent of the arena it was built from.
    pub fn into_owned(self) -> Record<'static> {
        Record {
            vlans: Cow::Owned(self.vlans.into_owned()),
            points: Cow::Owned(self.points.into_owned()),
            ..self
        }
    }

    /// The type and code of an ICMP record's first message (Zeek keeps them in the ports:
    /// type as the originator's, code as the responder's).
    pub fn icmp(&self) -> Option<(u8, u8)> {
        let [icmp_type, code] = self.icmp_type_code.to_be_bytes();
        (self.proto == Proto::Icmp).then_some((icmp_type, code))
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// The name of an ICMP (`v6`: ICMPv6) message type, for the ones a tracker meets.
pub fn icmp_type_name(v6: bool, icmp_type: u8) -> Option<&'static str> {
    Some(match (v6, icmp_type) {
        (false, 0) | (true, 129) => "echo reply",
        (false, 8) | (true, 128) => "echo request",
        (false, 3) | (true, 1) => "destination unreachable",
        (false, 4) => "source quench",
        (false, 5) | (true, 137) => "redirect",
        (false, 9) | (true, 134) => "router advertisement",
        (false, 10) | (true, 133) => "router solicitation",
        (false, 11) | (true, 3) => "time exceeded",
        (false, 12) | (true, 4) => "parameter problem",
        (false, 13) => "timestamp request",
        (false, 14) => "timestamp reply",
        (false, 15) => "information request",
        (false, 16) => "information reply",
        (false, 17) => "address mask request",
        (false, 18) => "address mask reply",
        (true, 2) => "packet too big",
        (true, 130) => "multicast listener query",
        (true, 131) | (true, 143) => "multicast listener report",
        (true, 132) => "multicast listener done",
        (true, 135) => "neighbor solicitation",
        (true, 136) => "neighbor advertisement",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL[n]` is the value stored as `n`, and `ALL.len()` is no value: a new variant must
    /// join `ALL`, or the query language and the summaries would not know it.
    fn in_number_order<T>(all: &[T])
    where
        T: Serialize + serde::de::DeserializeOwned + fmt::Debug,
    {
        for (n, v) in all.iter().enumerate() {
            let bytes = rmp_serde::to_vec(v).expect("encodes");
            assert_eq!(
                bytes,
                rmp_serde::to_vec(&(n as u8)).expect("encodes"),
                "{v:?}"
            );
        }
        let next = rmp_serde::to_vec(&(all.len() as u8)).expect("encodes");
        assert!(rmp_serde::from_slice::<T>(&next).is_err());
    }

    #[test]
    fn all_lists_every_close_reason_and_state_once_in_number_order() {
        in_number_order(&CloseReason::ALL);
        in_number_order(&ConnState::ALL);
    }
}
