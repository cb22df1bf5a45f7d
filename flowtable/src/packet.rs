//! Packet parsing: link layer to transport, for every link type and encapsulation conntrail
//! meets, without allocating and without panicking on any input.
//!
//! [`parse`] walks one frame from its link-layer header to the transport header and returns a
//! [`Packet`] that borrows the frame, or the [`Malformed`] reason it stopped.
//!
//! - Link layers: Ethernet (802.1Q / 802.1ad / 0x9100 VLAN stacks, 802.3 LLC/SNAP, MPLS label
//!   stacks with IPv4, IPv6 or an Ethernet pseudowire below them, PPPoE sessions, 802.1ah
//!   provider backbone bridging), Linux cooked captures v1 and v2, raw IP and BSD/OpenBSD
//!   loopback.
//! - IPv4 and IPv6, with IPv6 extension headers (hop-by-hop, routing, fragment, destination
//!   options, AH, mobility). ESP and "no next header" end the walk as [`L4::Other`].
//! - Tunnels: IP-in-IP (4), IPv6-in-IP (41), GRE (47; version 0 with IPv4, IPv6, transparent
//!   Ethernet bridging or MPLS inside, version 1 with PPP inside), and over UDP: Teredo (3544),
//!   VXLAN (4789), GTP-U (2152) and Geneve (6081). At most [`MAX_TUNNELS`] are followed.
//!
//! # Which header keys a packet
//!
//! The rule matches tshark's view of a frame, which is our oracle:
//! - the transport is the innermost TCP or UDP header of the stack; addresses, TTL and
//!   fragment information come from the IP header that carries it;
//! - when a UDP tunnel's inner packet carries no TCP or UDP (Teredo bubbles, ICMPv6 router
//!   solicitations, ARP over VXLAN) or cannot be parsed, the packet is the outer UDP packet,
//!   with `tunnelled == false`;
//! - an IP-level tunnel (IP-in-IP, GRE) carrying ICMP or another protocol yields that inner
//!   packet;
//! - an ICMP error that quotes a packet is not a tunnel: it is [`L4::Icmp`] with `quoted`
//!   filled from the quoted IP header and the first 4 bytes of its transport;
//! - a first IP fragment parses its transport header; a later fragment is [`L4::Fragment`].
//!   When a first fragment carries a tunnel, the tunnel is followed and the packet is keyed
//!   by the inner header, which is not a fragment.
//!
//! Lengths (`payload_len`) come from the headers; payload slices are the captured bytes,
//! clamped to what the headers say, so Ethernet padding never counts as payload.
//!
//! The frames most traffic is (Ethernet with at most one 802.1Q tag, IPv4 without options
//! and not fragmented or IPv6 without extension headers, TCP or UDP on no tunnel port) take
//! a short way that reads them in one pass and writes the packet once; it gives exactly what
//! the general walk gives, which a property test checks field by field.
//!
//! ```
//! use flowtable::packet::{parse, LinkType, L4};
//!
//! // IPv4/UDP 10.0.0.1:5000 -> 10.0.0.2:53 with 4 payload bytes, on the raw-IP link type.
//! let frame = [
//!     0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
//!     0x13, 0x88, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4,
//! ];
//! let pkt = parse(LinkType::RawIp, &frame).expect("well-formed");
//! assert_eq!(pkt.ttl, 64);
//! assert!(matches!(pkt.l4, L4::Udp { sport: 5000, dport: 53, payload_len: 4, .. }));
//! ```

/// An IP address as 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).
pub type Ip = [u8; 16];

/// Link types of capture files and live sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// DLT_EN10MB (1).
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113).
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276).
    LinuxSll2,
    /// Raw IP, version from the first nibble (LINKTYPE_RAW 101, DLT_RAW 12 and 14).
    RawIp,
    /// LINKTYPE_IPV4 (228).
    RawIpv4,
    /// LINKTYPE_IPV6 (229).
    RawIpv6,
    /// BSD loopback, host-order 4-byte family (DLT_NULL 0).
    Null,
    /// OpenBSD loopback, network-order 4-byte family (DLT_LOOP 108).
    Loop,
}

impl LinkType {
    /// Maps a pcap/pcapng link-type number to a supported link type.
    pub fn from_linktype(linktype: i32) -> Option<LinkType> {
        match linktype {
            1 => Some(LinkType::Ethernet),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            101 | 12 | 14 => Some(LinkType::RawIp),
            228 => Some(LinkType::RawIpv4),
            229 => Some(LinkType::RawIpv6),
            0 => Some(LinkType::Null),
            108 => Some(LinkType::Loop),
            _ => None,
        }
    }
}

/// TCP flag bits as on the wire (low byte of the flags field).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Maximum number of VLAN tags kept per packet (outermost first); deeper tags are skipped.
pub const MAX_VLANS: usize = 4;

/// IP fragment information of the IP header that carries the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (zero-extended) or IPv6 fragment header identification.
    pub id: u32,
    /// Fragment offset in bytes.
    pub offset: u32,
    /// More-fragments flag.
    pub more: bool,
    /// Bytes of IP payload carried by this fragment (from the IP header lengths).
    pub len: u32,
    /// The transport protocol number of the fragmented datagram.
    pub proto: u8,
}

/// The TCP or UDP flow quoted inside an ICMP/ICMPv6 error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub ip_version: u8,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub src: Ip,
    pub dst: Ip,
    pub sport: u16,
    pub dport: u16,
}

/// The transport part of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4<'a> {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        /// Low 8 flag bits, see [`tcp_flags`].
        flags: u8,
        window: u16,
        /// Window-scale option of a SYN or SYN-ACK, when present (`None` on other segments).
        wscale: Option<u8>,
        /// TCP payload length from the IP header lengths (not the captured bytes).
        payload_len: u32,
        /// Captured payload bytes (may be shorter than `payload_len` under a snap length).
        payload: &'a [u8],
    },
    Udp {
        sport: u16,
        dport: u16,
        /// UDP payload length from the UDP header.
        payload_len: u32,
        payload: &'a [u8],
    },
    /// ICMP (`v6 == false`) or ICMPv6 message.
    Icmp {
        v6: bool,
        icmp_type: u8,
        code: u8,
        /// Identifier of a request/reply pair: echo (ICMP 8/0, ICMPv6 128/129) and ICMP's
        /// timestamp, information and address-mask messages (13-18), else `None`.
        echo_id: Option<u16>,
        /// For error messages (ICMP 3, 4, 5, 11, 12; ICMPv6 1-4): the quoted TCP/UDP flow,
        /// when the quote holds at least the IP header and the first 4 transport bytes.
        quoted: Option<Quoted>,
        /// ICMP payload length after the 8-byte ICMP header.
        payload_len: u32,
    },
    /// A non-first IP fragment: no transport header in this packet.
    Fragment,
    /// Any other IP protocol.
    Other { proto: u8 },
}

/// A parsed packet, keyed by its innermost IP header that carries TCP/UDP (see module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub ip_version: u8,
    pub src: Ip,
    pub dst: Ip,
    /// TTL (IPv4) or hop limit (IPv6) of the IP header that carries the transport.
    pub ttl: u8,
    /// VLAN ids, outermost first; `vlan_count` of them are valid.
    pub vlans: [u16; MAX_VLANS],
    pub vlan_count: u8,
    /// Number of MPLS labels skipped.
    pub mpls_labels: u8,
    /// The transport was found inside a tunnel (IP-in-IP, GRE, Teredo, VXLAN, GTP-U, Geneve):
    /// the carrying IP header is itself the payload of another IP packet.
    pub tunnelled: bool,
    /// Set when the carrying IP header is a fragment (first or not).
    pub fragment: Option<Fragment>,
    pub l4: L4<'a>,
}

/// Why a frame could not be parsed. Counted per reason; never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Frame shorter than its link-layer header.
    TruncatedLink,
    /// Link-layer payload is neither IPv4 nor IPv6 (ARP, LLDP, STP, ...).
    NotIp,
    TruncatedIp,
    BadIpVersion,
    BadIpHeaderLength,
    BadIpTotalLength,
    TruncatedIpv6Extension,
    TruncatedTcp,
    BadTcpHeaderLength,
    TruncatedUdp,
    BadUdpLength,
    TruncatedIcmp,
    /// More nested encapsulations than the parser follows.
    TooDeep,
}

impl Malformed {
    /// Number of reasons (for counter arrays).
    pub const COUNT: usize = 13;
    /// All reasons, in counter-array order.
    pub const ALL: [Malformed; Malformed::COUNT] = [
        Malformed::TruncatedLink,
        Malformed::NotIp,
        Malformed::TruncatedIp,
        Malformed::BadIpVersion,
        Malformed::BadIpHeaderLength,
        Malformed::BadIpTotalLength,
        Malformed::TruncatedIpv6Extension,
        Malformed::TruncatedTcp,
        Malformed::BadTcpHeaderLength,
        Malformed::TruncatedUdp,
        Malformed::BadUdpLength,
        Malformed::TruncatedIcmp,
        Malformed::TooDeep,
    ];

    /// Index of this reason in [`Malformed::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Text form used in summaries and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::TruncatedLink => "truncated-link",
            Malformed::NotIp => "not-ip",
            Malformed::TruncatedIp => "truncated-ip",
            Malformed::BadIpVersion => "bad-ip-version",
            Malformed::BadIpHeaderLength => "bad-ip-header-length",
            Malformed::BadIpTotalLength => "bad-ip-total-length",
            Malformed::TruncatedIpv6Extension => "truncated-ipv6-extension",
            Malformed::TruncatedTcp => "truncated-tcp",
            Malformed::BadTcpHeaderLength => "bad-tcp-header-length",
            Malformed::TruncatedUdp => "truncated-udp",
            Malformed::BadUdpLength => "bad-udp-length",
            Malformed::TruncatedIcmp => "truncated-icmp",
            Malformed::TooDeep => "too-deep",
        }
    }
}

/// Maximum number of tunnels (IP-in-IP, GRE, UDP tunnels, Ethernet pseudowires) followed in
/// one frame; one more is [`Malformed::TooDeep`].
pub const MAX_TUNNELS: u8 = 8;

/// Parses one frame of the given link type.
///
/// Never allocates and never panics, whatever the bytes. See the module documentation for
/// which header a tunnelled or quoted packet is keyed by.
pub fn parse(link: LinkType, frame: &[u8]) -> Result<Packet<'_>, Malformed> {
    let mut out = Err(Malformed::TruncatedLink);
    parse_into(link, frame, &mut out);
    out
}

/// [`parse`] writing its result into `out`, for a caller that keeps packets in place (a
/// returned packet is often built aside and then copied).
#[inline]
pub fn parse_into<'a>(link: LinkType, frame: &'a [u8], out: &mut Result<Packet<'a>, Malformed>) {
    if link != LinkType::Ethernet || !ethernet_ip_tcp_udp(frame, out) {
        *out = walk(link, frame);
    }
}

