//! `conntrail filter`: a Wireshark display filter and a BPF filter for exactly one recorded
//! connection, and the [`Selection`] of frames behind them, which `conntrail extract` applies
//! to captures itself.
//!
//! One description, three renderings: [`Selection::of`] turns a record into "these frames
//! belong to the connection"; [`Selection::wireshark`] and [`Selection::bpf`] print it for
//! tshark/Wireshark and tcpdump/libpcap; [`Selection::matches`] tests a parsed frame. The
//! extract tests hold `extract` and tshark with the printed filter to the same frames.
//!
//! What belongs to a TCP/UDP connection:
//! - its packets in both directions, matched exactly (`ip.src==A && tcp.srcport==P &&
//!   ip.dst==B && tcp.dstport==Q`, and the reverse), never the loose
//!   `ip.addr==A && ip.addr==B && tcp.port==P && tcp.port==Q` that also takes A:Q <-> B:P;
//! - ICMP/ICMPv6 errors (ICMP types 3, 4, 5, 11, 12; ICMPv6 1-4) whose quoted header is the
//!   connection's, in either direction. tshark shows the quoted IP header as the second IP
//!   layer (`ip.src#2`), and the quoted transport header as the frame's only `tcp`/`udp`;
//! - when the record saw IP fragments (a `fragment` tracking point, or points were dropped):
//!   every fragment between the two addresses with the connection's IP protocol. Only a
//!   first fragment carries ports, and tshark shows them on the reassembling frame only, so
//!   fragments cannot be tied to the ports; a datagram between the same two hosts in the same
//!   time window is taken too;
//! - only within the record's time window: from its first packet to its last packet or its
//!   last tracking point (an ICMP error can come after the last packet), each widened by
//!   [`WINDOW_MARGIN_NS`]. A 5-tuple reused by another connection earlier or later in the
//!   same capture is then not caught;
//! - on its VLANs: the record's tag stack (outermost first), and when the VLAN changed
//!   mid-connection (a `vlan-change` point; the tracker records the first change only) the new
//!   outer tag or no tag. A record without VLANs and without a change matches any tagging.
//!
//! ICMP records carry no echo identifier, so an echo (timestamp, information, address-mask)
//! record selects every request and reply of its pair of types between its two addresses in
//! the window; another ICMP message record selects its type and code between its two
//! addresses. They are matched on the frame's first IP header (`ip.src#1`), so ICMP carried
//! in an IP tunnel is not selected.
//!
//! The BPF filter cannot test time (use `editcap -A START -B END` first; the text form prints
//! the command), follows at most one VLAN alternative (`vlan` shifts the offsets of the rest
//! of the expression: with two tagged alternatives it matches any outer VLAN), does not see
//! through MPLS or tunnels, and assumes no IPv6 extension headers besides a fragment header.
//! It does look inside ICMP errors: the quoted IPv4 header's length is read from the packet,
//! the quoted IPv6 header is taken as the fixed 40 bytes followed by TCP/UDP.
//!
//! ```
//! use forensics::filter::Selection;
//! # fn demo(rec: &flowtable::record::Record<'_>) {
//! let sel = Selection::of(rec);
//! println!("tshark -Y '{}'", sel.wireshark());
//! println!("tcpdump '{}'", sel.bpf());
//! # }
//! ```

use std::net::IpAddr;
use std::process::ExitCode;

use flowtable::key::{FlowKey, KeyKind};
use flowtable::packet::{Packet, L4};
use flowtable::point::PointKind;
use flowtable::record::{Addr, Endpoint, Proto, Record};
use serde_json::json;

use crate::logs::RecordRef;

/// How far the time window reaches beyond the record's first and last instants: 1 us. The
/// record's times come from the same capture, so it only absorbs rounding between timestamp
/// resolutions (a pcapng interface may count in units that are not a power of ten); it is
/// far below the time any 5-tuple takes to be reused.
pub const WINDOW_MARGIN_NS: u64 = 1_000;

