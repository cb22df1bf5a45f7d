//! A synthetic reverse-proxy scenario with ground truth, for `conntrail correlate`.
//!
//! [`write_proxy`] writes what two capture points on a reverse proxy would see while it
//! serves `requests` HTTP requests, and what the proxy would log about them:
//!
//! - the *front* capture: every client's connection to the proxy's listening address
//!   ([`PROXY_FRONT_V4`] or [`PROXY_FRONT_V6`], port [`FRONT_PORT`]);
//! - the *back* capture: every connection the proxy opens from [`PROXY_BACK`] to one of
//!   [`SERVERS`] back-end servers `172.16.1.1`-`172.16.1.8`, port [`SERVER_PORT`];
//! - the proxy's conntrace log (Airlock Gateway `WR-SG-CONNTRACE` messages, JSON Lines): for
//!   each request its `req_id`, `sess_id`, `@timestamp` (when the proxy finished with the
//!   request, millisecond precision) and both connections' addresses, in a mix of the flat
//!   form (ports as numbers) and the Elasticsearch document form (`_source`, ports as
//!   strings), interleaved with access-log messages of another type (`WR-SG-SUMMARY`) that a
//!   reader must skip; lines are in `@timestamp` order;
//! - the truth, JSON Lines, one line per request in request order:
//!
//! ```text
//! {"req_id":"..","sess_id":"..","outcome":"back-reset","failed":"back",
//!  "front":{"client":{"ip":"10.1.0.7","port":40001},"server":{"ip":"10.0.0.1","port":443}},
//!  "back":{"client":{"ip":"172.16.0.1","port":50123},"server":{"ip":"172.16.1.3","port":8080}},
//!  "request_ns":..,"back_syn_ns":..}
//! ```
//!
//! `failed` is the side that failed first (`"back"`, `"front"` or null), `request_ns` the
//! client's request reaching the proxy and `back_syn_ns` the proxy's SYN to the server (ns
//! since the Unix epoch). Both captures are taken on the proxy (one clock): the proxy's own
//! packets follow what they answer by tens of microseconds; clients are 2-60 ms away, servers
//! 0.2-2 ms.
//!
//! # One request
//!
//! A client connects, sends its request (one segment) and the proxy ACKs it; 0.1-3 ms after
//! the request the proxy opens a new back-end connection (no connection reuse), forwards the
//! request (80 bytes longer: forwarding headers), and relays the response segment by segment
//! 30-500 us after each arrives; then the client closes with FIN and the proxy closes the
//! back-end connection with FIN. Outcomes ([`Outcome`]):
//!
//! | outcome | back end | front end | failed first |
//! |---|---|---|---|
//! | `ok` | normal | normal | - |
//! | `back-reset` | the server resets after the request | a short 502 response, closed normally | back |
//! | `back-unanswered` | SYN sent again after 1 s and 3 s, no answer | a 504 response 3.5 s after the SYN (first-byte latency over 1 s) | back |
//! | `back-timeout` | the server ACKs the request and never answers; the proxy resets it after its 1 s server timeout | a 504 response just before that reset (first-byte latency over 1 s) | back |
//! | `back-slow` | first response byte 1.2-2.5 s after the request | the same delay passed on (over 1 s) | back |
//! | `client-reset` | normal | the client resets after the response | front |
//! | `client-abort` | the proxy resets it after the client did | the client resets 20-150 ms after its request, before any response | front |
//!
//! A share `failure_share` of the requests fail, spread evenly over the six failing
//! outcomes; a third of the others are `ok-proxy-rst`. Requests start stratified over the capture; about a quarter come in bursts of
//! 2-4 from one client within 0.05-1.5 ms of each other (a browser opening parallel
//! connections), so several back-end connections open within one front-end connection's
//! lifetime and pairing them by time alone is ambiguous. About `v6_share` of the clients
//! reach the proxy over IPv6; the back end is IPv4.
//!
//! Deterministic: the same options give byte-identical files. Memory: one small descriptor
//! per packet (about 40 bytes), sorted before writing; meant for up to [`MAX_REQUESTS`]
//! requests.
//!
//! ```no_run
//! use synth::proxy::{write_proxy, ProxyOptions};
//!
//! let opts = ProxyOptions { requests: 100, ..ProxyOptions::default() };
//! let s = write_proxy(
//!     &opts,
//!     "front.pcap".as_ref(),
//!     "back.pcap".as_ref(),
//!     "conntrace.jsonl".as_ref(),
//!     "truth.jsonl".as_ref(),
//! )?;
//! println!("{} requests, {} + {} packets", s.requests, s.front_packets, s.back_packets);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use capture::PcapWriter;
use serde_json::{json, Value};