/// The Ethernet frames most traffic is (at most one 802.1Q tag, then IPv4 without options
/// and not a fragment, or IPv6 without extension headers, carrying TCP, or UDP on no tunnel
/// port) are read in one pass and the packet written once, into `out`. Says `false`,
/// writing nothing, for any other frame or one of these that is not well formed: the general
/// walk takes those. For the frames it takes it gives exactly what the walk would.
#[inline(always)]
fn ethernet_ip_tcp_udp<'a>(frame: &'a [u8], out: &mut Result<Packet<'a>, Malformed>) -> bool {
    let Some(mut etype) = be16(frame, 12) else {
        return false;
    };
    let mut buf = rest_from(frame, ETHERNET_LEN);
    let mut vlans = [0; MAX_VLANS];
    let mut vlan_count = 0;
    if etype == ETHERTYPE_VLAN {
        let Some([t0, t1, e0, e1]) = array::<4>(buf, 0) else {
            return false;
        };
        vlans[0] = u16::from_be_bytes([t0, t1]) & 0x0fff;
        vlan_count = 1;
        etype = u16::from_be_bytes([e0, e1]);
        buf = rest_from(buf, 4);
    }
    let (ip_version, (src, dst), ttl, proto, seg, seg_len) = match etype {
        ETHERTYPE_IPV4 => {
            let Some([vihl, _, len_hi, len_lo, _, _, fo_hi, fo_lo, ttl, proto, _, _, addrs @ ..]) =
                array::<20>(buf, 0)
            else {
                return false;
            };
            let total_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if vihl != 0x45 || u16::from_be_bytes([fo_hi, fo_lo]) & 0x3fff != 0 || total_len < 20 {
                return false;
            }
            // Captured segment, without link-layer padding beyond the total length.
            let seg = rest_from(buf.get(..total_len).unwrap_or(buf), 20);
            (4, v4_addrs(addrs), ttl, proto, seg, total_len - 20)
        }
        ETHERTYPE_IPV6 => {
            let Some([v, _, _, _, len_hi, len_lo, next, hop_limit, addrs @ ..]) =
                array::<40>(buf, 0)
            else {
                return false;
            };
            if v >> 4 != 6 {
                return false;
            }
            let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            let body = rest_from(buf, 40);
            let seg = body.get(..payload_len).unwrap_or(body);
            (6, split_addrs(addrs), hop_limit, next, seg, payload_len)
        }
        _ => return false,
    };
    let packet = |l4| Packet {
        ip_version,
        src,
        dst,
        ttl,
        vlans,
        vlan_count,
        mpls_labels: 0,
        tunnelled: false,
        fragment: None,
        l4,
    };
    // Each kind written where it is read, so the common one pays nothing for the other.
    match proto {
        PROTO_TCP => {
            let Ok(l4) = tcp(seg, len_u32(seg_len)) else {
                return false;
            };
            *out = Ok(packet(l4));
        }
        PROTO_UDP => {
            let Some(l4) = plain_udp(seg, len_u32(seg_len)) else {
                return false;
            };
            *out = Ok(packet(l4));
        }
        _ => return false,
    }
    #[cfg(test)]
    tests::SHORT_WAY.with(|n| n.set(n.get() + 1));
    true
}

/// A UDP datagram, not a fragment, on no tunnel port, with a valid length: what [`udp`]
/// gives for it. `None` for any other, which the walk takes.
#[inline(always)]
fn plain_udp(seg: &[u8], seg_len: u32) -> Option<L4<'_>> {
    let [sp0, sp1, dp0, dp1, l0, l1, _, _] = array::<8>(seg, 0)?;
    let (sport, dport) = (
        u16::from_be_bytes([sp0, sp1]),
        u16::from_be_bytes([dp0, dp1]),
    );
    let udp_len = u32::from(u16::from_be_bytes([l0, l1]));
    if TUNNEL_PORTS.contains(&sport) || TUNNEL_PORTS.contains(&dport) || udp_len < 8 {
        return None;
    }
    // Longer than the IP payload: trust the IP header (as `udp` does).
    let udp_len = udp_len.min(seg_len);
    let end = usize::try_from(udp_len)
        .unwrap_or(usize::MAX)
        .min(seg.len());
    Some(L4::Udp {
        sport,
        dport,
        payload_len: udp_len.saturating_sub(8),
        payload: seg.get(8..end).unwrap_or(&[]),
    })
}

/// The general walk from the link-layer header down, for every link type and encapsulation.
fn walk(link: LinkType, frame: &[u8]) -> Result<Packet<'_>, Malformed> {
    let mut ctx = Ctx::default();
    match link {
        LinkType::Ethernet => ethernet(&mut ctx, frame),
        LinkType::LinuxSll => {
            // packet type, ARPHRD type, address length, 8 address bytes, protocol.
            let proto = be16(frame, 14).ok_or(Malformed::TruncatedLink)?;
            ethertype(&mut ctx, proto, rest_from(frame, 16))
        }
        LinkType::LinuxSll2 => {
            // protocol, reserved, interface index, ARPHRD type, packet type, address.
            let proto = be16(frame, 0).ok_or(Malformed::TruncatedLink)?;
            let payload = frame.get(SLL2_LEN..).ok_or(Malformed::TruncatedLink)?;
            ethertype(&mut ctx, proto, payload)
        }
        LinkType::RawIp => ip(&mut ctx, frame, None),
        LinkType::RawIpv4 => ip(&mut ctx, frame, Some(4)),
        LinkType::RawIpv6 => ip(&mut ctx, frame, Some(6)),
        LinkType::Null => {
            // The family is in the byte order of the capturing host, which we do not know.
            let family = array::<4>(frame, 0).ok_or(Malformed::TruncatedLink)?;
            let version = bsd_family(u32::from_le_bytes(family))
                .or_else(|| bsd_family(u32::from_be_bytes(family)))
                .ok_or(Malformed::NotIp)?;
            ip(&mut ctx, rest_from(frame, 4), Some(version))
        }
        LinkType::Loop => {
            let family = array::<4>(frame, 0).ok_or(Malformed::TruncatedLink)?;
            let version = bsd_family(u32::from_be_bytes(family)).ok_or(Malformed::NotIp)?;
            ip(&mut ctx, rest_from(frame, 4), Some(version))
        }
    }
}

const ETHERNET_LEN: usize = 14;
const SLL2_LEN: usize = 20;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
const ETHERTYPE_MPLS: u16 = 0x8847;
const ETHERTYPE_MPLS_MULTICAST: u16 = 0x8848;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;
const ETHERTYPE_PBB: u16 = 0x88e7;
const ETHERTYPE_TEB: u16 = 0x6558;
const ETHERTYPE_PPP: u16 = 0x880b;
/// Ethertype values up to this are 802.3 length fields (an LLC header follows).
const ETHERTYPE_MAX_LENGTH: u16 = 1500;

const PROTO_ICMP: u8 = 1;
const PROTO_IPIP: u8 = 4;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_IPV6: u8 = 41;
const PROTO_GRE: u8 = 47;
const PROTO_ICMPV6: u8 = 58;

const PORT_TEREDO: u16 = 3544;
const PORT_VXLAN: u16 = 4789;
const PORT_GTP_U: u16 = 2152;
const PORT_GENEVE: u16 = 6081;
/// The UDP ports [`udp_tunnel`] looks inside.
const TUNNEL_PORTS: [u16; 4] = [PORT_VXLAN, PORT_TEREDO, PORT_GTP_U, PORT_GENEVE];

/// Link-layer facts gathered on the way down, and the tunnel depth.
#[derive(Clone, Copy, Default)]
struct Ctx {
    vlans: [u16; MAX_VLANS],
    vlan_count: u8,
    mpls_labels: u8,
    tunnels: u8,
}

impl Ctx {
    fn push_vlan(&mut self, tci: u16) {
        if let Some(slot) = self.vlans.get_mut(usize::from(self.vlan_count)) {
            *slot = tci & 0x0fff;
            self.vlan_count += 1;
        }
    }

    /// Counts one more tunnel; too many is an error, which bounds the recursion.
    fn enter_tunnel(&mut self) -> Result<(), Malformed> {
        self.tunnels += 1;
        if self.tunnels > MAX_TUNNELS {
            Err(Malformed::TooDeep)
        } else {
            Ok(())
        }
    }
}

/// The IP header that carries a transport.
#[derive(Clone, Copy)]
struct Net {
    ip_version: u8,
    src: Ip,
    dst: Ip,
    ttl: u8,
    fragment: Option<Fragment>,
}

impl Net {
    fn packet<'a>(&self, ctx: &Ctx, l4: L4<'a>) -> Packet<'a> {
        Packet {
            ip_version: self.ip_version,
            src: self.src,
            dst: self.dst,
            ttl: self.ttl,
            vlans: ctx.vlans,
            vlan_count: ctx.vlan_count,
            mpls_labels: ctx.mpls_labels,
            tunnelled: false,
            fragment: self.fragment,
            l4,
        }
    }
}

fn ethernet<'a>(ctx: &mut Ctx, frame: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let etype = be16(frame, 12).ok_or(Malformed::TruncatedLink)?;
    ethertype(ctx, etype, rest_from(frame, ETHERNET_LEN))
}

/// Follows the protocol after an Ethernet or SLL header: VLAN tags and LLC/SNAP headers in a
/// loop (so a long stack cannot recurse), then IP, MPLS, PPPoE or 802.1ah.
fn ethertype<'a>(ctx: &mut Ctx, etype: u16, payload: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let (mut etype, mut payload) = (etype, payload);
    loop {
        match etype {
            ETHERTYPE_IPV4 => return ip(ctx, payload, Some(4)),
            ETHERTYPE_IPV6 => return ip(ctx, payload, Some(6)),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD => {
                let tci = be16(payload, 0).ok_or(Malformed::TruncatedLink)?;
                etype = be16(payload, 2).ok_or(Malformed::TruncatedLink)?;
                ctx.push_vlan(tci);
                payload = rest_from(payload, 4);
            }
            ETHERTYPE_MPLS | ETHERTYPE_MPLS_MULTICAST => return mpls(ctx, payload),
            ETHERTYPE_PPPOE_SESSION => {
                // version/type, code, session id, length; then PPP.
                let ppp_frame = payload.get(6..).ok_or(Malformed::TruncatedLink)?;
                return ppp(ctx, ppp_frame);
            }
            ETHERTYPE_PBB => {
                // 802.1ah I-TAG, then the customer's whole Ethernet frame.
                let inner = payload.get(4..).ok_or(Malformed::TruncatedLink)?;
                ctx.enter_tunnel()?;
                return ethernet(ctx, inner);
            }
            length if length <= ETHERTYPE_MAX_LENGTH => {
                // 802.3: only LLC with a SNAP header can carry IP.
                match array::<8>(payload, 0) {
                    Some([0xaa, 0xaa, 0x03, _, _, _, hi, lo]) => {
                        etype = u16::from_be_bytes([hi, lo]);
                        payload = rest_from(payload, 8);
                    }
                    Some(_) => return Err(Malformed::NotIp),
                    None => return Err(Malformed::TruncatedLink),
                }
            }
            _ => return Err(Malformed::NotIp),
        }
    }
}

/// An MPLS label stack, then IPv4, IPv6 or an Ethernet pseudowire guessed from the first nibble
/// below the bottom of the stack (as tshark does).
fn mpls<'a>(ctx: &mut Ctx, payload: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let mut rest = payload;
    loop {
        let [_, _, tc_s, _] = array::<4>(rest, 0).ok_or(Malformed::TruncatedLink)?;
        ctx.mpls_labels = ctx.mpls_labels.saturating_add(1);
        rest = rest_from(rest, 4);
        if tc_s & 0x01 != 0 {
            break;
        }
    }
    match rest.first().map(|b| b >> 4) {
        Some(4) => ip(ctx, rest, Some(4)),
        Some(6) => ip(ctx, rest, Some(6)),
        Some(0) => {
            // Pseudowire control word, then an Ethernet frame (EoMPLS).
            let inner = rest.get(4..).ok_or(Malformed::TruncatedLink)?;
            ctx.enter_tunnel()?;
            ethernet(ctx, inner)
        }
        Some(_) => Err(Malformed::NotIp),
        None => Err(Malformed::TruncatedLink),
    }
}

/// A PPP frame (optional address/control bytes, 1- or 2-byte protocol) carrying IP.
fn ppp<'a>(ctx: &mut Ctx, frame: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let frame = match frame {
        [0xff, 0x03, rest @ ..] => rest,
        _ => frame,
    };
    let (proto, rest) = match frame {
        // Protocol-field compression: an odd first byte is the whole protocol number.
        [p, rest @ ..] if p & 1 == 1 => (u16::from(*p), rest),
        [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), rest),
        _ => return Err(Malformed::TruncatedLink),
    };
    match proto {
        0x0021 => ip(ctx, rest, Some(4)),
        0x0057 => ip(ctx, rest, Some(6)),
        _ => Err(Malformed::NotIp),
    }
}

/// IPv4 or IPv6 by the version nibble, which must be `expect` when given.
fn ip<'a>(ctx: &mut Ctx, buf: &'a [u8], expect: Option<u8>) -> Result<Packet<'a>, Malformed> {
    let version = buf.first().ok_or(Malformed::TruncatedIp)? >> 4;
    if expect.is_some_and(|e| e != version) {
        return Err(Malformed::BadIpVersion);
    }
    match version {
        4 => ipv4(ctx, buf),
        6 => ipv6(ctx, buf),
        _ => Err(Malformed::BadIpVersion),
    }
}