/// Arguments of `conntrail filter`.
#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    /// The connection, as LOG:ID.
    pub record: RecordRef,
    /// Print one JSON object: `wireshark`, `bpf` and `window_ns` (`from`, `to`).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: FilterArgs) -> anyhow::Result<ExitCode> {
    let mut damaged = crate::exit::Damaged::default();
    let rec = args.record.load(|d| damaged.log(d))?;
    let sel = Selection::of(&rec);
    let mut text = if args.json {
        json!({
            "wireshark": sel.wireshark(),
            "bpf": sel.bpf(),
            "window_ns": {"from": sel.from_ns, "to": sel.to_ns},
        })
        .to_string()
    } else {
        format!(
            "# Wireshark display filter (tshark -Y): both directions, ICMP errors quoting it, \
             {} to {}\n{}\n# BPF (tcpdump, capture filters): no time test; restrict a file first \
             with: editcap -A {} -B {} IN OUT\n{}",
            crate::units::utc_text(sel.from_ns),
            crate::units::utc_text(sel.to_ns),
            sel.wireshark(),
            epoch_text(sel.from_ns),
            epoch_text(sel.to_ns),
            sel.bpf()
        )
    };
    text.push('\n');
    crate::logs::print_and_exit(&text, &damaged)
}

/// The Wireshark display filter for exactly this connection (see the module documentation).
pub fn wireshark_filter(rec: &Record<'_>) -> String {
    Selection::of(rec).wireshark()
}

/// The BPF filter for this connection, as close as BPF allows (see the module documentation).
pub fn bpf_filter(rec: &Record<'_>) -> String {
    Selection::of(rec).bpf()
}

/// The frames that belong to one recorded connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Capture time window, ns since the epoch, both ends included.
    pub from_ns: u64,
    pub to_ns: u64,
    /// Accepted VLAN taggings, any of them; empty: any tagging.
    pub vlans: Vec<VlanMatch>,
    pub target: Target,
    /// IP fragments between the two addresses with the target's protocol are selected.
    pub fragments: bool,
}

/// One accepted VLAN tagging of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VlanMatch {
    Untagged,
    /// These outermost tags, outermost first (deeper tags are not tested).
    Tags(Vec<u16>),
}

/// What a frame must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A TCP or UDP connection: its packets both ways and ICMP errors quoting them.
    Ports {
        tcp: bool,
        client: Endpoint,
        server: Endpoint,
    },
    /// ICMP messages with an identifier (echo, timestamp, ...): these two types, both ways.
    IcmpPair {
        client: Addr,
        server: Addr,
        types: [u8; 2],
    },
    /// Any other ICMP message: this type and code, both ways.
    IcmpMessage {
        client: Addr,
        server: Addr,
        icmp_type: u8,
        code: u8,
    },
}

impl Target {
    fn addrs(&self) -> (Addr, Addr) {
        match *self {
            Target::Ports { client, server, .. } => (client.ip, server.ip),
            Target::IcmpPair { client, server, .. }
            | Target::IcmpMessage { client, server, .. } => (client, server),
        }
    }

    fn v6(&self) -> bool {
        self.addrs().0.to_ip().is_ipv6()
    }

    /// The IP protocol number.
    fn proto(&self) -> u8 {
        match *self {
            Target::Ports { tcp: true, .. } => 6,
            Target::Ports { tcp: false, .. } => 17,
            _ if self.v6() => 58,
            _ => 1,
        }
    }
}

/// The other type of a request/reply pair that carries an identifier, and the pair.
fn ident_pair(v6: bool, icmp_type: u8) -> Option<[u8; 2]> {
    let pairs: &[[u8; 2]] = if v6 {
        &[[128, 129]]
    } else {
        &[[8, 0], [13, 14], [15, 16], [17, 18]]
    };
    pairs.iter().copied().find(|p| p.contains(&icmp_type))
}

/// ICMP error types whose quote tshark and conntrail decode.
const ICMP4_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

