//! The timeline of one record, as `conntrail show` draws it: the tracking points on two
//! lanes (client and server, like a ladder diagram), the gap before each point on a log
//! scale, every point in words, and one line in plain words that says why the record was
//! kept and how the connection ended.
//!
//! This module owns the words (point arguments, TLS alerts, ICMP errors, the explanation)
//! and the layout both renderers share ([`layout`], [`GapScale`]); `show.rs` writes the text
//! ladder with [`write_ladder`] and `html.rs` the SVG one. It only reads records: nothing
//! here runs on the packet path.
//!
//! ```
//! use forensics::timeline::explain;
//! # fn demo(rec: &flowtable::record::Record<'_>) {
//! // "server reset the connection 3.1 ms after the ClientHello; SYN->SYN-ACK 212 ms is
//! //  over the 100 ms threshold"
//! println!("why kept: {}", explain(rec));
//! # }
//! ```

use std::io::{self, Write};

use flowtable::point::{Dir, Point, PointKind, Severity};
use flowtable::record::{CloseReason, ConnState, Flags, Proto, Record};

use crate::units::{duration_text, endpoint_text, short_duration};

// ---------------------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------------------

/// Which end a direction comes from.
pub fn sender(dir: Dir) -> &'static str {
    match dir {
        Dir::C2s => "client",
        Dir::S2c => "server",
    }
}

fn receiver(dir: Dir) -> &'static str {
    match dir {
        Dir::C2s => "server",
        Dir::S2c => "client",
    }
}

/// The name of a TLS alert description (RFC 8446 and earlier).
pub fn tls_alert_name(description: u32) -> String {
    let name = match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        d => return format!("alert {d}"),
    };
    name.to_string()
}

/// A TLS alert point's argument in words: `fatal handshake_failure`, `encrypted`.
fn tls_alert_text(arg: u32) -> String {
    if arg == 0xffff {
        return "encrypted".to_string();
    }
    let level = match arg >> 8 {
        1 => "warning".to_string(),
        2 => "fatal".to_string(),
        l => format!("level {l}"),
    };
    format!("{level} {}", tls_alert_name(arg & 0xff))
}

/// A TLS protocol version in words: `TLS 1.2`.
pub fn tls_version_text(version: u32) -> String {
    match version {
        0x0300 => "SSL 3.0".to_string(),
        0x0301 => "TLS 1.0".to_string(),
        0x0302 => "TLS 1.1".to_string(),
        0x0303 => "TLS 1.2".to_string(),
        0x0304 => "TLS 1.3".to_string(),
        v => format!("version 0x{v:04x}"),
    }
}

/// An ICMP (`ip_version` 4) or ICMPv6 (6) error in words, kept short.
pub fn icmp_error_text(ip_version: u8, icmp_type: u8, code: u8) -> String {
    let name = if ip_version == 6 {
        match (icmp_type, code) {
            (1, 0) => "no route to destination",
            (1, 1) => "administratively prohibited",
            (1, 2) => "beyond scope of source",
            (1, 3) => "address unreachable",
            (1, 4) => "port unreachable",
            (1, 5) => "source address failed policy",
            (1, 6) => "reject route",
            (1, _) => "destination unreachable",
            (2, _) => "packet too big",
            (3, 0) => "hop limit exceeded",
            (3, _) => "reassembly time exceeded",
            (4, _) => "parameter problem",
            _ => "error",
        }
    } else {
        match (icmp_type, code) {
            (3, 0) => "network unreachable",
            (3, 1) => "host unreachable",
            (3, 2) => "protocol unreachable",
            (3, 3) => "port unreachable",
            (3, 4) => "fragmentation needed",
            (3, 5) => "source route failed",
            (3, 6) => "network unknown",
            (3, 7) => "host unknown",
            (3, 9 | 10 | 13) => "administratively prohibited",
            (3, _) => "destination unreachable",
            (4, _) => "source quench",
            (5, _) => "redirect",
            (11, 0) => "TTL exceeded in transit",
            (11, _) => "reassembly time exceeded",
            (12, _) => "parameter problem",
            _ => "error",
        }
    };
    format!("{name}, type {icmp_type} code {code}")
}

fn icmp_parts(arg: u32) -> (u8, u8) {
    (((arg >> 8) & 0xff) as u8, (arg & 0xff) as u8)
}

/// TCP flags in words: `SYN+FIN`, `none`.
pub fn tcp_flags_text(flags: u32) -> String {
    const NAMES: [(u32, &str); 8] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "no flags".to_string()
    } else {
        set.join("+")
    }
}

/// A point's argument in words, in parentheses, or empty when it has nothing to say.
/// `ip_version` picks the ICMP or ICMPv6 names.
pub fn arg_text(p: &Point, ip_version: u8) -> String {
    use PointKind as K;
    let us = |arg: u32| duration_text(u64::from(arg) * 1000);
    let arg = p.arg;
    match p.kind {
        K::SynAck | K::HandshakeDone if arg > 0 => format!("(after {})", us(arg)),
        K::FirstData | K::Start if arg > 0 => format!("(answer after {})", us(arg)),
        K::Threshold => format!("({} exceeded)", us(arg)),
        K::TlsAlert => format!("({})", tls_alert_text(arg)),
        K::IcmpError => {
            let (t, c) = icmp_parts(arg);
            format!("({})", icmp_error_text(ip_version, t, c))
        }
        K::TlsServerHello => format!("({})", tls_version_text(arg)),
        K::TlsClientHello if arg == 0 => "(no SNI)".to_string(),
        K::TlsClientHello => format!("(SNI hash {arg:08x})"),
        K::Retransmission
        | K::FastRetransmission
        | K::SpuriousRetransmission
        | K::OutOfOrder
        | K::LostSegment
        | K::ZeroWindowProbe => format!("(seq {arg})"),
        K::WindowFull => format!("({arg} bytes)"),
        K::Stall => format!("({} of silence)", us(arg)),
        K::Truncated => format!("({arg} points dropped here)"),
        K::TtlChange => format!("(TTL now {arg})"),
        K::VlanChange => format!("(VLAN now {arg})"),
        K::SynRetransmission => format!("(SYN #{arg})"),
        K::BadFlags => format!("({})", tcp_flags_text(arg)),
        K::DupAck => format!("({arg} in a row)"),
        K::DataAfterFin => format!("({arg} bytes)"),
        K::Fragment => format!("(offset {arg})"),
        _ => String::new(),
    }
}

/// `kind (argument in words)`: how a point is labelled on a timeline.
pub fn point_label(p: &Point, ip_version: u8) -> String {
    let arg = arg_text(p, ip_version);
    if arg.is_empty() {
        p.kind.as_str().to_string()
    } else {
        format!("{} {arg}", p.kind.as_str())
    }
}

