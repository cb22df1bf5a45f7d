//! Synthetic captures with ground truth, behind `conntrail synth`.
//!
//! [`write()`] produces a legacy pcap (nanosecond timestamps, Ethernet link type, little-endian
//! headers) of many *concurrent* TCP, UDP and ICMP echo connections whose packets interleave
//! in time order, and beside it a JSON Lines *truth* file that states, for every connection,
//! what conntrail must report under its default thresholds: class, endpoints, counters in
//! each direction, `close_reason`, `conn_state`, `flags` and the handshake and first-byte
//! latencies. The same [`SynthOptions`] always give byte-identical files: time starts at a
//! fixed epoch ([`EPOCH_NS`], 2024-01-01T00:00:00Z) and all randomness comes from a
//! splitmix64 generator seeded from [`SynthOptions::seed`].
//!
//! This module owns the flow classes ([`FlowClass`]) and their packet scripts, the address
//! and port plan, and frame encoding. It must never hold all packets or all flows in memory:
//! flows are admitted in start-time order and kept in a binary heap keyed by the time of
//! their next packet only while they are open, so memory follows the number of connections
//! open at once, not the size of the capture. It must never depend on the wall clock, the
//! host's byte order, hash-map iteration or thread timing.
//!
//! ```no_run
//! use synth::{write, SynthOptions};
//!
//! let opts = SynthOptions { flows: 200, packets: 4000, seed: 1, ..SynthOptions::default() };
//! let summary = write(&opts, "demo.pcap".as_ref(), "demo.truth.jsonl".as_ref())?;
//! println!("flows: {}\npackets: {}", summary.flows, summary.packets);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! # The capture
//!
//! - Each class gets a share of the flows ([`class_counts`]): `1 - anomaly_share` are normal
//!   (TCP 70 %, UDP 20 %, ICMP echo 10 %); the rest is spread evenly over the nine other
//!   classes. `tcp-never-closed` is one of those nine although conntrail keeps no record of
//!   it (its flags are empty): it is irregular, not anomalous.
//! - Flow start times of each class are spread uniformly (stratified) over the capture;
//!   classes with a fixed long script (`tcp-unanswered` needs 3 s for its SYN
//!   retransmissions, `tcp-slow-response` 1.5 s, ...) start early enough to finish within
//!   `duration_s` when it is long enough, so the capture ends close to `duration_s`.
//! - Addresses: clients in 10.0.0.0/8, servers in 172.16.0.0/16, about 10 % of the flows
//!   over IPv6 (clients `fd00::10:a:bc`, servers `fd00::172:16:xy`), about 3 % with one
//!   802.1Q tag. Every flow has its own (client address, server address) pair, so even ICMP
//!   flows (ports 0 in the truth) have a unique 5-tuple.
//! - The vantage point is next to the client: the client's replies follow what they answer
//!   by tens of microseconds, the server's come one RTT (1-20 ms for TCP, 0.2-20 ms for UDP
//!   and ICMP) after what they answer. IPv4 headers carry correct checksums, TTL 64, DF and
//!   an identification that increments per direction; TCP, UDP and ICMP checksums are
//!   correct too. Payload bytes are zeros; lengths are exact. Frames are not padded to the
//!   Ethernet minimum.
//! - `packets` is a target: after every flow has its class's minimum packets, the rest is
//!   handed out as bulk response segments (with the client's ACK every second segment) to
//!   the TCP flows that carry a response, with a spread between flows. The total lands
//!   within about a flow's worth of the target, unless the target is below the minimum
//!   (about 10 packets per TCP flow), which is then what is written.
//!
//! # The truth file
//!
//! One JSON object per flow, written when the flow sends its last packet, so the lines are
//! ordered by `end_ns` (ties by start order), not by `start_ns`:
//!
//! ```text
//! {"class":"tcp-normal","proto":"tcp","ip_version":4,
//!  "client":{"ip":"10.1.2.3","port":40000},"server":{"ip":"172.16.0.9","port":443},
//!  "vlans":[],"start_ns":..,"end_ns":..,
//!  "c2s":{"pkts":..,"bytes":..,"payload":..},"s2c":{..},
//!  "close_reason":"tcp-fin","conn_state":"SF","flags":[],
//!  "latency_ns":{"syn_synack":..,"ttfb":..}}
//! ```
//!
//! `bytes` counts frames as captured (no FCS), `payload` the L4 payload (after the 8-byte
//! header for ICMP). ICMP flows have ports 0. `syn_synack` is null without a SYN-ACK (and
//! for UDP and ICMP); `ttfb` (client's first payload byte to the server's first) is null
//! when one side sent no payload, and given for UDP and ICMP too, as conntrail measures it.
//! `close_reason`, `conn_state` and `flags` are [`FlowClass::expected`], except that a flow
//! left open whose idle timeout runs out before the capture ends (only in captures longer
//! than about 30 s) has `close_reason` `aged-out`, exactly as conntrail's timer wheel decides.

#![forbid(unsafe_code)]

pub mod proxy;

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use capture::PcapWriter;
use serde::Serialize;

/// Time of the capture's first possible packet: 2024-01-01T00:00:00Z, in ns since the Unix
/// epoch.
pub const EPOCH_NS: u64 = 1_704_067_200 * NS_PER_S;

/// The most flows one capture can hold with unique client/server address pairs.
pub const MAX_FLOWS: u64 = FLOWS_PER_CLIENT * CLIENT_ADDRS;

pub(crate) const NS_PER_MS: u64 = 1_000_000;
pub(crate) const NS_PER_S: u64 = 1_000_000_000;
pub(crate) const NS_PER_US: u64 = 1_000;

/// Client addresses 10.0.0.1 to 10.255.255.254.
const CLIENT_ADDRS: u64 = (1 << 24) - 2;
/// Each client address opens this many flows, each to another server address.
const FLOWS_PER_CLIENT: u64 = 4;

pub(crate) const ETH_HDR: usize = 14;
const VLAN_TAG: usize = 4;
pub(crate) const IPV4_HDR: usize = 20;
pub(crate) const IPV6_HDR: usize = 40;
pub(crate) const TCP_HDR: usize = 20;
const UDP_HDR: usize = 8;
const ICMP_HDR: usize = 8;
/// The longest headers a frame can have: Ethernet, 802.1Q, IPv6, TCP.
const MAX_HDRS: usize = ETH_HDR + VLAN_TAG + IPV6_HDR + TCP_HDR;
/// Largest frame written: a full-size segment in a tagged frame.
const FRAME_MAX: usize = ETH_HDR + VLAN_TAG + 1500;
/// The captures' snapshot length.
pub(crate) const PCAP_SNAPLEN: u32 = 65_535;

/// The captures' link type: Ethernet.
pub(crate) const LINKTYPE_ETHERNET: u32 = 1;

/// TCP payload of a full-size segment (1500-byte MTU, no TCP options).
pub(crate) const MSS_V4: u16 = 1460;
pub(crate) const MSS_V6: u16 = 1440;
/// Bytes of an ICMP echo's payload (ping's default).
const ECHO_PAYLOAD: u16 = 56;

pub(crate) const WINDOW_CLIENT: u16 = 64_240;
pub(crate) const WINDOW_SERVER: u16 = 65_160;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;

const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

pub(crate) const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// Fixed delays of the anomalous scripts.
const SLOW_SYN_SYNACK_NS: u64 = 250 * NS_PER_MS;
const SLOW_TTFB_NS: u64 = 1_500 * NS_PER_MS;
const RETRANSMIT_AFTER_NS: u64 = 200 * NS_PER_MS;
const RETRANSMITTED_SEGMENTS: u8 = 4;
const WINDOW_UPDATE_AFTER_NS: u64 = 100 * NS_PER_MS;
/// An unanswered SYN is sent again at these offsets from the first one.
const SYN_RETRY_NS: [u64; 2] = [NS_PER_S, 3 * NS_PER_S];
const ECHO_INTERVAL_NS: u64 = NS_PER_S;

/// conntrail's default idle timeouts for the flows the capture leaves open: a TCP handshake
/// never answered, an established TCP connection, UDP, ICMP.
const IDLE_TCP_SYN_NS: u64 = 30 * NS_PER_S;
const IDLE_TCP_ESTABLISHED_NS: u64 = 3_600 * NS_PER_S;
const IDLE_UDP_NS: u64 = 60 * NS_PER_S;
const IDLE_ICMP_NS: u64 = 30 * NS_PER_S;
/// conntrail's timer wheel ages a flow out when it processes a packet at or after the first
/// multiple of this tick (in absolute packet time) past the flow's deadline.
const TRACKER_TICK_NS: u64 = 100 * NS_PER_MS;

/// What to generate. `packets` is a target (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct SynthOptions {
    /// Connections in the capture.
    pub flows: u64,
    /// Packets in the capture, approximately.
    pub packets: u64,
    /// Seed of every random choice; the same options give byte-identical output.
    pub seed: u64,
    /// Share of the flows in the irregular classes, in `[0, 1]`.
    pub anomaly_share: f64,
    /// Seconds over which flow starts are spread; the capture ends close to this.
    pub duration_s: f64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            flows: 1_000,
            packets: 20_000,
            seed: 1,
            anomaly_share: 0.2,
            duration_s: 10.0,
        }
    }
}

/// What [`write()`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSummary {
    /// Connections written (each has one truth line).
    pub flows: u64,
    /// Packets written.
    pub packets: u64,
    /// Flows per class, in [`FlowClass::ALL`] order, by class name.
    pub by_class: Vec<(&'static str, u64)>,
}

/// The kinds of connection the generator writes, and what conntrail must say of each under
/// its default thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowClass {
    /// SYN, SYN-ACK after 1-20 ms, ACK, request, response 1-50 ms later (one or more
    /// segments, ACKed every second one), FIN from the client, FIN-ACK, last ACK.
    TcpNormal,
    /// Handshake, request and response, then a RST from the client.
    TcpRstClient,
    /// Handshake, request, then a RST from the server.
    TcpRstServer,
    /// SYN answered by RST-ACK.
    TcpRejected,
    /// SYN sent again 1 s and 3 s after the first; nothing from the server.
    TcpUnanswered,
    /// A normal connection whose server sends its first four response segments again,
    /// 200 ms after the first copy.
    TcpRetrans,
    /// A normal connection whose SYN-ACK comes 250 ms after the SYN.
    TcpSlowHandshake,
    /// The client uploads a request of several segments; the server ACKs it with window 0
    /// and opens the window 100 ms later, then answers and the connection closes normally.
    TcpZeroWindow,
    /// The server ACKs the request at once but sends its first payload byte 1500 ms after
    /// the client's first payload byte.
    TcpSlowResponse,
    /// Handshake, request and response; no FIN or RST.
    TcpNeverClosed,
    /// Requests and responses.
    UdpNormal,
    /// Echo request/reply pairs about a second apart.
    IcmpEcho,
}