impl Selection {
    /// The frames of `rec`, as the module documentation describes.
    pub fn of(rec: &Record<'_>) -> Selection {
        let last_point_ns = rec
            .points
            .iter()
            .map(|p| rec.start_ns.saturating_add(p.t_ns))
            .max()
            .unwrap_or(0);
        let last_ns = rec.end_ns.max(last_point_ns);
        let change = rec
            .points
            .iter()
            .find(|p| p.kind == PointKind::VlanChange)
            .map(|p| p.arg as u16);
        let initial = if rec.vlans.is_empty() {
            VlanMatch::Untagged
        } else {
            VlanMatch::Tags(rec.vlans.to_vec())
        };
        let vlans = match change {
            None if rec.vlans.is_empty() => Vec::new(),
            None => vec![initial],
            Some(0) => vec![initial, VlanMatch::Untagged],
            Some(outer) => vec![initial, VlanMatch::Tags(vec![outer])],
        };
        let target = match rec.proto {
            Proto::Tcp | Proto::Udp => Target::Ports {
                tcp: rec.proto == Proto::Tcp,
                client: rec.client,
                server: rec.server,
            },
            Proto::Icmp => {
                let v6 = rec.client.ip.to_ip().is_ipv6();
                let [icmp_type, code] = rec.icmp_type_code.to_be_bytes();
                match ident_pair(v6, icmp_type) {
                    Some(types) => Target::IcmpPair {
                        client: rec.client.ip,
                        server: rec.server.ip,
                        types,
                    },
                    None => Target::IcmpMessage {
                        client: rec.client.ip,
                        server: rec.server.ip,
                        icmp_type,
                        code,
                    },
                }
            }
        };
        Selection {
            from_ns: rec.start_ns.saturating_sub(WINDOW_MARGIN_NS),
            to_ns: last_ns.saturating_add(WINDOW_MARGIN_NS),
            vlans,
            target,
            fragments: rec.points_dropped > 0
                || rec.points.iter().any(|p| p.kind == PointKind::Fragment),
        }
    }

    /// Whether a frame captured at `ts_ns` that parsed as `pkt` belongs to the connection.
    pub fn matches(&self, ts_ns: u64, pkt: &Packet<'_>) -> bool {
        ts_ns >= self.from_ns && ts_ns <= self.to_ns && self.vlans_match(pkt) && {
            let (a, b) = self.target.addrs();
            let between = (pkt.src == a.0 && pkt.dst == b.0) || (pkt.src == b.0 && pkt.dst == a.0);
            if let Some(f) = pkt.fragment {
                // Fragments are tied to the connection by addresses and protocol only; ICMP
                // records are matched on the first IP layer.
                let layer = matches!(self.target, Target::Ports { .. }) || !pkt.tunnelled;
                return self.fragments && f.proto == self.target.proto() && between && layer;
            }
            match (self.target, pkt.l4) {
                (
                    Target::Ports {
                        tcp,
                        client,
                        server,
                    },
                    l4,
                ) => {
                    let (key, _) = FlowKey::from_endpoints(
                        if tcp { 6 } else { 17 },
                        client.ip.0,
                        client.port,
                        server.ip.0,
                        server.port,
                        KeyKind::Ports,
                    );
                    match l4 {
                        L4::Icmp {
                            quoted: Some(q), ..
                        } => {
                            !pkt.tunnelled
                                && FlowKey::from_endpoints(
                                    q.proto,
                                    q.src,
                                    q.sport,
                                    q.dst,
                                    q.dport,
                                    KeyKind::Ports,
                                )
                                .0 == key
                        }
                        L4::Icmp { .. } => false,
                        _ => FlowKey::of(pkt).is_some_and(|(k, _)| k == key),
                    }
                }
                (
                    Target::IcmpPair { types, .. },
                    L4::Icmp {
                        v6,
                        icmp_type,
                        echo_id: Some(_),
                        ..
                    },
                ) => {
                    v6 == self.target.v6()
                        && types.contains(&icmp_type)
                        && between
                        && !pkt.tunnelled
                }
                (
                    Target::IcmpMessage {
                        icmp_type: t,
                        code: c,
                        ..
                    },
                    L4::Icmp {
                        v6,
                        icmp_type,
                        code,
                        ..
                    },
                ) => {
                    v6 == self.target.v6()
                        && icmp_type == t
                        && code == c
                        && between
                        && !pkt.tunnelled
                }
                _ => false,
            }
        }
    }

    fn vlans_match(&self, pkt: &Packet<'_>) -> bool {
        self.vlans.is_empty()
            || self.vlans.iter().any(|m| match m {
                VlanMatch::Untagged => pkt.vlan_count == 0,
                VlanMatch::Tags(tags) => {
                    usize::from(pkt.vlan_count) >= tags.len()
                        && pkt.vlans.get(..tags.len()) == Some(&tags[..])
                }
            })
    }

