//! Flow keys: one canonical key for both directions of a connection.
//!
//! The two endpoints are stored in a fixed order (the smaller (address, port) first), so a
//! packet and its reply find the same entry and the same worker. Which endpoint is the
//! client is per-flow state, decided by the TCP handshake (see [`crate::table`]).

use std::hash::{Hash, Hasher};

use crate::packet::{Ip, Packet, L4};

/// How a key was formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyKind {
    /// TCP or UDP: addresses and ports.
    Ports,
    /// ICMP echo: addresses and the echo identifier (in both port slots).
    IcmpEcho,
    /// Other ICMP message: source, destination, type and code (in both port slots).
    IcmpMessage,
}

/// The canonical key of a flow.
#[derive(Clone, Copy, Debug)]
pub struct FlowKey {
    pub lo_ip: Ip,
    pub hi_ip: Ip,
    pub lo_port: u16,
    pub hi_port: u16,
    /// IP protocol number (6, 17, 1 or 58).
    pub proto: u8,
    pub kind: KeyKind,
}

impl FlowKey {
    /// Ports, protocol and kind in one word, for comparing and hashing.
    #[inline]
    fn rest(&self) -> u64 {
        u64::from(self.lo_port)
            | u64::from(self.hi_port) << 16
            | u64::from(self.proto) << 32
            | (self.kind as u64) << 40
    }
}

/// Compares and hashes the addresses as two 128-bit words each, not byte by byte: the table
/// does both on every packet.
impl PartialEq for FlowKey {
    #[inline]
    fn eq(&self, other: &FlowKey) -> bool {
        u128::from_ne_bytes(self.lo_ip) == u128::from_ne_bytes(other.lo_ip)
            && u128::from_ne_bytes(self.hi_ip) == u128::from_ne_bytes(other.hi_ip)
            && self.rest() == other.rest()
    }
}

impl Eq for FlowKey {}

impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.lo_ip));
        state.write_u128(u128::from_ne_bytes(self.hi_ip));
        state.write_u64(self.rest());
    }
}

impl FlowKey {
    /// Builds the canonical key of a TCP/UDP packet or ICMP message, and whether the packet
    /// travels from the `lo` endpoint to the `hi` one. `None` for packets that belong to no
    /// flow of their own (non-first fragments, other protocols).
    pub fn of(pkt: &Packet<'_>) -> Option<(FlowKey, bool)> {
        let (proto, sport, dport, kind) = match pkt.l4 {
            L4::Tcp { sport, dport, .. } => (6, sport, dport, KeyKind::Ports),
            L4::Udp { sport, dport, .. } => (17, sport, dport, KeyKind::Ports),
            L4::Icmp {
                v6,
                icmp_type,
                code,
                echo_id,
                ..
            } => {
                let proto = if v6 { 58 } else { 1 };
                match echo_id {
                    Some(id) => (proto, id, id, KeyKind::IcmpEcho),
                    None => {
                        let tc = u16::from(icmp_type) << 8 | u16::from(code);
                        (proto, tc, tc, KeyKind::IcmpMessage)
                    }
                }
            }
            L4::Fragment | L4::Other { .. } => return None,
        };
        Some(FlowKey::from_endpoints(
            proto, pkt.src, sport, pkt.dst, dport, kind,
        ))
    }

    /// The canonical key of a flow between two endpoints, and whether `src` is its `lo` end.
    pub fn from_endpoints(
        proto: u8,
        src: Ip,
        sport: u16,
        dst: Ip,
        dport: u16,
        kind: KeyKind,
    ) -> (FlowKey, bool) {
        // Big-endian words order addresses as their bytes do.
        let src_is_lo = (u128::from_be_bytes(src), sport) <= (u128::from_be_bytes(dst), dport);
        let (lo_ip, lo_port, hi_ip, hi_port) = if src_is_lo {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        (
            FlowKey {
                lo_ip,
                hi_ip,
                lo_port,
                hi_port,
                proto,
                kind,
            },
            src_is_lo,
        )
    }

    /// A fast hash of the key, equal for both directions; used to spread flows over workers.
    pub fn spread_hash(&self) -> u64 {
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(self.proto);
        for chunk in self.lo_ip.chunks_exact(8).chain(self.hi_ip.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 32;
        }
        h ^= u64::from(self.lo_port) << 16 | u64::from(self.hi_port);
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> Ip {
        let mut ip = [0u8; 16];
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12..].copy_from_slice(&[a, b, c, d]);
        ip
    }

    #[test]
    fn both_directions_share_key_and_hash() {
        let a = ip4(10, 0, 0, 1);
        let b = ip4(10, 0, 0, 2);
        let (k1, lo1) = FlowKey::from_endpoints(6, a, 40000, b, 443, KeyKind::Ports);
        let (k2, lo2) = FlowKey::from_endpoints(6, b, 443, a, 40000, KeyKind::Ports);
        assert_eq!(k1, k2);
        assert_ne!(lo1, lo2);
        assert_eq!(k1.spread_hash(), k2.spread_hash());
    }

    #[test]
    fn spread_hash_spreads() {
        let a = ip4(10, 0, 0, 1);
        let b = ip4(10, 0, 0, 2);
        let mut buckets = [0u32; 4];
        for port in 0..4000u16 {
            let (k, _) = FlowKey::from_endpoints(6, a, 10000 + port, b, 80, KeyKind::Ports);
            buckets[(k.spread_hash() % 4) as usize] += 1;
        }
        for n in buckets {
            assert!((800..1200).contains(&n), "uneven spread {buckets:?}");
        }
    }
}