fn ipv4<'a>(ctx: &mut Ctx, buf: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let header = array::<20>(buf, 0).ok_or(Malformed::TruncatedIp)?;
    let [vihl, _, len_hi, len_lo, id_hi, id_lo, fo_hi, fo_lo, ttl, proto, _, _, addrs @ ..] =
        header;
    let (src, dst) = v4_addrs(addrs);
    let header_len = usize::from(vihl & 0x0f) * 4;
    if header_len < 20 {
        return Err(Malformed::BadIpHeaderLength);
    }
    let total_len = match usize::from(u16::from_be_bytes([len_hi, len_lo])) {
        // Captured on the sending host with segmentation offload: the NIC fills it in later.
        0 => buf.len(),
        n => n,
    };
    if total_len < header_len {
        return Err(Malformed::BadIpTotalLength);
    }
    if buf.len() < header_len {
        return Err(Malformed::TruncatedIp);
    }
    // Captured payload, without link-layer padding beyond the total length.
    let seg = buf.get(header_len..total_len.min(buf.len())).unwrap_or(&[]);
    let seg_len = len_u32(total_len - header_len);
    let flags_offset = u16::from_be_bytes([fo_hi, fo_lo]);
    let more = flags_offset & 0x2000 != 0;
    let offset = u32::from(flags_offset & 0x1fff) * 8;
    let fragment = (more || offset != 0).then_some(Fragment {
        id: u32::from(u16::from_be_bytes([id_hi, id_lo])),
        offset,
        more,
        len: seg_len,
        proto,
    });
    let net = Net {
        ip_version: 4,
        src,
        dst,
        ttl,
        fragment,
    };
    if offset != 0 {
        return Ok(net.packet(ctx, L4::Fragment));
    }
    transport(ctx, &net, proto, seg, seg_len)
}

fn ipv6<'a>(ctx: &mut Ctx, buf: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let header = array::<40>(buf, 0).ok_or(Malformed::TruncatedIp)?;
    let [_, _, _, _, len_hi, len_lo, next, hop_limit, addrs @ ..] = header;
    let (src, dst) = split_addrs(addrs);
    let body = rest_from(buf, 40);
    let payload_len = match usize::from(u16::from_be_bytes([len_hi, len_lo])) {
        // A jumbogram (hop-by-hop jumbo payload option): the capture is the length.
        0 if next == 0 => body.len(),
        n => n,
    };
    let seg = body.get(..payload_len).unwrap_or(body);
    let ext = ipv6_extensions(next, seg, len_u32(payload_len))?;
    let net = Net {
        ip_version: 6,
        src,
        dst,
        ttl: hop_limit,
        fragment: ext.fragment,
    };
    if ext.fragment.is_some_and(|f| f.offset != 0) {
        return Ok(net.packet(ctx, L4::Fragment));
    }
    transport(ctx, &net, ext.next, ext.rest, ext.rest_len)
}

/// Where the IPv6 extension-header chain ends.
struct Ipv6Chain<'a> {
    /// The first protocol that is not an extension header (or the header after a non-first
    /// fragment's fragment header).
    next: u8,
    /// Captured bytes after the chain.
    rest: &'a [u8],
    /// Bytes after the chain according to the payload length.
    rest_len: u32,
    fragment: Option<Fragment>,
}

/// Walks the IPv6 extension headers of `seg` (captured) / `seg_len` (per the payload length).
/// Stops after a fragment header whose offset is not zero: what follows is not a header.
fn ipv6_extensions(next: u8, seg: &[u8], seg_len: u32) -> Result<Ipv6Chain<'_>, Malformed> {
    let (mut next, mut rest, mut rest_len) = (next, seg, seg_len);
    let mut fragment = None;
    loop {
        let header_len = match next {
            // Hop-by-hop, routing, destination options, mobility: 8-byte units after the first.
            0 | 43 | 60 | 135 => ext_len(rest, rest_len).map(|l| (l + 1) * 8)?,
            // AH: 4-byte units, minus 2.
            51 => ext_len(rest, rest_len).map(|l| (l + 2) * 4)?,
            44 => 8,
            _ => break,
        };
        if len_u32(header_len) > rest_len {
            return Err(Malformed::BadIpTotalLength);
        }
        let header = rest
            .get(..header_len)
            .ok_or(Malformed::TruncatedIpv6Extension)?;
        let following = header.first().copied().unwrap_or(0);
        rest_len -= len_u32(header_len);
        if next == 44 {
            let [_, _, off_hi, off_lo, i0, i1, i2, i3] =
                array::<8>(header, 0).ok_or(Malformed::TruncatedIpv6Extension)?;
            let offset_flags = u16::from_be_bytes([off_hi, off_lo]);
            let offset = u32::from(offset_flags & 0xfff8);
            let more = offset_flags & 1 != 0;
            // An atomic fragment (offset 0, no more) is a whole datagram (RFC 6946).
            if more || offset != 0 {
                fragment = Some(Fragment {
                    id: u32::from_be_bytes([i0, i1, i2, i3]),
                    offset,
                    more,
                    len: rest_len,
                    proto: following,
                });
            }
        }
        rest = rest_from(rest, header_len);
        next = following;
        if fragment.is_some_and(|f| f.offset != 0) {
            break;
        }
    }
    Ok(Ipv6Chain {
        next,
        rest,
        rest_len,
        fragment,
    })
}

/// The length byte of an extension header.
fn ext_len(rest: &[u8], rest_len: u32) -> Result<usize, Malformed> {
    match rest.get(1) {
        Some(&l) => Ok(usize::from(l)),
        None if rest_len < 2 => Err(Malformed::BadIpTotalLength),
        None => Err(Malformed::TruncatedIpv6Extension),
    }
}

/// The transport (or tunnel) carried by `net`: `seg` are the captured bytes, `seg_len` the
/// length the IP header gives.
#[inline(always)]
fn transport<'a>(
    ctx: &mut Ctx,
    net: &Net,
    proto: u8,
    seg: &'a [u8],
    seg_len: u32,
) -> Result<Packet<'a>, Malformed> {
    match proto {
        PROTO_TCP => tcp(seg, seg_len).map(|l4| net.packet(ctx, l4)),
        PROTO_UDP => udp(ctx, net, seg, seg_len),
        PROTO_ICMP => icmp(false, seg, seg_len).map(|l4| net.packet(ctx, l4)),
        PROTO_ICMPV6 => icmp(true, seg, seg_len).map(|l4| net.packet(ctx, l4)),
        PROTO_IPIP => ip_tunnel(ctx, seg, 4),
        PROTO_IPV6 => ip_tunnel(ctx, seg, 6),
        PROTO_GRE => gre(ctx, net, seg),
        _ => Ok(net.packet(ctx, L4::Other { proto })),
    }
}

#[inline(always)]
fn tcp(seg: &[u8], seg_len: u32) -> Result<L4<'_>, Malformed> {
    let header = array::<20>(seg, 0).ok_or(Malformed::TruncatedTcp)?;
    let [sp0, sp1, dp0, dp1, q0, q1, q2, q3, a0, a1, a2, a3, offset, flags, w0, w1, ..] = header;
    let header_len = usize::from(offset >> 4) * 4;
    if header_len < 20 || len_u32(header_len) > seg_len {
        return Err(Malformed::BadTcpHeaderLength);
    }
    // Options cut by the snap length are tolerated: what is there is read. Only a SYN's
    // window scale means anything, so other segments' options are not walked.
    let wscale = if flags & tcp_flags::SYN != 0 {
        window_scale(seg.get(20..header_len.min(seg.len())).unwrap_or(&[]))
    } else {
        None
    };
    Ok(L4::Tcp {
        sport: u16::from_be_bytes([sp0, sp1]),
        dport: u16::from_be_bytes([dp0, dp1]),
        seq: u32::from_be_bytes([q0, q1, q2, q3]),
        ack: u32::from_be_bytes([a0, a1, a2, a3]),
        flags,
        window: u16::from_be_bytes([w0, w1]),
        wscale,
        payload_len: seg_len - len_u32(header_len),
        payload: rest_from(seg, header_len),
    })
}

/// The window-scale option (kind 3) in a TCP option list; a malformed or truncated list ends
/// the search.
fn window_scale(options: &[u8]) -> Option<u8> {
    let mut rest = options;
    loop {
        match rest {
            [] | [0, ..] => return None,
            [1, tail @ ..] => rest = tail,
            [3, 3, shift, ..] => return Some(*shift),
            [_, len, ..] if *len >= 2 => rest = rest.get(usize::from(*len)..)?,
            _ => return None,
        }
    }
}

fn udp<'a>(ctx: &mut Ctx, net: &Net, seg: &'a [u8], seg_len: u32) -> Result<Packet<'a>, Malformed> {
    let [sp0, sp1, dp0, dp1, l0, l1, _, _] = array::<8>(seg, 0).ok_or(Malformed::TruncatedUdp)?;
    let (sport, dport) = (
        u16::from_be_bytes([sp0, sp1]),
        u16::from_be_bytes([dp0, dp1]),
    );
    let udp_len = match u32::from(u16::from_be_bytes([l0, l1])) {
        // A jumbogram's UDP length is zero (RFC 2675).
        0 if seg_len > u32::from(u16::MAX) => seg_len,
        n if n < 8 => return Err(Malformed::BadUdpLength),
        // A first fragment holds only part of the datagram the UDP length describes.
        n if net.fragment.is_some() => n,
        // Longer than the IP payload: trust the IP header.
        n => n.min(seg_len),
    };
    let payload_len = udp_len.saturating_sub(8);
    let payload = seg
        .get(
            8..usize::try_from(udp_len)
                .unwrap_or(usize::MAX)
                .min(seg.len()),
        )
        .unwrap_or(&[]);
    let outer = net.packet(
        ctx,
        L4::Udp {
            sport,
            dport,
            payload_len,
            payload,
        },
    );
    let saved = *ctx;
    match udp_tunnel(ctx, sport, dport, payload, payload_len) {
        Some(Ok(mut inner)) if carries_flow(&inner) => {
            inner.tunnelled = true;
            Ok(inner)
        }
        Some(Err(Malformed::TooDeep)) => Err(Malformed::TooDeep),
        _ => {
            *ctx = saved;
            Ok(outer)
        }
    }
}

/// Whether a packet found inside a UDP tunnel is what tshark would key the frame by: a TCP or
/// UDP header, an ICMP error quoting one, or a later IP fragment (which may complete such a
/// datagram).
fn carries_flow(pkt: &Packet<'_>) -> bool {
    matches!(
        pkt.l4,
        L4::Tcp { .. }
            | L4::Udp { .. }
            | L4::Icmp {
                quoted: Some(_),
                ..
            }
            | L4::Fragment
    )
}

/// The packet inside a UDP tunnel recognised by its port, if any.
fn udp_tunnel<'a>(
    ctx: &mut Ctx,
    sport: u16,
    dport: u16,
    payload: &'a [u8],
    payload_len: u32,
) -> Option<Result<Packet<'a>, Malformed>> {
    let on = |port: u16| sport == port || dport == port;
    let inner = if on(PORT_VXLAN) {
        // Flags, reserved, VNI, reserved; then Ethernet.
        Inner::Ethernet(payload.get(8..)?)
    } else if on(PORT_TEREDO) {
        Inner::Ip(teredo(payload, payload_len)?, Some(6))
    } else if on(PORT_GTP_U) {
        Inner::Ip(gtp_u(payload)?, None)
    } else if on(PORT_GENEVE) {
        geneve(payload)?
    } else {
        return None;
    };
    Some(ctx.enter_tunnel().and_then(|()| inner.parse(ctx)))
}