/// A point as the event of a sentence: "the ClientHello", "the server's FIN".
fn event_words(p: &Point, ip_version: u8) -> String {
    use PointKind as K;
    let who = sender(p.dir);
    match p.kind {
        K::Syn => "the SYN".to_string(),
        K::SynRetransmission => format!("SYN #{}", p.arg),
        K::SynAck => "the SYN-ACK".to_string(),
        K::HandshakeDone => "the handshake".to_string(),
        K::FirstData => format!("the {who}'s first data"),
        K::Start if p.dir == Dir::C2s => "the first packet".to_string(),
        K::Start => "the server's first packet".to_string(),
        K::Midstream => "the first packet seen".to_string(),
        K::Fin => format!("the {who}'s FIN"),
        K::Rst => format!("the {who}'s RST"),
        K::TlsClientHello => "the ClientHello".to_string(),
        K::TlsServerHello => "the ServerHello".to_string(),
        K::TlsAlert => format!("the {who}'s {} TLS alert", tls_alert_text(p.arg)),
        K::ZeroWindow => format!("the {who}'s zero window"),
        K::Retransmission => format!("a {who} retransmission"),
        K::OutOfOrder => format!("an out-of-order {who} segment"),
        K::DupAck => format!("the {who}'s duplicate ACKs"),
        K::KeepAlive => format!("a {who} keep-alive"),
        K::DataAfterFin => format!("the {who}'s data after its FIN"),
        K::BadFlags => format!("the {who}'s {} segment", tcp_flags_text(p.arg)),
        K::IcmpError => {
            let (t, c) = icmp_parts(p.arg);
            format!("the ICMP {}", icmp_error_text(ip_version, t, c))
        }
        k => format!("the {who}'s {}", k.as_str()),
    }
}

/// The latest notable point of `pts` that `wanted` accepts; of several at that same time
/// (one packet can make several points), the most telling.
fn salient_last(pts: &[Point], wanted: impl Fn(&Point) -> bool) -> Option<Point> {
    let last = pts.iter().rev().find(|p| is_notable(p.kind) && wanted(p))?;
    pts.iter()
        .filter(|p| p.t_ns == last.t_ns && is_notable(p.kind) && wanted(p))
        .max_by_key(|p| salience(p.kind))
        .copied()
}

/// How much a point says about why a connection was reset, among points of one packet.
fn salience(kind: PointKind) -> u8 {
    use PointKind as K;
    match kind {
        K::TlsAlert | K::TlsClientHello | K::TlsServerHello => 4,
        K::Fin | K::BadFlags | K::DataAfterFin => 3,
        K::Retransmission | K::ZeroWindow | K::SynRetransmission => 2,
        K::FirstData | K::Syn | K::SynAck | K::HandshakeDone => 1,
        _ => 0,
    }
}

/// Points a reset can be "after": what one end did that the other reacted to.
fn is_notable(kind: PointKind) -> bool {
    use PointKind as K;
    !matches!(
        kind,
        K::Threshold
            | K::Truncated
            | K::Timeout
            | K::Eviction
            | K::TtlChange
            | K::VlanChange
            | K::Fragment
            | K::Rst
    )
}

// ---------------------------------------------------------------------------------------
// The explanation
// ---------------------------------------------------------------------------------------

/// One clause of the explanation and the flags of the record it accounts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    pub text: String,
    pub flags: Flags,
}