use crate::{
    checksum, put16, put32, sum16, Rng, EPOCH_NS, ETH_HDR, IPV4_HDR, IPV6_HDR, MSS_V6, NS_PER_MS,
    NS_PER_S, NS_PER_US, PCAP_SNAPLEN, PROTO_TCP, ROUTER_MAC, TCP_ACK, TCP_FIN, TCP_HDR, TCP_PSH,
    TCP_RST, TCP_SYN, WINDOW_CLIENT, WINDOW_SERVER,
};

/// The proxy's IPv4 listening address.
pub const PROXY_FRONT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The proxy's IPv6 listening address.
pub const PROXY_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// The proxy's address towards the back-end servers.
pub const PROXY_BACK: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// The proxy's listening port.
pub const FRONT_PORT: u16 = 443;
/// The back-end servers' port.
pub const SERVER_PORT: u16 = 8080;
/// Back-end servers: 172.16.1.1 to 172.16.1.SERVERS.
pub const SERVERS: u8 = 8;
/// The most requests one scenario holds: every request has its own client port and its own
/// proxy port, from the 28,232 ephemeral ports of Linux.
pub const MAX_REQUESTS: u64 = 28_232;

/// The proxy's connect timeout: it gives up on an unanswered back end this long after its
/// first SYN and answers the client 504.
const CONNECT_TIMEOUT_NS: u64 = 3_500 * NS_PER_MS;
/// An unanswered SYN is sent again at these offsets from the first one.
const SYN_RETRY_NS: [u64; 2] = [NS_PER_S, 3 * NS_PER_S];
/// The proxy's server timeout: it gives up on a back end that accepted the request but does
/// not answer this long after forwarding it, answers the client 504 and resets the back end.
const SERVER_TIMEOUT_NS: u64 = NS_PER_S;
/// A server's delayed ACK of a request it does not answer at once.
const DELAYED_ACK_NS: u64 = 40 * NS_PER_MS;
/// Bytes the proxy adds to a forwarded request (X-Forwarded-For and friends).
const FORWARD_HEADERS: u16 = 80;
/// Largest segment payload on both sides (fits IPv6 too).
const SEGMENT: u16 = MSS_V6;
const FRAME_MAX: usize = ETH_HDR + IPV6_HDR + TCP_HDR + SEGMENT as usize;
const PROXY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyOptions {
    /// Requests (each with its own front-end and back-end connection).
    pub requests: u64,
    /// Seed of every random choice; the same options give byte-identical output.
    pub seed: u64,
    /// Seconds over which requests start (the slowest outcomes need about 4 s more).
    pub duration_s: f64,
    /// Share of the requests that fail, in `[0, 1]`.
    pub failure_share: f64,
    /// Share of the clients that come over IPv6, in `[0, 1]`.
    pub v6_share: f64,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            requests: 200,
            seed: 1,
            duration_s: 10.0,
            failure_share: 0.3,
            v6_share: 0.15,
        }
    }
}

/// What [`write_proxy`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySummary {
    pub requests: u64,
    pub front_packets: u64,
    pub back_packets: u64,
    /// Requests per outcome, in [`Outcome::ALL`] order, by name.
    pub by_outcome: Vec<(&'static str, u64)>,
}

/// How one request goes (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    OkProxyRst,
    BackReset,
    BackUnanswered,
    BackTimeout,
    BackSlow,
    ClientReset,
    ClientAbort,
}

/// The side of a proxied request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Client -> proxy.
    Front,
    /// Proxy -> server.
    Back,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Front => "front",
            Side::Back => "back",
        }
    }
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::OkProxyRst,
        Outcome::BackReset,
        Outcome::BackUnanswered,
        Outcome::BackTimeout,
        Outcome::BackSlow,
        Outcome::ClientReset,
        Outcome::ClientAbort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OkProxyRst => "ok-proxy-rst",
            Outcome::BackReset => "back-reset",
            Outcome::BackUnanswered => "back-unanswered",
            Outcome::BackTimeout => "back-timeout",
            Outcome::BackSlow => "back-slow",
            Outcome::ClientReset => "client-reset",
            Outcome::ClientAbort => "client-abort",
        }
    }

    /// The side that fails first, if one does.
    pub fn failed(self) -> Option<Side> {
        match self {
            Outcome::Ok | Outcome::OkProxyRst => None,
            Outcome::BackReset
            | Outcome::BackUnanswered
            | Outcome::BackTimeout
            | Outcome::BackSlow => Some(Side::Back),
            Outcome::ClientReset | Outcome::ClientAbort => Some(Side::Front),
        }
    }
}