/// What conntrail must report for a flow of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub close_reason: &'static str,
    pub conn_state: &'static str,
    /// Sorted.
    pub flags: &'static [&'static str],
}

/// Transport protocol of a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

impl FlowClass {
    /// Every class, in the order of [`SynthSummary::by_class`].
    pub const ALL: [FlowClass; 12] = [
        FlowClass::TcpNormal,
        FlowClass::TcpRstClient,
        FlowClass::TcpRstServer,
        FlowClass::TcpRejected,
        FlowClass::TcpUnanswered,
        FlowClass::TcpRetrans,
        FlowClass::TcpSlowHandshake,
        FlowClass::TcpZeroWindow,
        FlowClass::TcpSlowResponse,
        FlowClass::TcpNeverClosed,
        FlowClass::UdpNormal,
        FlowClass::IcmpEcho,
    ];

    /// The class's name in the truth file and the summary.
    pub fn name(self) -> &'static str {
        match self {
            FlowClass::TcpNormal => "tcp-normal",
            FlowClass::TcpRstClient => "tcp-rst-client",
            FlowClass::TcpRstServer => "tcp-rst-server",
            FlowClass::TcpRejected => "tcp-rejected",
            FlowClass::TcpUnanswered => "tcp-unanswered",
            FlowClass::TcpRetrans => "tcp-retrans",
            FlowClass::TcpSlowHandshake => "tcp-slow-handshake",
            FlowClass::TcpZeroWindow => "tcp-zero-window",
            FlowClass::TcpSlowResponse => "tcp-slow-response",
            FlowClass::TcpNeverClosed => "tcp-never-closed",
            FlowClass::UdpNormal => "udp-normal",
            FlowClass::IcmpEcho => "icmp-echo",
        }
    }

    /// Whether the class belongs to the normal share (`1 - anomaly_share`).
    pub fn is_normal(self) -> bool {
        matches!(
            self,
            FlowClass::TcpNormal | FlowClass::UdpNormal | FlowClass::IcmpEcho
        )
    }

    /// The record conntrail must write for a flow of this class under the default
    /// configuration, in a capture that ends before the flow's idle timeout (a flow left
    /// open is otherwise `aged-out`).
    pub fn expected(self) -> Expected {
        const NONE: &[&str] = &[];
        const ERROR: &[&str] = &["error"];
        const LATENCY: &[&str] = &["latency"];
        const PROTOCOL: &[&str] = &["protocol"];
        const ERROR_LATENCY: &[&str] = &["error", "latency"];
        let (close_reason, conn_state, flags): (_, _, &'static [&'static str]) = match self {
            FlowClass::TcpNormal => ("tcp-fin", "SF", NONE),
            FlowClass::TcpRstClient => ("tcp-rst-client", "RSTO", ERROR),
            FlowClass::TcpRstServer => ("tcp-rst-server", "RSTR", ERROR),
            FlowClass::TcpRejected => ("tcp-rst-server", "REJ", ERROR),
            FlowClass::TcpUnanswered => ("shutdown", "S0", ERROR_LATENCY),
            FlowClass::TcpRetrans => ("tcp-fin", "SF", PROTOCOL),
            FlowClass::TcpSlowHandshake => ("tcp-fin", "SF", LATENCY),
            FlowClass::TcpZeroWindow => ("tcp-fin", "SF", PROTOCOL),
            FlowClass::TcpSlowResponse => ("tcp-fin", "SF", LATENCY),
            FlowClass::TcpNeverClosed => ("shutdown", "S1", NONE),
            FlowClass::UdpNormal | FlowClass::IcmpEcho => ("shutdown", "none", NONE),
        };
        Expected {
            close_reason,
            conn_state,
            flags,
        }
    }

    /// The idle timeout that ages a flow of this class out when the capture goes on long
    /// enough after its last packet; `None` for flows that close.
    fn idle_timeout_ns(self) -> Option<u64> {
        match self {
            FlowClass::TcpUnanswered => Some(IDLE_TCP_SYN_NS),
            FlowClass::TcpNeverClosed => Some(IDLE_TCP_ESTABLISHED_NS),
            FlowClass::UdpNormal => Some(IDLE_UDP_NS),
            FlowClass::IcmpEcho => Some(IDLE_ICMP_NS),
            _ => None,
        }
    }

    fn proto(self) -> Proto {
        match self {
            FlowClass::UdpNormal => Proto::Udp,
            FlowClass::IcmpEcho => Proto::Icmp,
            _ => Proto::Tcp,
        }
    }

    /// Whether the server sends a response that bulk segments can lengthen.
    fn takes_bulk(self) -> bool {
        matches!(
            self,
            FlowClass::TcpNormal
                | FlowClass::TcpRstClient
                | FlowClass::TcpRetrans
                | FlowClass::TcpSlowHandshake
                | FlowClass::TcpZeroWindow
                | FlowClass::TcpSlowResponse
                | FlowClass::TcpNeverClosed
        )
    }

    /// An upper bound of the time the class's fixed script takes (bulk segments and UDP and
    /// ICMP repetitions adapt to the time left); flows start early enough to fit it.
    fn script_ns(self) -> u64 {
        match self {
            FlowClass::TcpUnanswered => SYN_RETRY_NS[1] + NS_PER_MS,
            FlowClass::TcpSlowResponse => SLOW_TTFB_NS + 100 * NS_PER_MS,
            FlowClass::TcpRetrans => {
                u64::from(RETRANSMITTED_SEGMENTS) * RETRANSMIT_AFTER_NS + 150 * NS_PER_MS
            }
            FlowClass::TcpSlowHandshake => SLOW_SYN_SYNACK_NS + 100 * NS_PER_MS,
            FlowClass::TcpZeroWindow => WINDOW_UPDATE_AFTER_NS + 100 * NS_PER_MS,
            FlowClass::UdpNormal | FlowClass::IcmpEcho => 50 * NS_PER_MS,
            _ => 100 * NS_PER_MS,
        }
    }
}

/// How many flows of each class `opts` asks for, in [`FlowClass::ALL`] order: shares as in
/// the module documentation, rounded by largest remainder so that they add up to
/// `opts.flows`.
pub fn class_counts(opts: &SynthOptions) -> [(FlowClass, u64); 12] {
    let anomalous = FlowClass::ALL.iter().filter(|c| !c.is_normal()).count() as f64;
    let share = opts.anomaly_share.clamp(0.0, 1.0);
    let weight = |c: FlowClass| match c {
        FlowClass::TcpNormal => (1.0 - share) * 0.7,
        FlowClass::UdpNormal => (1.0 - share) * 0.2,
        FlowClass::IcmpEcho => (1.0 - share) * 0.1,
        _ => share / anomalous,
    };
    let mut out = FlowClass::ALL.map(|c| (c, 0u64));
    let mut fractions = [(0.0f64, 0usize); 12];
    let mut given = 0u64;
    for (i, &class) in FlowClass::ALL.iter().enumerate() {
        let exact = weight(class) * opts.flows as f64;
        let whole = exact.floor();
        out[i].1 = whole as u64;
        given += whole as u64;
        fractions[i] = (exact - whole, i);
    }
    // Largest remainder first; ties go to the earlier class.
    fractions.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = opts.flows.saturating_sub(given);
    for &(_, i) in fractions.iter().cycle() {
        if left == 0 {
            break;
        }
        out[i].1 += 1;
        left -= 1;
    }
    out
}

/// Writes the capture to `pcap` and its ground truth to `truth`, replacing both files.
///
/// Errors: options out of range (no flows over [`MAX_FLOWS`], `anomaly_share` outside
/// `[0, 1]`, `duration_s` not a positive number of at most 10^6 s), or a file that cannot
/// be created or written.
pub fn write(opts: &SynthOptions, pcap: &Path, truth: &Path) -> Result<SynthSummary> {
    ensure!(
        opts.flows <= MAX_FLOWS,
        "synth: {} flows asked, at most {MAX_FLOWS} fit the address plan",
        opts.flows
    );
    ensure!(
        (0.0..=1.0).contains(&opts.anomaly_share),
        "synth: anomaly share {} is not within [0, 1]",
        opts.anomaly_share
    );
    ensure!(
        opts.duration_s.is_finite() && opts.duration_s > 0.0 && opts.duration_s <= 1e6,
        "synth: duration {} s is not within (0, 1e6]",
        opts.duration_s
    );

    let pcap_file = forensics::evidence::create_output(pcap)?;
    let truth_file = forensics::evidence::create_output(truth)?;
    let mut pcap_out = PcapWriter::new(
        BufWriter::with_capacity(1 << 20, pcap_file),
        LINKTYPE_ETHERNET,
        true,
        PCAP_SNAPLEN,
    )
    .with_context(|| format!("writing capture {}", pcap.display()))?;
    let mut truth_out = TruthWriter::new(truth_file);

    let counts = class_counts(opts);
    let mut gen = Generator::new(opts, &counts);
    let mut frame = vec![0u8; FRAME_MAX];
    let mut packets = 0u64;
    let mut flows = 0u64;
    loop {
        gen.admit_due();
        // The flow with the earliest next packet stays at the top of the heap while it is
        // served: one sift per packet instead of a pop and a push.
        let Some(mut top) = gen.heap.peek_mut() else {
            break;
        };
        let Reverse((ts_ns, order)) = *top;
        let flow = gen
            .open
            .get_mut(slot_of(order))
            .context("synth: flow heap names a free slot")?;
        let len = flow.emit(&mut frame);
        let bytes = frame
            .get(..len)
            .context("synth: frame longer than its buffer")?;
        pcap_out
            .frame_at(EPOCH_NS + ts_ns, len as u32, bytes)
            .with_context(|| format!("writing capture {}", pcap.display()))?;
        packets += 1;
        truth_out.age(EPOCH_NS + ts_ns);
        if flow.advance(ts_ns) {
            *top = Reverse((flow.next_ns, order));
            continue;
        }
        PeekMut::pop(top);
        truth_out
            .record(flow)
            .with_context(|| format!("writing truth file {}", truth.display()))?;
        flows += 1;
        gen.free.push(slot_of(order));
    }
    pcap_out
        .finish()
        .with_context(|| format!("writing capture {}", pcap.display()))?;
    truth_out
        .finish()
        .with_context(|| format!("writing truth file {}", truth.display()))?;

    Ok(SynthSummary {
        flows,
        packets,
        by_class: counts.iter().map(|&(c, n)| (c.name(), n)).collect(),
    })
}