/// Why the record was kept and how the connection ended, as one line of clauses joined by
/// `; `: every flag of the record is accounted for by at least one clause.
pub fn explain(rec: &Record<'_>) -> String {
    clauses(rec)
        .iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn flags_of(rec: &Record<'_>, mut wanted: Flags) -> Flags {
    wanted.0 &= rec.flags.0;
    wanted
}

/// The clauses of [`explain`]: the ending first when it is itself a reason to keep the
/// record (a reset, an unanswered SYN, an ICMP error, an eviction), then the other reasons
/// in flag order, then `--record all`, then the ending when it was unremarkable.
pub fn clauses(rec: &Record<'_>) -> Vec<Clause> {
    let mut r = Reasons {
        rec,
        ending: ending_clause(rec),
        list: Vec::new(),
    };
    r.error();
    r.latency();
    r.protocol();
    r.resource();
    r.path();
    // A flag still unexplained: its point was dropped from the trail (or, for `user`, it
    // has no point).
    let fallbacks = [
        (
            Flags::ERROR,
            "an error trigger fired (a reset, ICMP error or fatal TLS alert not in the kept \
             trail)",
        ),
        (
            Flags::PROTOCOL,
            "a TCP protocol anomaly (its point is not in the kept trail)",
        ),
        (
            Flags::PATH,
            "the network path changed (fragments, TTL, VLAN or ICMP fragmentation needed; \
             the point is not in the kept trail)",
        ),
        (Flags::USER, "kept because it was asked for (flag user)"),
    ];
    for (flag, text) in fallbacks {
        if !r.told(flag) {
            r.push(text.to_string(), flag);
        }
    }

    let Reasons {
        ending, mut list, ..
    } = r;
    // Flag order: a clause's lowest flag decides its place; stable within a flag.
    list.sort_by_key(|c| match c.flags.0 {
        0 => u8::MAX,
        f => f & f.wrapping_neg(),
    });
    let mut out = Vec::with_capacity(list.len() + 2);
    let ending_is_reason = !ending.flags.is_empty();
    if ending_is_reason {
        out.push(ending.clone());
    }
    out.extend(list);
    if rec.flags.contains(Flags::ALL) {
        out.push(Clause {
            text: "kept because every connection is recorded (--record all)".to_string(),
            flags: Flags::ALL,
        });
    }
    if !ending_is_reason {
        out.push(ending);
    }
    out
}

/// The reasons found so far, beside the ending clause.
struct Reasons<'r, 'a> {
    rec: &'r Record<'a>,
    ending: Clause,
    list: Vec<Clause>,
}

impl Reasons<'_, '_> {
    /// Adds a clause that accounts for `wanted` (those of the record's flags).
    fn push(&mut self, text: String, wanted: Flags) {
        let flags = flags_of(self.rec, wanted);
        self.list.push(Clause { text, flags });
    }

    /// Whether `flag` is unset or some clause already accounts for it.
    fn told(&self, flag: Flags) -> bool {
        !self.rec.flags.contains(flag)
            || std::iter::once(&self.ending)
                .chain(&self.list)
                .any(|c| c.flags.contains(flag))
    }

    /// ICMP errors and fatal TLS alerts (a reset or an unanswered SYN is the ending).
    fn error(&mut self) {
        let rec = self.rec;
        if rec.close_reason != CloseReason::IcmpError {
            if let Some(p) = rec.points.iter().find(|p| p.kind == PointKind::IcmpError) {
                let (t, c) = icmp_parts(p.arg);
                self.push(
                    format!(
                        "an ICMP {} came back to the {} at +{}",
                        icmp_error_text(rec.ip_version, t, c),
                        receiver(p.dir),
                        short_duration(p.t_ns)
                    ),
                    icmp_flags(rec.ip_version, t, c),
                );
            }
        }
        for p in rec
            .points
            .iter()
            .filter(|p| p.kind == PointKind::TlsAlert && p.severity == Severity::Error)
        {
            self.push(
                format!(
                    "the {} sent a fatal TLS alert ({}) at +{}",
                    sender(p.dir),
                    tls_alert_name(p.arg & 0xff),
                    short_duration(p.t_ns)
                ),
                Flags::ERROR,
            );
        }
    }

    /// Every threshold point with its measurement, SYNs sent again, else the longest
    /// silence (the stall trigger has no point) or the first answer (UDP).
    fn latency(&mut self) {
        let rec = self.rec;
        let pts: &[Point] = &rec.points;
        let us = |arg: u32| short_duration(u64::from(arg) * 1000);
        for (i, p) in pts.iter().enumerate() {
            if p.kind != PointKind::Threshold {
                continue;
            }
            let threshold = us(p.arg);
            let measured = i.checked_sub(1).and_then(|j| pts.get(j));
            let text = match measured.map(|m| (m.kind, m.arg)) {
                Some((PointKind::SynAck, v)) => {
                    format!("SYN->SYN-ACK {} is over the {threshold} threshold", us(v))
                }
                Some((PointKind::HandshakeDone, v)) => {
                    format!("SYN-ACK->ACK {} is over the {threshold} threshold", us(v))
                }
                Some((PointKind::FirstData | PointKind::Start, v)) => format!(
                    "first response byte after {} is over the {threshold} threshold",
                    us(v)
                ),
                _ => format!(
                    "a latency over the {threshold} threshold at +{}",
                    short_duration(p.t_ns)
                ),
            };
            self.push(text, Flags::LATENCY);
        }
        let syns = syn_count(pts);
        if syns > 1 && !is_unanswered(rec) {
            let answer = pts
                .iter()
                .find(|p| p.kind == PointKind::SynAck)
                .map(|p| format!(", answered after {}", short_duration(p.t_ns)))
                .unwrap_or_default();
            self.push(
                format!("the client had to send its SYN {syns} times{answer}"),
                Flags::LATENCY,
            );
        }
        if !self.told(Flags::LATENCY) {
            let l = &rec.latency;
            let stall = rec
                .points
                .iter()
                .find(|p| p.kind == PointKind::Stall && p.severity == Severity::Warn);
            let text = match (rec.proto, stall, l.max_stall_ns, l.ttfb_ns) {
                (Proto::Tcp, Some(p), _, _) => format!(
                    "the connection fell silent for {} before it closed, until +{}",
                    short_duration(u64::from(p.arg) * 1000),
                    short_duration(p.t_ns)
                ),
                (Proto::Tcp, None, Some(s), _) => format!(
                    "the connection stalled for {} (its longest silence)",
                    short_duration(s)
                ),
                (_, _, _, Some(t)) => format!("the first answer came after {}", short_duration(t)),
                _ => "a latency threshold was exceeded".to_string(),
            };
            self.push(text, Flags::LATENCY);
        }
    }

    /// The counters each way, then the points of the other protocol triggers.
    fn protocol(&mut self) {
        let rec = self.rec;
        if !rec.flags.contains(Flags::PROTOCOL) {
            return;
        }
        let (c, s) = (&rec.c2s, &rec.s2c);
        let counts = [
            (
                c.zero_window,
                s.zero_window,
                ("zero-window advertisement", "zero-window advertisements"),
                " (receive buffer full)",
            ),
            (
                c.retrans,
                s.retrans,
                ("retransmission", "retransmissions"),
                "",
            ),
            (
                c.out_of_order,
                s.out_of_order,
                ("out-of-order segment", "out-of-order segments"),
                "",
            ),
            (
                c.dup_ack,
                s.dup_ack,
                ("duplicate ACK", "duplicate ACKs"),
                "",
            ),
        ];
        for (client, server, (one, many), tail) in counts {
            // "57 zero-window advertisements from the client and 2 from the server".
            let n = |k: u32| format!("{k} {}", if k == 1 { one } else { many });
            let text = match (client, server) {
                (0, 0) => continue,
                (k, 0) => format!("{} from the client{tail}", n(k)),
                (0, k) => format!("{} from the server{tail}", n(k)),
                (a, b) => format!("{} from the client and {b} from the server{tail}", n(a)),
            };
            self.push(text, Flags::PROTOCOL);
        }
        for p in rec.points.iter() {
            let text = match p.kind {
                PointKind::BadFlags => format!(
                    "the {} sent a segment with illegal flags {} at +{}",
                    sender(p.dir),
                    tcp_flags_text(p.arg),
                    short_duration(p.t_ns)
                ),
                PointKind::DataAfterFin => format!(
                    "the {} sent data after its FIN at +{}",
                    sender(p.dir),
                    short_duration(p.t_ns)
                ),
                _ => continue,
            };
            self.push(text, Flags::PROTOCOL);
        }
    }

    /// Truncation (an eviction is the ending), else the size and duration limits.
    fn resource(&mut self) {
        let rec = self.rec;
        if rec.points_dropped > 0 {
            let at = rec
                .points
                .iter()
                .find(|p| p.kind == PointKind::Truncated)
                .map(|p| format!(" before +{}", short_duration(p.t_ns)))
                .unwrap_or_default();
            self.push(
                format!(
                    "the trail was truncated: {} points dropped{at}",
                    rec.points_dropped
                ),
                Flags::RESOURCE,
            );
        }
        if !self.told(Flags::RESOURCE) {
            self.push(
                format!(
                    "over a size or duration limit ({} packets, {} bytes, {})",
                    rec.c2s.pkts + rec.s2c.pkts,
                    rec.c2s.bytes + rec.s2c.bytes,
                    short_duration(rec.duration_ns())
                ),
                Flags::RESOURCE,
            );
        }
    }

    /// Fragments, TTL and VLAN changes (fragmentation needed came with the ICMP error).
    fn path(&mut self) {
        let rec = self.rec;
        let mut fragments = [false; 2];
        for p in rec.points.iter() {
            let text = match p.kind {
                PointKind::Fragment if !fragments[p.dir.index()] => {
                    fragments[p.dir.index()] = true;
                    format!("the {} sent IP fragments", sender(p.dir))
                }
                PointKind::TtlChange => format!(
                    "the TTL of the {}'s packets changed to {} at +{}",
                    sender(p.dir),
                    p.arg,
                    short_duration(p.t_ns)
                ),
                PointKind::VlanChange => format!(
                    "the VLAN changed to {} at +{}",
                    p.arg,
                    short_duration(p.t_ns)
                ),
                _ => continue,
            };
            self.push(text, Flags::PATH);
        }
    }
}

/// The flags an ICMP error accounts for: error, and path for "fragmentation needed" /
/// "packet too big".
fn icmp_flags(ip_version: u8, icmp_type: u8, code: u8) -> Flags {
    let frag_needed = if ip_version == 6 {
        icmp_type == 2
    } else {
        icmp_type == 3 && code == 4
    };
    let mut f = Flags::ERROR;
    if frag_needed {
        f.insert(Flags::PATH);
    }
    f
}

/// SYNs the client sent, as far as the trail tells.
fn syn_count(pts: &[Point]) -> u32 {
    let retries = pts
        .iter()
        .filter(|p| p.kind == PointKind::SynRetransmission)
        .map(|p| p.arg)
        .max();
    match retries {
        Some(n) => n.max(2),
        None => u32::from(pts.iter().any(|p| p.kind == PointKind::Syn)),
    }
}

fn is_unanswered(rec: &Record<'_>) -> bool {
    rec.proto == Proto::Tcp
        && rec.s2c.pkts == 0
        && rec.points.iter().any(|p| p.kind == PointKind::Syn)
}

/// How the connection ended, with the event that matters; its flags are those the ending
/// itself accounts for.
fn ending_clause(rec: &Record<'_>) -> Clause {
    let pts: &[Point] = &rec.points;
    let last_t = pts.last().map_or(rec.duration_ns(), |p| p.t_ns);
    match rec.close_reason {
        CloseReason::TcpRstServer | CloseReason::TcpRstClient => {
            let mut clause = reset_clause(rec);
            clause.text.push_str(&after_the_reset(rec));
            clause
        }
        _ if is_unanswered(rec) => {
            let syns = syn_count(pts);
            let first = pts
                .iter()
                .find(|p| p.kind == PointKind::Syn)
                .map(|p| p.t_ns);
            let last = pts
                .iter()
                .rev()
                .find(|p| matches!(p.kind, PointKind::Syn | PointKind::SynRetransmission))
                .map(|p| p.t_ns);
            let sent = match (syns, first, last) {
                (n, Some(a), Some(b)) if n > 1 => {
                    format!("{n} SYNs over {}", short_duration(b.saturating_sub(a)))
                }
                _ => "a SYN".to_string(),
            };
            let end = match rec.close_reason {
                CloseReason::Shutdown => " (still waiting when the capture ended)",
                CloseReason::AgedOut => " (aged out)",
                _ => "",
            };
            let mut f = Flags::ERROR;
            if syns > 1 {
                f.insert(Flags::LATENCY);
            }
            Clause {
                text: format!("the client sent {sent} and the server never answered{end}"),
                flags: flags_of(rec, f),
            }
        }
        CloseReason::TcpFin => {
            let first_fin = pts.iter().find(|p| p.kind == PointKind::Fin);
            let who = first_fin
                .map(|p| format!(", the {} first", sender(p.dir)))
                .unwrap_or_default();
            Clause {
                text: format!(
                    "it closed normally (FIN both ways{who}) after {}",
                    short_duration(rec.duration_ns())
                ),
                flags: Flags::default(),
            }
        }
        CloseReason::AgedOut => Clause {
            text: format!(
                "it went idle after +{} and aged out",
                short_duration(rec.duration_ns())
            ),
            flags: Flags::default(),
        },
        CloseReason::IcmpError => {
            let p = pts.iter().rev().find(|p| p.kind == PointKind::IcmpError);
            let (text, f) = match p {
                Some(p) => {
                    let (t, c) = icmp_parts(p.arg);
                    (
                        format!(
                            "it ended with an ICMP {} sent back to the {} at +{}",
                            icmp_error_text(rec.ip_version, t, c),
                            receiver(p.dir),
                            short_duration(p.t_ns)
                        ),
                        icmp_flags(rec.ip_version, t, c),
                    )
                }
                None => ("it ended with an ICMP error".to_string(), Flags::ERROR),
            };
            Clause {
                text,
                flags: flags_of(rec, f),
            }
        }
        CloseReason::ResourceLimit => Clause {
            text: format!(
                "evicted at +{} because the flow table was full",
                short_duration(last_t)
            ),
            flags: flags_of(rec, Flags::RESOURCE),
        },
        CloseReason::TcpReuse => Clause {
            text: format!(
                "a new SYN reused its addresses and ports after +{}",
                short_duration(rec.duration_ns())
            ),
            flags: Flags::default(),
        },
        CloseReason::Shutdown => Clause {
            text: format!(
                "still open when the capture ended (last packet at +{})",
                short_duration(rec.duration_ns())
            ),
            flags: Flags::default(),
        },
    }
}

/// How a connection went on after its first RST, when it did: the client tried again with
/// the same SYN before the reset connection was written out, and the story continues in
/// the same record. ", then it went on: the client sent its SYN again at +3.012 s, the
/// server answered at +17.8 s, and it ended with a RST from the server at +33.1 s".
/// Empty when nothing but resets followed.
fn after_the_reset(rec: &Record<'_>) -> String {
    let pts: &[Point] = &rec.points;
    let Some(ri) = pts.iter().position(|p| p.kind == PointKind::Rst) else {
        return String::new();
    };
    let later = &pts[ri + 1..];
    let went_on = |p: &&Point| {
        matches!(
            p.kind,
            PointKind::Syn
                | PointKind::SynRetransmission
                | PointKind::SynAck
                | PointKind::HandshakeDone
                | PointKind::FirstData
        )
    };
    let Some(first) = later.iter().find(went_on) else {
        return String::new();
    };
    let mut parts = Vec::new();
    let syn = later
        .iter()
        .find(|p| matches!(p.kind, PointKind::Syn | PointKind::SynRetransmission));
    if let Some(p) = syn {
        parts.push(format!(
            "the {} sent its SYN again at +{}",
            sender(p.dir),
            short_duration(p.t_ns)
        ));
    }
    if let Some(p) = later.iter().find(|p| p.kind == PointKind::SynAck) {
        parts.push(format!(
            "the server answered at +{}",
            short_duration(p.t_ns)
        ));
    }
    if parts.is_empty() {
        parts.push(format!(
            "the {} sent more at +{}",
            sender(first.dir),
            short_duration(first.t_ns)
        ));
    }
    let end = match later.iter().rev().find(|p| p.kind == PointKind::Rst) {
        Some(p) if p.t_ns >= first.t_ns => format!(
            "it ended with a RST from the {} at +{}",
            sender(p.dir),
            short_duration(p.t_ns)
        ),
        _ => match later.iter().rev().find(|p| p.kind == PointKind::Fin) {
            Some(p)
                if later
                    .iter()
                    .any(|q| q.kind == PointKind::Fin && q.dir != p.dir) =>
            {
                format!(
                    "it closed with FIN both ways at +{}",
                    short_duration(p.t_ns)
                )
            }
            Some(p) => format!(
                "the {} sent a FIN at +{}, its last packet at +{}",
                sender(p.dir),
                short_duration(p.t_ns),
                short_duration(rec.duration_ns())
            ),
            None => format!(
                "its last packet came at +{}",
                short_duration(rec.duration_ns())
            ),
        },
    };
    parts.push(end);
    let last = parts.pop().unwrap_or_default();
    if parts.is_empty() {
        format!(", then it went on: {last}")
    } else {
        format!(", then it went on: {}, and {last}", parts.join(", "))
    }
}

/// "server reset the connection 3.1 ms after the ClientHello, before sending any data".
fn reset_clause(rec: &Record<'_>) -> Clause {
    let pts: &[Point] = &rec.points;
    let ip = rec.ip_version;
    let by = if rec.close_reason == CloseReason::TcpRstServer {
        Dir::S2c
    } else {
        Dir::C2s
    };
    let flags = flags_of(rec, Flags::ERROR);
    let who = sender(by);
    let Some(ri) = pts
        .iter()
        .position(|p| p.kind == PointKind::Rst && p.dir == by)
    else {
        return Clause {
            text: format!(
                "{who} reset the connection at +{} (the RST is not in the kept trail)",
                short_duration(rec.duration_ns())
            ),
            flags,
        };
    };
    let rst = pts[ri];
    let before = &pts[..ri];
    if by == Dir::S2c && rec.conn_state == ConnState::REJ {
        let syns = syn_count(before);
        let after = match before
            .iter()
            .rev()
            .find(|p| matches!(p.kind, PointKind::Syn | PointKind::SynRetransmission))
        {
            Some(p) if syns > 1 => format!(
                " {} after SYN #{syns}",
                short_duration(rst.t_ns.saturating_sub(p.t_ns))
            ),
            Some(p) => format!(
                " {} after the SYN",
                short_duration(rst.t_ns.saturating_sub(p.t_ns))
            ),
            None => String::new(),
        };
        return Clause {
            text: format!(
                "server rejected the connection: RST{after} (nothing listening, or a \
                 firewall refusing it)"
            ),
            flags,
        };
    }
    if by == Dir::C2s && rec.conn_state == ConnState::RSTOS0 {
        let after = before
            .iter()
            .rev()
            .find(|p| matches!(p.kind, PointKind::Syn | PointKind::SynRetransmission))
            .map(|p| {
                format!(
                    " {} after its SYN",
                    short_duration(rst.t_ns.saturating_sub(p.t_ns))
                )
            })
            .unwrap_or_default();
        return Clause {
            text: format!(
                "client abandoned the connection: RST{after}, no SYN-ACK seen{}",
                if pts[ri..].iter().any(|p| p.kind == PointKind::SynAck) {
                    " by then"
                } else {
                    ""
                }
            ),
            flags,
        };
    }
    // What the reset answered: the last thing the other end did before it. Points before a
    // truncation are not searched: the other end's later points may be among the dropped.
    let window_start = before
        .iter()
        .rposition(|p| p.kind == PointKind::Truncated)
        .map_or(0, |i| i + 1);
    let window = &before[window_start..];
    let peer = salient_last(window, |p| p.dir != by);
    let after = |p: &Point| {
        let dt = rst.t_ns.saturating_sub(p.t_ns);
        if dt == 0 {
            "together with".to_string()
        } else {
            format!("{} after", short_duration(dt))
        }
    };
    // And what the resetting end itself did last, after that.
    let own = salient_last(window, |p| {
        p.dir == by && peer.is_none_or(|q| p.t_ns > q.t_ns)
    });
    let own_words = |p: &Point| match p.kind {
        PointKind::TlsAlert => format!("{} TLS alert", tls_alert_text(p.arg)),
        PointKind::Syn => "SYN".to_string(),
        PointKind::SynAck => "SYN-ACK".to_string(),
        PointKind::HandshakeDone => "ACK completing the handshake".to_string(),
        PointKind::FirstData => "first data".to_string(),
        PointKind::Fin => "FIN".to_string(),
        PointKind::ZeroWindow => "zero-window advertisement".to_string(),
        PointKind::DupAck => "duplicate ACKs".to_string(),
        PointKind::OutOfOrder => "out-of-order segment".to_string(),
        PointKind::TlsClientHello => "ClientHello".to_string(),
        PointKind::TlsServerHello => "ServerHello".to_string(),
        k => k.as_str().to_string(),
    };
    let mut text = match (peer, own) {
        (Some(p), Some(o)) => format!(
            "{who} reset the connection {} {}, {} its own {}",
            after(&p),
            event_words(&p, ip),
            after(&o),
            own_words(&o)
        ),
        (Some(p), None) => format!(
            "{who} reset the connection {} {}",
            after(&p),
            event_words(&p, ip)
        ),
        (None, Some(o)) => format!(
            "{who} reset the connection {} its own {}",
            after(&o),
            own_words(&o)
        ),
        (None, None) => format!(
            "{who} reset the connection at +{}",
            short_duration(rst.t_ns)
        ),
    };
    let sent_payload = match by {
        Dir::C2s => rec.c2s.payload,
        Dir::S2c => rec.s2c.payload,
    };
    if sent_payload == 0 {
        text.push_str(", before sending any data");
    }
    Clause { text, flags }
}

// ---------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------

/// How a point is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A packet from one end to the other: an arrow across the lanes.
    Packet,
    /// A fact about the connection at that time (a threshold crossed, an eviction): a note
    /// on the lane of its direction.
    Note,
    /// Where the trail was truncated: a break across both lanes.
    Break,
}