/// What a tunnel header leaves to parse.
enum Inner<'a> {
    Ethernet(&'a [u8]),
    Ip(&'a [u8], Option<u8>),
    Mpls(&'a [u8]),
    Ppp(&'a [u8]),
}

impl<'a> Inner<'a> {
    fn parse(self, ctx: &mut Ctx) -> Result<Packet<'a>, Malformed> {
        match self {
            Inner::Ethernet(frame) => ethernet(ctx, frame),
            Inner::Ip(buf, version) => ip(ctx, buf, version),
            Inner::Mpls(buf) => mpls(ctx, buf),
            Inner::Ppp(frame) => ppp(ctx, frame),
        }
    }
}

/// Teredo (RFC 4380): optional authentication and origin-indication headers, then an IPv6
/// packet whose length fits the UDP payload.
fn teredo(payload: &[u8], payload_len: u32) -> Option<&[u8]> {
    let mut rest = payload;
    let mut rest_len = usize::try_from(payload_len).ok()?;
    if let [0x00, 0x01, id_len, auth_len, ..] = rest {
        // Client id, authentication value, 8-byte nonce, confirmation byte.
        let skip = 4 + usize::from(*id_len) + usize::from(*auth_len) + 9;
        rest = rest.get(skip..)?;
        rest_len = rest_len.checked_sub(skip)?;
    }
    if let [0x00, 0x00, ..] = rest {
        // Origin indication: port and address of the client.
        rest = rest.get(8..)?;
        rest_len = rest_len.checked_sub(8)?;
    }
    let [version, _, _, _, len_hi, len_lo] = array::<6>(rest, 0)?;
    let ipv6_len = usize::from(u16::from_be_bytes([len_hi, len_lo])) + 40;
    (version >> 4 == 6 && ipv6_len <= rest_len).then_some(rest)
}

/// GTP-U version 1 G-PDU (3GPP TS 29.281): the mandatory 8 bytes, the optional sequence
/// number / N-PDU / next-extension word, extension headers, then IP.
fn gtp_u(payload: &[u8]) -> Option<&[u8]> {
    let [flags, message_type, _, _, _, _, _, _] = array::<8>(payload, 0)?;
    if flags >> 5 != 1 || flags & 0x10 == 0 || message_type != 0xff {
        return None;
    }
    let mut at = 8;
    if flags & 0x07 != 0 {
        let mut next_extension = *payload.get(11)?;
        at = 12;
        while next_extension != 0 {
            let len = usize::from(*payload.get(at)?) * 4;
            if len == 0 {
                return None;
            }
            next_extension = *payload.get(at + len - 1)?;
            at += len;
        }
    }
    let inner = payload.get(at..)?;
    matches!(inner.first()? >> 4, 4 | 6).then_some(inner)
}

/// Geneve (RFC 8926): 8 bytes, options, then the protocol the header names.
fn geneve(payload: &[u8]) -> Option<Inner<'_>> {
    let [ver_opt, _, p_hi, p_lo] = array::<4>(payload, 0)?;
    if ver_opt >> 6 != 0 {
        return None;
    }
    let inner = payload.get(8 + usize::from(ver_opt & 0x3f) * 4..)?;
    match u16::from_be_bytes([p_hi, p_lo]) {
        ETHERTYPE_TEB => Some(Inner::Ethernet(inner)),
        ETHERTYPE_IPV4 => Some(Inner::Ip(inner, Some(4))),
        ETHERTYPE_IPV6 => Some(Inner::Ip(inner, Some(6))),
        _ => None,
    }
}

/// IP-in-IP or IPv6-in-IP.
fn ip_tunnel<'a>(ctx: &mut Ctx, seg: &'a [u8], version: u8) -> Result<Packet<'a>, Malformed> {
    ctx.enter_tunnel()?;
    let mut inner = ip(ctx, seg, Some(version))?;
    inner.tunnelled = true;
    Ok(inner)
}

/// GRE (RFC 2784/2890 version 0, RFC 2637 enhanced version 1). A GRE packet whose header or
/// payload we do not follow (unknown version or protocol, non-IP inside) is the outer packet
/// with [`L4::Other`].
fn gre<'a>(ctx: &mut Ctx, net: &Net, seg: &'a [u8]) -> Result<Packet<'a>, Malformed> {
    let outer = net.packet(ctx, L4::Other { proto: PROTO_GRE });
    let Some(inner) = gre_payload(seg) else {
        return Ok(outer);
    };
    let saved = *ctx;
    ctx.enter_tunnel()?;
    match inner.parse(ctx) {
        Ok(mut pkt) => {
            pkt.tunnelled = true;
            Ok(pkt)
        }
        Err(Malformed::NotIp) => {
            *ctx = saved;
            Ok(outer)
        }
        Err(e) => Err(e),
    }
}

fn gre_payload(seg: &[u8]) -> Option<Inner<'_>> {
    let [f_hi, f_lo, p_hi, p_lo] = array::<4>(seg, 0)?;
    let proto = u16::from_be_bytes([p_hi, p_lo]);
    let checksum = f_hi & 0x80 != 0;
    let routing = f_hi & 0x40 != 0;
    let key = f_hi & 0x20 != 0;
    let sequence = f_hi & 0x10 != 0;
    let mut at = 4;
    match f_lo & 0x07 {
        0 => {
            if checksum || routing {
                at += 4;
            }
            if key {
                at += 4;
            }
            if sequence {
                at += 4;
            }
            if routing {
                // Source route entries up to the NULL one (family 0, length 0).
                loop {
                    let [af_hi, af_lo, _, sre_len] = array::<4>(seg, at)?;
                    at += 4 + usize::from(sre_len);
                    if af_hi == 0 && af_lo == 0 && sre_len == 0 {
                        break;
                    }
                }
            }
        }
        1 => {
            // Payload length and call id (key field, always present), sequence, ack.
            at += 4;
            if sequence {
                at += 4;
            }
            if f_lo & 0x80 != 0 {
                at += 4;
            }
        }
        _ => return None,
    }
    let inner = seg.get(at..)?;
    match proto {
        ETHERTYPE_IPV4 => Some(Inner::Ip(inner, Some(4))),
        ETHERTYPE_IPV6 => Some(Inner::Ip(inner, Some(6))),
        ETHERTYPE_TEB => Some(Inner::Ethernet(inner)),
        ETHERTYPE_MPLS | ETHERTYPE_MPLS_MULTICAST => Some(Inner::Mpls(inner)),
        ETHERTYPE_PPP => Some(Inner::Ppp(inner)),
        _ => None,
    }
}

fn icmp(v6: bool, seg: &[u8], seg_len: u32) -> Result<L4<'_>, Malformed> {
    let [icmp_type, code, _, _, id_hi, id_lo, _, _] =
        array::<8>(seg, 0).ok_or(Malformed::TruncatedIcmp)?;
    let (request_reply, error) = if v6 {
        (matches!(icmp_type, 128 | 129), matches!(icmp_type, 1..=4))
    } else {
        (
            matches!(icmp_type, 0 | 8 | 13..=18),
            matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
        )
    };
    Ok(L4::Icmp {
        v6,
        icmp_type,
        code,
        echo_id: request_reply.then_some(u16::from_be_bytes([id_hi, id_lo])),
        quoted: if error {
            quoted(rest_from(seg, 8))
        } else {
            None
        },
        payload_len: seg_len.saturating_sub(8),
    })
}

/// The TCP/UDP flow quoted by an ICMP error: its IP header and the first 4 transport bytes.
fn quoted(quote: &[u8]) -> Option<Quoted> {
    let (ip_version, proto, src, dst, transport) = match quote.first()? >> 4 {
        4 => {
            let [vihl, _, _, _, _, _, fo_hi, fo_lo, _, proto, _, _, addrs @ ..] =
                array::<20>(quote, 0)?;
            let header_len = usize::from(vihl & 0x0f) * 4;
            // A later fragment quotes no transport header.
            if header_len < 20 || u16::from_be_bytes([fo_hi, fo_lo]) & 0x1fff != 0 {
                return None;
            }
            let (src, dst) = v4_addrs(addrs);
            (4, proto, src, dst, quote.get(header_len..)?)
        }
        6 => {
            let [_, _, _, _, _, _, next, _, addrs @ ..] = array::<40>(quote, 0)?;
            let (src, dst) = split_addrs(addrs);
            let rest = rest_from(quote, 40);
            let chain = ipv6_extensions(next, rest, len_u32(rest.len())).ok()?;
            if chain.fragment.is_some_and(|f| f.offset != 0) {
                return None;
            }
            (6, chain.next, src, dst, chain.rest)
        }
        _ => return None,
    };
    let [sp0, sp1, dp0, dp1] = array::<4>(transport, 0)?;
    matches!(proto, PROTO_TCP | PROTO_UDP).then_some(Quoted {
        ip_version,
        proto,
        src,
        dst,
        sport: u16::from_be_bytes([sp0, sp1]),
        dport: u16::from_be_bytes([dp0, dp1]),
    })
}

/// IP version of a BSD loopback address family: AF_INET is 2 everywhere, AF_INET6 is 24
/// (NetBSD, OpenBSD), 28 (FreeBSD) or 30 (macOS).
fn bsd_family(family: u32) -> Option<u8> {
    match family {
        2 => Some(4),
        24 | 28 | 30 => Some(6),
        _ => None,
    }
}

/// `N` bytes at `at`, if the buffer holds them.
fn array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..)?.first_chunk::<N>().copied()
}

fn be16(buf: &[u8], at: usize) -> Option<u16> {
    array::<2>(buf, at).map(u16::from_be_bytes)
}

/// The bytes from `at` on; empty when the buffer is shorter.
fn rest_from(buf: &[u8], at: usize) -> &[u8] {
    buf.get(at..).unwrap_or(&[])
}

/// A length that came from a 16-bit header field or a captured frame, as `u32`.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`), built as one word, not byte by
/// byte.
#[inline]
fn v4_word_mapped(a: u32) -> Ip {
    (0xffff_u128 << 32 | u128::from(a)).to_be_bytes()
}

/// Source and destination of an IPv4 header, IPv4-mapped.
pub(crate) fn v4_addrs(addrs: [u8; 8]) -> (Ip, Ip) {
    let both = u64::from_be_bytes(addrs);
    (
        v4_word_mapped((both >> 32) as u32),
        v4_word_mapped(both as u32),
    )
}