    /// The Wireshark display filter.
    pub fn wireshark(&self) -> String {
        let mut parts = vec![format!(
            "frame.time_epoch >= {} && frame.time_epoch <= {}",
            epoch_text(self.from_ns),
            epoch_text(self.to_ns)
        )];
        let vlans: Vec<String> = self
            .vlans
            .iter()
            .map(|m| match m {
                VlanMatch::Untagged => "!vlan".to_string(),
                VlanMatch::Tags(tags) => tags
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("vlan.id#{}=={t}", i + 1))
                    .collect::<Vec<_>>()
                    .join(" && "),
            })
            .collect();
        match vlans.len() {
            0 => {}
            1 => parts.push(vlans.join("")),
            _ => parts.push(format!("(({}))", vlans.join(") || ("))),
        }
        let v6 = self.target.v6();
        let (ip, icmp) = if v6 {
            ("ipv6", "icmpv6")
        } else {
            ("ip", "icmp")
        };
        let (a, b) = self.target.addrs();
        let (a, b) = (a.to_ip(), b.to_ip());
        let mut any = Vec::new();
        match self.target {
            Target::Ports {
                tcp,
                client,
                server,
            } => {
                let l4 = if tcp { "tcp" } else { "udp" };
                let way = |layer: &str, s: &Endpoint, d: &Endpoint| {
                    format!(
                        "({ip}.src{layer}=={} && {l4}.srcport=={} && {ip}.dst{layer}=={} && \
                         {l4}.dstport=={})",
                        s.ip.to_ip(),
                        s.port,
                        d.ip.to_ip(),
                        d.port
                    )
                };
                any.push(format!(
                    "(!{icmp} && ({} || {}))",
                    way("", &client, &server),
                    way("", &server, &client)
                ));
                let errors = if v6 { "1,2,3,4" } else { "3,4,5,11,12" };
                any.push(format!(
                    "({icmp}.type#1 in {{{errors}}} && ({} || {}))",
                    way("#2", &client, &server),
                    way("#2", &server, &client)
                ));
                if self.fragments {
                    any.push(format!(
                        "(!{icmp} && {} && {})",
                        fragment_test(v6, self.target.proto(), ""),
                        pair_test(ip, "", a, b)
                    ));
                }
            }
            Target::IcmpPair { types, .. } => {
                any.push(format!(
                    "({icmp}.type#1 in {{{},{}}} && {})",
                    types[0],
                    types[1],
                    pair_test(ip, "#1", a, b)
                ));
            }
            Target::IcmpMessage {
                icmp_type, code, ..
            } => {
                any.push(format!(
                    "({icmp}.type#1=={icmp_type} && {icmp}.code#1=={code} && {})",
                    pair_test(ip, "#1", a, b)
                ));
            }
        }
        if self.fragments && !matches!(self.target, Target::Ports { .. }) {
            any.push(format!(
                "({} && {})",
                fragment_test(v6, self.target.proto(), "#1"),
                pair_test(ip, "#1", a, b)
            ));
        }
        parts.push(if any.len() == 1 {
            any.join("")
        } else {
            format!("({})", any.join(" || "))
        });
        parts.join(" && ")
    }

    /// The BPF filter (libpcap syntax).
    pub fn bpf(&self) -> String {
        let (a, b) = self.target.addrs();
        let (a, b) = (a.to_ip(), b.to_ip());
        let v6 = self.target.v6();
        let hosts = format!("((src host {a} and dst host {b}) or (src host {b} and dst host {a}))");
        let mut any = Vec::new();
        match self.target {
            Target::Ports {
                tcp,
                client,
                server,
            } => {
                let l4 = if tcp { "tcp" } else { "udp" };
                let way = |s: &Endpoint, d: &Endpoint| {
                    format!(
                        "({l4} and src host {} and src port {} and dst host {} and dst port {})",
                        s.ip.to_ip(),
                        s.port,
                        d.ip.to_ip(),
                        d.port
                    )
                };
                any.push(way(&client, &server));
                any.push(way(&server, &client));
                let proto = self.target.proto();
                let quoted = |s: &Endpoint, d: &Endpoint| {
                    let mut tests = Vec::new();
                    if v6 {
                        for (i, word) in words(s.ip.to_ip()).iter().enumerate() {
                            tests.push(format!("icmp6[{}:4] == 0x{word:08x}", 16 + 4 * i));
                        }
                        for (i, word) in words(d.ip.to_ip()).iter().enumerate() {
                            tests.push(format!("icmp6[{}:4] == 0x{word:08x}", 32 + 4 * i));
                        }
                        tests.push(format!("icmp6[48:2] == {}", s.port));
                        tests.push(format!("icmp6[50:2] == {}", d.port));
                    } else {
                        tests.push(format!("icmp[20:4] == 0x{:08x}", words(s.ip.to_ip())[0]));
                        tests.push(format!("icmp[24:4] == 0x{:08x}", words(d.ip.to_ip())[0]));
                        tests.push(format!("icmp[8 + ((icmp[8] & 15) << 2):2] == {}", s.port));
                        tests.push(format!("icmp[10 + ((icmp[8] & 15) << 2):2] == {}", d.port));
                    }
                    format!("({})", tests.join(" and "))
                };
                let errors = if v6 {
                    format!("icmp6 and icmp6[0] >= 1 and icmp6[0] <= 4 and icmp6[14] == {proto}")
                } else {
                    let types: Vec<String> = ICMP4_ERRORS
                        .iter()
                        .map(|t| format!("icmp[0] == {t}"))
                        .collect();
                    format!("icmp and ({}) and icmp[17] == {proto}", types.join(" or "))
                };
                any.push(format!(
                    "({errors} and ({} or {}))",
                    quoted(&client, &server),
                    quoted(&server, &client)
                ));
            }
            Target::IcmpPair { types, .. } => {
                let test = icmp_bpf(v6, |at| {
                    format!("({} == {} or {} == {})", at(0), types[0], at(0), types[1])
                });
                any.push(format!("({test} and {hosts})"));
            }
            Target::IcmpMessage {
                icmp_type, code, ..
            } => {
                let test = icmp_bpf(v6, |at| {
                    format!("{} == {icmp_type} and {} == {code}", at(0), at(1))
                });
                any.push(format!("({test} and {hosts})"));
            }
        }
        if self.fragments {
            let proto = self.target.proto();
            let fragment = if v6 {
                format!("ip6[6] == 44 and ip6[40] == {proto}")
            } else {
                format!("ip[9] == {proto} and (ip[6:2] & 0x3fff) != 0")
            };
            any.push(format!("({fragment} and {hosts})"));
        }
        let inner = any.join(" or ");
        let tags = |tags: &[u16]| {
            tags.iter()
                .map(|t| format!("vlan {t}"))
                .collect::<Vec<_>>()
                .join(" and ")
        };
        match self.vlans.as_slice() {
            [] | [VlanMatch::Untagged] => inner,
            [VlanMatch::Tags(t)] => format!("{} and ({inner})", tags(t)),
            // `vlan` shifts the offsets for the rest of the expression: untagged goes first.
            [VlanMatch::Untagged, VlanMatch::Tags(t)]
            | [VlanMatch::Tags(t), VlanMatch::Untagged] => {
                format!("({inner}) or ({} and ({inner}))", tags(t))
            }
            _ => format!("vlan and ({inner})"),
        }
    }
}