/// One point of a timeline, ready to draw.
#[derive(Clone, Debug)]
pub struct Row {
    pub point: Point,
    /// Time since the previous point; `None` for the first point and across a truncation
    /// (the dropped points are not a silence).
    pub gap_ns: Option<u64>,
    pub shape: Shape,
    /// `kind (argument in words)`.
    pub label: String,
    pub irregular: bool,
}

/// A record's timeline, ready to draw.
#[derive(Clone, Debug)]
pub struct Layout {
    /// One row per tracking point, in time order.
    pub rows: Vec<Row>,
    /// The record's last packet, when it came after the last point: the gap since that
    /// point (the connection went on without anything worth a point, or fell silent).
    pub end_gap_ns: Option<u64>,
    /// The scale of all the gaps, the end's included.
    pub scale: GapScale,
}

/// What the end row says: the close reason in words.
pub fn end_label(rec: &Record<'_>) -> String {
    format!("last packet; {}", rec.close_reason.in_words())
}

/// Lays out the timeline of `rec`.
pub fn layout(rec: &Record<'_>) -> Layout {
    let pts: &[Point] = &rec.points;
    let mut rows = Vec::with_capacity(pts.len());
    for (i, p) in pts.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|j| pts.get(j));
        let gap_ns = match prev {
            Some(q) if q.kind != PointKind::Truncated && p.kind != PointKind::Truncated => {
                Some(p.t_ns.saturating_sub(q.t_ns))
            }
            _ => None,
        };
        let shape = match p.kind {
            PointKind::Truncated => Shape::Break,
            PointKind::Threshold | PointKind::Timeout | PointKind::Eviction | PointKind::Stall => {
                Shape::Note
            }
            _ => Shape::Packet,
        };
        rows.push(Row {
            point: *p,
            gap_ns,
            shape,
            label: point_label(p, rec.ip_version),
            irregular: rec.irregular_point.map(usize::from) == Some(i),
        });
    }
    let end_gap_ns = pts
        .last()
        .map(|p| rec.duration_ns().saturating_sub(p.t_ns))
        .filter(|g| *g > 0);
    let scale = GapScale::new(rows.iter().filter_map(|r| r.gap_ns).chain(end_gap_ns));
    Layout {
        rows,
        end_gap_ns,
        scale,
    }
}

