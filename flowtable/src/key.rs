//! Flow keys: one canonical key for both directions of a connection.
//!
//! The two endpoints are stored in a fixed order, so a packet and its reply find the same
//! entry and the same worker. The order is the one that costs least, not the one people read
//! addresses in: an address is compared as the 128-bit word its bytes load into, then the
//! ports. Nothing outside the key sees it: which endpoint is the client is per-flow state,
//! decided by the TCP handshake or the first packet (see [`crate::table`]).

use std::hash::{Hash, Hasher};

use crate::packet::{split_addrs, v4_addrs, Ip, LinkType, Packet, L4};

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

    /// The key of a TCP segment in the most common frame, read straight from its bytes:
    /// Ethernet without VLAN tags, IPv4 without fragmentation or IPv6 without extension
    /// headers, then TCP. `None` for every other frame, which needs the parser. Where it
    /// gives a key it is the one [`FlowKey::of`] gives for the parsed frame, at a fraction of
    /// the cost: replay spreads frames over workers with it.
    pub fn of_plain_tcp_frame(link: LinkType, frame: &[u8]) -> Option<(FlowKey, bool)> {
        const TCP: u8 = 6;
        if link != LinkType::Ethernet {
            return None;
        }
        let ip = frame.get(14..)?;
        let (src, dst, l4) = match frame.get(12..14)? {
            [0x08, 0x00] => {
                let h: &[u8; 20] = ip.get(..20)?.try_into().ok()?;
                let header_len = usize::from(h[0] & 0x0f) * 4;
                let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
                // 0: left for the NIC to fill in (segmentation offload), as the parser takes it.
                let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
                let short = total_len != 0 && total_len < header_len + 20;
                if h[0] >> 4 != 4 || header_len < 20 || h[9] != TCP || fragment || short {
                    return None;
                }
                let (src, dst) = v4_addrs(h[12..20].try_into().ok()?);
                (src, dst, ip.get(header_len..)?)
            }
            [0x86, 0xdd] => {
                let h: &[u8; 40] = ip.get(..40)?.try_into().ok()?;
                let payload_len = u16::from_be_bytes([h[4], h[5]]);
                if h[0] >> 4 != 6 || h[6] != TCP || payload_len < 20 {
                    return None;
                }
                let (src, dst) = split_addrs(h[8..40].try_into().ok()?);
                (src, dst, ip.get(40..)?)
            }
            _ => return None,
        };
        let tcp: &[u8; 20] = l4.get(..20)?.try_into().ok()?;
        if tcp[12] >> 4 < 5 {
            return None;
        }
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        Some(FlowKey::from_endpoints(
            TCP,
            src,
            sport,
            dst,
            dport,
            KeyKind::Ports,
        ))
    }

    /// The canonical key of a flow between two endpoints, and whether `src` is its `lo` end.
    #[inline]
    pub fn from_endpoints(
        proto: u8,
        src: Ip,
        sport: u16,
        dst: Ip,
        dport: u16,
        kind: KeyKind,
    ) -> (FlowKey, bool) {
        // Words as the bytes load: no byte swapping on the way in or out.
        let (s, d) = (u128::from_ne_bytes(src), u128::from_ne_bytes(dst));
        let src_is_lo = s < d || (s == d && sport <= dport);
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
        for ip in [self.lo_ip, self.hi_ip] {
            // The address as two little-endian words, low bytes first.
            let v = u128::from_le_bytes(ip);
            for word in [v as u64, (v >> 64) as u64] {
                h = (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                h ^= h >> 32;
            }
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