/// splitmix64: small, fast, and good enough for traffic shapes.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        Rng(mix64(
            seed ^ mix64(stream.wrapping_add(0x5851_f42d_4c95_7f2d)),
        ))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[lo, hi]`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Log-uniform in `[lo, hi]`: as many short RTTs per decade as long ones.
    pub(crate) fn log_between(&mut self, lo: u64, hi: u64) -> u64 {
        let (lo_f, hi_f) = (lo as f64, hi as f64);
        (lo_f * (hi_f / lo_f).powf(self.unit())) as u64
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Flow start times of one class: `count` starts stratified over `[0, span_ns)`.
struct StartPlan {
    class: FlowClass,
    count: u64,
    issued: u64,
    span_ns: u64,
    next_ns: u64,
    rng: Rng,
}

impl StartPlan {
    fn new(class: FlowClass, count: u64, duration_ns: u64, seed: u64, i: usize) -> StartPlan {
        // Fit the script before the end when the capture is long enough; never squeeze all
        // starts of a class into less than a quarter of it.
        let span_ns = duration_ns
            .saturating_sub(class.script_ns())
            .max(duration_ns / 4)
            .max(1);
        let mut plan = StartPlan {
            class,
            count,
            issued: 0,
            span_ns,
            next_ns: 0,
            rng: Rng::new(seed, 0xc1a5_5000 + i as u64),
        };
        plan.draw();
        plan
    }

    fn draw(&mut self) {
        let at = (self.issued as f64 + self.rng.unit()) / self.count.max(1) as f64;
        self.next_ns = ((at * self.span_ns as f64) as u64).min(self.span_ns - 1);
    }

    fn pending(&self) -> bool {
        self.issued < self.count
    }
}

/// Hands out packets beyond each flow's minimum so that the capture's total follows
/// `target * flows_created / flows`, as bulk segments of flows that can take them.
struct PacketBudget {
    target: u64,
    flows: u64,
    created: u64,
    used: u64,
    /// Mean extra packets per flow that takes bulk: the scale of the spread.
    mean_extra: f64,
    /// Flows that take bulk, not created yet.
    bulk_left: u64,
    /// Flows that take no bulk created so far, and their packets.
    fixed_flows: u64,
    fixed_pkts: u64,
}

impl PacketBudget {
    /// Extra packets for the next flow created, which has `base` packets of its own.
    fn extra(&mut self, base: u64, takes_bulk: bool, rng: &mut Rng) -> u64 {
        self.created += 1;
        if !takes_bulk {
            self.fixed_flows += 1;
            self.fixed_pkts += base;
            return 0;
        }
        self.bulk_left = self.bulk_left.saturating_sub(1);
        let due = if self.bulk_left == 0 {
            // The last flow that takes bulk takes what is left but the (estimated) packets
            // of the flows still to come.
            let later = self.flows.saturating_sub(self.created) as f64;
            let mean_fixed = match self.fixed_flows {
                0 => 4.0,
                n => self.fixed_pkts as f64 / n as f64,
            };
            self.target as f64 - later * mean_fixed
        } else {
            (u128::from(self.target) * u128::from(self.created) / u128::from(self.flows.max(1)))
                as f64
        };
        let deficit = due - (self.used + base) as f64;
        // Exponential spread around the mean; the next flows make up for it, so it fades
        // out over the last flows, which have no successors to do so.
        let fade = (self.bulk_left as f64 / 16.0).min(1.0);
        let w = -(1.0 - rng.unit()).ln().min(8.0);
        let spread = self.mean_extra * fade * (w - 1.0);
        (deficit + spread).max(0.0).round() as u64
    }

    fn spend(&mut self, packets: u64) {
        self.used += packets;
    }
}

/// The generator's state: start plans of the classes not yet fully admitted, and the open
/// flows in a heap by the time of their next packet.
struct Generator {
    seed: u64,
    duration_ns: u64,
    plans: Vec<StartPlan>,
    /// (start time, plan) of the next flow to admit.
    next_start: Option<(u64, usize)>,
    next_index: u64,
    budget: PacketBudget,
    /// Open flows; `free` lists reusable slots.
    open: Vec<Flow>,
    free: Vec<usize>,
    /// (next packet time, [`heap_order`] of the flow): 16 bytes an entry.
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Generator {
    fn new(opts: &SynthOptions, counts: &[(FlowClass, u64); 12]) -> Generator {
        let duration_ns = ((opts.duration_s * NS_PER_S as f64) as u64).max(1);
        let plans: Vec<StartPlan> = counts
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(i, &(c, n))| StartPlan::new(c, n, duration_ns, opts.seed, i))
            .collect();
        let bulk_flows: u64 = counts
            .iter()
            .filter(|(c, _)| c.takes_bulk())
            .map(|(_, n)| n)
            .sum();
        // About 11 packets is the minimum of a TCP flow with a response, about 5 of the rest.
        let base_guess = 11 * bulk_flows + 5 * (opts.flows - bulk_flows);
        let mean_extra = opts.packets.saturating_sub(base_guess) as f64 / bulk_flows.max(1) as f64;
        Generator {
            seed: opts.seed,
            duration_ns,
            next_start: Generator::earliest_start(&plans),
            plans,
            next_index: 0,
            budget: PacketBudget {
                target: opts.packets,
                flows: opts.flows,
                created: 0,
                used: 0,
                mean_extra,
                bulk_left: bulk_flows,
                fixed_flows: 0,
                fixed_pkts: 0,
            },
            open: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// Admits every flow that starts no later than the next packet of the open flows.
    fn admit_due(&mut self) {
        while let Some((at, plan)) = self.next_start {
            match self.heap.peek() {
                Some(Reverse((t, _))) if *t < at => return,
                _ => self.admit(plan),
            }
        }
    }

    /// The plan whose next flow starts first (the earlier class on a tie), if any is left.
    fn earliest_start(plans: &[StartPlan]) -> Option<(u64, usize)> {
        plans
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pending())
            .map(|(i, p)| (p.next_ns, i))
            .min()
    }

    fn admit(&mut self, plan_at: usize) {
        let Some(plan) = self.plans.get_mut(plan_at) else {
            return;
        };
        let (class, start_ns) = (plan.class, plan.next_ns);
        plan.issued += 1;
        plan.draw();
        let index = self.next_index;
        self.next_index += 1;
        let flow = Flow::new(
            class,
            index,
            start_ns,
            self.seed,
            self.duration_ns,
            &mut self.budget,
        );
        let slot = match self.free.pop() {
            Some(slot) => {
                self.open[slot] = flow;
                slot
            }
            None => {
                self.open.push(flow);
                self.open.len() - 1
            }
        };
        self.heap.push(Reverse((start_ns, heap_order(index, slot))));
        self.next_start = Generator::earliest_start(&self.plans);
    }
}

/// The second half of a heap key: the flow index (which breaks ties between flows sending
/// at the same nanosecond, in start order) above its slot. Both are below 2^32: flows are at
/// most [`MAX_FLOWS`] and slots at most the flows.
fn heap_order(index: u64, slot: usize) -> u64 {
    index << 32 | slot as u64
}

fn slot_of(order: u64) -> usize {
    (order & 0xffff_ffff) as usize
}

/// Direction of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    C2s = 0,
    S2c = 1,
}

/// The packet a flow sends next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Syn,
    SynAck,
    RejectRst,
    HandshakeAck,
    Request,
    /// The server's pure ACK of the request (slow response).
    RequestAck,
    ZeroWindowAck,
    WindowUpdate,
    Response,
    Retransmission,
    ResponseAck,
    ServerRst,
    ClientRst,
    ClientFin,
    ServerFin,
    FinalAck,
    UdpRequest,
    UdpResponse,
    EchoRequest,
    EchoReply,
}

/// Transport header of one packet.
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
    },
    Udp,
    Echo {
        reply: bool,
        seq: u16,
    },
}

/// Addresses of both ends.
#[derive(Clone, Copy, Debug)]
enum Ips {
    V4 { client: [u8; 4], server: [u8; 4] },
    V6 { client: [u8; 16], server: [u8; 16] },
}

/// Packets, frame bytes and L4 payload bytes in one direction.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
struct DirCounts {
    pkts: u64,
    bytes: u64,
    payload: u64,
}

/// One open flow: its plan, its TCP sequence state and its truth counters.
struct Flow {
    index: u64,
    class: FlowClass,
    rng: Rng,
    ips: Ips,
    client_mac: [u8; 6],
    client_port: u16,
    server_port: u16,
    vlan: Option<u16>,
    /// Capture-relative times (add [`EPOCH_NS`] for the wire).
    start_ns: u64,
    next_ns: u64,
    end_by_ns: u64,
    step: Step,
    ip_id: [u16; 2],
    rtt_ns: u64,
    ack_delay_ns: u64,
    /// Mean spacing of bulk response segments.
    gap_ns: u64,
    mss: u16,
    // TCP
    client_isn: u32,
    client_next: u32,
    server_next: u32,
    syns: u8,
    request_left: u32,
    request_last_len: u16,
    response_left: u32,
    response_last_len: u16,
    unacked: u8,
    retransmit_left: u8,
    last_segment: (u32, u16),
    // UDP and ICMP
    pairs_left: u32,
    replies_per_request: u8,
    replies_left: u8,
    request_len: u16,
    reply_len: u16,
    echo_id: u16,
    echo_seq: u16,
    interval_ns: u64,
    last_request_ns: u64,
    // Truth
    planned_pkts: u64,
    counts: [DirCounts; 2],
    synack_ns: Option<u64>,
    first_payload_ns: [Option<u64>; 2],
    last_ns: u64,
}

/// Packets of a response of `segments` segments: the client ACKs every second segment and
/// the last one; in `tcp-retrans` each of the first four is sent twice and ACKed alone.
fn response_pkts(class: FlowClass, segments: u64) -> u64 {
    let (special, regular) = if class == FlowClass::TcpRetrans {
        let n = u64::from(RETRANSMITTED_SEGMENTS).min(segments);
        (3 * n, segments - n)
    } else {
        (0, segments)
    };
    special + regular + regular.div_ceil(2)
}

impl Flow {
    fn new(
        class: FlowClass,
        index: u64,
        start_ns: u64,
        seed: u64,
        duration_ns: u64,
        budget: &mut PacketBudget,
    ) -> Flow {
        let mut rng = Rng::new(seed, index);
        let (ips, client_mac) = addresses(seed, index, rng.chance(0.1));
        let vlan = rng.chance(0.03).then(|| 10 + rng.below(4000) as u16);
        let proto = class.proto();
        let mss = match ips {
            Ips::V4 { .. } => MSS_V4,
            Ips::V6 { .. } => MSS_V6,
        };
        let server_port = match proto {
            Proto::Tcp => {
                [80, 443, 443, 443, 8080, 8443, 22, 25, 5432, 6379][rng.below(10) as usize]
            }
            Proto::Udp => [53, 53, 53, 123, 443, 514, 5353, 1812][rng.below(8) as usize],
            Proto::Icmp => 0,
        };
        let client_port = match proto {
            Proto::Icmp => 0,
            _ => client_port(seed, index),
        };
        let rtt_ns = match proto {
            Proto::Tcp => rng.log_between(NS_PER_MS, 20 * NS_PER_MS),
            _ => rng.log_between(200 * NS_PER_US, 20 * NS_PER_MS),
        };
        let end_by_ns = duration_ns.max(start_ns + class.script_ns());
        let mut flow = Flow {
            index,
            class,
            ips,
            client_mac,
            client_port,
            server_port,
            vlan,
            start_ns,
            next_ns: start_ns,
            end_by_ns,
            step: Step::Syn,
            ip_id: [rng.next_u64() as u16, rng.next_u64() as u16],
            rtt_ns,
            ack_delay_ns: rng.between(10 * NS_PER_US, 40 * NS_PER_US),
            gap_ns: 0,
            mss,
            client_isn: rng.next_u64() as u32,
            client_next: 0,
            server_next: rng.next_u64() as u32,
            syns: 0,
            request_left: 0,
            request_last_len: 0,
            response_left: 0,
            response_last_len: 0,
            unacked: 0,
            retransmit_left: 0,
            last_segment: (0, 0),
            pairs_left: 0,
            replies_per_request: 0,
            replies_left: 0,
            request_len: 0,
            reply_len: 0,
            echo_id: rng.next_u64() as u16,
            echo_seq: 0,
            interval_ns: 0,
            last_request_ns: 0,
            planned_pkts: 0,
            counts: [DirCounts::default(); 2],
            synack_ns: None,
            first_payload_ns: [None; 2],
            last_ns: start_ns,
            rng,
        };
        flow.client_next = flow.client_isn.wrapping_add(1);
        flow.plan(budget);
        flow
    }

    /// Chooses the script's sizes and counts and takes bulk from `budget`.
    fn plan(&mut self, budget: &mut PacketBudget) {
        let class = self.class;
        let rng = &mut self.rng;
        let mss = u64::from(self.mss);
        match class.proto() {
            Proto::Udp => {
                self.step = Step::UdpRequest;
                self.pairs_left = [1, 1, 1, 1, 1, 1, 2, 2, 3, 4][rng.below(10) as usize];
                self.replies_per_request = if rng.chance(0.15) { 2 } else { 1 };
                self.request_len = rng.between(20, 300) as u16;
                self.reply_len = rng.between(40, 1200) as u16;
                self.planned_pkts =
                    u64::from(self.pairs_left) * (1 + u64::from(self.replies_per_request));
                budget.extra(self.planned_pkts, false, rng);
                budget.spend(self.planned_pkts);
                return;
            }
            Proto::Icmp => {
                self.step = Step::EchoRequest;
                self.request_len = ECHO_PAYLOAD;
                self.reply_len = ECHO_PAYLOAD;
                let pairs = rng.between(1, 5);
                let room = self
                    .end_by_ns
                    .saturating_sub(self.start_ns + class.script_ns());
                self.interval_ns = (room / pairs)
                    .min(ECHO_INTERVAL_NS)
                    .max(self.rtt_ns + NS_PER_MS);
                self.pairs_left = pairs as u32;
                self.planned_pkts = 2 * pairs;
                budget.extra(self.planned_pkts, false, rng);
                budget.spend(self.planned_pkts);
                return;
            }
            Proto::Tcp => {}
        }

        // Request: one segment, or an upload of several when the server will close its
        // window.
        let (request_segments, request_last) = if class == FlowClass::TcpZeroWindow {
            (rng.between(4, 8), rng.between(100, mss))
        } else if rng.chance(0.1) {
            (2, rng.between(50, mss))
        } else {
            (1, rng.between(80, 1200))
        };
        self.request_left = request_segments as u32;
        self.request_last_len = request_last as u16;
        let min_segments = if class == FlowClass::TcpRetrans {
            u64::from(RETRANSMITTED_SEGMENTS)
        } else {
            1
        };
        let mut segments = min_segments.max(rng.between(1, 3));
        self.response_last_len = rng.between(100, mss) as u16;

        let base = match class {
            FlowClass::TcpRejected => 2,
            FlowClass::TcpUnanswered => 1 + SYN_RETRY_NS.len() as u64,
            FlowClass::TcpRstServer => 3 + request_segments + 1,
            _ => {
                let server_acks = match class {
                    FlowClass::TcpZeroWindow => 2,
                    FlowClass::TcpSlowResponse => 1,
                    _ => 0,
                };
                let close = match class {
                    FlowClass::TcpRstClient => 1,
                    FlowClass::TcpNeverClosed => 0,
                    _ => 3,
                };
                3 + request_segments + server_acks + response_pkts(class, segments) + close
            }
        };
        let extra = budget.extra(base, class.takes_bulk(), rng);
        let mut planned = base;
        if extra > 0 {
            // About two segments for every three packets (one ACK per two segments), and
            // no more than 2^31 segments in one flow.
            let more = (extra * 2).div_ceil(3).min((1 << 31) - segments);
            planned += response_pkts(class, segments + more) - response_pkts(class, segments);
            segments += more;
        }
        budget.spend(planned);
        self.planned_pkts = planned;
        self.response_left = segments as u32;
        if class == FlowClass::TcpRetrans {
            self.retransmit_left = RETRANSMITTED_SEGMENTS;
        }
        // Bulk segments are spaced 20-300 us apart, closer when that is needed to end
        // within the capture, but never closer than 2 us.
        let room = self
            .end_by_ns
            .saturating_sub(self.start_ns + class.script_ns());
        self.gap_ns = (room / (segments + 1))
            .min(rng.between(20 * NS_PER_US, 300 * NS_PER_US))
            .max(2 * NS_PER_US);
    }

    /// Spacing of the next bulk segment: uniform in `[gap/2, 3 gap/2)`.
    fn bulk_gap(&mut self) -> u64 {
        self.gap_ns / 2 + self.rng.below(self.gap_ns)
    }

    /// The client's ACK delay in a bulk transfer: shorter than any segment spacing.
    fn bulk_ack_delay(&self) -> u64 {
        self.ack_delay_ns.min(self.gap_ns / 4).max(1)
    }

    /// Encodes the current step's packet into `frame` and counts it; returns the frame
    /// length.
    fn emit(&mut self, frame: &mut [u8]) -> usize {
        let t = self.next_ns;
        let (dir, l4, payload) = self.segment(t);
        let d = dir as usize;
        let ip_id = self.ip_id[d];
        self.ip_id[d] = ip_id.wrapping_add(1);
        let len = encode(self, dir, l4, payload, ip_id, frame);
        let counts = &mut self.counts[d];
        counts.pkts += 1;
        counts.bytes += len as u64;
        counts.payload += u64::from(payload);
        if payload > 0 && self.first_payload_ns[d].is_none() {
            self.first_payload_ns[d] = Some(t);
        }
        self.last_ns = t;
        len
    }

    /// The current step's direction, transport header and payload length; moves the
    /// sequence numbers on.
    fn segment(&mut self, t: u64) -> (Dir, L4, u16) {
        let tcp = |flags, seq, ack, window| L4::Tcp {
            flags,
            seq,
            ack,
            window,
        };
        let (c, s) = (self.client_next, self.server_next);
        match self.step {
            Step::Syn => {
                self.syns += 1;
                (Dir::C2s, tcp(TCP_SYN, self.client_isn, 0, WINDOW_CLIENT), 0)
            }
            Step::SynAck => {
                self.synack_ns = Some(t);
                self.server_next = s.wrapping_add(1);
                (Dir::S2c, tcp(TCP_SYN | TCP_ACK, s, c, WINDOW_SERVER), 0)
            }
            Step::RejectRst => (Dir::S2c, tcp(TCP_RST | TCP_ACK, 0, c, 0), 0),
            Step::HandshakeAck | Step::ResponseAck | Step::FinalAck => {
                if self.step == Step::ResponseAck {
                    self.unacked = 0;
                }
                (Dir::C2s, tcp(TCP_ACK, c, s, WINDOW_CLIENT), 0)
            }
            Step::Request => {
                self.request_left = self.request_left.saturating_sub(1);
                let (len, flags) = if self.request_left == 0 {
                    (self.request_last_len, TCP_ACK | TCP_PSH)
                } else {
                    (self.mss, TCP_ACK)
                };
                self.client_next = c.wrapping_add(u32::from(len));
                (Dir::C2s, tcp(flags, c, s, WINDOW_CLIENT), len)
            }
            Step::RequestAck | Step::WindowUpdate => {
                (Dir::S2c, tcp(TCP_ACK, s, c, WINDOW_SERVER), 0)
            }
            Step::ZeroWindowAck => (Dir::S2c, tcp(TCP_ACK, s, c, 0), 0),
            Step::Response => {
                self.response_left = self.response_left.saturating_sub(1);
                self.unacked = self.unacked.saturating_add(1);
                let (len, flags) = if self.response_left == 0 {
                    (self.response_last_len, TCP_ACK | TCP_PSH)
                } else {
                    (self.mss, TCP_ACK)
                };
                self.last_segment = (s, len);
                self.server_next = s.wrapping_add(u32::from(len));
                (Dir::S2c, tcp(flags, s, c, WINDOW_SERVER), len)
            }
            Step::Retransmission => {
                self.retransmit_left = self.retransmit_left.saturating_sub(1);
                let (seq, len) = self.last_segment;
                let flags = if seq.wrapping_add(u32::from(len)) == s && self.response_left == 0 {
                    TCP_ACK | TCP_PSH
                } else {
                    TCP_ACK
                };
                (Dir::S2c, tcp(flags, seq, c, WINDOW_SERVER), len)
            }
            Step::ServerRst => (Dir::S2c, tcp(TCP_RST | TCP_ACK, s, c, 0), 0),
            Step::ClientRst => (Dir::C2s, tcp(TCP_RST | TCP_ACK, c, s, 0), 0),
            Step::ClientFin => {
                self.client_next = c.wrapping_add(1);
                (Dir::C2s, tcp(TCP_FIN | TCP_ACK, c, s, WINDOW_CLIENT), 0)
            }
            Step::ServerFin => {
                self.server_next = s.wrapping_add(1);
                (Dir::S2c, tcp(TCP_FIN | TCP_ACK, s, c, WINDOW_SERVER), 0)
            }
            Step::UdpRequest => {
                self.pairs_left = self.pairs_left.saturating_sub(1);
                self.replies_left = self.replies_per_request;
                (Dir::C2s, L4::Udp, self.request_len)
            }
            Step::UdpResponse => {
                self.replies_left = self.replies_left.saturating_sub(1);
                (Dir::S2c, L4::Udp, self.reply_len)
            }
            Step::EchoRequest => {
                self.pairs_left = self.pairs_left.saturating_sub(1);
                self.echo_seq = self.echo_seq.wrapping_add(1);
                self.last_request_ns = t;
                let l4 = L4::Echo {
                    reply: false,
                    seq: self.echo_seq,
                };
                (Dir::C2s, l4, self.request_len)
            }
            Step::EchoReply => {
                let l4 = L4::Echo {
                    reply: true,
                    seq: self.echo_seq,
                };
                (Dir::S2c, l4, self.reply_len)
            }
        }
    }

    /// Moves to the packet after the one sent at `t`; false when the flow has sent its
    /// last packet.
    fn advance(&mut self, t: u64) -> bool {
        use FlowClass as C;
        use Step as S;
        let class = self.class;
        let rtt = self.rtt_ns;
        let ack = self.ack_delay_ns;
        let next = match self.step {
            S::Syn => match class {
                C::TcpUnanswered => SYN_RETRY_NS
                    .get(usize::from(self.syns) - 1)
                    .map(|after| (S::Syn, self.start_ns + after)),
                C::TcpRejected => Some((S::RejectRst, t + rtt)),
                C::TcpSlowHandshake => Some((S::SynAck, t + SLOW_SYN_SYNACK_NS)),
                _ => Some((S::SynAck, t + rtt)),
            },
            S::SynAck => Some((S::HandshakeAck, t + ack)),
            S::HandshakeAck => Some((
                S::Request,
                t + self.rng.between(50 * NS_PER_US, 2 * NS_PER_MS),
            )),
            S::Request if self.request_left > 0 => Some((S::Request, t + ack)),
            S::Request => match class {
                C::TcpRstServer => Some((
                    S::ServerRst,
                    t + rtt + self.rng.between(100 * NS_PER_US, 5 * NS_PER_MS),
                )),
                C::TcpZeroWindow => Some((S::ZeroWindowAck, t + rtt)),
                C::TcpSlowResponse => Some((S::RequestAck, t + rtt)),
                // Response 1-50 ms after the request: RTT plus server time.
                _ => Some((
                    S::Response,
                    t + rtt + self.rng.between(500 * NS_PER_US, 30 * NS_PER_MS),
                )),
            },
            S::ZeroWindowAck => Some((S::WindowUpdate, t + WINDOW_UPDATE_AFTER_NS)),
            S::WindowUpdate => Some((
                S::Response,
                t + self.rng.between(500 * NS_PER_US, 10 * NS_PER_MS),
            )),
            S::RequestAck => {
                let first = self.first_payload_ns[Dir::C2s as usize].unwrap_or(t);
                Some((S::Response, (first + SLOW_TTFB_NS).max(t + 1)))
            }
            S::Response if self.retransmit_left > 0 => {
                Some((S::Retransmission, t + RETRANSMIT_AFTER_NS))
            }
            S::Response if self.response_left == 0 || self.unacked >= 2 => {
                Some((S::ResponseAck, t + self.bulk_ack_delay()))
            }
            S::Response => Some((S::Response, t + self.bulk_gap())),
            S::Retransmission => Some((S::ResponseAck, t + self.bulk_ack_delay())),
            S::ResponseAck if self.response_left > 0 => Some((S::Response, t + self.bulk_gap())),
            S::ResponseAck => {
                let think = self.rng.between(100 * NS_PER_US, 5 * NS_PER_MS);
                match class {
                    C::TcpRstClient => Some((S::ClientRst, t + think)),
                    C::TcpNeverClosed => None,
                    _ => Some((S::ClientFin, t + think)),
                }
            }
            S::ClientFin => Some((S::ServerFin, t + rtt)),
            S::ServerFin => Some((S::FinalAck, t + ack)),
            S::FinalAck | S::ServerRst | S::ClientRst | S::RejectRst => None,
            S::UdpRequest => Some((
                S::UdpResponse,
                t + rtt + self.rng.between(50 * NS_PER_US, 5 * NS_PER_MS),
            )),
            S::UdpResponse if self.replies_left > 0 => Some((S::UdpResponse, t + ack)),
            S::UdpResponse if self.pairs_left > 0 => {
                let room = self.end_by_ns.saturating_sub(t) / u64::from(self.pairs_left);
                let pause = self
                    .rng
                    .between(10 * NS_PER_MS, 300 * NS_PER_MS)
                    .min(room)
                    .max(NS_PER_MS);
                Some((S::UdpRequest, t + pause))
            }
            S::UdpResponse => None,
            S::EchoRequest => Some((S::EchoReply, t + rtt)),
            S::EchoReply if self.pairs_left > 0 => Some((
                S::EchoRequest,
                (self.last_request_ns + self.interval_ns).max(t + 1),
            )),
            S::EchoReply => None,
        };
        match next {
            Some((step, at)) => {
                self.step = step;
                self.next_ns = at;
                true
            }
            None => {
                debug_assert_eq!(
                    self.counts[0].pkts + self.counts[1].pkts,
                    self.planned_pkts,
                    "{} flow {} sent another number of packets than planned",
                    self.class.name(),
                    self.index
                );
                false
            }
        }
    }

    /// The flow's truth line; meaningful once it has sent its last packet.
    fn truth(&self) -> TruthRecord {
        let (client, server) = match self.ips {
            Ips::V4 { client, server } => (
                IpAddr::V4(Ipv4Addr::from(client)),
                IpAddr::V4(Ipv4Addr::from(server)),
            ),
            Ips::V6 { client, server } => (
                IpAddr::V6(Ipv6Addr::from(client)),
                IpAddr::V6(Ipv6Addr::from(server)),
            ),
        };
        let proto = self.class.proto();
        let expected = self.class.expected();
        let [c2s, s2c] = self.counts;
        let latency_ns = Latencies {
            syn_synack: self.synack_ns.map(|t| t - self.start_ns),
            ttfb: match self.first_payload_ns {
                [Some(c), Some(s)] => Some(s.saturating_sub(c)),
                _ => None,
            },
        };
        TruthRecord {
            class: self.class.name(),
            proto: proto.name(),
            ip_version: match self.ips {
                Ips::V4 { .. } => 4,
                Ips::V6 { .. } => 6,
            },
            client: Endpoint {
                ip: client,
                port: self.client_port,
            },
            server: Endpoint {
                ip: server,
                port: self.server_port,
            },
            vlans: self.vlan.into_iter().collect(),
            start_ns: EPOCH_NS + self.start_ns,
            end_ns: EPOCH_NS + self.last_ns,
            c2s,
            s2c,
            close_reason: expected.close_reason,
            conn_state: expected.conn_state,
            flags: expected.flags,
            latency_ns,
        }
    }
}

/// Client and server addresses and the client's MAC address of flow `index`. Each client
/// address opens [`FLOWS_PER_CLIENT`] flows, each to a different server, so no two flows
/// share an address pair. About half of the flows go to 256 popular servers.
fn addresses(seed: u64, index: u64, v6: bool) -> (Ips, [u8; 6]) {
    let client_slot = index / FLOWS_PER_CLIENT;
    let nth = index % FLOWS_PER_CLIENT;
    // A bijection of [0, CLIENT_ADDRS): 9973 is prime to 2 * 47 * 178481.
    let offset = mix64(seed) % CLIENT_ADDRS;
    let client = 1 + (client_slot % CLIENT_ADDRS * 9973 + offset) % CLIENT_ADDRS;
    let h = mix64(seed ^ mix64(client_slot ^ 0x5e12_7e25));
    let base = if h & 1 == 0 {
        (h >> 8) % 256
    } else {
        (h >> 8) % 65_536
    };
    // Distinct for the four flows of one client: 16411 * 3 < 65536.
    let server = ((base + nth * 16_411) % 65_536) as u16;
    let c = (client as u32).to_be_bytes();
    let s = server.to_be_bytes();
    let client_mac = [0x02, 0x10, c[0], c[1], c[2], c[3]];
    let ips = if v6 {
        let mut client6 = [0u8; 16];
        client6[0] = 0xfd;
        client6[11] = 0x10;
        client6[13..16].copy_from_slice(&c[1..4]);
        let mut server6 = [0u8; 16];
        server6[0] = 0xfd;
        server6[10] = 0x01;
        server6[11] = 0x72;
        server6[13] = 0x16;
        server6[14..16].copy_from_slice(&s);
        Ips::V6 {
            client: client6,
            server: server6,
        }
    } else {
        Ips::V4 {
            client: [10, c[1], c[2], c[3]],
            server: [172, 16, s[0], s[1]],
        }
    };
    (ips, client_mac)
}

/// An ephemeral port (32768-60999, Linux's range), different for the flows of one client.
fn client_port(seed: u64, index: u64) -> u16 {
    let client_slot = index / FLOWS_PER_CLIENT;
    let nth = index % FLOWS_PER_CLIENT;
    let base = mix64(seed ^ mix64(client_slot ^ 0x9027)) % 28_232;
    // 7057 * 3 < 28232: distinct for the four flows of one client.
    (32_768 + (base + nth * 7_057) % 28_232) as u16
}

/// Writes the frame of one packet of `flow` into `frame` (which must hold [`FRAME_MAX`]
/// bytes) and returns its length. Payload bytes are zeros.
fn encode(flow: &Flow, dir: Dir, l4: L4, payload: u16, ip_id: u16, frame: &mut [u8]) -> usize {
    let Some(frame) = frame.get_mut(..FRAME_MAX) else {
        return 0;
    };
    let (src_mac, dst_mac) = match dir {
        Dir::C2s => (flow.client_mac, ROUTER_MAC),
        Dir::S2c => (ROUTER_MAC, flow.client_mac),
    };
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    let mut at = 12;
    if let Some(vid) = flow.vlan {
        put16(frame, at, 0x8100);
        put16(frame, at + 2, vid & 0x0fff);
        at += VLAN_TAG;
    }
    let v6 = matches!(flow.ips, Ips::V6 { .. });
    put16(frame, at, if v6 { 0x86dd } else { 0x0800 });
    at += 2;

    let (l4_hdr, proto) = match l4 {
        L4::Tcp { .. } => (TCP_HDR, PROTO_TCP),
        L4::Udp => (UDP_HDR, PROTO_UDP),
        L4::Echo { .. } if v6 => (ICMP_HDR, PROTO_ICMPV6),
        L4::Echo { .. } => (ICMP_HDR, PROTO_ICMP),
    };
    let l4_len = l4_hdr + usize::from(payload);
    let ip_at = at;
    // Sum of the pseudo-header, for the TCP, UDP and ICMPv6 checksums.
    let pseudo = match flow.ips {
        Ips::V4 { client, server } => {
            let (src, dst) = match dir {
                Dir::C2s => (client, server),
                Dir::S2c => (server, client),
            };
            let total = (IPV4_HDR + l4_len) as u16;
            frame[at] = 0x45;
            frame[at + 1] = 0;
            put16(frame, at + 2, total);
            put16(frame, at + 4, ip_id);
            put16(frame, at + 6, 0x4000); // DF
            frame[at + 8] = 64;
            frame[at + 9] = proto;
            put16(frame, at + 10, 0);
            frame[at + 12..at + 16].copy_from_slice(&src);
            frame[at + 16..at + 20].copy_from_slice(&dst);
            let sum = checksum(sum16(&frame[at..at + IPV4_HDR]));
            put16(frame, at + 10, sum);
            at += IPV4_HDR;
            sum16(&src) + sum16(&dst) + u32::from(proto) + l4_len as u32
        }
        Ips::V6 { client, server } => {
            let (src, dst) = match dir {
                Dir::C2s => (client, server),
                Dir::S2c => (server, client),
            };
            put16(frame, at, 0x6000);
            put16(frame, at + 2, 0);
            put16(frame, at + 4, l4_len as u16);
            frame[at + 6] = proto;
            frame[at + 7] = 64;
            frame[at + 8..at + 24].copy_from_slice(&src);
            frame[at + 24..at + 40].copy_from_slice(&dst);
            at += IPV6_HDR;
            sum16(&src) + sum16(&dst) + u32::from(proto) + l4_len as u32
        }
    };
    debug_assert!(at - ip_at == IPV4_HDR || at - ip_at == IPV6_HDR);

    let (sport, dport) = match dir {
        Dir::C2s => (flow.client_port, flow.server_port),
        Dir::S2c => (flow.server_port, flow.client_port),
    };
    let hdr_end = at + l4_hdr;
    match l4 {
        L4::Tcp {
            flags,
            seq,
            ack,
            window,
        } => {
            put16(frame, at, sport);
            put16(frame, at + 2, dport);
            put32(frame, at + 4, seq);
            put32(frame, at + 8, ack);
            frame[at + 12] = 0x50; // 5 words, no options
            frame[at + 13] = flags;
            put16(frame, at + 14, window);
            put16(frame, at + 16, 0);
            put16(frame, at + 18, 0);
            let sum = checksum(pseudo + sum16(&frame[at..hdr_end]));
            put16(frame, at + 16, sum);
        }
        L4::Udp => {
            put16(frame, at, sport);
            put16(frame, at + 2, dport);
            put16(frame, at + 4, l4_len as u16);
            put16(frame, at + 6, 0);
            let sum = match checksum(pseudo + sum16(&frame[at..hdr_end])) {
                0 => 0xffff,
                sum => sum,
            };
            put16(frame, at + 6, sum);
        }
        L4::Echo { reply, seq } => {
            frame[at] = match (v6, reply) {
                (false, false) => 8,
                (false, true) => 0,
                (true, false) => 128,
                (true, true) => 129,
            };
            frame[at + 1] = 0;
            put16(frame, at + 2, 0);
            put16(frame, at + 4, flow.echo_id);
            put16(frame, at + 6, seq);
            let pseudo = if v6 { pseudo } else { 0 };
            let sum = checksum(pseudo + sum16(&frame[at..hdr_end]));
            put16(frame, at + 2, sum);
        }
    }
    // Bytes past the headers are payload: zeros. Only the header area can hold stale bytes.
    if hdr_end < MAX_HDRS {
        frame[hdr_end..MAX_HDRS].fill(0);
    }
    hdr_end + usize::from(payload)
}

pub(crate) fn put16(frame: &mut [u8], at: usize, v: u16) {
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put32(frame: &mut [u8], at: usize, v: u32) {
    frame[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Sum of big-endian 16-bit words (an odd last byte is padded with zero).
pub(crate) fn sum16(bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u32 = words
        .by_ref()
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum of a word sum (RFC 1071).
pub(crate) fn checksum(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes truth lines as flows finish, and ages flows out as conntrail will.
///
/// A flow left open is written with `close_reason` `shutdown`; when the capture goes on past
/// the moment conntrail ages it out, those eight bytes are overwritten in place with
/// `aged-out` (the same length) once everything is written. Memory: 16 bytes per open-ended
/// flow whose fate is not known yet.
struct TruthWriter {
    out: BufWriter<File>,
    written: u64,
    line: Vec<u8>,
    /// Per idle timeout: (absolute time from which conntrail ages the flow out, offset of
    /// its `close_reason` text), in time order because flows finish in time order.
    pending: Vec<(u64, VecDeque<(u64, u64)>)>,
    /// Offsets of `close_reason` texts to turn into `aged-out`.
    aged: Vec<u64>,
}

const SHUTDOWN_FIELD: &[u8] = b"\"close_reason\":\"shutdown\"";
const AGED_OUT: &[u8] = b"aged-out";

impl TruthWriter {
    fn new(file: File) -> TruthWriter {
        let mut timeouts: Vec<u64> = FlowClass::ALL
            .iter()
            .filter_map(|c| c.idle_timeout_ns())
            .collect();
        timeouts.sort_unstable();
        timeouts.dedup();
        TruthWriter {
            out: BufWriter::with_capacity(1 << 16, file),
            written: 0,
            line: Vec::with_capacity(512),
            pending: timeouts.into_iter().map(|t| (t, VecDeque::new())).collect(),
            aged: Vec::new(),
        }
    }

    /// Writes the line of a flow that has sent its last packet.
    fn record(&mut self, flow: &Flow) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &flow.truth())?;
        self.line.push(b'\n');
        if let Some(timeout) = flow.class.idle_timeout_ns() {
            let at = self
                .line
                .windows(SHUTDOWN_FIELD.len())
                .position(|w| w == SHUTDOWN_FIELD)
                .context("synth: open flow without close_reason shutdown")?;
            let offset = self.written + (at + SHUTDOWN_FIELD.len() - AGED_OUT.len() - 1) as u64;
            let deadline = EPOCH_NS + flow.last_ns + timeout;
            let ages_at = (deadline / TRACKER_TICK_NS + 1) * TRACKER_TICK_NS;
            if let Some((_, queue)) = self.pending.iter_mut().find(|(t, _)| *t == timeout) {
                queue.push_back((ages_at, offset));
            }
        }
        self.out.write_all(&self.line)?;
        self.written += self.line.len() as u64;
        Ok(())
    }

    /// The capture holds a packet at `ts_ns` (absolute): every flow due by then ages out.
    fn age(&mut self, ts_ns: u64) {
        for (_, queue) in &mut self.pending {
            while let Some(&(ages_at, offset)) = queue.front() {
                if ages_at > ts_ns {
                    break;
                }
                self.aged.push(offset);
                queue.pop_front();
            }
        }
    }

    /// Flushes and marks the flows that aged out.
    fn finish(mut self) -> Result<()> {
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        self.aged.sort_unstable();
        for offset in self.aged {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(AGED_OUT)?;
        }
        file.flush()?;
        Ok(())
    }
}

/// One line of the truth file.
#[derive(Serialize)]
struct TruthRecord {
    class: &'static str,
    /// "tcp", "udp" or "icmp" (ICMPv6 included).
    proto: &'static str,
    ip_version: u8,
    client: Endpoint,
    server: Endpoint,
    /// 802.1Q VLAN ids, outermost first.
    vlans: Vec<u16>,
    /// First and last packet, ns since the Unix epoch.
    start_ns: u64,
    end_ns: u64,
    c2s: DirCounts,
    s2c: DirCounts,
    close_reason: &'static str,
    conn_state: &'static str,
    flags: &'static [&'static str],
    latency_ns: Latencies,
}

#[derive(Serialize)]
struct Endpoint {
    ip: IpAddr,
    /// 0 for ICMP.
    port: u16,
}

/// Null where not applicable: no SYN-ACK (or not TCP), no payload one way.
#[derive(Serialize)]
struct Latencies {
    /// First SYN to SYN-ACK.
    syn_synack: Option<u64>,
    /// Client's first payload byte to the server's first payload byte, for every protocol
    /// (conntrail measures it for UDP and ICMP too).
    ttfb: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// A fresh directory for one test's files.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("conntrail-synth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn opts(flows: u64, packets: u64, seed: u64) -> SynthOptions {
        SynthOptions {
            flows,
            packets,
            seed,
            ..SynthOptions::default()
        }
    }

    /// Writes a capture and returns its summary, pcap bytes and truth lines.
    fn generate(name: &str, o: &SynthOptions) -> (SynthSummary, Vec<u8>, Vec<serde_json::Value>) {
        let dir = scratch(name);
        let (pcap, truth) = (dir.join("x.pcap"), dir.join("x.truth.jsonl"));
        let summary = write(o, &pcap, &truth).expect("synth");
        let bytes = std::fs::read(&pcap).expect("read pcap");
        let lines = std::fs::read_to_string(&truth)
            .expect("read truth")
            .lines()
            .map(|l| serde_json::from_str(l).expect("truth line is JSON"))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        (summary, bytes, lines)
    }

    /// One decoded packet of the capture.
    #[derive(Debug, Clone)]
    struct Decoded {
        ts_ns: u64,
        wire_len: u64,
        vlans: Vec<u16>,
        ip_version: u8,
        src: IpAddr,
        dst: IpAddr,
        proto: &'static str,
        sport: u16,
        dport: u16,
        payload: u64,
        tcp: Option<(u8, u32, u32, u16)>,
    }

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Decodes a frame, checking every length field and checksum on the way.
    fn decode(ts_ns: u64, wire_len: u64, f: &[u8]) -> Decoded {
        assert_eq!(f.len() as u64, wire_len, "frames are captured whole");
        let mut at = 12;
        let mut vlans = Vec::new();
        while be16(f, at) == 0x8100 {
            vlans.push(be16(f, at + 2) & 0x0fff);
            at += 4;
        }
        let ethertype = be16(f, at);
        at += 2;
        let (ip_version, src, dst, proto, l4_at, l4_len, pseudo) = match ethertype {
            0x0800 => {
                assert_eq!(f[at], 0x45);
                assert_eq!(f[at + 8], 64, "TTL 64");
                assert_eq!(checksum(sum16(&f[at..at + 20])), 0, "IPv4 header checksum");
                let total = usize::from(be16(f, at + 2));
                assert_eq!(at + total, f.len(), "IPv4 total length");
                let src: [u8; 4] = f[at + 12..at + 16].try_into().unwrap();
                let dst: [u8; 4] = f[at + 16..at + 20].try_into().unwrap();
                let proto = f[at + 9];
                let l4_len = total - 20;
                let pseudo = sum16(&src) + sum16(&dst) + u32::from(proto) + l4_len as u32;
                (
                    4,
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    proto,
                    at + 20,
                    l4_len,
                    pseudo,
                )
            }
            0x86dd => {
                assert_eq!(f[at + 7], 64, "hop limit 64");
                let l4_len = usize::from(be16(f, at + 4));
                assert_eq!(at + 40 + l4_len, f.len(), "IPv6 payload length");
                let src: [u8; 16] = f[at + 8..at + 24].try_into().unwrap();
                let dst: [u8; 16] = f[at + 24..at + 40].try_into().unwrap();
                let proto = f[at + 6];
                let pseudo = sum16(&src) + sum16(&dst) + u32::from(proto) + l4_len as u32;
                (
                    6,
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    proto,
                    at + 40,
                    l4_len,
                    pseudo,
                )
            }
            other => panic!("ethertype {other:#06x}"),
        };
        let l4 = &f[l4_at..];
        let l4_sum = |pseudo: u32| checksum(pseudo + sum16(l4));
        let (name, sport, dport, payload, tcp) = match proto {
            PROTO_TCP => {
                assert_eq!(l4_sum(pseudo), 0, "TCP checksum");
                let hdr = usize::from(l4[12] >> 4) * 4;
                let tcp = (l4[13], be32(l4, 4), be32(l4, 8), be16(l4, 14));
                ("tcp", be16(l4, 0), be16(l4, 2), l4_len - hdr, Some(tcp))
            }
            PROTO_UDP => {
                assert_eq!(l4_sum(pseudo), 0, "UDP checksum");
                assert_eq!(usize::from(be16(l4, 4)), l4_len, "UDP length");
                ("udp", be16(l4, 0), be16(l4, 2), l4_len - 8, None)
            }
            PROTO_ICMP | PROTO_ICMPV6 => {
                let pseudo = if proto == PROTO_ICMPV6 { pseudo } else { 0 };
                assert_eq!(l4_sum(pseudo), 0, "ICMP checksum");
                assert!(matches!(l4[0], 0 | 8 | 128 | 129), "echo request or reply");
                ("icmp", 0, 0, l4_len - 8, None)
            }
            other => panic!("IP protocol {other}"),
        };
        Decoded {
            ts_ns,
            wire_len,
            vlans,
            ip_version,
            src,
            dst,
            proto: name,
            sport,
            dport,
            payload: payload as u64,
            tcp,
        }
    }

    fn read_capture(bytes: &[u8]) -> Vec<Decoded> {
        // Nanosecond magic, little-endian; link type Ethernet.
        assert_eq!(&bytes[..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        assert_eq!(&bytes[20..24], &[1, 0, 0, 0]);
        let mut reader = PcapReader::new(bytes).expect("pcap header");
        let mut out = Vec::new();
        while let Some(pkt) = reader.next_packet() {
            let pkt = pkt.expect("packet");
            out.push(decode(
                pkt.timestamp.as_nanos() as u64,
                u64::from(pkt.orig_len),
                &pkt.data,
            ));
        }
        out
    }

    /// (proto, client ip, client port, server ip, server port) of a truth line.
    fn truth_key(t: &serde_json::Value) -> FlowKey {
        (
            t["proto"].as_str().unwrap().to_owned(),
            t["client"]["ip"].as_str().unwrap().to_owned(),
            t["client"]["port"].as_u64().unwrap(),
            t["server"]["ip"].as_str().unwrap().to_owned(),
            t["server"]["port"].as_u64().unwrap(),
        )
    }

    type FlowKey = (String, String, u64, String, u64);

    /// The packets of each flow, by the truth's key, with the direction (true: c2s).
    fn flows_of(
        pkts: &[Decoded],
        truth: &[serde_json::Value],
    ) -> HashMap<FlowKey, Vec<(bool, Decoded)>> {
        let mut flows: HashMap<_, Vec<(bool, Decoded)>> =
            truth.iter().map(|t| (truth_key(t), Vec::new())).collect();
        assert_eq!(flows.len(), truth.len(), "every flow has its own 5-tuple");
        for p in pkts {
            let fwd = (
                p.proto.to_owned(),
                p.src.to_string(),
                u64::from(p.sport),
                p.dst.to_string(),
                u64::from(p.dport),
            );
            let rev = (
                p.proto.to_owned(),
                p.dst.to_string(),
                u64::from(p.dport),
                p.src.to_string(),
                u64::from(p.sport),
            );
            if let Some(v) = flows.get_mut(&fwd) {
                v.push((true, p.clone()));
            } else if let Some(v) = flows.get_mut(&rev) {
                v.push((false, p.clone()));
            } else {
                panic!("packet of no flow in the truth: {p:?}");
            }
        }
        flows
    }

    #[test]
    fn same_seed_gives_identical_files() {
        let o = opts(300, 6_000, 7);
        let (a, pcap_a, truth_a) = generate("same-a", &o);
        let (b, pcap_b, truth_b) = generate("same-b", &o);
        assert_eq!(a, b);
        assert!(pcap_a == pcap_b, "captures differ");
        assert_eq!(truth_a, truth_b);
    }

    #[test]
    fn another_seed_gives_another_capture() {
        let (_, pcap_a, _) = generate("seed-a", &opts(300, 6_000, 7));
        let (_, pcap_b, _) = generate("seed-b", &opts(300, 6_000, 8));
        assert!(pcap_a != pcap_b);
    }

    #[test]
    fn packet_count_follows_the_target() {
        for (flows, packets) in [
            (2_000, 40_000),
            (200, 4_000),
            (300, 60_000),
            (1_000, 12_000),
        ] {
            let (s, bytes, truth) = generate("count", &opts(flows, packets, 3));
            let written = read_capture(&bytes).len() as u64;
            assert_eq!(s.packets, written);
            assert_eq!(s.flows, flows);
            assert_eq!(truth.len() as u64, flows);
            let off = (written as f64 - packets as f64).abs() / packets as f64;
            assert!(
                off < 0.03,
                "{flows} flows: {written} packets for {packets} asked"
            );
        }
    }

    #[test]
    fn a_target_below_the_minimum_gives_the_minimum() {
        let (s, _, truth) = generate("minimum", &opts(500, 100, 3));
        let sum: u64 = truth
            .iter()
            .map(|t| t["c2s"]["pkts"].as_u64().unwrap() + t["s2c"]["pkts"].as_u64().unwrap())
            .sum();
        assert_eq!(s.packets, sum);
        assert!(s.packets > 500 * 2);
    }

    #[test]
    fn class_shares_follow_the_anomaly_share() {
        let counts = class_counts(&SynthOptions {
            flows: 10_000,
            anomaly_share: 0.2,
            ..SynthOptions::default()
        });
        let get = |c: FlowClass| counts.iter().find(|(k, _)| *k == c).unwrap().1;
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 10_000);
        assert_eq!(get(FlowClass::TcpNormal), 5_600);
        assert_eq!(get(FlowClass::UdpNormal), 1_600);
        assert_eq!(get(FlowClass::IcmpEcho), 800);
        for &(c, n) in counts.iter().filter(|(c, _)| !c.is_normal()) {
            assert!((222..=223).contains(&n), "{}: {n}", c.name());
        }
        let none = class_counts(&SynthOptions {
            flows: 10,
            anomaly_share: 0.0,
            ..SynthOptions::default()
        });
        assert!(none.iter().all(|(c, n)| c.is_normal() || *n == 0));

        let (s, _, truth) = generate("shares", &opts(1_000, 10_000, 5));
        for (name, n) in &s.by_class {
            let lines = truth.iter().filter(|t| t["class"] == *name).count() as u64;
            assert_eq!(lines, *n, "{name}");
        }
    }

    #[test]
    fn truth_matches_the_capture() {
        let o = opts(2_000, 30_000, 11);
        let (_, bytes, truth) = generate("truth", &o);
        let pkts = read_capture(&bytes);
        assert!(
            pkts.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
            "time order"
        );
        assert!(pkts.iter().any(|p| p.ip_version == 6));
        assert!(pkts.iter().any(|p| !p.vlans.is_empty()));
        let flows = flows_of(&pkts, &truth);
        let mut last_end = 0;
        for t in &truth {
            let got = &flows[&truth_key(t)];
            for (dir, name) in [(true, "c2s"), (false, "s2c")] {
                let sent: Vec<_> = got.iter().filter(|(d, _)| *d == dir).collect();
                let counts = &t[name];
                assert_eq!(counts["pkts"], sent.len() as u64, "{t}");
                assert_eq!(
                    counts["bytes"],
                    sent.iter().map(|(_, p)| p.wire_len).sum::<u64>()
                );
                assert_eq!(
                    counts["payload"],
                    sent.iter().map(|(_, p)| p.payload).sum::<u64>()
                );
            }
            let (first, last) = (&got[0].1, &got[got.len() - 1].1);
            assert!(got[0].0, "the client sends first");
            assert_eq!(t["start_ns"], first.ts_ns);
            assert_eq!(t["end_ns"], last.ts_ns);
            assert!(last.ts_ns >= last_end, "lines come in end order");
            last_end = last.ts_ns;
            assert_eq!(t["ip_version"], first.ip_version);
            assert_eq!(t["vlans"], serde_json::json!(first.vlans));
            assert!(got.iter().all(|(_, p)| p.vlans == first.vlans));
            let class = FlowClass::ALL
                .into_iter()
                .find(|c| t["class"] == c.name())
                .expect("known class");
            let e = class.expected();
            assert_eq!(t["close_reason"], e.close_reason);
            assert_eq!(t["conn_state"], e.conn_state);
            assert_eq!(t["flags"], serde_json::json!(e.flags));
            if class.proto() == Proto::Icmp {
                assert_eq!(t["client"]["port"], 0);
                assert_eq!(t["server"]["port"], 0);
            }
        }
        // Flows start over the whole capture and it ends close to the duration.
        let span_ns = pkts[pkts.len() - 1].ts_ns - EPOCH_NS;
        assert!(
            span_ns < (o.duration_s * 1e9) as u64 + 200 * NS_PER_MS,
            "{span_ns}"
        );
        let late = truth
            .iter()
            .filter(|t| t["start_ns"].as_u64().unwrap() > EPOCH_NS + 9 * NS_PER_S / 2)
            .count();
        assert!(
            late > truth.len() / 4,
            "starts spread: {late} in the second half"
        );
    }

    /// What a TCP observer sees of one flow.
    #[derive(Default, Debug)]
    struct TcpFacts {
        syns: u32,
        retransmissions: u32,
        zero_windows: u32,
        longest_dup_ack_run: u32,
        max_gap_ns: u64,
        client_fin: bool,
        server_fin: bool,
        client_rst: bool,
        server_rst: bool,
        acks_unseen_data: bool,
        holes: bool,
    }

    /// Replays one flow's segments the way a tracker does.
    fn tcp_facts(pkts: &[(bool, Decoded)]) -> TcpFacts {
        let mut f = TcpFacts::default();
        // Per direction: next sequence number, last (ack, window) of a pure ACK, dup run.
        let mut next: [Option<u32>; 2] = [None, None];
        let mut last_ack: [Option<(u32, u16)>; 2] = [None, None];
        let mut run = [0u32; 2];
        for (i, (c2s, p)) in pkts.iter().enumerate() {
            let d = usize::from(!*c2s);
            let (flags, seq, ack, window) = p.tcp.expect("a TCP segment");
            if i > 0 {
                f.max_gap_ns = f.max_gap_ns.max(p.ts_ns - pkts[i - 1].1.ts_ns);
            }
            let (syn, fin, rst) = (
                flags & TCP_SYN != 0,
                flags & TCP_FIN != 0,
                flags & TCP_RST != 0,
            );
            f.syns += u32::from(syn && *c2s);
            match (*c2s, fin, rst) {
                (true, true, _) => f.client_fin = true,
                (false, true, _) => f.server_fin = true,
                (true, _, true) => f.client_rst = true,
                (false, _, true) => f.server_rst = true,
                _ => {}
            }
            if window == 0 && !syn && !fin && !rst {
                f.zero_windows += 1;
            }
            let seglen = p.payload as u32 + u32::from(syn) + u32::from(fin);
            if rst {
                continue;
            }
            match next[d] {
                Some(n) if seglen > 0 && seq != n => {
                    if seq.wrapping_add(seglen) == n && !syn {
                        f.retransmissions += 1;
                    } else if syn && seq.wrapping_add(1) == n {
                        // A SYN sent again.
                    } else {
                        f.holes = true;
                    }
                }
                Some(n) if seglen == 0 && seq != n => f.holes = true,
                _ => {}
            }
            if next[d].is_none() || seq.wrapping_add(seglen) != next[d].unwrap_or(0) {
                let end = seq.wrapping_add(seglen);
                if next[d].map(|n| (end.wrapping_sub(n) as i32) > 0) != Some(false) {
                    next[d] = Some(end);
                }
            }
            if flags & TCP_ACK != 0 {
                let peer_next = next[1 - d].unwrap_or(0);
                if ack != peer_next {
                    f.acks_unseen_data = true;
                }
                if seglen == 0 && last_ack[d] == Some((ack, window)) {
                    run[d] += 1;
                    f.longest_dup_ack_run = f.longest_dup_ack_run.max(run[d]);
                } else {
                    run[d] = 0;
                }
                last_ack[d] = Some((ack, window));
            }
        }
        f
    }

    #[test]
    fn each_class_behaves_as_its_expected_record_says() {
        check_classes(
            "classes",
            &SynthOptions {
                flows: 3_000,
                packets: 60_000,
                seed: 13,
                anomaly_share: 0.5,
                duration_s: 10.0,
            },
        );
    }

    #[test]
    fn a_short_capture_keeps_every_script_whole() {
        // Starts squeeze into the first part; long scripts run past the duration.
        check_classes(
            "short",
            &SynthOptions {
                flows: 1_000,
                packets: 30_000,
                seed: 17,
                anomaly_share: 0.5,
                duration_s: 0.5,
            },
        );
    }

    /// Replays each flow of a capture the way a tracker does and checks that it earns
    /// exactly what its class's expected record says under the default thresholds.
    fn check_classes(name: &str, o: &SynthOptions) {
        let (_, bytes, truth) = generate(name, o);
        let pkts = read_capture(&bytes);
        let flows = flows_of(&pkts, &truth);
        let ms = |v: &serde_json::Value| v.as_u64().map(|ns| ns as f64 / 1e6);
        let mut seen = HashMap::new();
        for t in &truth {
            let class = t["class"].as_str().unwrap();
            *seen.entry(class.to_owned()).or_insert(0) += 1;
            let got = &flows[&truth_key(t)];
            let max_gap = got
                .windows(2)
                .map(|w| w[1].1.ts_ns - w[0].1.ts_ns)
                .max()
                .unwrap_or(0);
            assert!(max_gap < 5 * NS_PER_S, "{class}: stall of {max_gap} ns");
            if t["proto"] != "tcp" {
                assert_eq!(t["latency_ns"]["syn_synack"], serde_json::Value::Null);
                let ttfb = ms(&t["latency_ns"]["ttfb"]).expect("answered");
                assert!(ttfb < 1000.0, "{class}: ttfb {ttfb} ms");
                continue;
            }
            let f = tcp_facts(got);
            assert!(
                !f.holes && !f.acks_unseen_data,
                "{class}: sequence numbers {f:?}"
            );
            assert!(f.longest_dup_ack_run < 2, "{class}: duplicate ACKs {f:?}");
            let syn_synack = ms(&t["latency_ns"]["syn_synack"]);
            let ttfb = ms(&t["latency_ns"]["ttfb"]);
            let expect_retrans = if class == "tcp-retrans" { 4 } else { 0 };
            assert_eq!(f.retransmissions, expect_retrans, "{class}: {f:?}");
            assert_eq!(
                f.zero_windows > 0,
                class == "tcp-zero-window",
                "{class}: {f:?}"
            );
            let syns = if class == "tcp-unanswered" { 3 } else { 1 };
            assert_eq!(f.syns, syns, "{class}");
            match class {
                "tcp-rejected" => {
                    assert!(f.server_rst && syn_synack.is_none() && ttfb.is_none());
                    assert_eq!(t["s2c"]["pkts"], 1);
                }
                "tcp-unanswered" => {
                    assert_eq!(t["s2c"]["pkts"], 0);
                    assert!(syn_synack.is_none());
                    let d = t["end_ns"].as_u64().unwrap() - t["start_ns"].as_u64().unwrap();
                    assert_eq!(d, 3 * NS_PER_S);
                }
                "tcp-slow-handshake" => assert_eq!(syn_synack, Some(250.0)),
                "tcp-slow-response" => assert_eq!(ttfb, Some(1500.0)),
                _ => {
                    let rtt = syn_synack.expect("a SYN-ACK");
                    assert!(
                        (1.0..=20.0).contains(&rtt),
                        "{class}: SYN-ACK after {rtt} ms"
                    );
                }
            }
            if !matches!(
                class,
                "tcp-rejected" | "tcp-unanswered" | "tcp-rst-server" | "tcp-slow-response"
            ) {
                let ttfb = ttfb.expect("a response");
                assert!((1.0..1000.0).contains(&ttfb), "{class}: ttfb {ttfb} ms");
            }
            let closed = (f.client_fin, f.server_fin, f.client_rst, f.server_rst);
            let want = match class {
                "tcp-rst-client" => (false, false, true, false),
                "tcp-rst-server" | "tcp-rejected" => (false, false, false, true),
                "tcp-unanswered" | "tcp-never-closed" => (false, false, false, false),
                _ => (true, true, false, false),
            };
            assert_eq!(closed, want, "{class}: FIN/RST");
        }
        assert_eq!(
            seen.len(),
            FlowClass::ALL.len(),
            "every class appears: {seen:?}"
        );
    }

    #[test]
    fn flows_left_open_age_out_in_a_long_capture() {
        let o = SynthOptions {
            flows: 400,
            packets: 6_000,
            seed: 21,
            anomaly_share: 0.5,
            duration_s: 100.0,
        };
        let (_, bytes, truth) = generate("aging", &o);
        let pkts = read_capture(&bytes);
        let capture_end = pkts[pkts.len() - 1].ts_ns;
        let mut aged = 0;
        for t in &truth {
            let class = FlowClass::ALL
                .into_iter()
                .find(|c| t["class"] == c.name())
                .expect("known class");
            let want = match class.idle_timeout_ns() {
                Some(timeout) => {
                    let deadline = t["end_ns"].as_u64().unwrap() + timeout;
                    let boundary = (deadline / TRACKER_TICK_NS + 1) * TRACKER_TICK_NS;
                    if capture_end >= boundary {
                        aged += 1;
                        "aged-out"
                    } else {
                        "shutdown"
                    }
                }
                None => class.expected().close_reason,
            };
            assert_eq!(t["close_reason"], want, "{t}");
        }
        assert!(aged > truth.len() / 10, "{aged} flows aged out");
    }

    #[test]
    fn unusable_options_are_refused() {
        let dir = scratch("refused");
        let (pcap, truth) = (dir.join("x.pcap"), dir.join("x.truth.jsonl"));
        for bad in [
            SynthOptions {
                anomaly_share: 1.5,
                ..SynthOptions::default()
            },
            SynthOptions {
                duration_s: 0.0,
                ..SynthOptions::default()
            },
            SynthOptions {
                duration_s: f64::NAN,
                ..SynthOptions::default()
            },
            SynthOptions {
                flows: MAX_FLOWS + 1,
                ..SynthOptions::default()
            },
        ] {
            assert!(write(&bad, &pcap, &truth).is_err(), "{bad:?}");
        }
        let missing = dir.join("no/such/dir/x.pcap");
        let err = write(&SynthOptions::default(), &missing, &truth).unwrap_err();
        assert!(format!("{err:#}").contains("no/such/dir"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_flows_gives_an_empty_capture() {
        let (s, bytes, truth) = generate("empty", &opts(0, 100, 1));
        assert_eq!((s.flows, s.packets), (0, 0));
        assert_eq!(bytes.len(), 24);
        assert!(truth.is_empty());
    }

    #[test]
    fn client_addresses_do_not_repeat() {
        // The multiplier is prime to the size of the client space.
        let gcd = |mut a: u64, mut b: u64| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        assert_eq!(gcd(9973, CLIENT_ADDRS), 1);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let (ips, _) = addresses(42, i, false);
            let Ips::V4 { client, server } = ips else {
                unreachable!()
            };
            assert_eq!(client[0], 10);
            assert!(seen.insert((client, server)), "flow {i}");
        }
    }
}