/// Gaps on a log scale relative to the largest gap of the record: the largest is 1, a gap
/// ten times shorter 0.75, and anything [`GapScale::DECADES`] decades shorter (or zero) 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GapScale {
    pub largest_ns: u64,
}

impl GapScale {
    pub const DECADES: f64 = 4.0;

    pub fn new(gaps: impl IntoIterator<Item = u64>) -> GapScale {
        GapScale {
            largest_ns: gaps.into_iter().max().unwrap_or(0),
        }
    }

    /// Where `gap_ns` falls on the scale, 0..=1.
    pub fn fraction(&self, gap_ns: u64) -> f64 {
        if gap_ns == 0 || self.largest_ns == 0 {
            return 0.0;
        }
        let r = gap_ns as f64 / self.largest_ns as f64;
        (1.0 + r.log10() / GapScale::DECADES).clamp(0.0, 1.0)
    }
}

// ---------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------

/// Whether text output is coloured (ANSI escapes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paint {
    pub color: bool,
}

impl Paint {
    const RESET: &'static str = "\x1b[0m";

    fn wrap(&self, s: &str, severity: Severity, irregular: bool) -> String {
        if !self.color {
            return s.to_string();
        }
        let mut codes = Vec::new();
        if irregular {
            codes.push("1");
        }
        match severity {
            Severity::Info => {}
            Severity::Warn => codes.push("33"),
            Severity::Error => codes.push("31"),
        }
        if codes.is_empty() {
            return s.to_string();
        }
        format!("\x1b[{}m{s}{}", codes.join(";"), Paint::RESET)
    }