/// Writes both captures, the conntrace log and the truth, replacing the files.
///
/// Errors: options out of range (`requests` over [`MAX_REQUESTS`], shares outside `[0, 1]`,
/// `duration_s` not a positive number of at most 10^5 s), or a file that cannot be written.
pub fn write_proxy(
    opts: &ProxyOptions,
    front_pcap: &Path,
    back_pcap: &Path,
    conntrace: &Path,
    truth: &Path,
) -> Result<ProxySummary> {
    ensure!(
        opts.requests <= MAX_REQUESTS,
        "synth proxy: {} requests asked, at most {MAX_REQUESTS} fit the port plan",
        opts.requests
    );
    for (name, share) in [
        ("failure share", opts.failure_share),
        ("IPv6 share", opts.v6_share),
    ] {
        ensure!(
            (0.0..=1.0).contains(&share),
            "synth proxy: {name} {share} is not within [0, 1]"
        );
    }
    ensure!(
        opts.duration_s.is_finite() && opts.duration_s > 0.0 && opts.duration_s <= 1e5,
        "synth proxy: duration {} s is not within (0, 1e5]",
        opts.duration_s
    );

    let scenario = Scenario::build(opts);
    let front_packets = write_capture(front_pcap, &scenario.front, &scenario.front_conns)?;
    let back_packets = write_capture(back_pcap, &scenario.back, &scenario.back_conns)?;
    write_lines(conntrace, &scenario.conntrace_lines())
        .with_context(|| format!("writing conntrace log {}", conntrace.display()))?;
    write_lines(truth, &scenario.truth_lines())
        .with_context(|| format!("writing truth file {}", truth.display()))?;
    Ok(ProxySummary {
        requests: opts.requests,
        front_packets,
        back_packets,
        by_outcome: Outcome::ALL
            .iter()
            .map(|&o| {
                let n = scenario.requests.iter().filter(|r| r.outcome == o).count();
                (o.name(), n as u64)
            })
            .collect(),
    })
}

/// One TCP connection of the scenario.
#[derive(Clone, Copy, Debug)]
struct Conn {
    client: IpAddr,
    server: IpAddr,
    client_port: u16,
    server_port: u16,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
    /// Next IP identification per direction (IPv4).
    ip_id: [u16; 2],
}

const C2S: usize = 0;
const S2C: usize = 1;

/// One packet, before encoding.
#[derive(Clone, Copy, Debug)]
struct Pkt {
    /// Capture-relative time (add [`EPOCH_NS`]).
    ts_ns: u64,
    conn: u32,
    /// Order within the connection, for packets at the same nanosecond.
    n: u32,
    dir: usize,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    payload: u16,
}

/// Writes the packets of one connection in causal order (sequence and acknowledgement
/// numbers follow what each side has sent so far); times may go back and forth, the
/// capture is sorted afterwards.
struct Tcp<'a> {
    conn: u32,
    next: [u32; 2],
    isn_client: u32,
    n: u32,
    out: &'a mut Vec<Pkt>,
}

impl Tcp<'_> {
    fn push(&mut self, ts_ns: u64, dir: usize, flags: u8, seq: u32, payload: u16) {
        let window = match (flags & TCP_RST != 0, dir) {
            (true, _) => 0,
            (false, C2S) => WINDOW_CLIENT,
            (false, _) => WINDOW_SERVER,
        };
        let ack = if flags & TCP_ACK != 0 {
            self.next[1 - dir]
        } else {
            0
        };
        self.out.push(Pkt {
            ts_ns,
            conn: self.conn,
            n: self.n,
            dir,
            flags,
            seq,
            ack,
            window,
            payload,
        });
        self.n += 1;
    }

    fn syn(&mut self, t: u64) {
        self.push(t, C2S, TCP_SYN, self.isn_client, 0);
        self.next[C2S] = self.isn_client.wrapping_add(1);
    }

    fn syn_ack(&mut self, t: u64) {
        let s = self.next[S2C];
        self.push(t, S2C, TCP_SYN | TCP_ACK, s, 0);
        self.next[S2C] = s.wrapping_add(1);
    }

    fn ack(&mut self, t: u64, dir: usize) {
        self.push(t, dir, TCP_ACK, self.next[dir], 0);
    }

    fn data(&mut self, t: u64, dir: usize, len: u16, last: bool) {
        let s = self.next[dir];
        let flags = if last { TCP_ACK | TCP_PSH } else { TCP_ACK };
        self.push(t, dir, flags, s, len);
        self.next[dir] = s.wrapping_add(u32::from(len));
    }

    fn fin(&mut self, t: u64, dir: usize) {
        let s = self.next[dir];
        self.push(t, dir, TCP_FIN | TCP_ACK, s, 0);
        self.next[dir] = s.wrapping_add(1);
    }

    fn rst(&mut self, t: u64, dir: usize) {
        self.push(t, dir, TCP_RST | TCP_ACK, self.next[dir], 0);
    }
}