/// Source and destination of an IPv6 header.
pub(crate) fn split_addrs(addrs: [u8; 32]) -> (Ip, Ip) {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (s, d) = addrs.split_at(16);
    src.copy_from_slice(s);
    dst.copy_from_slice(d);
    (src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const C: [u8; 4] = [192, 0, 2, 7];
    const D: [u8; 4] = [198, 51, 100, 9];

    fn a6(last: u8) -> [u8; 16] {
        [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
        ]
    }

    fn ipv4_frag(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        payload: &[u8],
        more: bool,
        offset: u16,
    ) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let fo = (offset / 8) | if more { 0x2000 } else { 0 };
        let mut v = vec![0x45, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&0x1234u16.to_be_bytes());
        v.extend_from_slice(&fo.to_be_bytes());
        v.extend_from_slice(&[64, proto, 0, 0]);
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(payload);
        v
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        ipv4_frag(proto, src, dst, payload, false, 0)
    }

    fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[next, 64]);
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(payload);
        v
    }

    /// An IPv6 extension header of `len` bytes (a multiple of 8) followed by `next`.
    fn ext(next: u8, len: usize) -> Vec<u8> {
        let mut v = vec![next, (len / 8 - 1) as u8];
        v.resize(len, 0);
        v
    }

    fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut opts = options.to_vec();
        while opts.len() % 4 != 0 {
            opts.push(0);
        }
        let doff = ((20 + opts.len()) / 4) as u8;
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&1000u32.to_be_bytes());
        v.extend_from_slice(&2000u32.to_be_bytes());
        v.extend_from_slice(&[doff << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        v.extend_from_slice(&opts);
        v.extend_from_slice(payload);
        v
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(payload);
        v
    }

    fn icmp(icmp_type: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = vec![icmp_type, code, 0, 0];
        v.extend_from_slice(&rest);
        v.extend_from_slice(body);
        v
    }

    fn eth(etype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        v.extend_from_slice(&etype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn vlan_tag(tci: u16, etype: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = tci.to_be_bytes().to_vec();
        v.extend_from_slice(&etype.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn tcp_ports(pkt: &Packet<'_>) -> (u16, u16) {
        match pkt.l4 {
            L4::Tcp { sport, dport, .. } => (sport, dport),
            other => panic!("expected TCP, got {other:?}"),
        }
    }

    fn udp_ports(pkt: &Packet<'_>) -> (u16, u16) {
        match pkt.l4 {
            L4::Udp { sport, dport, .. } => (sport, dport),
            other => panic!("expected UDP, got {other:?}"),
        }
    }

    fn v4(a: [u8; 4]) -> Ip {
        v4_word_mapped(u32::from_be_bytes(a))
    }

    /// An Ethernet/IPv4 TCP SYN 10.0.0.1:40000 -> 10.0.0.2:80 with 5 payload bytes.
    fn eth_tcp() -> Vec<u8> {
        eth(
            0x0800,
            &ipv4(6, A, B, &tcp(40000, 80, tcp_flags::SYN, &[], b"hello")),
        )
    }

    #[test]
    fn ethernet_ipv4_tcp() {
        let frame = eth_tcp();
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!(pkt.ip_version, 4);
        assert_eq!(pkt.src, v4(A));
        assert_eq!(pkt.dst, v4(B));
        assert_eq!(pkt.ttl, 64);
        assert_eq!(pkt.vlan_count, 0);
        assert_eq!(pkt.mpls_labels, 0);
        assert!(!pkt.tunnelled);
        assert_eq!(pkt.fragment, None);
        assert_eq!(
            pkt.l4,
            L4::Tcp {
                sport: 40000,
                dport: 80,
                seq: 1000,
                ack: 2000,
                flags: tcp_flags::SYN,
                window: 0xffff,
                wscale: None,
                payload_len: 5,
                payload: b"hello",
            }
        );
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = eth(0x0800, &ipv4(17, A, B, &udp(5000, 53, &[1, 2])));
        frame.resize(60, 0xee);
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert!(matches!(
            pkt.l4,
            L4::Udp {
                payload_len: 2,
                payload: &[1, 2],
                ..
            }
        ));

        let mut frame = eth(0x0800, &ipv4(6, A, B, &tcp(1, 2, tcp_flags::ACK, &[], &[])));
        frame.resize(60, 0xee);
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert!(matches!(
            pkt.l4,
            L4::Tcp {
                payload_len: 0,
                payload: &[],
                ..
            }
        ));
    }

    #[test]
    fn ip_length_beyond_capture_keeps_header_lengths() {
        // A snap length cut the payload: lengths still come from the headers.
        let frame = eth(0x0800, &ipv4(6, A, B, &tcp(1, 2, 0, &[], &[7; 100])));
        let cut = frame.get(..frame.len() - 60).expect("shorter");
        let pkt = parse(LinkType::Ethernet, cut).expect("parses");
        match pkt.l4 {
            L4::Tcp {
                payload_len,
                payload,
                ..
            } => {
                assert_eq!(payload_len, 100);
                assert_eq!(payload.len(), 40);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qinq_vlan_ids_outermost_first() {
        let inner = ipv4(17, A, B, &udp(5000, 53, b"q"));
        let frame = eth(
            0x88a8,
            &vlan_tag(0x2064, 0x8100, &vlan_tag(200, 0x0800, &inner)),
        );
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!(pkt.vlan_count, 2);
        assert_eq!(&pkt.vlans[..2], &[100, 200]);
        assert_eq!(udp_ports(&pkt), (5000, 53));
    }

    #[test]
    fn vlan_stack_deeper_than_max_keeps_outermost() {
        let mut payload = ipv4(17, A, B, &udp(5000, 53, b"q"));
        let mut etype = 0x0800;
        for id in (1..=6u16).rev() {
            payload = vlan_tag(id, etype, &payload);
            etype = 0x8100;
        }
        let frame = eth(0x9100, &payload);
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!(usize::from(pkt.vlan_count), MAX_VLANS);
        assert_eq!(pkt.vlans, [1, 2, 3, 4]);
    }

    fn mpls_label(label: u32, bottom: bool) -> [u8; 4] {
        (label << 12 | u32::from(bottom) << 8 | 64).to_be_bytes()
    }

    #[test]
    fn mpls_stack_then_ipv4_and_ipv6() {
        let ip4 = ipv4(6, A, B, &tcp(1, 23, tcp_flags::ACK, &[], b"x"));
        let frame = eth(
            0x8847,
            &cat(&[
                &mpls_label(16, false),
                &mpls_label(17, false),
                &mpls_label(18, true),
                &ip4,
            ]),
        );
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!(pkt.mpls_labels, 3);
        assert_eq!(tcp_ports(&pkt), (1, 23));

        let ip6 = ipv6(17, a6(1), a6(2), &udp(1, 2, b""));
        let frame = eth(0x8848, &cat(&[&mpls_label(99, true), &ip6]));
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!((pkt.mpls_labels, pkt.ip_version), (1, 6));

        // Bottom of stack never reached.
        let frame = eth(0x8847, &mpls_label(16, false));
        assert_eq!(
            parse(LinkType::Ethernet, &frame),
            Err(Malformed::TruncatedLink)
        );
    }

    #[test]
    fn mpls_ethernet_pseudowire_with_control_word() {
        let inner = eth(
            0x8100,
            &vlan_tag(
                42,
                0x0800,
                &ipv4(6, C, D, &tcp(5, 6, tcp_flags::SYN, &[], &[])),
            ),
        );
        let frame = eth(
            0x8847,
            &cat(&[&mpls_label(100, true), &[0, 0, 0, 7], &inner]),
        );
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!(pkt.mpls_labels, 1);
        assert_eq!((pkt.vlan_count, pkt.vlans[0]), (1, 42));
        assert_eq!(pkt.src, v4(C));
        assert!(!pkt.tunnelled, "no outer IP header");
    }

    #[test]
    fn pppoe_session() {
        let ip4 = ipv4(17, A, B, &udp(1, 2, b"p"));
        let frame = eth(0x8864, &cat(&[&[0x11, 0, 0, 1, 0, 0, 0, 0x21], &ip4]));
        assert_eq!(
            udp_ports(&parse(LinkType::Ethernet, &frame).expect("v4")),
            (1, 2)
        );
        let ip6 = ipv6(17, a6(1), a6(2), &udp(3, 4, b""));
        let frame = eth(0x8864, &cat(&[&[0x11, 0, 0, 1, 0, 0, 0, 0x57], &ip6]));
        assert_eq!(
            udp_ports(&parse(LinkType::Ethernet, &frame).expect("v6")),
            (3, 4)
        );
        let frame = eth(0x8864, &[0x11, 0, 0, 1, 0, 2, 0xc0, 0x21]);
        assert_eq!(parse(LinkType::Ethernet, &frame), Err(Malformed::NotIp));
    }

    #[test]
    fn not_ip_link_payloads() {
        let arp = eth(0x0806, &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(parse(LinkType::Ethernet, &arp), Err(Malformed::NotIp));
        let lldp = eth(0x88cc, &[2, 7, 4]);
        assert_eq!(parse(LinkType::Ethernet, &lldp), Err(Malformed::NotIp));
        // 802.3 length field with an STP LLC header.
        let stp = eth(38, &[0x42, 0x42, 0x03, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(LinkType::Ethernet, &stp), Err(Malformed::NotIp));
        // 802.3 with LLC/SNAP carrying IPv4 is IP.
        let snap = eth(
            60,
            &cat(&[
                &[0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00],
                &ipv4(17, A, B, &udp(1, 2, b"")),
            ]),
        );
        assert_eq!(
            udp_ports(&parse(LinkType::Ethernet, &snap).expect("snap")),
            (1, 2)
        );
        assert_eq!(
            parse(LinkType::Ethernet, &[0; 13]),
            Err(Malformed::TruncatedLink)
        );
    }

    #[test]
    fn linux_cooked_v1_and_v2() {
        let ip4 = ipv4(6, A, B, &tcp(1, 2, 0, &[], &[]));
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip4);
        assert_eq!(
            tcp_ports(&parse(LinkType::LinuxSll, &sll).expect("sll")),
            (1, 2)
        );

        let mut sll_vlan = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x81, 0x00];
        sll_vlan.extend_from_slice(&vlan_tag(7, 0x0800, &ip4));
        let pkt = parse(LinkType::LinuxSll, &sll_vlan).expect("sll vlan");
        assert_eq!((pkt.vlan_count, pkt.vlans[0]), (1, 7));

        let ip6 = ipv6(6, a6(1), a6(2), &tcp(3, 4, 0, &[], &[]));
        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
        ];
        sll2.extend_from_slice(&ip6);
        let pkt = parse(LinkType::LinuxSll2, &sll2).expect("sll2");
        assert_eq!((pkt.ip_version, tcp_ports(&pkt)), (6, (3, 4)));

        assert_eq!(
            parse(LinkType::LinuxSll, &[0; 15]),
            Err(Malformed::TruncatedLink)
        );
        assert_eq!(
            parse(LinkType::LinuxSll2, &[8, 0, 0]),
            Err(Malformed::TruncatedLink)
        );
    }

    #[test]
    fn raw_ip_link_types() {
        let ip4 = ipv4(17, A, B, &udp(1, 2, b""));
        let ip6 = ipv6(17, a6(1), a6(2), &udp(1, 2, b""));
        assert_eq!(parse(LinkType::RawIp, &ip4).expect("v4").ip_version, 4);
        assert_eq!(parse(LinkType::RawIp, &ip6).expect("v6").ip_version, 6);
        assert!(parse(LinkType::RawIpv4, &ip4).is_ok());
        assert!(parse(LinkType::RawIpv6, &ip6).is_ok());
        assert_eq!(parse(LinkType::RawIpv4, &ip6), Err(Malformed::BadIpVersion));
        assert_eq!(parse(LinkType::RawIpv6, &ip4), Err(Malformed::BadIpVersion));
        assert_eq!(
            parse(LinkType::RawIp, &[0x55; 40]),
            Err(Malformed::BadIpVersion)
        );
        assert_eq!(parse(LinkType::RawIp, &[]), Err(Malformed::TruncatedIp));
    }

    #[test]
    fn bsd_loopback_both_byte_orders() {
        let ip4 = ipv4(17, A, B, &udp(1, 2, b""));
        let ip6 = ipv6(17, a6(1), a6(2), &udp(1, 2, b""));
        for family in [[2, 0, 0, 0], [0, 0, 0, 2]] {
            let frame = cat(&[&family, &ip4]);
            assert_eq!(
                parse(LinkType::Null, &frame).expect("null v4").ip_version,
                4
            );
        }
        for family in [[24, 0, 0, 0], [0, 0, 0, 28], [30, 0, 0, 0]] {
            let frame = cat(&[&family, &ip6]);
            assert_eq!(
                parse(LinkType::Null, &frame).expect("null v6").ip_version,
                6
            );
        }
        let frame = cat(&[&[0, 0, 0, 24], &ip6]);
        assert_eq!(parse(LinkType::Loop, &frame).expect("loop").ip_version, 6);
        let frame = cat(&[&[2, 0, 0, 0], &ip4]);
        assert_eq!(parse(LinkType::Loop, &frame), Err(Malformed::NotIp));
        let frame = cat(&[&[7, 0, 0, 0], &ip4]);
        assert_eq!(parse(LinkType::Null, &frame), Err(Malformed::NotIp));
        assert_eq!(
            parse(LinkType::Null, &[2, 0]),
            Err(Malformed::TruncatedLink)
        );
    }

    #[test]
    fn ipv6_extension_headers() {
        let segment = tcp(443, 50000, tcp_flags::ACK, &[], b"abc");
        let mut ah = vec![6, 4]; // (4 + 2) * 4 = 24 bytes
        ah.resize(24, 0);
        let chain = cat(&[
            &ext(43, 8),  // hop-by-hop -> routing
            &ext(60, 8),  // routing -> destination options
            &ext(51, 16), // destination options -> AH
            &ah,          // AH -> TCP
            &segment,
        ]);
        let frame = eth(0x86dd, &ipv6(0, a6(1), a6(2), &chain));
        let pkt = parse(LinkType::Ethernet, &frame).expect("parses");
        assert_eq!(pkt.ip_version, 6);
        assert_eq!((pkt.src, pkt.dst), (a6(1), a6(2)));
        assert!(matches!(
            pkt.l4,
            L4::Tcp {
                sport: 443,
                payload_len: 3,
                payload: b"abc",
                ..
            }
        ));

        let esp = ipv6(60, a6(1), a6(2), &cat(&[&ext(50, 8), &[0; 16]]));
        assert_eq!(
            parse(LinkType::RawIpv6, &esp).expect("esp").l4,
            L4::Other { proto: 50 }
        );
        let none = ipv6(59, a6(1), a6(2), &[]);
        assert_eq!(
            parse(LinkType::RawIpv6, &none).expect("no next").l4,
            L4::Other { proto: 59 }
        );
        // Mobility header as a chain member.
        let mobility = ipv6(135, a6(1), a6(2), &cat(&[&ext(17, 8), &udp(1, 2, b"")]));
        assert_eq!(
            udp_ports(&parse(LinkType::RawIpv6, &mobility).expect("mob")),
            (1, 2)
        );

        // A chain cut by the snap length, and one longer than the payload length.
        let full = ipv6(0, a6(1), a6(2), &cat(&[&ext(6, 16), &segment]));
        assert_eq!(
            parse(LinkType::RawIpv6, full.get(..50).expect("cut")),
            Err(Malformed::TruncatedIpv6Extension)
        );
        let mut lying = ipv6(0, a6(1), a6(2), &ext(6, 16));
        lying[5] = 8; // payload length 8 < the 16-byte header
        assert_eq!(
            parse(LinkType::RawIpv6, &lying),
            Err(Malformed::BadIpTotalLength)
        );
    }

    #[test]
    fn ipv6_jumbo_payload_length_zero_uses_capture() {
        let mut frame = ipv6(0, a6(1), a6(2), &cat(&[&ext(17, 8), &udp(1, 2, &[9; 10])]));
        frame[4] = 0;
        frame[5] = 0;
        let pkt = parse(LinkType::RawIpv6, &frame).expect("jumbo");
        assert!(matches!(
            pkt.l4,
            L4::Udp {
                payload_len: 10,
                ..
            }
        ));
    }

    #[test]
    fn ipv4_tso_total_length_zero_uses_capture() {
        let mut frame = ipv4(6, A, B, &tcp(1, 2, 0, &[], &[1; 30]));
        frame[2] = 0;
        frame[3] = 0;
        let pkt = parse(LinkType::RawIp, &frame).expect("tso");
        assert!(matches!(
            pkt.l4,
            L4::Tcp {
                payload_len: 30,
                ..
            }
        ));
    }

    #[test]
    fn ipv4_first_and_later_fragments() {
        // A 1008-byte UDP datagram split at 800 bytes.
        let datagram = udp(5353, 53, &[3; 1000]);
        let (head, tail) = datagram.split_at(800);
        let first = eth(0x0800, &ipv4_frag(17, A, B, head, true, 0));
        let pkt = parse(LinkType::Ethernet, &first).expect("first");
        assert_eq!(
            pkt.fragment,
            Some(Fragment {
                id: 0x1234,
                offset: 0,
                more: true,
                len: 800,
                proto: 17
            })
        );
        match pkt.l4 {
            L4::Udp {
                sport: 5353,
                payload_len,
                payload,
                ..
            } => {
                assert_eq!(payload_len, 1000, "from the UDP header");
                assert_eq!(payload.len(), 792, "what this fragment holds");
            }
            other => panic!("{other:?}"),
        }

        let later = eth(0x0800, &ipv4_frag(17, A, B, tail, false, 800));
        let pkt = parse(LinkType::Ethernet, &later).expect("later");
        assert_eq!(pkt.l4, L4::Fragment);
        assert_eq!(
            pkt.fragment,
            Some(Fragment {
                id: 0x1234,
                offset: 800,
                more: false,
                len: 208,
                proto: 17
            })
        );

        // A first TCP fragment: payload_len is this fragment's bytes minus the TCP header.
        let segment = tcp(1, 2, tcp_flags::ACK, &[], &[5; 1400]);
        let first = ipv4_frag(6, A, B, segment.get(..1000).expect("head"), true, 0);
        let pkt = parse(LinkType::RawIp, &first).expect("tcp first");
        assert!(matches!(
            pkt.l4,
            L4::Tcp {
                payload_len: 980,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_fragment_header() {
        let datagram = udp(1, 2, &[4; 100]);
        let (head, tail) = datagram.split_at(56);
        let frag = |offset: u16, more: bool| -> Vec<u8> {
            let mut h = vec![17, 0];
            h.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
            h.extend_from_slice(&0xdead_beefu32.to_be_bytes());
            h
        };
        let first = ipv6(44, a6(1), a6(2), &cat(&[&frag(0, true), head]));
        let pkt = parse(LinkType::RawIpv6, &first).expect("first");
        assert_eq!(
            pkt.fragment,
            Some(Fragment {
                id: 0xdead_beef,
                offset: 0,
                more: true,
                len: 56,
                proto: 17
            })
        );
        assert!(matches!(
            pkt.l4,
            L4::Udp {
                payload_len: 100,
                ..
            }
        ));

        let later = ipv6(44, a6(1), a6(2), &cat(&[&frag(56, false), tail]));
        let pkt = parse(LinkType::RawIpv6, &later).expect("later");
        assert_eq!(pkt.l4, L4::Fragment);
        assert_eq!(
            pkt.fragment.map(|f| (f.offset, f.more, f.len)),
            Some((56, false, 52))
        );

        // An atomic fragment is a whole datagram.
        let atomic = ipv6(44, a6(1), a6(2), &cat(&[&frag(0, false), &datagram]));
        let pkt = parse(LinkType::RawIpv6, &atomic).expect("atomic");
        assert_eq!(pkt.fragment, None);
        assert_eq!(udp_ports(&pkt), (1, 2));
    }

    #[test]
    fn ip_in_ip_keys_by_inner_header() {
        let mut inner = ipv4(6, C, D, &tcp(7, 8, tcp_flags::SYN, &[], &[]));
        inner[8] = 33;
        let frame = eth(0x0800, &ipv4(4, A, B, &inner));
        let pkt = parse(LinkType::Ethernet, &frame).expect("4in4");
        assert_eq!((pkt.src, pkt.dst, pkt.ttl), (v4(C), v4(D), 33));
        assert!(pkt.tunnelled);
        assert_eq!(tcp_ports(&pkt), (7, 8));

        let inner6 = ipv6(17, a6(1), a6(2), &udp(9, 10, b""));
        let frame = ipv4(41, A, B, &inner6);
        let pkt = parse(LinkType::RawIp, &frame).expect("6in4");
        assert_eq!((pkt.ip_version, pkt.tunnelled), (6, true));

        // ICMP inside IP-in-IP is the inner ICMP.
        let ping = ipv4(1, C, D, &icmp(8, 0, [0, 9, 0, 1], b""));
        let frame = ipv4(4, A, B, &ping);
        let pkt = parse(LinkType::RawIp, &frame).expect("icmp");
        assert!(pkt.tunnelled);
        assert!(matches!(
            pkt.l4,
            L4::Icmp {
                echo_id: Some(9),
                ..
            }
        ));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut frame = ipv4(17, C, D, &udp(1, 2, b""));
        for _ in 0..MAX_TUNNELS {
            frame = ipv4(4, A, B, &frame);
        }
        assert_eq!(
            udp_ports(&parse(LinkType::RawIp, &frame).expect("at the limit")),
            (1, 2)
        );
        let frame = ipv4(4, A, B, &frame);
        assert_eq!(parse(LinkType::RawIp, &frame), Err(Malformed::TooDeep));
    }

    #[test]
    fn gre_variants() {
        let inner = ipv4(6, C, D, &tcp(11, 12, tcp_flags::ACK, &[], b"g"));
        // Key and sequence number present.
        let gre = cat(&[&[0x30, 0x00, 0x08, 0x00, 0, 0, 0, 1, 0, 0, 0, 2], &inner]);
        let frame = ipv4(47, A, B, &gre);
        let pkt = parse(LinkType::RawIp, &frame).expect("gre key seq");
        assert_eq!(
            (pkt.src, tcp_ports(&pkt), pkt.tunnelled),
            (v4(C), (11, 12), true)
        );

        // Checksum present, IPv6 inside.
        let inner6 = ipv6(6, a6(3), a6(4), &tcp(13, 14, 0, &[], &[]));
        let gre = cat(&[&[0x80, 0x00, 0x86, 0xdd, 0, 0, 0, 0], &inner6]);
        let frame = ipv4(47, A, B, &gre);
        let pkt = parse(LinkType::RawIp, &frame).expect("gre csum");
        assert_eq!((pkt.ip_version, tcp_ports(&pkt)), (6, (13, 14)));

        // Transparent Ethernet bridging with a VLAN tag inside.
        let bridged = eth(
            0x8100,
            &vlan_tag(300, 0x0800, &ipv4(17, C, D, &udp(1, 2, b""))),
        );
        let gre = cat(&[&[0x00, 0x00, 0x65, 0x58], &bridged]);
        let frame = ipv4(47, A, B, &gre);
        let pkt = parse(LinkType::RawIp, &frame).expect("gre teb");
        assert_eq!((pkt.vlan_count, pkt.vlans[0], pkt.src), (1, 300, v4(C)));

        // MPLS inside GRE.
        let gre = cat(&[&[0x00, 0x00, 0x88, 0x47], &mpls_label(5, true), &inner]);
        let frame = ipv4(47, A, B, &gre);
        let pkt = parse(LinkType::RawIp, &frame).expect("gre mpls");
        assert_eq!((pkt.mpls_labels, tcp_ports(&pkt)), (1, (11, 12)));

        // Enhanced GRE (PPTP) with sequence number, PPP inside.
        let gre = cat(&[
            &[0x30, 0x01, 0x88, 0x0b, 0, 20, 0, 7, 0, 0, 0, 1],
            &[0xff, 0x03, 0x00, 0x21],
            &inner,
        ]);
        let frame = ipv4(47, A, B, &gre);
        let pkt = parse(LinkType::RawIp, &frame).expect("pptp");
        assert_eq!(tcp_ports(&pkt), (11, 12));

        // ICMP inside GRE is the inner ICMP.
        let ping = ipv4(1, C, D, &icmp(0, 0, [0, 3, 0, 1], b""));
        let gre = cat(&[&[0x00, 0x00, 0x08, 0x00], &ping]);
        let frame = ipv4(47, A, B, &gre);
        let pkt = parse(LinkType::RawIp, &frame).expect("gre icmp");
        assert_eq!((pkt.src, pkt.tunnelled), (v4(C), true));
        assert!(matches!(
            pkt.l4,
            L4::Icmp {
                icmp_type: 0,
                echo_id: Some(3),
                ..
            }
        ));

        // ARP bridged over GRE, an unknown protocol, a cut header: the outer GRE packet.
        let arp = cat(&[&[0x00, 0x00, 0x65, 0x58], &eth(0x0806, &[0; 28])]);
        let unknown = [0x00, 0x00, 0x88, 0xbe, 1, 2, 3, 4];
        for gre in [&arp[..], &unknown[..], &[0x20, 0x00, 0x08, 0x00, 0, 0][..]] {
            let frame = ipv4(47, A, B, gre);
            let pkt = parse(LinkType::RawIp, &frame).expect("outer");
            assert_eq!(
                (pkt.l4, pkt.src, pkt.vlan_count),
                (L4::Other { proto: 47 }, v4(A), 0)
            );
        }
    }

    #[test]
    fn teredo_with_inner_tcp_is_inner() {
        let inner = ipv6(6, a6(5), a6(6), &tcp(80, 1234, tcp_flags::ACK, &[], b"t"));
        let frame = eth(0x0800, &ipv4(17, A, B, &udp(3544, 40000, &inner)));
        let pkt = parse(LinkType::Ethernet, &frame).expect("teredo");
        assert_eq!((pkt.ip_version, pkt.src, pkt.tunnelled), (6, a6(5), true));
        assert_eq!(tcp_ports(&pkt), (80, 1234));

        // With an origin indication and an authentication header in front.
        let origin = [0x00, 0x00, 0xff, 0xff, 1, 2, 3, 4];
        let auth = [0x00, 0x01, 2, 1, 9, 9, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let payload = cat(&[&auth, &origin, &inner]);
        let frame = ipv4(17, A, B, &udp(40000, 3544, &payload));
        let pkt = parse(LinkType::RawIp, &frame).expect("teredo headers");
        assert_eq!((tcp_ports(&pkt), pkt.tunnelled), ((80, 1234), true));
    }

    #[test]
    fn teredo_without_inner_transport_is_outer_udp() {
        // Router solicitation, as Teredo qualification sends.
        let rs = ipv6(58, a6(7), a6(8), &icmp(133, 0, [0; 4], b""));
        let frame = eth(0x0800, &ipv4(17, A, B, &udp(40000, 3544, &rs)));
        let pkt = parse(LinkType::Ethernet, &frame).expect("rs");
        assert_eq!((pkt.ip_version, pkt.src, pkt.tunnelled), (4, v4(A), false));
        assert!(matches!(
            pkt.l4,
            L4::Udp {
                sport: 40000,
                dport: 3544,
                payload_len: 48,
                ..
            }
        ));

        // A bubble: IPv6 with no next header and no payload.
        let bubble = ipv6(59, a6(7), a6(8), &[]);
        let frame = ipv4(17, A, B, &udp(3544, 40000, &bubble));
        let pkt = parse(LinkType::RawIp, &frame).expect("bubble");
        assert_eq!(udp_ports(&pkt), (3544, 40000));
        assert!(!pkt.tunnelled);

        // Not IPv6 at all, or an inner packet that is malformed.
        let frame = ipv4(
            17,
            A,
            B,
            &udp(3544, 40000, b"some other protocol here....."),
        );
        assert_eq!(
            udp_ports(&parse(LinkType::RawIp, &frame).expect("junk")),
            (3544, 40000)
        );
        let mut broken = ipv6(6, a6(5), a6(6), &tcp(1, 2, 0, &[], &[]));
        broken[40 + 12] = 0x20; // TCP data offset 2
        let frame = ipv4(17, A, B, &udp(3544, 40000, &broken));
        assert_eq!(
            udp_ports(&parse(LinkType::RawIp, &frame).expect("broken")),
            (3544, 40000)
        );
    }

    #[test]
    fn vxlan_inner_ethernet() {
        let inner = eth(
            0x0800,
            &ipv4(6, C, D, &tcp(21, 22, tcp_flags::SYN, &[], &[])),
        );
        let header = [0x08, 0, 0, 0, 0, 0, 0x64, 0];
        let frame = eth(
            0x8100,
            &vlan_tag(
                10,
                0x0800,
                &ipv4(17, A, B, &udp(50000, 4789, &cat(&[&header, &inner]))),
            ),
        );
        let pkt = parse(LinkType::Ethernet, &frame).expect("vxlan");
        assert_eq!(
            (pkt.src, pkt.tunnelled, tcp_ports(&pkt)),
            (v4(C), true, (21, 22))
        );
        assert_eq!((pkt.vlan_count, pkt.vlans[0]), (1, 10));

        // ARP inside (with an inner VLAN): the outer UDP packet, without the inner VLAN.
        let arp = eth(0x8100, &vlan_tag(20, 0x0806, &[0; 28]));
        let frame = eth(
            0x8100,
            &vlan_tag(
                10,
                0x0800,
                &ipv4(17, A, B, &udp(50000, 4789, &cat(&[&header, &arp]))),
            ),
        );
        let pkt = parse(LinkType::Ethernet, &frame).expect("vxlan arp");
        assert_eq!(udp_ports(&pkt), (50000, 4789));
        assert_eq!((pkt.vlan_count, pkt.tunnelled, pkt.src), (1, false, v4(A)));
    }

    #[test]
    fn gtp_u_and_geneve() {
        let inner = ipv4(17, C, D, &udp(1000, 2000, b"user"));
        let gtp = cat(&[&[0x30, 0xff, 0, inner.len() as u8, 0, 0, 0, 1], &inner]);
        let frame = ipv4(17, A, B, &udp(2152, 2152, &gtp));
        let pkt = parse(LinkType::RawIp, &frame).expect("gtp");
        assert_eq!((udp_ports(&pkt), pkt.tunnelled), ((1000, 2000), true));

        // Sequence number flag and one extension header (PDU session container).
        let gtp = cat(&[
            &[0x36, 0xff, 0, 0, 0, 0, 0, 1, 0, 7, 0, 0x85],
            &[1, 0x10, 9, 0],
            &inner,
        ]);
        let frame = ipv4(17, A, B, &udp(2152, 2152, &gtp));
        let pkt = parse(LinkType::RawIp, &frame).expect("gtp ext");
        assert_eq!(udp_ports(&pkt), (1000, 2000));

        // Echo request (not a G-PDU): the outer UDP packet.
        let echo = [0x32, 0x01, 0, 4, 0, 0, 0, 0, 0, 1, 0, 0];
        let frame = ipv4(17, A, B, &udp(2152, 2152, &echo));
        assert_eq!(
            udp_ports(&parse(LinkType::RawIp, &frame).expect("echo")),
            (2152, 2152)
        );

        let geneve = cat(&[
            &[0x01, 0, 0x65, 0x58, 0, 0, 1, 0],
            &[0; 4],
            &eth(0x0800, &inner),
        ]);
        let frame = ipv4(17, A, B, &udp(40000, 6081, &geneve));
        let pkt = parse(LinkType::RawIp, &frame).expect("geneve");
        assert_eq!((udp_ports(&pkt), pkt.src), ((1000, 2000), v4(C)));
    }

    #[test]
    fn icmp_echo_and_messages() {
        let ping = ipv4(1, A, B, &icmp(8, 0, [0x12, 0x34, 0, 1], &[0; 56]));
        let pkt = parse(LinkType::RawIp, &ping).expect("ping");
        assert_eq!(
            pkt.l4,
            L4::Icmp {
                v6: false,
                icmp_type: 8,
                code: 0,
                echo_id: Some(0x1234),
                quoted: None,
                payload_len: 56
            }
        );
        let ping6 = ipv6(58, a6(1), a6(2), &icmp(129, 0, [0, 5, 0, 1], b""));
        assert!(matches!(
            parse(LinkType::RawIpv6, &ping6).expect("ping6").l4,
            L4::Icmp {
                v6: true,
                icmp_type: 129,
                echo_id: Some(5),
                ..
            }
        ));
        let ns = ipv6(58, a6(1), a6(2), &icmp(135, 0, [0; 4], &[0; 16]));
        assert!(matches!(
            parse(LinkType::RawIpv6, &ns).expect("ns").l4,
            L4::Icmp {
                echo_id: None,
                quoted: None,
                payload_len: 16,
                ..
            }
        ));
        let short = ipv4(1, A, B, &[8, 0, 0]);
        assert_eq!(
            parse(LinkType::RawIp, &short),
            Err(Malformed::TruncatedIcmp)
        );
    }

    #[test]
    fn icmp_errors_quote_tcp_and_udp() {
        // Port unreachable quoting UDP 10.0.0.2:5000 -> 192.0.2.7:161.
        let quoted_udp = ipv4(17, B, C, &udp(5000, 161, b"snmp"));
        let err = ipv4(1, C, B, &icmp(3, 3, [0; 4], &quoted_udp));
        let pkt = parse(LinkType::RawIp, &err).expect("unreachable");
        let L4::Icmp {
            quoted,
            payload_len,
            ..
        } = pkt.l4
        else {
            panic!("{:?}", pkt.l4)
        };
        assert_eq!(payload_len, quoted_udp.len() as u32);
        assert_eq!(
            quoted,
            Some(Quoted {
                ip_version: 4,
                proto: 17,
                src: v4(B),
                dst: v4(C),
                sport: 5000,
                dport: 161
            })
        );

        // Time exceeded quoting TCP, with only 8 transport bytes quoted.
        let quoted_tcp = ipv4(6, A, D, &tcp(40000, 443, tcp_flags::SYN, &[], &[]));
        let err = ipv4(
            1,
            C,
            A,
            &icmp(11, 0, [0; 4], quoted_tcp.get(..28).expect("28")),
        );
        assert!(matches!(
            parse(LinkType::RawIp, &err).expect("ttl exceeded").l4,
            L4::Icmp {
                quoted: Some(Quoted {
                    proto: 6,
                    sport: 40000,
                    dport: 443,
                    ..
                }),
                ..
            }
        ));

        // A quote too short for the ports, and a quote of a later fragment: no flow.
        let err = ipv4(
            1,
            C,
            A,
            &icmp(3, 4, [0; 4], quoted_tcp.get(..22).expect("22")),
        );
        assert!(matches!(
            parse(LinkType::RawIp, &err).expect("short quote").l4,
            L4::Icmp { quoted: None, .. }
        ));
        let later = ipv4_frag(6, A, D, &[0; 16], false, 1480);
        let err = ipv4(1, C, A, &icmp(3, 4, [0; 4], &later));
        assert!(matches!(
            parse(LinkType::RawIp, &err).expect("frag quote").l4,
            L4::Icmp { quoted: None, .. }
        ));

        // ICMPv6 packet too big quoting IPv6/TCP, and unreachable quoting IPv6 with a
        // destination-options header then UDP.
        let q6 = ipv6(
            6,
            a6(1),
            a6(2),
            &tcp(40001, 22, tcp_flags::ACK, &[], &[0; 100]),
        );
        let err = ipv6(58, a6(9), a6(1), &icmp(2, 0, [0, 0, 5, 0], &q6));
        assert!(matches!(
            parse(LinkType::RawIpv6, &err).expect("ptb").l4,
            L4::Icmp {
                v6: true,
                icmp_type: 2,
                quoted: Some(Quoted {
                    ip_version: 6,
                    proto: 6,
                    sport: 40001,
                    dport: 22,
                    ..
                }),
                ..
            }
        ));
        let q6 = ipv6(60, a6(1), a6(2), &cat(&[&ext(17, 8), &udp(5353, 53, b"")]));
        let err = ipv6(58, a6(2), a6(1), &icmp(1, 4, [0; 4], &q6));
        let pkt = parse(LinkType::RawIpv6, &err).expect("unreach6");
        assert!(matches!(
            pkt.l4,
            L4::Icmp {
                quoted: Some(Quoted {
                    proto: 17,
                    sport: 5353,
                    dport: 53,
                    ..
                }),
                ..
            }
        ));
        assert!(!pkt.tunnelled);
    }

    #[test]
    fn tcp_window_scale_option() {
        // MSS, SACK permitted, timestamps, NOP, window scale 7.
        let options = [
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let frame = ipv4(6, A, B, &tcp(1, 2, tcp_flags::SYN, &options, &[]));
        assert!(matches!(
            parse(LinkType::RawIp, &frame).expect("syn").l4,
            L4::Tcp {
                wscale: Some(7),
                payload_len: 0,
                ..
            }
        ));
        // The same option on a segment without SYN means nothing and is not read.
        let frame = ipv4(6, A, B, &tcp(1, 2, tcp_flags::ACK, &options, &[]));
        assert!(matches!(
            parse(LinkType::RawIp, &frame).expect("ack").l4,
            L4::Tcp { wscale: None, .. }
        ));
        assert_eq!(window_scale(&[1, 1, 3, 3, 14]), Some(14));
        assert_eq!(window_scale(&[1, 1, 3, 3]), None, "cut option");
        assert_eq!(window_scale(&[2, 4, 5]), None, "cut list");
        assert_eq!(window_scale(&[2, 0, 3, 3, 1]), None, "zero length stops");
        assert_eq!(window_scale(&[0, 3, 3, 1]), None, "after end of list");
        assert_eq!(
            window_scale(&[8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 2]),
            Some(2)
        );
    }

    #[test]
    fn bad_header_lengths() {
        let mut frame = ipv4(6, A, B, &tcp(1, 2, 0, &[], &[]));
        frame[0] = 0x44;
        assert_eq!(
            parse(LinkType::RawIp, &frame),
            Err(Malformed::BadIpHeaderLength)
        );

        let mut frame = ipv4(6, A, B, &tcp(1, 2, 0, &[], &[]));
        frame[3] = 19;
        assert_eq!(
            parse(LinkType::RawIp, &frame),
            Err(Malformed::BadIpTotalLength)
        );

        let mut frame = ipv4(6, A, B, &tcp(1, 2, 0, &[], &[]));
        frame[20 + 12] = 0x40;
        assert_eq!(
            parse(LinkType::RawIp, &frame),
            Err(Malformed::BadTcpHeaderLength)
        );

        let mut frame = ipv4(6, A, B, &tcp(1, 2, 0, &[], &[]));
        frame[20 + 12] = 0x60; // 24-byte header in a 20-byte segment
        assert_eq!(
            parse(LinkType::RawIp, &frame),
            Err(Malformed::BadTcpHeaderLength)
        );

        let mut frame = ipv4(17, A, B, &udp(1, 2, b"abc"));
        frame[20 + 5] = 7;
        assert_eq!(parse(LinkType::RawIp, &frame), Err(Malformed::BadUdpLength));

        // A UDP length beyond the IP payload is clamped to it.
        let mut frame = ipv4(17, A, B, &udp(1, 2, b"abc"));
        frame[20 + 5] = 200;
        assert!(matches!(
            parse(LinkType::RawIp, &frame).expect("clamped").l4,
            L4::Udp {
                payload_len: 3,
                payload: b"abc",
                ..
            }
        ));

        let frame = ipv4(17, A, B, &[0, 1, 0, 2]);
        assert_eq!(parse(LinkType::RawIp, &frame), Err(Malformed::TruncatedUdp));
    }

    #[test]
    fn truncation_at_every_byte_of_a_tcp_frame() {
        let options = [2, 4, 5, 0xb4, 1, 3, 3, 8];
        let frame = eth(
            0x8100,
            &vlan_tag(
                5,
                0x0800,
                &ipv4(6, A, B, &tcp(1, 2, tcp_flags::SYN, &options, b"payload")),
            ),
        );
        let headers = 14 + 4 + 20 + 20;
        for n in 0..=frame.len() {
            let cut = frame.get(..n).expect("prefix");
            let res = parse(LinkType::Ethernet, cut);
            if n < headers {
                assert!(res.is_err(), "{n} bytes parsed: {res:?}");
            } else {
                let pkt = res.expect("fixed headers present");
                assert_eq!(tcp_ports(&pkt), (1, 2));
                let wscale_in = n >= headers + options.len();
                assert!(matches!(
                    pkt.l4,
                    L4::Tcp { payload_len: 7, wscale, .. } if wscale.is_some() == wscale_in
                ));
            }
        }
    }

    #[test]
    fn malformed_reasons_are_listed_once() {
        for (i, reason) in Malformed::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            let text = reason.as_str();
            assert_eq!(
                Malformed::ALL.iter().filter(|r| r.as_str() == text).count(),
                1
            );
        }
    }

    const LINKS: [LinkType; 8] = [
        LinkType::Ethernet,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::RawIp,
        LinkType::RawIpv4,
        LinkType::RawIpv6,
        LinkType::Null,
        LinkType::Loop,
    ];

    /// Frames that reach deep into the parser, for mutation.
    fn seeds() -> Vec<(LinkType, Vec<u8>)> {
        let inner6 = ipv6(
            0,
            a6(5),
            a6(6),
            &cat(&[
                &ext(44, 8),
                &[6, 0, 0, 1, 0, 0, 0, 9],
                &tcp(1, 2, 2, &[3, 3, 1], b"x"),
            ]),
        );
        let vxlan_inner = eth(
            0x8100,
            &vlan_tag(3, 0x0800, &ipv4(17, C, D, &udp(1, 2, b""))),
        );
        let quote = ipv4(
            1,
            C,
            A,
            &icmp(3, 3, [0; 4], &ipv4(17, A, C, &udp(1, 2, b""))),
        );
        vec![
            (LinkType::Ethernet, eth_tcp()),
            (
                LinkType::Ethernet,
                eth(0x0800, &ipv4(17, A, B, &udp(3544, 9, &inner6))),
            ),
            (
                LinkType::Ethernet,
                eth(
                    0x8847,
                    &cat(&[
                        &mpls_label(1, true),
                        &[0; 4],
                        &eth(
                            0x0800,
                            &ipv4(
                                17,
                                A,
                                B,
                                &udp(9, 4789, &cat(&[&[8, 0, 0, 0, 0, 0, 1, 0], &vxlan_inner])),
                            ),
                        ),
                    ]),
                ),
            ),
            (
                LinkType::RawIp,
                ipv4(
                    47,
                    A,
                    B,
                    &cat(&[
                        &[0xb0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2],
                        &quote,
                    ]),
                ),
            ),
            (LinkType::RawIpv6, inner6),
        ]
    }

    thread_local! {
        /// Frames the short way of [`ethernet_ip_tcp_udp`] took on this thread.
        pub(super) static SHORT_WAY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// An Ethernet frame of the short way's shape, with every field it looks at open to
    /// change: tag, ethertype, IP version and header length, lengths, fragment bits,
    /// protocol, TCP data offset and flags or UDP ports (tunnel ones too) and length,
    /// padding and the snap length.
    fn short_way_frame() -> impl Strategy<Value = (Vec<u8>, bool)> {
        let tag = prop_oneof![
            Just(None),
            Just(Some(ETHERTYPE_VLAN)),
            Just(Some(ETHERTYPE_QINQ))
        ];
        let ip = prop_oneof![Just(4u8), Just(6u8)];
        let first = prop_oneof![4 => Just(None), 1 => any::<u8>().prop_map(Some)];
        let len_delta = prop_oneof![4 => Just(0i32), 1 => -60i32..60, 1 => Just(i32::MIN)];
        let frag = prop_oneof![
            Just(0u16),
            Just(0x4000),
            Just(0x2000),
            Just(0x0001),
            any::<u16>()
        ];
        let proto = prop_oneof![4 => Just(PROTO_TCP), 3 => Just(PROTO_UDP), 1 => any::<u8>()];
        let doff = prop_oneof![4 => Just(None), 1 => (0u8..16).prop_map(Some)];
        let port = prop_oneof![
            4 => Just(53u16),
            1 => prop::sample::select(TUNNEL_PORTS.to_vec()),
            1 => any::<u16>(),
        ];
        // The UDP length field: as built, or changed (0 and below 8 included).
        let udp_len = prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some), 1 => (0u16..10).prop_map(Some)];
        (
            (tag, ip, first, len_delta, frag, proto),
            (
                doff,
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..16),
                (
                    port.clone(),
                    port,
                    udp_len,
                    prop::option::of((0usize..4, any::<bool>())),
                ),
            ),
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                0usize..8,
                any::<usize>(),
            ),
        )
            .prop_map(|(net, seg, rest)| {
                let (tag, ip, first, len_delta, frag, proto) = net;
                let (doff, flags, options, (mut sport, mut dport, udp_len, tunnel)) = seg;
                let (mut payload, padding, cut) = rest;
                // A tunnel the walk follows: its port on one side, a packet inside.
                if let Some((kind, on_source)) = tunnel {
                    let inner_tcp = tcp(1000, 80, 0x18, &[], b"x");
                    let inner_v4 = ipv4(PROTO_TCP, [192, 168, 0, 1], [192, 168, 0, 2], &inner_tcp);
                    let (port, mut head, body) = match kind {
                        0 => (
                            PORT_VXLAN,
                            vec![8, 0, 0, 0, 0, 0, 1, 0],
                            eth(ETHERTYPE_IPV4, &inner_v4),
                        ),
                        1 => (
                            PORT_TEREDO,
                            vec![],
                            ipv6(PROTO_TCP, a6(7), a6(8), &inner_tcp),
                        ),
                        2 => (PORT_GTP_U, vec![0x30, 0xff, 0, 0, 0, 0, 0, 1], inner_v4),
                        _ => (
                            PORT_GENEVE,
                            vec![0, 0, 0x65, 0x58, 0, 0, 1, 0],
                            eth(ETHERTYPE_IPV4, &inner_v4),
                        ),
                    };
                    if on_source {
                        sport = port;
                    } else {
                        dport = port;
                    }
                    head.extend_from_slice(&body);
                    payload = head;
                }
                // What the IP header carries: TCP, or UDP for the UDP protocol number.
                let t = if proto == PROTO_UDP {
                    let mut u = udp(sport, dport, &payload);
                    if let Some(l) = udp_len {
                        u[4..6].copy_from_slice(&l.to_be_bytes());
                    }
                    u
                } else {
                    let mut t = tcp(40000, 443, flags, &options, &payload);
                    if let Some(d) = doff {
                        t[12] = d << 4;
                    }
                    t
                };
                let mut l3 = if ip == 4 {
                    ipv4_frag(proto, [10, 0, 0, 1], [10, 0, 0, 2], &t, false, 0)
                } else {
                    ipv6(proto, a6(1), a6(2), &t)
                };
                let len_at = if ip == 4 { 2 } else { 4 };
                let len = i32::from(u16::from_be_bytes([l3[len_at], l3[len_at + 1]]));
                let len = if len_delta == i32::MIN {
                    0
                } else {
                    (len + len_delta).clamp(0, 0xffff)
                };
                l3[len_at..len_at + 2].copy_from_slice(&(len as u16).to_be_bytes());
                if ip == 4 {
                    l3[6..8].copy_from_slice(&frag.to_be_bytes());
                }
                if let Some(b) = first {
                    l3[0] = b;
                }
                let etype = if ip == 4 {
                    ETHERTYPE_IPV4
                } else {
                    ETHERTYPE_IPV6
                };
                let mut frame = match tag {
                    Some(t) => eth(t, &vlan_tag(0x2064, etype, &l3)),
                    None => eth(etype, &l3),
                };
                frame.resize(frame.len() + padding, 0);
                let plain_udp = !TUNNEL_PORTS.contains(&sport)
                    && !TUNNEL_PORTS.contains(&dport)
                    && udp_len.is_none();
                let plain = first.is_none()
                    && len_delta == 0
                    && (ip == 6 || frag & 0x3fff == 0)
                    && ((proto == PROTO_TCP && doff.is_none())
                        || (proto == PROTO_UDP && plain_udp))
                    && tag != Some(ETHERTYPE_QINQ);
                let whole = cut % 4 != 0;
                if !whole {
                    frame.truncate(cut % (frame.len() + 1));
                }
                (frame, plain && whole)
            })
    }

    proptest! {
        #[test]
        fn short_way_gives_what_the_walk_gives((frame, plain) in short_way_frame()) {
            let before = SHORT_WAY.with(std::cell::Cell::get);
            let short = parse(LinkType::Ethernet, &frame);
            let took = SHORT_WAY.with(std::cell::Cell::get) != before;
            prop_assert_eq!(short, walk(LinkType::Ethernet, &frame));
            // A well-formed frame of its shape goes the short way.
            prop_assert!(took || !plain, "short way refused {:02x?}", frame);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for link in LINKS {
                let _ = parse(link, &bytes);
            }
        }

        #[test]
        fn mutated_frames_never_panic(
            seed in 0usize..5,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let seeds = seeds();
            let (link, mut frame) = seeds[seed % seeds.len()].clone();
            for (at, value) in edits {
                let at = at % frame.len();
                frame[at] = value;
            }
            let cut = cut % (frame.len() + 1);
            let _ = parse(link, &frame);
            let _ = parse(link, &frame[..cut]);
        }
    }

    #[test]
    fn seeds_parse_to_their_innermost_transport() {
        for (link, frame) in seeds() {
            let pkt = parse(link, &frame).expect("seed parses");
            assert!(
                !matches!(pkt.l4, L4::Other { .. }),
                "{link:?}: {:?}",
                pkt.l4
            );
        }
    }

    /// Frames of a legacy pcap file and its link type (both byte orders, µs or ns).
    fn pcap_frames(file: &[u8]) -> (u32, Vec<&[u8]>) {
        let magic = file.get(..4).expect("pcap header");
        let little = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => panic!("not a legacy pcap file"),
        };
        let word = |at: usize| -> u32 {
            let b: [u8; 4] = file
                .get(at..at + 4)
                .expect("pcap word")
                .try_into()
                .expect("4 bytes");
            if little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }
        };
        let linktype = word(20) & 0x0fff_ffff;
        let mut frames = Vec::new();
        let mut at = 24;
        while at + 16 <= file.len() {
            let caplen = word(at + 8) as usize;
            let frame = file
                .get(at + 16..at + 16 + caplen)
                .expect("record inside the file");
            frames.push(frame);
            at += 16 + caplen;
        }
        (linktype, frames)
    }

    #[test]
    fn real_captures_parse_without_malformed_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/real");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (the corpus must sit beside the repository)",
                    dir.display()
                )
            })
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
            .collect();
        paths.sort();
        assert!(paths.len() >= 10, "corpus has {} captures", paths.len());
        let mut failures = Vec::new();
        let (mut frames_total, mut vlan_frames, mut mpls_frames) = (0, 0, 0);
        for path in &paths {
            let file = std::fs::read(path).expect("capture readable");
            let (linktype, frames) = pcap_frames(&file);
            let link = LinkType::from_linktype(linktype as i32).expect("supported link type");
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            for (i, frame) in frames.iter().enumerate() {
                frames_total += 1;
                match parse(link, frame) {
                    Ok(pkt) => {
                        if name == "zeek_mixed-vlan-mpls.pcap" {
                            vlan_frames += usize::from(pkt.vlan_count > 0);
                            mpls_frames += usize::from(pkt.mpls_labels > 0);
                        }
                    }
                    Err(Malformed::NotIp) => {}
                    Err(e) => failures.push(format!("{name} frame {}: {e:?}", i + 1)),
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} malformed: {failures:?}",
            failures.len()
        );
        assert!(frames_total > 10_000, "{frames_total} frames");
        assert_eq!(
            (vlan_frames, mpls_frames),
            (14, 11),
            "zeek_mixed-vlan-mpls.pcap"
        );
    }
}