    /// `s` in bold.
    pub fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}{}", Paint::RESET)
        } else {
            s.to_string()
        }
    }
}

/// Columns between the two lanes.
const LANE_WIDTH: usize = 46;
/// Cells of the gap bar.
pub const BAR_WIDTH: usize = 8;
/// Where the client lane sits: indent, marker, time, gap, bar.
const LEFT: usize = 2 + 2 + 1 + 11 + 1 + 10 + 1 + BAR_WIDTH + 1;

/// A bar of `fraction` of [`BAR_WIDTH`] cells, in eighths of a cell.
pub fn gap_bar(fraction: f64) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (fraction.clamp(0.0, 1.0) * (BAR_WIDTH * 8) as f64).round() as usize;
    let mut bar = "█".repeat(eighths / 8);
    bar.push_str(PARTS[eighths % 8]);
    bar
}

fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n >= width {
        s.to_string()
    } else {
        format!("{s}{}", " ".repeat(width - n))
    }
}

/// What goes between the two lanes for one row, `LANE_WIDTH` columns when it fits.
fn lane_text(row: &Row) -> String {
    let label = &row.label;
    let n = label.chars().count();
    match (row.shape, row.point.dir) {
        (Shape::Packet, Dir::C2s) => {
            let dashes = LANE_WIDTH.saturating_sub(n + 5).max(2);
            format!("-- {label} {}>", "-".repeat(dashes))
        }
        (Shape::Packet, Dir::S2c) => {
            let dashes = LANE_WIDTH.saturating_sub(n + 5).max(2);
            format!("<{} {label} --", "-".repeat(dashes))
        }
        (Shape::Note, Dir::C2s) => pad(&format!(" ! {label}"), LANE_WIDTH),
        (Shape::Note, Dir::S2c) => {
            let text = format!("{label} ! ");
            format!(
                "{}{text}",
                " ".repeat(LANE_WIDTH.saturating_sub(text.chars().count()))
            )
        }
        (Shape::Break, _) => {
            let text = format!(" {label} ");
            let fill = LANE_WIDTH.saturating_sub(text.chars().count());
            format!(
                "{}{text}{}",
                "~".repeat(fill / 2),
                "~".repeat(fill - fill / 2)
            )
        }
    }
}