/// One request: its plan and, once built, its times.
struct Request {
    req_id: String,
    sess_id: String,
    outcome: Outcome,
    front: u32,
    back: u32,
    request_ns: u64,
    back_syn_ns: u64,
    /// When the proxy was done with the request (the conntrace `@timestamp`).
    done_ns: u64,
}

struct Scenario {
    requests: Vec<Request>,
    front_conns: Vec<Conn>,
    back_conns: Vec<Conn>,
    front: Vec<Pkt>,
    back: Vec<Pkt>,
    seed: u64,
}

/// Outcomes of `n` requests: a share `failure_share` spread evenly over the failing
/// outcomes (largest remainder), the rest `ok`, shuffled.
fn outcomes(n: u64, failure_share: f64, rng: &mut Rng) -> Vec<Outcome> {
    let failing: Vec<Outcome> = Outcome::ALL
        .into_iter()
        .filter(|o| o.failed().is_some())
        .collect();
    let failures = (n as f64 * failure_share).round() as u64;
    let per = failures / failing.len() as u64;
    let extra = failures % failing.len() as u64;
    let mut out = Vec::with_capacity(n as usize);
    for (i, &o) in failing.iter().enumerate() {
        let k = per + u64::from((i as u64) < extra);
        out.extend(std::iter::repeat_n(o, k as usize));
    }
    let routine = n.saturating_sub(failures) / 3;
    out.extend(std::iter::repeat_n(Outcome::OkProxyRst, routine as usize));
    out.resize(n as usize, Outcome::Ok);
    // Fisher-Yates.
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

impl Scenario {
    fn build(opts: &ProxyOptions) -> Scenario {
        let mut rng = Rng::new(opts.seed, 0x9_0c5e);
        let n = opts.requests;
        let outcomes = outcomes(n, opts.failure_share, &mut rng);
        let duration_ns = (opts.duration_s * NS_PER_S as f64) as u64;
        let span_ns = duration_ns
            .saturating_sub(4 * NS_PER_S)
            .max(duration_ns / 2)
            .max(1);
        let port_offset = [rng.below(28_232), rng.below(28_232)];
        let mut s = Scenario {
            requests: Vec::with_capacity(n as usize),
            front_conns: Vec::with_capacity(n as usize),
            back_conns: Vec::with_capacity(n as usize),
            front: Vec::new(),
            back: Vec::new(),
            seed: opts.seed,
        };
        let mut client = 0u32;
        let mut client_v6 = false;
        let mut sess_id = String::new();
        let mut last_syn_ns = 0u64;
        for (i, &outcome) in outcomes.iter().enumerate() {
            let idx = i as u64;
            // A burst continues the previous client's requests; else a new client.
            let burst = i > 0 && rng.chance(0.25);
            let syn_ns = if burst {
                last_syn_ns + rng.between(50 * NS_PER_US, 1_500 * NS_PER_US)
            } else {
                client += 1;
                client_v6 = rng.chance(opts.v6_share);
                sess_id = format!("{:016x}", rng.next_u64());
                let at = (idx as f64 + rng.unit()) / n.max(1) as f64;
                ((at * span_ns as f64) as u64).max(last_syn_ns)
            };
            last_syn_ns = syn_ns;
            let client_ip = if client_v6 {
                let [a, b] = (client as u16).to_be_bytes();
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0x10,
                    1,
                    u16::from_be_bytes([a, b]),
                ))
            } else {
                let c = client.to_be_bytes();
                IpAddr::V4(Ipv4Addr::new(10, 1, c[2], c[3]))
            };
            let proxy_front = match client_ip {
                IpAddr::V4(_) => IpAddr::V4(PROXY_FRONT_V4),
                IpAddr::V6(_) => IpAddr::V6(PROXY_FRONT_V6),
            };
            let c = client.to_be_bytes();
            let front = Conn {
                client: client_ip,
                server: proxy_front,
                client_port: ephemeral(idx, 7_057, port_offset[0]),
                server_port: FRONT_PORT,
                client_mac: ROUTER_MAC,
                server_mac: PROXY_MAC,
                ip_id: [rng.next_u64() as u16, rng.next_u64() as u16],
            };
            let server = 1 + rng.below(u64::from(SERVERS)) as u8;
            let back = Conn {
                client: IpAddr::V4(PROXY_BACK),
                server: IpAddr::V4(Ipv4Addr::new(172, 16, 1, server)),
                client_port: ephemeral(idx, 7_919, port_offset[1]),
                server_port: SERVER_PORT,
                client_mac: PROXY_MAC,
                server_mac: [0x02, 0x20, 0, 0, c[3], server],
                ip_id: [rng.next_u64() as u16, rng.next_u64() as u16],
            };
            s.front_conns.push(front);
            s.back_conns.push(back);
            let req_id = format!("{:08x}{idx:06}", rng.next_u64() as u32);
            let mut req = Request {
                req_id,
                sess_id: sess_id.clone(),
                outcome,
                front: i as u32,
                back: i as u32,
                request_ns: 0,
                back_syn_ns: 0,
                done_ns: 0,
            };
            s.script(&mut req, syn_ns, &mut rng);
            s.requests.push(req);
        }
        s.front.sort_by_key(|p| (p.ts_ns, p.conn, p.n));
        s.back.sort_by_key(|p| (p.ts_ns, p.conn, p.n));
        s
    }

    /// Writes the packets of one request on both sides, starting with the client's SYN at
    /// `t0`, and fills in its times.
    fn script(&mut self, req: &mut Request, t0: u64, rng: &mut Rng) {
        let rtt_c = rng.log_between(2 * NS_PER_MS, 60 * NS_PER_MS);
        let rtt_b = rng.log_between(200 * NS_PER_US, 2 * NS_PER_MS);
        let local = |rng: &mut Rng| rng.between(10 * NS_PER_US, 60 * NS_PER_US);
        let mut f = Tcp {
            conn: req.front,
            next: [0, rng.next_u64() as u32],
            isn_client: rng.next_u64() as u32,
            n: 0,
            out: &mut self.front,
        };
        let mut b = Tcp {
            conn: req.back,
            next: [0, rng.next_u64() as u32],
            isn_client: rng.next_u64() as u32,
            n: 0,
            out: &mut self.back,
        };

        // Front handshake and request.
        f.syn(t0);
        let t = t0 + local(rng);
        f.syn_ack(t);
        let t = t + rtt_c;
        f.ack(t, C2S);
        let request_ns = t + rng.between(5 * NS_PER_US, 50 * NS_PER_US);
        let request_len = rng.between(200, 1_200) as u16;
        f.data(request_ns, C2S, request_len, true);
        f.ack(request_ns + local(rng), S2C);
        req.request_ns = request_ns;

        // The back-end connection.
        let syn_ns = request_ns + rng.log_between(100 * NS_PER_US, 3 * NS_PER_MS);
        req.back_syn_ns = syn_ns;
        b.syn(syn_ns);
        if req.outcome == Outcome::BackUnanswered {
            for after in SYN_RETRY_NS {
                b.push(syn_ns + after, C2S, TCP_SYN, b.isn_client, 0);
            }
            let t = syn_ns + CONNECT_TIMEOUT_NS + local(rng);
            let len = rng.between(300, 500) as u16;
            let done = front_response(&mut f, &[(t, len)], rtt_c, rng);
            req.done_ns = t;
            front_close(&mut f, done, rtt_c, false, rng);
            return;
        }
        let t = syn_ns + rtt_b;
        b.syn_ack(t);
        let t = t + local(rng);
        b.ack(t, C2S);
        let forward_ns = t + local(rng);
        b.data(forward_ns, C2S, request_len + FORWARD_HEADERS, true);

        let server_ns = match req.outcome {
            Outcome::BackReset => {
                let t = forward_ns + rtt_b + rng.between(100 * NS_PER_US, 5 * NS_PER_MS);
                b.rst(t, S2C);
                let reply = t + rng.between(50 * NS_PER_US, 300 * NS_PER_US);
                let len = rng.between(200, 400) as u16;
                let done = front_response(&mut f, &[(reply, len)], rtt_c, rng);
                req.done_ns = reply;
                front_close(&mut f, done, rtt_c, false, rng);
                return;
            }
            Outcome::BackSlow => rng.between(1_200 * NS_PER_MS, 2_500 * NS_PER_MS),
            // Never answers: the proxy's timeout (below) comes first.
            Outcome::BackTimeout => SERVER_TIMEOUT_NS * 10,
            Outcome::ClientAbort => rng.between(300 * NS_PER_MS, 800 * NS_PER_MS),
            _ => rng.between(500 * NS_PER_US, 60 * NS_PER_MS),
        };
        let response_ns = forward_ns + rtt_b + server_ns;
        let abort = (req.outcome == Outcome::ClientAbort)
            .then(|| request_ns + rng.between(20 * NS_PER_MS, 150 * NS_PER_MS));
        // The server ACKs a request it does not answer at once, unless the proxy's reset
        // got there first.
        let delayed_ack = forward_ns + rtt_b + DELAYED_ACK_NS;
        if server_ns > DELAYED_ACK_NS && abort.is_none_or(|a| delayed_ack < a) {
            b.ack(delayed_ack, S2C);
        }

        if let Some(abort) = abort {
            f.rst(abort, C2S);
            b.rst(abort + rng.between(50 * NS_PER_US, 300 * NS_PER_US), C2S);
            req.done_ns = abort;
            return;
        }
        if req.outcome == Outcome::BackTimeout {
            // The 504 leaves for the client a few microseconds before the reset reaches the
            // server.
            let t = forward_ns + SERVER_TIMEOUT_NS;
            let len = rng.between(150, 250) as u16;
            let done = front_response(&mut f, &[(t, len)], rtt_c, rng);
            b.rst(t + rng.between(5 * NS_PER_US, 40 * NS_PER_US), C2S);
            req.done_ns = t;
            front_close(&mut f, done, rtt_c, false, rng);
            return;
        }

        // The response: segments on the back end, relayed to the front end.
        let segments = rng.between(1, 8);
        let mut relayed = Vec::with_capacity(segments as usize);
        let mut t = response_ns;
        let mut relay_t = 0;
        for k in 0..segments {
            let last = k + 1 == segments;
            let len = if last {
                rng.between(100, u64::from(SEGMENT)) as u16
            } else {
                SEGMENT
            };
            b.data(t, S2C, len, last);
            if k % 2 == 1 || last {
                b.ack(t + local(rng), C2S);
            }
            relay_t = (t + rng.between(30 * NS_PER_US, 500 * NS_PER_US)).max(relay_t + NS_PER_US);
            relayed.push((relay_t, len));
            if !last {
                t += rng.between(10 * NS_PER_US, 120 * NS_PER_US);
            }
        }
        // The proxy closes the back-end connection once it has the response.
        let t = t + rng.between(50 * NS_PER_US, 300 * NS_PER_US);
        if req.outcome == Outcome::OkProxyRst {
            b.rst(t, C2S);
        } else {
            b.fin(t, C2S);
            let t = t + rtt_b;
            b.fin(t, S2C);
            b.ack(t + local(rng), C2S);
        }

        let done = front_response(&mut f, &relayed, rtt_c, rng);
        req.done_ns = relay_t;
        front_close(
            &mut f,
            done,
            rtt_c,
            req.outcome == Outcome::ClientReset,
            rng,
        );
    }

    fn conntrace_lines(&self) -> Vec<String> {
        let mut rng = Rng::new(self.seed, 0xc0_4472);
        let mut lines: Vec<(u64, String)> = Vec::with_capacity(self.requests.len() * 5 / 4);
        for r in &self.requests {
            let (Some(front), Some(back)) = (
                self.front_conns.get(r.front as usize),
                self.back_conns.get(r.back as usize),
            ) else {
                continue;
            };
            let ts = es_time(EPOCH_NS + r.done_ns);
            let flat = rng.chance(0.5);
            let port = |p: u16| if flat { json!(p) } else { json!(p.to_string()) };
            let mut msg = json!({
                "@timestamp": ts,
                "req_id": r.req_id,
                "sess_id": r.sess_id,
                "front_src_ip": front.client.to_string(),
                "front_src_port": port(front.client_port),
                "front_dst_ip": front.server.to_string(),
                "front_dst_port": port(front.server_port),
                "back_src_ip": back.client.to_string(),
                "back_src_port": port(back.client_port),
                "back_dst_ip": back.server.to_string(),
                "back_dst_port": port(back.server_port),
            });
            let line = if flat {
                if let Value::Object(m) = &mut msg {
                    m.insert("log_id".to_string(), json!("WR-SG-CONNTRACE"));
                }
                msg.to_string()
            } else {
                if let Value::Object(m) = &mut msg {
                    m.insert("message_id".to_string(), json!("WR-SG-CONNTRACE"));
                }
                json!({
                    "_index": "airlock-gateway-2024.01.01",
                    "_id": format!("{:016x}", rng.next_u64()),
                    "_source": msg,
                })
                .to_string()
            };
            lines.push((r.done_ns, line));
            if rng.chance(0.25) {
                let summary = json!({
                    "@timestamp": ts,
                    "log_id": "WR-SG-SUMMARY",
                    "req_id": r.req_id,
                    "sess_id": r.sess_id,
                    "status": match r.outcome {
                        Outcome::BackReset => 502,
                        Outcome::BackUnanswered | Outcome::BackTimeout => 504,
                        Outcome::ClientAbort => 499,
                        _ => 200,
                    },
                });
                lines.push((r.done_ns, summary.to_string()));
            }
        }
        lines.sort_by_key(|(t, _)| *t);
        lines.into_iter().map(|(_, l)| l).collect()
    }

    fn truth_lines(&self) -> Vec<String> {
        let ep = |ip: IpAddr, port: u16| json!({"ip": ip.to_string(), "port": port});
        let leg = |c: &Conn| json!({"client": ep(c.client, c.client_port), "server": ep(c.server, c.server_port)});
        self.requests
            .iter()
            .filter_map(|r| {
                let front = self.front_conns.get(r.front as usize)?;
                let back = self.back_conns.get(r.back as usize)?;
                Some(
                    json!({
                        "req_id": r.req_id,
                        "sess_id": r.sess_id,
                        "outcome": r.outcome.name(),
                        "failed": r.outcome.failed().map(Side::as_str),
                        "front": leg(front),
                        "back": leg(back),
                        "request_ns": EPOCH_NS + r.request_ns,
                        "back_syn_ns": EPOCH_NS + r.back_syn_ns,
                    })
                    .to_string(),
                )
            })
            .collect()
    }
}

