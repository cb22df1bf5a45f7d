//! Packet parsing: link layer to transport, for every link type and encapsulation conntrail
//! meets, without allocating and without panicking on any input.
//!
//! INTERFACE (fixed; the body is being written): see the type docs below.

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
        /// Window-scale option, when present (only meaningful on SYN segments).
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
        /// Echo request/reply identifier (ICMP 8/0, ICMPv6 128/129), else `None`.
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
    /// The transport was found inside a tunnel (IP-in-IP, GRE, Teredo, VXLAN, ...).
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

/// Parses one frame of the given link type.
pub fn parse(link: LinkType, frame: &[u8]) -> Result<Packet<'_>, Malformed> {
    let _ = (link, frame);
    Err(Malformed::TruncatedLink)
}