/// Writes the two-lane timeline of `rec`: a heading with the lanes' addresses, then one row
/// per tracking point: `>>` on the irregular point, the time since the first packet, the
/// gap since the previous point and its bar, and the point between the lanes.
pub fn write_ladder(out: &mut impl Write, rec: &Record<'_>, paint: Paint) -> io::Result<()> {
    let Layout {
        rows,
        end_gap_ns,
        scale,
    } = layout(rec);
    let largest = if scale.largest_ns > 0 {
        format!(
            "; gap bars log-scaled, full = {}",
            duration_text(scale.largest_ns)
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "  timeline ({} point{}, {} dropped{largest}):",
        rec.points.len(),
        if rec.points.len() == 1 { "" } else { "s" },
        rec.points_dropped
    )?;
    // Each lane's label centred over it.
    let client = format!("client {}", endpoint_text(rec.client.ip, rec.client.port));
    let server = format!("server {}", endpoint_text(rec.server.ip, rec.server.port));
    let (cn, sn) = (client.chars().count(), server.chars().count());
    let client_at = LEFT.saturating_sub(cn / 2).max(2);
    let server_at = (LEFT + LANE_WIDTH + 1)
        .saturating_sub(sn / 2)
        .max(client_at + cn + 2);
    let labels = format!(
        "{}{client}{}{server}",
        " ".repeat(client_at),
        " ".repeat(server_at - client_at - cn)
    );
    writeln!(out, "{}", paint.bold(&labels))?;
    writeln!(
        out,
        "{}|{}|",
        pad("             time        gap", LEFT),
        " ".repeat(LANE_WIDTH)
    )?;
    for (i, row) in rows.iter().enumerate() {
        let p = &row.point;
        let mark = if row.irregular { ">>" } else { "  " };
        let (gap, bar) = match row.gap_ns {
            Some(g) => (duration_text(g), gap_bar(scale.fraction(g))),
            // The first point, a truncation, or the point after one: no gap to tell.
            None if i == 0 || row.shape == Shape::Break => (String::new(), String::new()),
            None => ("?".to_string(), String::new()),
        };
        let tag = match p.severity {
            Severity::Info => "",
            Severity::Warn => " [warn]",
            Severity::Error => " [error]",
        };
        let (open, close) = match row.shape {
            Shape::Break => ("~", "~"),
            _ => ("|", "|"),
        };
        let line = format!(
            "  {} +{:>10} {:>10} {} {open}{}{close}{}",
            paint.wrap(mark, p.severity, row.irregular),
            duration_text(p.t_ns),
            gap,
            pad(&bar, BAR_WIDTH),
            paint.wrap(&lane_text(row), p.severity, row.irregular),
            paint.wrap(tag, p.severity, row.irregular),
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    if let Some(g) = end_gap_ns {
        let label = end_label(rec);
        let fill = LANE_WIDTH.saturating_sub(label.chars().count());
        writeln!(
            out,
            "     +{:>10} {:>10} {} |{}{label}{}|",
            duration_text(rec.duration_ns()),
            duration_text(g),
            pad(&gap_bar(scale.fraction(g)), BAR_WIDTH),
            " ".repeat(fill / 2),
            " ".repeat(fill - fill / 2)
        )?;
    }
    let marked = rec.points.iter().any(|p| p.kind == PointKind::Truncated);
    if rec.points_dropped > 0 && !marked {
        writeln!(
            out,
            "  ({} points dropped between the start and the end of the trail)",
            rec.points_dropped
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::record::{Addr, DirStats, Endpoint, History, Latency};
    use std::borrow::Cow;

    fn pt(t_us: u64, kind: PointKind, dir: Dir, severity: Severity, arg: u32) -> Point {
        Point {
            t_ns: t_us * 1000,
            kind,
            dir,
            severity,
            arg,
        }
    }

    fn record(
        points: Vec<Point>,
        close: CloseReason,
        state: ConnState,
        flags: Flags,
    ) -> Record<'static> {
        let ep = |s: &str, port| Endpoint {
            ip: Addr::from_ip(s.parse().expect("ip")),
            port,
        };
        let irregular = points
            .iter()
            .position(|p| p.severity >= Severity::Warn)
            .map(|i| i as u16);
        let end = points.last().map_or(0, |p| p.t_ns);
        let dir = |pkts: u64, payload: u64| DirStats {
            pkts,
            bytes: pkts * 60 + payload,
            payload,
            ..DirStats::default()
        };
        Record {
            id: 7,
            worker: 0,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 4,
            client: ep("10.0.0.1", 40000),
            server: ep("10.0.0.2", 443),
            midstream: false,
            vlans: Cow::Owned(Vec::new()),
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_000_000_000_000 + end,
            c2s: dir(4, 517),
            s2c: dir(3, 0),
            close_reason: close,
            conn_state: state,
            history: History::default(),
            flags,
            irregular_point: irregular,
            latency: Latency::default(),
            points: Cow::Owned(points),
            points_dropped: 0,
            icmp_type_code: 0,
        }
    }

    fn union(a: Flags, b: Flags) -> Flags {
        Flags(a.0 | b.0)
    }

    fn covers_every_flag(rec: &Record<'_>) {
        let cs = clauses(rec);
        let told = cs.iter().fold(Flags::default(), |a, c| union(a, c.flags));
        for name in rec.flags.names() {
            assert!(
                told.names().any(|n| n == name),
                "flag {name} unexplained in {:?}",
                explain(rec)
            );
        }
    }

    use Dir::{C2s, S2c};
    use PointKind as K;
    use Severity::{Error, Info, Warn};

    #[test]
    fn server_reset_after_client_hello_with_slow_syn_ack() {
        let rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(212_000, K::SynAck, S2c, Info, 212_000),
                pt(212_000, K::Threshold, S2c, Warn, 100_000),
                pt(212_300, K::HandshakeDone, C2s, Info, 300),
                pt(212_500, K::FirstData, C2s, Info, 0),
                pt(212_500, K::TlsClientHello, C2s, Info, 0x1234),
                pt(215_600, K::Rst, S2c, Error, 0),
            ],
            CloseReason::TcpRstServer,
            ConnState::RSTR,
            Flags(Flags::ERROR.0 | Flags::LATENCY.0),
        );
        assert_eq!(
            explain(&rec),
            "server reset the connection 3.1 ms after the ClientHello, before sending any \
             data; SYN->SYN-ACK 212 ms is over the 100 ms threshold"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn rejected_syn() {
        let rec = record(
            vec![pt(0, K::Syn, C2s, Info, 0), pt(665, K::Rst, S2c, Error, 0)],
            CloseReason::TcpRstServer,
            ConnState::REJ,
            Flags::ERROR,
        );
        let text = explain(&rec);
        assert!(
            text.starts_with("server rejected the connection: RST 665 us after the SYN"),
            "{text}"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn client_abandons_its_syn() {
        let rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(18_403, K::Rst, C2s, Error, 0),
            ],
            CloseReason::TcpRstClient,
            ConnState::RSTOS0,
            Flags::ERROR,
        );
        assert_eq!(
            explain(&rec),
            "client abandoned the connection: RST 18.4 ms after its SYN, no SYN-ACK seen"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn unanswered_syns() {
        let mut rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(1_000_000, K::SynRetransmission, C2s, Warn, 2),
                pt(3_000_000, K::SynRetransmission, C2s, Warn, 3),
            ],
            CloseReason::AgedOut,
            ConnState::S0,
            Flags(Flags::ERROR.0 | Flags::LATENCY.0),
        );
        rec.s2c = DirStats::default();
        assert_eq!(
            explain(&rec),
            "the client sent 3 SYNs over 3.0 s and the server never answered (aged out)"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn client_reset_after_alert_and_server_fin() {
        let mut rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(280, K::SynAck, S2c, Info, 280),
                pt(400, K::HandshakeDone, C2s, Info, 120),
                pt(1_000, K::FirstData, C2s, Info, 0),
                pt(1_000, K::TlsClientHello, C2s, Info, 0),
                pt(34_700, K::FirstData, S2c, Info, 33_700),
                pt(38_800, K::TlsAlert, S2c, Error, 2 << 8 | 40),
                pt(38_845, K::Fin, S2c, Info, 0),
                pt(39_996, K::TlsAlert, C2s, Info, 0xffff),
                pt(40_104, K::Rst, C2s, Error, 0),
            ],
            CloseReason::TcpRstClient,
            ConnState::RSTO,
            Flags(Flags::ERROR.0 | Flags::ALL.0),
        );
        rec.s2c.payload = 1284;
        let text = explain(&rec);
        assert_eq!(
            text,
            "client reset the connection 1.3 ms after the server's FIN, 108 us after its own \
             encrypted TLS alert; the server sent a fatal TLS alert (handshake_failure) at \
             +38.8 ms; kept because every connection is recorded (--record all)"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn zero_window_retransmissions_and_truncation() {
        let mut rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(71_659, K::SynAck, S2c, Info, 71_659),
                pt(374_713, K::ZeroWindow, C2s, Warn, 0),
                pt(20_085_000, K::Truncated, C2s, Warn, 102),
                pt(20_085_000, K::OutOfOrder, S2c, Warn, 1),
                pt(82_326_000, K::Rst, S2c, Error, 0),
            ],
            CloseReason::TcpRstServer,
            ConnState::RSTR,
            Flags(Flags::ERROR.0 | Flags::LATENCY.0 | Flags::PROTOCOL.0 | Flags::RESOURCE.0),
        );
        rec.c2s.zero_window = 57;
        rec.c2s.dup_ack = 119;
        rec.s2c.retrans = 13;
        rec.s2c.payload = 1_172_508;
        rec.points_dropped = 102;
        rec.latency.max_stall_ns = Some(15_560_000_000);
        let text = explain(&rec);
        for part in [
            "server reset the connection 62.2 s after its own out-of-order segment;",
            "13 retransmissions from the server",
            "57 zero-window advertisements from the client (receive buffer full)",
            "119 duplicate ACKs from the client",
            "the trail was truncated: 102 points dropped before +20.1 s",
            "the connection stalled for 15.6 s",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        covers_every_flag(&rec);
    }

    #[test]
    fn icmp_error_ending_and_path() {
        let mut rec = record(
            vec![
                pt(0, K::Start, C2s, Info, 0),
                pt(900, K::IcmpError, S2c, Error, 3 << 8 | 4),
            ],
            CloseReason::IcmpError,
            ConnState::None,
            Flags(Flags::ERROR.0 | Flags::PATH.0),
        );
        rec.proto = Proto::Udp;
        let text = explain(&rec);
        assert_eq!(
            text,
            "it ended with an ICMP fragmentation needed, type 3 code 4 sent back to the \
             client at +900 us"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn record_all_and_normal_close() {
        let rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(100, K::SynAck, S2c, Info, 100),
                pt(5_000, K::Fin, S2c, Info, 0),
                pt(5_100, K::Fin, C2s, Info, 0),
            ],
            CloseReason::TcpFin,
            ConnState::SF,
            Flags::ALL,
        );
        assert_eq!(
            explain(&rec),
            "kept because every connection is recorded (--record all); it closed normally \
             (FIN both ways, the server first) after 5.1 ms"
        );
        covers_every_flag(&rec);
    }

    #[test]
    fn flags_without_points_still_explained() {
        let mut rec = record(
            vec![
                pt(0, K::Syn, C2s, Info, 0),
                pt(100, K::SynAck, S2c, Info, 100),
            ],
            CloseReason::Shutdown,
            ConnState::S1,
            Flags(0x7f),
        );
        rec.latency.max_stall_ns = Some(6_000_000_000);
        covers_every_flag(&rec);
        let text = explain(&rec);
        assert!(text.contains("stalled for 6.0 s"), "{text}");
        assert!(text.contains("flag user"), "{text}");
    }

    #[test]
    fn words() {
        assert_eq!(short_duration(3_100_000), "3.1 ms");
        assert_eq!(short_duration(212_000_000), "212 ms");
        assert_eq!(short_duration(3_000_000_000), "3.0 s");
        assert_eq!(short_duration(665_000), "665 us");
        assert_eq!(tcp_flags_text(0x03), "SYN+FIN");
        assert_eq!(icmp_error_text(4, 3, 3), "port unreachable, type 3 code 3");
        assert_eq!(icmp_error_text(6, 2, 0), "packet too big, type 2 code 0");
        assert_eq!(tls_alert_text(2 << 8 | 40), "fatal handshake_failure");
    }

    #[test]
    fn gap_scale_is_logarithmic() {
        let s = GapScale::new([1_000, 10_000_000]);
        assert_eq!(s.fraction(10_000_000), 1.0);
        assert!((s.fraction(1_000_000) - 0.75).abs() < 1e-9);
        assert_eq!(s.fraction(1_000), 0.0);
        assert_eq!(s.fraction(0), 0.0);
        assert_eq!(gap_bar(1.0).chars().count(), BAR_WIDTH);
        assert_eq!(gap_bar(0.0), "");
    }

    #[test]
    fn ladder_puts_directions_on_their_side() {
        let rec = record(
            vec![pt(0, K::Syn, C2s, Info, 0), pt(665, K::Rst, S2c, Error, 0)],
            CloseReason::TcpRstServer,
            ConnState::REJ,
            Flags::ERROR,
        );
        let mut out = Vec::new();
        write_ladder(&mut out, &rec, Paint::default()).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let syn = text
            .lines()
            .find(|l| l.contains("-- syn "))
            .expect("syn row");
        assert!(syn.trim_end().ends_with("->|"), "{text}");
        let rst = text
            .lines()
            .find(|l| l.contains(" rst --"))
            .expect("rst row");
        assert!(rst.starts_with("  >> +"), "{text}");
        assert!(rst.contains("|<-"), "{text}");
        assert!(!text.contains('\x1b'));
    }
}