/// An ICMP/ICMPv6 header test; `test` is given how to read the header's byte at an offset.
/// ICMPv6 behind a hop-by-hop options header (MLD always has one) is tested too: libpcap's
/// `icmp6` only sees ICMPv6 right after the IPv6 header.
fn icmp_bpf(v6: bool, test: impl Fn(&dyn Fn(u32) -> String) -> String) -> String {
    if v6 {
        let direct = |off: u32| format!("icmp6[{off}]");
        let behind_hop_by_hop = |off: u32| format!("ip6[{} + (ip6[41] << 3)]", 48 + off);
        format!(
            "((icmp6 and {}) or (ip6[6] == 0 and ip6[40] == 58 and {}))",
            test(&direct),
            test(&behind_hop_by_hop)
        )
    } else {
        let direct = |off: u32| format!("icmp[{off}]");
        format!("icmp and {}", test(&direct))
    }
}

/// Seconds since the epoch with nine decimals, as `frame.time_epoch` and `editcap -A` take.
pub fn epoch_text(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// `(ip.src==A && ip.dst==B) || (ip.src==B && ip.dst==A)` on one IP layer.
fn pair_test(ip: &str, layer: &str, a: IpAddr, b: IpAddr) -> String {
    format!(
        "(({ip}.src{layer}=={a} && {ip}.dst{layer}=={b}) || ({ip}.src{layer}=={b} && \
         {ip}.dst{layer}=={a}))"
    )
}

/// A fragment (first or later) of a datagram of IP protocol `proto`.
fn fragment_test(v6: bool, proto: u8, layer: &str) -> String {
    if v6 {
        format!("ipv6.fraghdr.nxt{layer}=={proto}")
    } else {
        format!("ip.proto{layer}=={proto} && (ip.flags.mf{layer}==1 || ip.frag_offset{layer}>0)")
    }
}

/// The address as big-endian 32-bit words (one for IPv4, four for IPv6).
fn words(ip: IpAddr) -> Vec<u32> {
    match ip {
        IpAddr::V4(v4) => vec![u32::from(v4)],
        IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use flowtable::packet::{parse, LinkType};
    use flowtable::point::{Dir, Point, Severity};
    use flowtable::record::{CloseReason, ConnState, DirStats, Flags, History, Latency};

    use super::*;

    fn ep(ip: IpAddr, port: u16) -> Endpoint {
        Endpoint {
            ip: Addr::from_ip(ip),
            port,
        }
    }

    fn record(proto: Proto, client: Endpoint, server: Endpoint) -> Record<'static> {
        Record {
            id: 7,
            worker: 0,
            context: 0,
            proto,
            ip_version: if client.ip.to_ip().is_ipv6() { 6 } else { 4 },
            client,
            server,
            midstream: false,
            vlans: Cow::Owned(Vec::new()),
            start_ns: 1_600_000_000_500_000_000,
            end_ns: 1_600_000_001_250_000_000,
            c2s: DirStats::default(),
            s2c: DirStats::default(),
            close_reason: CloseReason::TcpFin,
            conn_state: ConnState::SF,
            history: History::default(),
            flags: Flags::ALL,
            irregular_point: None,
            latency: Latency::default(),
            points: Cow::Owned(Vec::new()),
            points_dropped: 0,
            icmp_type_code: 0,
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn point(t_ns: u64, kind: PointKind, arg: u32) -> Point {
        Point {
            t_ns,
            kind,
            dir: Dir::C2s,
            severity: Severity::Info,
            arg,
        }
    }

    fn tcp_record() -> Record<'static> {
        record(
            Proto::Tcp,
            ep(v4(10, 0, 0, 1), 40000),
            ep(v4(10, 0, 0, 2), 443),
        )
    }

    #[test]
    fn tcp_filters_are_exact_both_ways_with_quoted_errors_and_a_window() {
        let rec = tcp_record();
        assert_eq!(
            wireshark_filter(&rec),
            "frame.time_epoch >= 1600000000.499999000 && frame.time_epoch <= \
             1600000001.250001000 && ((!icmp && ((ip.src==10.0.0.1 && tcp.srcport==40000 && \
             ip.dst==10.0.0.2 && tcp.dstport==443) || (ip.src==10.0.0.2 && tcp.srcport==443 && \
             ip.dst==10.0.0.1 && tcp.dstport==40000))) || (icmp.type#1 in {3,4,5,11,12} && \
             ((ip.src#2==10.0.0.1 && tcp.srcport==40000 && ip.dst#2==10.0.0.2 && \
             tcp.dstport==443) || (ip.src#2==10.0.0.2 && tcp.srcport==443 && \
             ip.dst#2==10.0.0.1 && tcp.dstport==40000))))"
        );
        assert_eq!(
            bpf_filter(&rec),
            "(tcp and src host 10.0.0.1 and src port 40000 and dst host 10.0.0.2 and dst port \
             443) or (tcp and src host 10.0.0.2 and src port 443 and dst host 10.0.0.1 and dst \
             port 40000) or (icmp and (icmp[0] == 3 or icmp[0] == 4 or icmp[0] == 5 or icmp[0] \
             == 11 or icmp[0] == 12) and icmp[17] == 6 and ((icmp[20:4] == 0x0a000001 and \
             icmp[24:4] == 0x0a000002 and icmp[8 + ((icmp[8] & 15) << 2):2] == 40000 and icmp[10 \
             + ((icmp[8] & 15) << 2):2] == 443) or (icmp[20:4] == 0x0a000002 and icmp[24:4] == \
             0x0a000001 and icmp[8 + ((icmp[8] & 15) << 2):2] == 443 and icmp[10 + ((icmp[8] & \
             15) << 2):2] == 40000)))"
        );
    }

    #[test]
    fn the_window_reaches_the_last_tracking_point() {
        let mut rec = tcp_record();
        // An ICMP error 2 s after the last packet.
        rec.points = Cow::Owned(vec![
            point(0, PointKind::Syn, 0),
            point(2_750_000_000, PointKind::IcmpError, 0x0303),
        ]);
        let sel = Selection::of(&rec);
        assert_eq!(sel.from_ns, rec.start_ns - WINDOW_MARGIN_NS);
        assert_eq!(sel.to_ns, rec.start_ns + 2_750_000_000 + WINDOW_MARGIN_NS);
    }

    #[test]
    fn udp_over_ipv6_uses_ipv6_and_icmpv6_fields() {
        let a: IpAddr = "2001:db8::1".parse().expect("v6");
        let b: IpAddr = "2001:db8::53".parse().expect("v6");
        let rec = record(Proto::Udp, ep(a, 5353), ep(b, 53));
        let w = wireshark_filter(&rec);
        assert!(w.contains(
            "(!icmpv6 && ((ipv6.src==2001:db8::1 && udp.srcport==5353 && ipv6.dst==2001:db8::53 \
             && udp.dstport==53) || (ipv6.src==2001:db8::53 && udp.srcport==53 && \
             ipv6.dst==2001:db8::1 && udp.dstport==5353)))"
        ));
        assert!(w.contains("icmpv6.type#1 in {1,2,3,4} && ((ipv6.src#2==2001:db8::1"));
        let bpf = bpf_filter(&rec);
        assert!(bpf.starts_with("(udp and src host 2001:db8::1 and src port 5353"));
        assert!(bpf.contains(
            "icmp6 and icmp6[0] >= 1 and icmp6[0] <= 4 and icmp6[14] == 17 and ((icmp6[16:4] \
             == 0x20010db8 and icmp6[20:4] == 0x00000000 and icmp6[24:4] == 0x00000000 and \
             icmp6[28:4] == 0x00000001 and icmp6[32:4] == 0x20010db8"
        ));
        assert!(bpf.contains("icmp6[48:2] == 5353 and icmp6[50:2] == 53)"));
    }

    #[test]
    fn vlans_and_a_vlan_change() {
        let mut rec = tcp_record();
        rec.vlans = Cow::Owned(vec![100, 20]);
        let w = wireshark_filter(&rec);
        assert!(
            w.contains(" && vlan.id#1==100 && vlan.id#2==20 && ("),
            "{w}"
        );
        assert!(bpf_filter(&rec).starts_with("vlan 100 and vlan 20 and ((tcp and"));
        // Moved to no tag: both alternatives, untagged first for BPF.
        rec.points = Cow::Owned(vec![point(5, PointKind::VlanChange, 0)]);
        let w = wireshark_filter(&rec);
        assert!(
            w.contains(" && ((vlan.id#1==100 && vlan.id#2==20) || (!vlan)) && ("),
            "{w}"
        );
        let bpf = bpf_filter(&rec);
        assert!(bpf.starts_with("((tcp and"), "{bpf}");
        assert!(
            bpf.contains(") or (vlan 100 and vlan 20 and ((tcp and"),
            "{bpf}"
        );
        // Moved to another tag: BPF can only say "some VLAN".
        rec.points = Cow::Owned(vec![point(5, PointKind::VlanChange, 7)]);
        assert!(wireshark_filter(&rec)
            .contains(" && ((vlan.id#1==100 && vlan.id#2==20) || (vlan.id#1==7)) && ("));
        assert!(bpf_filter(&rec).starts_with("vlan and ((tcp and"));
    }

    #[test]
    fn fragments_are_selected_only_when_the_record_saw_some() {
        let mut rec = record(
            Proto::Udp,
            ep(v4(192, 0, 2, 1), 53),
            ep(v4(192, 0, 2, 9), 33000),
        );
        assert!(!wireshark_filter(&rec).contains("frag_offset"));
        rec.points = Cow::Owned(vec![point(0, PointKind::Fragment, 0)]);
        assert!(wireshark_filter(&rec).contains(
            " || (!icmp && ip.proto==17 && (ip.flags.mf==1 || ip.frag_offset>0) && \
             ((ip.src==192.0.2.1 && ip.dst==192.0.2.9) || (ip.src==192.0.2.9 && \
             ip.dst==192.0.2.1))))"
        ));
        assert!(bpf_filter(&rec).ends_with(
            " or (ip[9] == 17 and (ip[6:2] & 0x3fff) != 0 and ((src host 192.0.2.1 and dst \
             host 192.0.2.9) or (src host 192.0.2.9 and dst host 192.0.2.1)))"
        ));
    }

    #[test]
    fn icmp_records_select_their_types_on_the_first_ip_layer() {
        let mut rec = record(Proto::Icmp, ep(v4(10, 0, 0, 1), 0), ep(v4(10, 0, 0, 2), 0));
        rec.icmp_type_code = 8 << 8;
        let w = wireshark_filter(&rec);
        assert!(w.ends_with(
            " && (icmp.type#1 in {8,0} && ((ip.src#1==10.0.0.1 && ip.dst#1==10.0.0.2) || \
             (ip.src#1==10.0.0.2 && ip.dst#1==10.0.0.1)))"
        ));
        assert_eq!(
            bpf_filter(&rec),
            "(icmp and (icmp[0] == 8 or icmp[0] == 0) and ((src host 10.0.0.1 and dst host \
             10.0.0.2) or (src host 10.0.0.2 and dst host 10.0.0.1)))"
        );
        rec.icmp_type_code = 3 << 8 | 3;
        assert!(wireshark_filter(&rec).contains("(icmp.type#1==3 && icmp.code#1==3 && "));
        assert!(bpf_filter(&rec).starts_with("(icmp and icmp[0] == 3 and icmp[1] == 3 and "));
        let a = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let mut rec = record(Proto::Icmp, ep(a, 0), ep(a, 0));
        rec.icmp_type_code = 129 << 8;
        assert!(wireshark_filter(&rec).contains("(icmpv6.type#1 in {128,129} && ((ipv6.src#1==::1"));
    }

    /// Ethernet + IPv4 + UDP `src:sport -> dst:dport`, optionally inside an ICMP error.
    fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    fn icmp_error(from: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + quoted.len() - 14) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 2, 0, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&from);
        f.extend_from_slice(&to);
        f.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&quoted[14..]);
        f
    }

    #[test]
    fn selection_takes_both_directions_and_quoting_errors_only() {
        let rec = record(
            Proto::Udp,
            ep(v4(10, 0, 0, 1), 5000),
            ep(v4(10, 0, 0, 2), 53),
        );
        let sel = Selection::of(&rec);
        let t = rec.start_ns;
        let (a, b, r) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 9, 9, 9]);
        let yes = [
            udp_frame(a, 5000, b, 53),
            udp_frame(b, 53, a, 5000),
            icmp_error(b, a, &udp_frame(a, 5000, b, 53)),
            icmp_error(r, b, &udp_frame(b, 53, a, 5000)),
        ];
        for f in &yes {
            let pkt = parse(LinkType::Ethernet, f).expect("parses");
            assert!(sel.matches(t, &pkt), "{pkt:?}");
            assert!(!sel.matches(sel.to_ns + 1, &pkt), "outside the window");
            assert!(!sel.matches(sel.from_ns - 1, &pkt), "outside the window");
        }
        let no = [
            // The loose filter's false positive: A:53 <-> B:5000.
            udp_frame(a, 53, b, 5000),
            udp_frame(a, 5001, b, 53),
            icmp_error(b, a, &udp_frame(a, 5001, b, 53)),
        ];
        for f in &no {
            let pkt = parse(LinkType::Ethernet, f).expect("parses");
            assert!(!sel.matches(t, &pkt), "{pkt:?}");
        }
    }
}