/// The proxy sends `segments` (time, length) to the client, who ACKs every second one and
/// the last one after its RTT; returns when the client has ACKed the last.
fn front_response(f: &mut Tcp<'_>, segments: &[(u64, u16)], rtt_c: u64, rng: &mut Rng) -> u64 {
    let mut acked = 0;
    for (k, &(t, len)) in segments.iter().enumerate() {
        let last = k + 1 == segments.len();
        f.data(t, S2C, len, last);
        if k % 2 == 1 || last {
            acked = t + rtt_c + rng.between(5 * NS_PER_US, 30 * NS_PER_US);
            f.ack(acked, C2S);
        }
    }
    acked
}

/// The client closes (FIN, or RST for `reset`) a moment after `t`; the proxy answers a FIN
/// with its own at once.
fn front_close(f: &mut Tcp<'_>, t: u64, rtt_c: u64, reset: bool, rng: &mut Rng) {
    let t = t + rng.between(100 * NS_PER_US, 5 * NS_PER_MS);
    if reset {
        f.rst(t, C2S);
        return;
    }
    f.fin(t, C2S);
    let t = t + rng.between(20 * NS_PER_US, 60 * NS_PER_US);
    f.fin(t, S2C);
    f.ack(t + rtt_c, C2S);
}

/// The `i`-th ephemeral port of a plan (32768-60999), distinct for every `i` below
/// [`MAX_REQUESTS`]: `mul` is odd, so prime to 28,232 = 8 x 3529 unless a multiple of 3529.
fn ephemeral(i: u64, mul: u64, offset: u64) -> u16 {
    (32_768 + (i % MAX_REQUESTS * mul + offset) % MAX_REQUESTS) as u16
}

/// `2024-01-01T00:00:01.234Z`: RFC 3339 with milliseconds, as Elasticsearch writes it.
fn es_time(ns: u64) -> String {
    let full = forensics::units::rfc3339(ns);
    match full.get(..23) {
        Some(ms) => format!("{ms}Z"),
        None => full,
    }
}

fn write_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for l in lines {
        out.write_all(l.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes `pkts` (sorted) as a nanosecond pcap; returns the packets written.
fn write_capture(path: &Path, pkts: &[Pkt], conns: &[Conn]) -> Result<u64> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = PcapWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        crate::LINKTYPE_ETHERNET,
        true,
        PCAP_SNAPLEN,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    let mut ip_ids: Vec<[u16; 2]> = conns.iter().map(|c| c.ip_id).collect();
    let mut frame = vec![0u8; FRAME_MAX];
    let mut written = 0u64;
    for p in pkts {
        let (Some(conn), Some(ids)) = (conns.get(p.conn as usize), ip_ids.get_mut(p.conn as usize))
        else {
            continue;
        };
        let id = ids[p.dir];
        ids[p.dir] = id.wrapping_add(1);
        let len = encode(conn, p, id, &mut frame);
        let bytes = frame.get(..len).context("synth proxy: frame overflow")?;
        out.frame_at(EPOCH_NS + p.ts_ns, len as u32, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    out.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(written)
}

/// Encodes one TCP packet (Ethernet, IPv4 or IPv6, TCP, zero payload) with correct lengths
/// and checksums into `frame` ([`FRAME_MAX`] bytes); returns its length.
fn encode(conn: &Conn, p: &Pkt, ip_id: u16, frame: &mut [u8]) -> usize {
    let Some(frame) = frame.get_mut(..FRAME_MAX) else {
        return 0;
    };
    frame.fill(0);
    let (src_mac, dst_mac, src, dst, sport, dport) = if p.dir == C2S {
        let c = conn;
        (
            c.client_mac,
            c.server_mac,
            c.client,
            c.server,
            c.client_port,
            c.server_port,
        )
    } else {
        let c = conn;
        (
            c.server_mac,
            c.client_mac,
            c.server,
            c.client,
            c.server_port,
            c.client_port,
        )
    };
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    let payload = usize::from(p.payload.min(SEGMENT));
    let l4_len = TCP_HDR + payload;
    let mut at = 12;
    let pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put16(frame, at, 0x0800);
            at += 2;
            frame[at] = 0x45;
            put16(frame, at + 2, (IPV4_HDR + l4_len) as u16);
            put16(frame, at + 4, ip_id);
            put16(frame, at + 6, 0x4000); // DF
            frame[at + 8] = 64;
            frame[at + 9] = PROTO_TCP;
            frame[at + 12..at + 16].copy_from_slice(&s.octets());
            frame[at + 16..at + 20].copy_from_slice(&d.octets());
            let sum = checksum(sum16(&frame[at..at + IPV4_HDR]));
            put16(frame, at + 10, sum);
            at += IPV4_HDR;
            sum16(&s.octets()) + sum16(&d.octets())
        }
        (s, d) => {
            let (s, d) = (v6_octets(s), v6_octets(d));
            put16(frame, at, 0x86dd);
            at += 2;
            put16(frame, at, 0x6000);
            put16(frame, at + 4, l4_len as u16);
            frame[at + 6] = PROTO_TCP;
            frame[at + 7] = 64;
            frame[at + 8..at + 24].copy_from_slice(&s);
            frame[at + 24..at + 40].copy_from_slice(&d);
            at += IPV6_HDR;
            sum16(&s) + sum16(&d)
        }
    } + u32::from(PROTO_TCP)
        + l4_len as u32;
    put16(frame, at, sport);
    put16(frame, at + 2, dport);
    put32(frame, at + 4, p.seq);
    put32(frame, at + 8, p.ack);
    frame[at + 12] = 0x50; // 5 words, no options
    frame[at + 13] = p.flags;
    put16(frame, at + 14, p.window);
    // Payload bytes are zeros: they add nothing to the sum.
    let sum = checksum(pseudo + sum16(&frame[at..at + TCP_HDR]));
    put16(frame, at + 16, sum);
    at + TCP_HDR + payload
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "conntrail-synth-proxy-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn generate(dir: &Path, opts: &ProxyOptions) -> (ProxySummary, Vec<Vec<u8>>) {
        let files = ["f.pcap", "b.pcap", "c.jsonl", "t.jsonl"].map(|f| dir.join(f));
        let s = write_proxy(opts, &files[0], &files[1], &files[2], &files[3]).expect("writes");
        let bytes = files
            .iter()
            .map(|f| std::fs::read(f).expect("read back"))
            .collect();
        (s, bytes)
    }

    #[test]
    fn the_same_options_give_the_same_files() {
        let dir = scratch("same");
        let opts = ProxyOptions {
            requests: 60,
            seed: 5,
            ..ProxyOptions::default()
        };
        let (s1, a) = generate(&dir, &opts);
        let (s2, b) = generate(&dir, &opts);
        assert_eq!(s1, s2);
        assert!(a == b, "files differ between two runs");
        let (_, c) = generate(
            &dir,
            &ProxyOptions {
                seed: 6,
                ..opts.clone()
            },
        );
        assert!(a != c, "another seed gives other files");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn outcomes_follow_the_failure_share() {
        let dir = scratch("share");
        let opts = ProxyOptions {
            requests: 120,
            failure_share: 0.5,
            ..ProxyOptions::default()
        };
        let (s, files) = generate(&dir, &opts);
        assert_eq!(s.requests, 120);
        let by: std::collections::HashMap<_, _> = s.by_outcome.iter().copied().collect();
        // Half fail, evenly over the six failing outcomes; a third of the rest end with the
        // proxy's routine reset.
        assert_eq!((by["ok"], by["ok-proxy-rst"]), (40, 20));
        for o in Outcome::ALL.iter().filter(|o| o.failed().is_some()) {
            assert_eq!(by[o.name()], 10, "{}", o.name());
        }
        let truth = String::from_utf8(files[3].clone()).expect("utf-8");
        assert_eq!(truth.lines().count(), 120);
        let conntrace = String::from_utf8(files[2].clone()).expect("utf-8");
        let traces = conntrace
            .lines()
            .filter(|l| l.contains("WR-SG-CONNTRACE"))
            .count();
        assert_eq!(traces, 120);
        assert!(conntrace.contains("\"_source\"") && conntrace.contains("WR-SG-SUMMARY"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ports_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..MAX_REQUESTS {
            assert!(seen.insert(ephemeral(i, 7_919, 123)), "port of {i} repeats");
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..MAX_REQUESTS {
            assert!(seen.insert(ephemeral(i, 7_057, 5)), "port of {i} repeats");
        }
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let dir = scratch("refuse");
        let p = dir.join("x");
        for bad in [
            ProxyOptions {
                requests: MAX_REQUESTS + 1,
                ..ProxyOptions::default()
            },
            ProxyOptions {
                failure_share: 1.5,
                ..ProxyOptions::default()
            },
            ProxyOptions {
                duration_s: 0.0,
                ..ProxyOptions::default()
            },
        ] {
            assert!(write_proxy(&bad, &p, &p, &p, &p).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
