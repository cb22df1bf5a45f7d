//! `conntrail correlate`: follow requests through a reverse proxy. For each request, the
//! front-end connection (client -> proxy) and the back-end connection (proxy -> server) as
//! conntrail recorded them, how each ended, the latency the proxy added, and which side
//! failed first.
//!
//! # Two ways to pair the sides
//!
//! **With the proxy's conntrace logs** (`--conntrace FILE`, read by [`crate::proxy_log`]):
//! each message names both connections of one request. The logs are streamed once; only the
//! records whose endpoints a message names are kept (a map from the endpoint pair to its
//! records), in either orientation (a record picked up mid-stream may have its ends swapped).
//! When an endpoint pair was used by several connections (port reuse), the message takes the
//! record nearest in time to its `@timestamp` (0 when the timestamp falls inside the record's
//! first-to-last-packet span, else the distance to the span), the earlier one on a tie, the
//! first when the message has no timestamp; `candidates` tells how many there were. With HTTP
//! keep-alive several requests name the same connection, and each is shown with it.
//!
//! **Without them** (`--proxy IP`, repeated for each of the proxy's addresses): front-end
//! connections are the records whose server is a proxy address (or, with `--listen-port`,
//! whose server port is one of those ports), back-end connections the records whose client is
//! a proxy address. A front-end connection's *request time* is its client's first payload
//! byte (its `first-data` point from the client). Its *candidates* are the back-end
//! connections whose first packet (the proxy's SYN) comes at or after the request time and no
//! later than the front-end connection's last packet; the delay `d` of a candidate is its
//! start minus the request time. Front-end connections are taken in order of their request
//! time, and each is paired with its candidate of smallest delay that no earlier front-end
//! connection took (one back-end connection per request: a proxy that reuses back-end
//! connections cannot be followed this way). The confidence of a pairing is
//!
//! ```text
//!     confidence = w(d_chosen) / sum of w(d) over all candidates,  w(d) = tau / (tau + d)
//! ```
//!
//! where `tau` is the median delay of the front-end connections that had exactly one
//! candidate (the proxy's usual time to open a back-end connection; 1 ms when there is none,
//! at least 10 us). It is 1.0 exactly when there was one candidate, and falls as other
//! back-end connections open about as soon after the request: two candidates 0.3 ms and
//! 0.8 ms after the request with `tau` 1 ms give 0.58; a second one 20 ms later gives 0.93.
//! Candidates taken by another front-end connection still count (that pairing may be the
//! wrong one), and are listed as alternatives. Front-end connections without a request, or
//! whose candidates were all taken, are shown without a back end, and back-end connections
//! left over are shown without a front end. On the generated proxy scenario
//! (`synth::proxy`: 300 requests, 40 % failing, a quarter in bursts of 2-4 within
//! 1.5 ms) 93-99 % of the pairings are right over seeds 1-12, and the wrong ones have a
//! lower mean confidence; the test requires 80 %.
//!
//! # What is shown
//!
//! Per request: `req_id` and `sess_id`; each side's record as `LOG:ID` with its endpoints,
//! close reason in words, `conn_state`, duration and first-response-byte latency (or `not
//! recorded`, or no connection at all); the proxy's latencies; the side that failed first;
//! with `--filters`, each side's Wireshark display filter and BPF filter
//! ([`crate::filter`]). Latencies (ns; null when a side or a point is missing):
//!
//! - `added`: front first-response-byte latency minus back first-response-byte latency:
//!   what the client waited beyond what the server took (the proxy's request handling,
//!   back-end connection setup and response relaying). Each latency is measured within one
//!   capture, so this holds even when the two capture points' clocks disagree;
//! - `to_backend`: back-end SYN minus the front-end request time;
//! - `request_path`: the back end's first request byte minus the front end's;
//! - `response_path`: the front end's first response byte minus the back end's.
//!
//! The last three compare times of two captures: they need one clock (both captures on the
//! proxy) or synchronised ones.
//!
//! A side *fails* at its first warn or error tracking point (the record's irregular point,
//! not counting a `truncated` mark): a reset, a retransmitted SYN, a latency over its
//! threshold... (a threshold point is described by the measurement it flags); each side's
//! `failure` shows it. Which side is to blame is another question, answered by the *cause*
//! ([`crate::cause`]): both connections are read as one story (the server silent after a
//! forwarded request is at fault from the moment it was forwarded, even when the front
//! end's first-byte threshold trips first; a proxy's RST after the full response is
//! routine), with the proxy's logged status and termination code as evidence when the
//! conntrace message carries them. The cause has a kind, an actor (client, proxy, server),
//! a time, whether it is a fault, and a sentence. `failed_first` is kept and now follows
//! the cause: `front` (the client's fault), `back` (the server's), `proxy`, `neither`
//! (nothing failed, routine resets included) or `unknown`.
//!
//! # Records needed
//!
//! conntrail keeps only anomalous connections unless told otherwise: the failing side of a
//! request is usually recorded, its healthy side is not. To see both sides, replay or run
//! with `--record all`; a side without a record is shown as `not recorded` (its endpoints
//! from the conntrace message), never an error. Under `--record anomalous` a side that was
//! captured but not recorded had nothing anomalous, so a failure on the other side is still
//! the first one.
//!
//! ```text
//! conntrail correlate --conntrace conntrace.jsonl front.log back.log
//! conntrail correlate --proxy 10.0.0.1 --proxy 172.16.0.1 --json front.log back.log
//! ```

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use flowtable::point::{Dir, PointKind, Severity};
use flowtable::record::{Addr, CloseReason, Record};
use serde_json::{json, Value};

use crate::cause::{self, Cause, Evidence};
use crate::exit::Damaged;
use crate::logs::Records;
use crate::proxy_log::{self, Event, Leg, Message};
use crate::timeline::point_label;
use crate::units::{duration_text, endpoint_text, rfc3339, utc_text};

/// When no front-end connection had a single candidate: the proxy's assumed time to open a
/// back-end connection, 1 ms.
pub const DEFAULT_TAU_NS: u64 = 1_000_000;
/// The smallest `tau`: 10 us.
pub const MIN_TAU_NS: u64 = 10_000;
/// Alternatives listed per pairing at most.
pub const MAX_ALTERNATIVES: usize = 5;

/// Arguments of `conntrail correlate`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("pairing").required(true).args(["conntrace", "proxy"])))]
pub struct CorrelateArgs {
    /// Proxy conntrace logs: JSON Lines, a JSON array or an Elasticsearch search response of
    /// Airlock Gateway WR-SG-CONNTRACE messages (flat or with `_source`).
    #[arg(long, value_name = "FILE")]
    pub conntrace: Vec<PathBuf>,
    /// Without conntrace logs: an address of the proxy (repeat for its listening and its
    /// back-end addresses); front and back connections are paired by time.
    #[arg(long, value_name = "IP", conflicts_with = "conntrace")]
    pub proxy: Vec<IpAddr>,
    /// With --proxy: connections to this server port are front-end connections too, whatever
    /// their server address (a virtual address in front of the proxy).
    #[arg(long, value_name = "PORT", requires = "proxy")]
    pub listen_port: Vec<u16>,
    /// With --conntrace: only the requests with this req_id (repeatable).
    #[arg(long, value_name = "ID", requires = "conntrace")]
    pub req_id: Vec<String>,
    /// conntrail logs; the front-end and back-end sides may be in different logs.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// JSON Lines, one object per request.
    #[arg(long)]
    pub json: bool,
    /// JSON Lines with Elastic Common Schema field names.
    #[arg(long, conflicts_with = "json")]
    pub ecs: bool,
    /// Each side's Wireshark display filter and BPF filter.
    #[arg(long)]
    pub filters: bool,
}

pub fn run(args: CorrelateArgs) -> Result<ExitCode> {
    let mut damaged = Damaged::default();
    let report = if args.conntrace.is_empty() {
        by_time(&args, &mut damaged)?
    } else {
        by_conntrace(&args, &mut damaged)?
    };
    let style = if args.ecs {
        Style::Ecs
    } else if args.json {
        Style::Json
    } else {
        Style::Text
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match write_report(&mut out, &report, style, args.filters).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(damaged.status())
}

/// A record kept for correlation, and which log (index into the log list) it came from.
pub struct Kept {
    pub log: usize,
    pub rec: Record<'static>,
}

/// The two sides of a proxied request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Client -> proxy.
    Front,
    /// Proxy -> server.
    Back,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Front => "front",
            Side::Back => "back",
        }
    }

    /// Who sends in direction `dir` on this side.
    fn sender(self, dir: Dir) -> &'static str {
        match self {
            Side::Front => cause::front_sender(dir),
            Side::Back => cause::back_sender(dir),
        }
        .as_str()
    }
}

/// One side of a request as found.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// The record (index into the kept records), and how many records had its endpoints.
    Recorded { kept: usize, candidates: usize },
    /// Named by the conntrace message but in no log.
    NotRecorded {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// No such connection: the message names no back end, or pairing by time found none.
    Absent,
}

/// How the two sides were paired.
#[derive(Clone, Debug, PartialEq)]
pub enum Pairing {
    /// By a conntrace message.
    Conntrace,
    /// By time (`--proxy`).
    Time {
        confidence: f64,
        /// Back-end start minus request time.
        delay_ns: u64,
        /// Other candidates (kept index, delay), nearest first.
        alternatives: Vec<(usize, u64)>,
        /// Candidates in all.
        candidates: usize,
    },
    /// A front-end connection without a client payload: no back end expected.
    NoRequest,
    /// A front-end connection with a request but no free back-end candidate.
    NoCandidate,
    /// A back-end connection no front-end connection took.
    Unpaired,
}

/// One request, correlated.
#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    pub req_id: Option<String>,
    pub sess_id: Option<String>,
    pub timestamp_ns: Option<u64>,
    /// The conntrace message's place.
    pub source: Option<String>,
    pub front: Found,
    pub back: Found,
    pub pairing: Pairing,
    /// What the proxy logged about the request (status, termination), if anything.
    pub evidence: Evidence,
}

/// Everything found, before it is written.
pub struct Report {
    /// The logs, as given; [`Kept::log`] indexes them.
    pub logs: Vec<PathBuf>,
    pub kept: Vec<Kept>,
    pub requests: Vec<Correlation>,
    /// The cause of each request ([`cause_of`]), in `requests` order: worked out once, for
    /// the summary and the output alike.
    pub causes: Vec<Cause>,
    pub summary: String,
}

/// The first irregular moment of one side.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// ns since the epoch.
    pub t_ns: u64,
    /// `server rst`, `client first-data (answer after 1.5 s) over the 1.000 s threshold`...
    pub text: String,
}

/// The proxy's latencies (see the module documentation); signed: a wrong pairing or two
/// clocks that disagree can make them negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyLatency {
    pub added_ns: Option<i64>,
    pub to_backend_ns: Option<i64>,
    pub request_path_ns: Option<i64>,
    pub response_path_ns: Option<i64>,
}

type TupleKey = (Addr, u16, Addr, u16);

fn leg_key(leg: &Leg) -> TupleKey {
    (
        Addr::from_ip(leg.client.ip()),
        leg.client.port(),
        Addr::from_ip(leg.server.ip()),
        leg.server.port(),
    )
}

/// Streams every log, handing each record and its log index to `each`; damage is reported
/// on stderr and counted in `damaged`.
fn scan(
    logs: &[PathBuf],
    damaged: &mut Damaged,
    mut each: impl FnMut(usize, Record<'static>),
) -> Result<()> {
    for (i, log) in logs.iter().enumerate() {
        for item in Records::open(std::slice::from_ref(log))? {
            match item {
                Ok(rec) => each(i, rec),
                Err(damage) => damaged.log(damage),
            }
        }
    }
    Ok(())
}

/// Pairs by conntrace messages.
fn by_conntrace(args: &CorrelateArgs, damaged: &mut Damaged) -> Result<Report> {
    let mut messages: Vec<Message> = Vec::new();
    let (mut skipped, mut invalid) = (0u64, 0u64);
    for path in &args.conntrace {
        let summary = proxy_log::read_file(path, |event| match event {
            Event::Message(m) => {
                if args.req_id.is_empty()
                    || m.req_id.as_ref().is_some_and(|id| args.req_id.contains(id))
                {
                    messages.push(m);
                }
            }
            Event::Invalid(e) => damaged.report("conntrace message", e),
        })?;
        skipped += summary.skipped;
        invalid += summary.invalid;
    }

    // The endpoint pairs the messages name, each with the records found for it.
    let mut wanted: HashMap<TupleKey, Vec<usize>> = HashMap::new();
    for m in &messages {
        wanted.entry(leg_key(&m.front)).or_default();
        if let Some(back) = &m.back {
            wanted.entry(leg_key(back)).or_default();
        }
    }
    let mut kept: Vec<Kept> = Vec::new();
    scan(&args.logs, damaged, |log, rec| {
        let (c, s) = (rec.client, rec.server);
        let slot = match wanted.get_mut(&(c.ip, c.port, s.ip, s.port)) {
            Some(slot) => Some(slot),
            None => wanted.get_mut(&(s.ip, s.port, c.ip, c.port)),
        };
        if let Some(slot) = slot {
            slot.push(kept.len());
            kept.push(Kept { log, rec });
        }
    })?;

    let find = |leg: &Leg, ts: Option<u64>| -> Found {
        let cands = wanted.get(&leg_key(leg)).map_or(&[][..], Vec::as_slice);
        let spans: Vec<(u64, u64)> = cands
            .iter()
            .filter_map(|&k| kept.get(k))
            .map(|k| (k.rec.start_ns, k.rec.end_ns))
            .collect();
        match nearest(&spans, ts).and_then(|i| cands.get(i)) {
            Some(&k) => Found::Recorded {
                kept: k,
                candidates: cands.len(),
            },
            None => Found::NotRecorded {
                client: leg.client,
                server: leg.server,
            },
        }
    };
    let requests: Vec<Correlation> = messages
        .iter()
        .map(|m| Correlation {
            req_id: m.req_id.clone(),
            sess_id: m.sess_id.clone(),
            timestamp_ns: m.timestamp_ns,
            source: Some(m.at.to_string()),
            front: find(&m.front, m.timestamp_ns),
            back: m
                .back
                .as_ref()
                .map_or(Found::Absent, |b| find(b, m.timestamp_ns)),
            pairing: Pairing::Conntrace,
            evidence: Evidence {
                status: m.status,
                termination: m.termination.clone(),
            },
        })
        .collect();

    let count = |side: fn(&Correlation) -> &Found| {
        requests
            .iter()
            .filter(|r| matches!(side(r), Found::NotRecorded { .. }))
            .count()
    };
    let causes: Vec<Cause> = requests.iter().map(|r| cause_of(r, &kept)).collect();
    let (front_missing, back_missing) = (count(|r| &r.front), count(|r| &r.back));
    let mut summary = format!(
        "{} requests: front not recorded {}, back not recorded {}, no back end {}; {}; {} other \
         messages skipped, {} invalid",
        requests.len(),
        front_missing,
        back_missing,
        requests.iter().filter(|r| r.back == Found::Absent).count(),
        blame_summary(&causes),
        skipped,
        invalid
    );
    if front_missing + back_missing > 0 {
        summary.push_str(
            " (conntrail keeps only anomalous connections unless told otherwise: replay or run \
             with --record all to see healthy sides too)",
        );
    }
    Ok(Report {
        logs: args.logs.clone(),
        kept,
        requests,
        causes,
        summary,
    })
}

/// The index of the span nearest to `ts` (distance 0 inside it), the earliest start on a
/// tie; the first span without a timestamp; `None` without spans.
pub fn nearest(spans: &[(u64, u64)], ts: Option<u64>) -> Option<usize> {
    let distance = |&(start, end): &(u64, u64)| match ts {
        None => 0,
        Some(t) if t < start => start - t,
        Some(t) => t.saturating_sub(end),
    };
    spans
        .iter()
        .enumerate()
        .min_by_key(|(i, s)| (distance(s), s.0, *i))
        .map(|(i, _)| i)
}

/// Pairs by time (`--proxy`).
fn by_time(args: &CorrelateArgs, damaged: &mut Damaged) -> Result<Report> {
    let proxies: HashSet<Addr> = args.proxy.iter().map(|&ip| Addr::from_ip(ip)).collect();
    let listen: HashSet<u16> = args.listen_port.iter().copied().collect();
    let mut kept: Vec<Kept> = Vec::new();
    let (mut fronts, mut backs) = (Vec::new(), Vec::new());
    scan(&args.logs, damaged, |log, rec| {
        if proxies.contains(&rec.client.ip) {
            backs.push(kept.len());
        } else if proxies.contains(&rec.server.ip) || listen.contains(&rec.server.port) {
            fronts.push(kept.len());
        } else {
            return;
        }
        kept.push(Kept { log, rec });
    })?;
    let front_spans: Vec<(Option<u64>, u64)> = fronts
        .iter()
        .filter_map(|&k| kept.get(k))
        .map(|k| (first_data_ns(&k.rec, Dir::C2s), k.rec.end_ns))
        .collect();
    let back_starts: Vec<u64> = backs
        .iter()
        .filter_map(|&k| kept.get(k))
        .map(|k| k.rec.start_ns)
        .collect();
    let pairs = pair_by_time(&front_spans, &back_starts);

    let mut requests = Vec::with_capacity(fronts.len());
    let mut taken = vec![false; backs.len()];
    let (mut sure, mut ambiguous, mut confidence_sum) = (0usize, 0usize, 0.0f64);
    let (mut no_request, mut no_candidate) = (0usize, 0usize);
    for (f, pairing) in pairs {
        let Some(&front) = fronts.get(f) else {
            continue;
        };
        let recorded = |k: usize| Found::Recorded {
            kept: k,
            candidates: 1,
        };
        let (back, pairing) = match pairing {
            TimePairing::NoRequest => {
                no_request += 1;
                (Found::Absent, Pairing::NoRequest)
            }
            TimePairing::NoCandidate => {
                no_candidate += 1;
                (Found::Absent, Pairing::NoCandidate)
            }
            TimePairing::Paired {
                back,
                confidence,
                delay_ns,
                alternatives,
                candidates,
            } => {
                if let Some(t) = taken.get_mut(back) {
                    *t = true;
                }
                if candidates == 1 {
                    sure += 1;
                } else {
                    ambiguous += 1;
                }
                confidence_sum += confidence;
                let Some(&b) = backs.get(back) else {
                    continue;
                };
                let alternatives = alternatives
                    .into_iter()
                    .filter_map(|(i, d)| backs.get(i).map(|&k| (k, d)))
                    .collect();
                (
                    recorded(b),
                    Pairing::Time {
                        confidence,
                        delay_ns,
                        alternatives,
                        candidates,
                    },
                )
            }
        };
        requests.push(Correlation {
            req_id: None,
            sess_id: None,
            timestamp_ns: None,
            source: None,
            front: recorded(front),
            back,
            pairing,
            evidence: Evidence::default(),
        });
    }
    let mut unpaired = 0usize;
    for (i, &b) in backs.iter().enumerate() {
        if !taken.get(i).copied().unwrap_or(false) {
            unpaired += 1;
            requests.push(Correlation {
                req_id: None,
                sess_id: None,
                timestamp_ns: None,
                source: None,
                front: Found::Absent,
                back: Found::Recorded {
                    kept: b,
                    candidates: 1,
                },
                pairing: Pairing::Unpaired,
                evidence: Evidence::default(),
            });
        }
    }
    let paired = sure + ambiguous;
    let causes: Vec<Cause> = requests.iter().map(|r| cause_of(r, &kept)).collect();
    let summary = format!(
        "{} front-end connections: {paired} paired by time ({sure} with one candidate, \
         confidence 1.0; {ambiguous} ambiguous; mean confidence {:.3}), {no_request} without \
         a request, {no_candidate} without a free candidate; {unpaired} of {} back-end \
         connections unpaired; {}",
        fronts.len(),
        if paired > 0 {
            confidence_sum / paired as f64
        } else {
            0.0
        },
        backs.len(),
        blame_summary(&causes)
    );
    Ok(Report {
        logs: args.logs.clone(),
        kept,
        requests,
        causes,
        summary,
    })
}

/// The outcome of pairing one front-end connection by time.
#[derive(Clone, Debug, PartialEq)]
pub enum TimePairing {
    NoRequest,
    NoCandidate,
    Paired {
        /// Index into the back-end starts.
        back: usize,
        confidence: f64,
        delay_ns: u64,
        /// Other candidates (index, delay), nearest first, at most [`MAX_ALTERNATIVES`].
        alternatives: Vec<(usize, u64)>,
        candidates: usize,
    },
}

/// Pairs front-end connections, given as (request time, last packet time), with back-end
/// connections, given as start times, by the rule of the module documentation. Returns one
/// pairing per front-end connection (its index), in order of request time.
pub fn pair_by_time(
    fronts: &[(Option<u64>, u64)],
    back_starts: &[u64],
) -> Vec<(usize, TimePairing)> {
    let mut backs: Vec<usize> = (0..back_starts.len()).collect();
    backs.sort_by_key(|&i| (back_starts.get(i).copied().unwrap_or(u64::MAX), i));
    let sorted_starts: Vec<u64> = backs
        .iter()
        .map(|&i| back_starts.get(i).copied().unwrap_or(u64::MAX))
        .collect();
    // Candidates of each front-end connection: (back index, delay), nearest first.
    let candidates: Vec<Option<Vec<(usize, u64)>>> = fronts
        .iter()
        .map(|&(request, end)| {
            let request = request?;
            let lo = sorted_starts.partition_point(|&s| s < request);
            let hi = sorted_starts.partition_point(|&s| s <= end.max(request));
            let list = backs
                .get(lo..hi.max(lo))
                .unwrap_or(&[])
                .iter()
                .zip(sorted_starts.get(lo..hi.max(lo)).unwrap_or(&[]))
                .map(|(&b, &s)| (b, s - request))
                .collect();
            Some(list)
        })
        .collect();
    let mut single: Vec<u64> = candidates
        .iter()
        .flatten()
        .filter(|c| c.len() == 1)
        .filter_map(|c| c.first().map(|&(_, d)| d))
        .collect();
    single.sort_unstable();
    let tau = single
        .get(single.len() / 2)
        .copied()
        .unwrap_or(DEFAULT_TAU_NS)
        .max(MIN_TAU_NS);

    let mut order: Vec<usize> = (0..fronts.len()).collect();
    order.sort_by_key(|&f| {
        let (request, end) = fronts.get(f).copied().unwrap_or((None, 0));
        (request.is_none(), request.unwrap_or(end), f)
    });
    let mut taken = vec![false; back_starts.len()];
    let mut out = Vec::with_capacity(fronts.len());
    for f in order {
        let Some(Some(cands)) = candidates.get(f) else {
            out.push((f, TimePairing::NoRequest));
            continue;
        };
        let chosen = cands
            .iter()
            .find(|(b, _)| !taken.get(*b).copied().unwrap_or(true))
            .copied();
        let Some((back, delay_ns)) = chosen else {
            out.push((f, TimePairing::NoCandidate));
            continue;
        };
        if let Some(t) = taken.get_mut(back) {
            *t = true;
        }
        let delays: Vec<u64> = cands.iter().map(|&(_, d)| d).collect();
        out.push((
            f,
            TimePairing::Paired {
                back,
                confidence: confidence(delay_ns, &delays, tau),
                delay_ns,
                alternatives: cands
                    .iter()
                    .filter(|(b, _)| *b != back)
                    .take(MAX_ALTERNATIVES)
                    .copied()
                    .collect(),
                candidates: cands.len(),
            },
        ));
    }
    out
}

/// `w(chosen) / sum of w(d)`, `w(d) = tau / (tau + d)`; 1.0 for a single candidate.
pub fn confidence(chosen_ns: u64, delays_ns: &[u64], tau_ns: u64) -> f64 {
    let tau = tau_ns.max(1) as f64;
    let w = |d: u64| tau / (tau + d as f64);
    let total: f64 = delays_ns.iter().map(|&d| w(d)).sum();
    if delays_ns.len() <= 1 || total <= 0.0 {
        1.0
    } else {
        (w(chosen_ns) / total).min(1.0)
    }
}

/// The absolute time of the first payload byte in direction `dir` (its `first-data` point).
fn first_data_ns(rec: &Record<'_>, dir: Dir) -> Option<u64> {
    rec.points
        .iter()
        .find(|p| p.kind == PointKind::FirstData && p.dir == dir)
        .map(|p| rec.start_ns.saturating_add(p.t_ns))
}

/// The first irregular moment of a side (see the module documentation).
pub fn failure(rec: &Record<'_>, side: Side) -> Option<Failure> {
    let v = rec.ip_version;
    let found = rec
        .points
        .iter()
        .enumerate()
        .find(|(_, p)| p.severity >= Severity::Warn && p.kind != PointKind::Truncated);
    let Some((i, p)) = found else {
        // A record whose trail lost its irregular point still says how it ended.
        return matches!(
            rec.close_reason,
            CloseReason::TcpRstClient | CloseReason::TcpRstServer | CloseReason::IcmpError
        )
        .then(|| Failure {
            t_ns: rec.end_ns,
            text: rec.close_reason.in_words().to_string(),
        });
    };
    let text = match (p.kind, i.checked_sub(1).and_then(|j| rec.points.get(j))) {
        (PointKind::Threshold, Some(m)) => format!(
            "{} {} over the {} threshold",
            side.sender(m.dir),
            point_label(m, v),
            duration_text(u64::from(p.arg) * 1_000)
        ),
        _ => format!("{} {}", side.sender(p.dir), point_label(p, v)),
    };
    Some(Failure {
        t_ns: rec.start_ns.saturating_add(p.t_ns),
        text,
    })
}

fn record_of<'a>(found: &Found, kept: &'a [Kept]) -> Option<&'a Kept> {
    match found {
        Found::Recorded { kept: k, .. } => kept.get(*k),
        _ => None,
    }
}

/// The client's request (its first payload byte), else the first packet of either side,
/// else the message's timestamp: the origin of a request's times.
fn origin(r: &Correlation, kept: &[Kept]) -> u64 {
    let front = record_of(&r.front, kept);
    let back = record_of(&r.back, kept);
    front
        .and_then(|k| first_data_ns(&k.rec, Dir::C2s).or(Some(k.rec.start_ns)))
        .or(back.map(|k| k.rec.start_ns))
        .or(r.timestamp_ns)
        .unwrap_or(0)
}

/// The cause of a request's outcome (see the module documentation).
pub fn cause_of(r: &Correlation, kept: &[Kept]) -> Cause {
    let back_opened = match (&r.pairing, &r.back) {
        (Pairing::Conntrace, Found::Absent) => Some(false),
        (Pairing::Conntrace, _) => Some(true),
        _ => None,
    };
    cause::judge(
        record_of(&r.front, kept).map(|k| &k.rec),
        record_of(&r.back, kept).map(|k| &k.rec),
        back_opened,
        &r.evidence,
        origin(r, kept),
    )
}

/// `blame: back 3, front 1, ...; causes: server-silent 2, ...`.
fn blame_summary(causes: &[Cause]) -> String {
    let mut sides: HashMap<&'static str, usize> = HashMap::new();
    let mut kinds: HashMap<&'static str, usize> = HashMap::new();
    for c in causes {
        *sides.entry(c.failed_first()).or_default() += 1;
        *kinds.entry(c.kind.as_str()).or_default() += 1;
    }
    let sides = ["back", "front", "proxy", "neither", "unknown"]
        .iter()
        .map(|s| format!("{s} {}", sides.get(s).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    let kinds = cause::Kind::ALL
        .iter()
        .filter_map(|k| kinds.get(k.as_str()).map(|n| format!("{} {n}", k.as_str())))
        .collect::<Vec<_>>()
        .join(", ");
    format!("failed first: {sides}; causes: {kinds}")
}

fn cause_json(c: &Cause) -> Value {
    json!({
        "kind": c.kind.as_str(),
        "actor": c.actor.map(|a| a.as_str()),
        "t_ns": c.t_ns,
        "fault": c.fault,
        "text": c.text,
        "log_agrees": c.log_agrees,
    })
}

fn evidence_json(e: &Evidence) -> Value {
    if e.is_empty() {
        Value::Null
    } else {
        json!({"status": e.status, "termination": e.termination})
    }
}

fn signed_diff(a: u64, b: u64) -> i64 {
    (i128::from(a) - i128::from(b)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The proxy's latencies of a request (see the module documentation).
pub fn proxy_latency(front: Option<&Record<'_>>, back: Option<&Record<'_>>) -> ProxyLatency {
    let (Some(f), Some(b)) = (front, back) else {
        return ProxyLatency::default();
    };
    let f_request = first_data_ns(f, Dir::C2s);
    let both = |x: Option<u64>, y: Option<u64>| Some(signed_diff(x?, y?));
    ProxyLatency {
        added_ns: both(f.latency.ttfb_ns, b.latency.ttfb_ns),
        to_backend_ns: both(Some(b.start_ns), f_request),
        request_path_ns: both(first_data_ns(b, Dir::C2s), f_request),
        response_path_ns: both(first_data_ns(f, Dir::S2c), first_data_ns(b, Dir::S2c)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Text,
    Json,
    Ecs,
}

fn write_report(
    out: &mut impl Write,
    report: &Report,
    style: Style,
    filters: bool,
) -> io::Result<()> {
    let logs = &report.logs;
    for (r, c) in report.requests.iter().zip(&report.causes) {
        match style {
            Style::Text => write_text(out, r, c, &report.kept, logs, filters)?,
            Style::Json => writeln!(out, "{}", to_json(r, c, &report.kept, logs, filters))?,
            Style::Ecs => writeln!(out, "{}", to_ecs(r, c, &report.kept, logs, filters))?,
        }
    }
    if style == Style::Text {
        writeln!(out, "{}", report.summary)?;
    } else {
        eprintln!("conntrail: {}", report.summary);
    }
    Ok(())
}

/// `LOG:ID`.
fn record_ref(k: &Kept, logs: &[PathBuf]) -> String {
    let log = logs
        .get(k.log)
        .map_or_else(|| "?".to_string(), |p| p.display().to_string());
    format!("{log}:{}", k.rec.id)
}

fn ep_json(ip: IpAddr, port: u16) -> Value {
    json!({"ip": ip.to_string(), "port": port})
}

fn side_json(found: &Found, side: Side, kept: &[Kept], logs: &[PathBuf], filters: bool) -> Value {
    match found {
        Found::Absent => Value::Null,
        Found::NotRecorded { client, server } => json!({
            "recorded": false,
            "client": ep_json(client.ip(), client.port()),
            "server": ep_json(server.ip(), server.port()),
        }),
        Found::Recorded {
            kept: k,
            candidates,
        } => {
            let Some(k) = kept.get(*k) else {
                return Value::Null;
            };
            let rec = &k.rec;
            let mut v = json!({
                "recorded": true,
                "ref": record_ref(k, logs),
                "log": logs.get(k.log).map(|p| p.display().to_string()),
                "id": rec.id,
                "proto": rec.proto.as_str(),
                "client": ep_json(rec.client.ip.to_ip(), rec.client.port),
                "server": ep_json(rec.server.ip.to_ip(), rec.server.port),
                "start_ns": rec.start_ns,
                "end_ns": rec.end_ns,
                "close_reason": rec.close_reason.as_str(),
                "close_reason_text": rec.close_reason.in_words(),
                "conn_state": rec.conn_state.as_str(),
                "flags": rec.flags.names().collect::<Vec<_>>(),
                "ttfb_ns": rec.latency.ttfb_ns,
                "failure": failure(rec, side).map(|f| json!({"t_ns": f.t_ns, "text": f.text})),
                "candidates": candidates,
            });
            if filters {
                if let Value::Object(m) = &mut v {
                    m.insert("filters".to_string(), filters_json(rec));
                }
            }
            v
        }
    }
}

fn filters_json(rec: &Record<'_>) -> Value {
    json!({
        "wireshark": crate::filter::wireshark_filter(rec),
        "bpf": crate::filter::bpf_filter(rec),
    })
}

fn latency_json(l: &ProxyLatency) -> Value {
    json!({
        "added": l.added_ns,
        "to_backend": l.to_backend_ns,
        "request_path": l.request_path_ns,
        "response_path": l.response_path_ns,
    })
}

fn pairing_json(p: &Pairing, kept: &[Kept], logs: &[PathBuf]) -> Value {
    match p {
        Pairing::Conntrace => json!({"by": "conntrace"}),
        Pairing::Time {
            confidence,
            delay_ns,
            alternatives,
            candidates,
        } => json!({
            "by": "time",
            "confidence": (confidence * 1000.0).round() / 1000.0,
            "delay_ns": delay_ns,
            "candidates": candidates,
            "alternatives": alternatives
                .iter()
                .filter_map(|&(k, d)| kept.get(k).map(|k| json!({"ref": record_ref(k, logs), "delay_ns": d})))
                .collect::<Vec<_>>(),
        }),
        Pairing::NoRequest => json!({"by": "none", "why": "no request from the client"}),
        Pairing::NoCandidate => {
            json!({"by": "none", "why": "no back-end connection started during the request"})
        }
        Pairing::Unpaired => json!({"by": "none", "why": "no front-end connection took it"}),
    }
}

/// One request as a `correlate --json` object.
pub fn to_json(
    r: &Correlation,
    cause: &Cause,
    kept: &[Kept],
    logs: &[PathBuf],
    filters: bool,
) -> Value {
    let front = record_of(&r.front, kept).map(|k| &k.rec);
    let back = record_of(&r.back, kept).map(|k| &k.rec);
    json!({
        "req_id": r.req_id,
        "sess_id": r.sess_id,
        "timestamp_ns": r.timestamp_ns,
        "conntrace": r.source,
        "front": side_json(&r.front, Side::Front, kept, logs, filters),
        "back": side_json(&r.back, Side::Back, kept, logs, filters),
        "latency_ns": latency_json(&proxy_latency(front, back)),
        "failed_first": cause.failed_first(),
        "cause": cause_json(cause),
        "proxy_log": evidence_json(&r.evidence),
        "pairing": pairing_json(&r.pairing, kept, logs),
    })
}

/// One request as an ECS document: `source` is the client, `destination` the back-end
/// server, `http.request.id` the `req_id`; each side's record as `show --ecs` writes it under
/// `conntrail.front` / `conntrail.back`.
pub fn to_ecs(
    r: &Correlation,
    cause: &Cause,
    kept: &[Kept],
    logs: &[PathBuf],
    filters: bool,
) -> Value {
    let front = record_of(&r.front, kept);
    let back = record_of(&r.back, kept);
    let endpoint = |found: &Found, client: bool| match found {
        Found::Recorded { kept: k, .. } => kept.get(*k).map(|k| {
            let e = if client { k.rec.client } else { k.rec.server };
            json!({"ip": e.ip.to_string(), "port": e.port})
        }),
        Found::NotRecorded {
            client: c,
            server: s,
        } => {
            let e = if client { c } else { s };
            Some(json!({"ip": e.ip().to_string(), "port": e.port()}))
        }
        Found::Absent => None,
    };
    let side = |k: Option<&Kept>, found: &Found, s: Side| match k {
        Some(k) => {
            let mut doc = crate::ecs::to_ecs(&k.rec);
            if let Value::Object(m) = &mut doc {
                m.insert("ref".to_string(), json!(record_ref(k, logs)));
                m.insert(
                    "failure".to_string(),
                    json!(failure(&k.rec, s).map(|f| json!({"t_ns": f.t_ns, "text": f.text}))),
                );
                if filters {
                    m.insert("filters".to_string(), filters_json(&k.rec));
                }
            }
            doc
        }
        None => side_json(found, s, kept, logs, false),
    };
    let when = r
        .timestamp_ns
        .or(front.map(|k| k.rec.start_ns))
        .or(back.map(|k| k.rec.start_ns))
        .unwrap_or(0);
    json!({
        "@timestamp": rfc3339(when),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection"],
            "action": "proxied-request",
            "outcome": match cause.fault {
                Some(true) => "failure",
                Some(false) => "success",
                None => "unknown",
            },
        },
        "http": {"request": {"id": r.req_id}, "response": {"status_code": r.evidence.status}},
        "source": endpoint(&r.front, true),
        "destination": endpoint(&r.back, false),
        "conntrail": {
            "sess_id": r.sess_id,
            "conntrace": r.source,
            "failed_first": cause.failed_first(),
            "cause": cause_json(cause),
            "proxy_log": evidence_json(&r.evidence),
            "latency_ns": latency_json(&proxy_latency(front.map(|k| &k.rec), back.map(|k| &k.rec))),
            "pairing": pairing_json(&r.pairing, kept, logs),
            "front": side(front, &r.front, Side::Front),
            "back": side(back, &r.back, Side::Back),
        },
    })
}

/// A signed duration: `3.1 ms`, `-0.2 ms`.
fn signed_text(ns: i64) -> String {
    if ns < 0 {
        format!("-{}", duration_text(ns.unsigned_abs()))
    } else {
        duration_text(ns.unsigned_abs())
    }
}

fn opt_text(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_string(), duration_text)
}

fn write_text(
    out: &mut impl Write,
    r: &Correlation,
    c: &Cause,
    kept: &[Kept],
    logs: &[PathBuf],
    filters: bool,
) -> io::Result<()> {
    let front = record_of(&r.front, kept);
    let back = record_of(&r.back, kept);
    // Times of the request are given from the client's request (or first packet).
    let origin = origin(r, kept);

    let mut title = match (&r.req_id, &r.pairing) {
        (Some(id), _) => format!("request {id}"),
        (None, Pairing::Unpaired) => "back-end connection without a front end".to_string(),
        (None, _) => "request".to_string(),
    };
    if let Some(s) = &r.sess_id {
        title.push_str(&format!(", session {s}"));
    }
    let at = utc_text(origin);
    match (front, back) {
        (Some(_), _) => title.push_str(&format!(": client request at {at}")),
        (None, Some(_)) => title.push_str(&format!(": started at {at}")),
        (None, None) => title.push_str(&format!(": logged at {at}")),
    }
    if let Some(src) = &r.source {
        title.push_str(&format!(" ({src})"));
    }
    writeln!(out, "{title}")?;
    match &r.pairing {
        Pairing::Time {
            confidence,
            delay_ns,
            alternatives,
            candidates,
        } => {
            writeln!(
                out,
                "  paired by time: confidence {confidence:.2}, back end opened {} after the \
                 request, {}",
                duration_text(*delay_ns),
                match candidates {
                    1 => "the only candidate".to_string(),
                    n => format!("{n} candidates"),
                }
            )?;
            if !alternatives.is_empty() {
                let alts: Vec<String> = alternatives
                    .iter()
                    .filter_map(|&(k, d)| {
                        kept.get(k)
                            .map(|k| format!("{} (+{})", record_ref(k, logs), duration_text(d)))
                    })
                    .collect();
                writeln!(out, "  other candidates: {}", alts.join(", "))?;
            }
        }
        Pairing::NoRequest => writeln!(out, "  no request from the client: no back end expected")?,
        Pairing::NoCandidate => writeln!(
            out,
            "  no free back-end connection started during the request"
        )?,
        Pairing::Unpaired => writeln!(out, "  no front-end connection took it")?,
        Pairing::Conntrace => {}
    }
    for (side, found, k) in [(Side::Front, &r.front, front), (Side::Back, &r.back, back)] {
        let label = format!("  {:<6}", side.as_str());
        match (found, k) {
            (Found::Recorded { candidates, .. }, Some(k)) => {
                let rec = &k.rec;
                let more = if *candidates > 1 {
                    format!(" (nearest in time of {candidates} with these endpoints)")
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "{label} {} -> {}  {}{more}",
                    endpoint_text(rec.client.ip, rec.client.port),
                    endpoint_text(rec.server.ip, rec.server.port),
                    record_ref(k, logs),
                )?;
                writeln!(
                    out,
                    "         {} ({}), {}, start {}{}, duration {}, first response byte {}",
                    rec.close_reason.in_words(),
                    rec.close_reason.as_str(),
                    match rec.conn_state.as_str() {
                        "" => "-",
                        s => s,
                    },
                    if rec.start_ns >= origin { "+" } else { "-" },
                    duration_text(rec.start_ns.abs_diff(origin)),
                    duration_text(rec.duration_ns()),
                    opt_text(rec.latency.ttfb_ns)
                )?;
                if filters {
                    writeln!(
                        out,
                        "         wireshark: {}",
                        crate::filter::wireshark_filter(rec)
                    )?;
                    writeln!(out, "         bpf: {}", crate::filter::bpf_filter(rec))?;
                }
            }
            (Found::NotRecorded { client, server }, _) => writeln!(
                out,
                "{label} {} -> {}  not recorded",
                endpoint_text(Addr::from_ip(client.ip()), client.port()),
                endpoint_text(Addr::from_ip(server.ip()), server.port())
            )?,
            _ => writeln!(out, "{label} none")?,
        }
    }
    let l = proxy_latency(front.map(|k| &k.rec), back.map(|k| &k.rec));
    if front.is_some() && back.is_some() {
        let mut parts = Vec::new();
        if let (Some(a), Some(fr), Some(br)) = (
            l.added_ns,
            front.and_then(|k| k.rec.latency.ttfb_ns),
            back.and_then(|k| k.rec.latency.ttfb_ns),
        ) {
            parts.push(format!(
                "added {} to the first response byte (front {}, back {})",
                signed_text(a),
                duration_text(fr),
                duration_text(br)
            ));
        }
        if let Some(t) = l.to_backend_ns {
            parts.push(format!(
                "back end opened {} after the request",
                signed_text(t)
            ));
        }
        if let (Some(q), Some(s)) = (l.request_path_ns, l.response_path_ns) {
            parts.push(format!(
                "request path {}, response path {}",
                signed_text(q),
                signed_text(s)
            ));
        }
        if !parts.is_empty() {
            writeln!(out, "  proxy  {}", parts.join("; "))?;
        }
    }
    let describe = |k: Option<&Kept>, side: Side| match (k, k.and_then(|k| failure(&k.rec, side))) {
        (None, _) => format!("{} not recorded", side.as_str()),
        (Some(_), None) => format!("{} nothing irregular", side.as_str()),
        (Some(_), Some(f)) => format!(
            "{} {} at {}{}",
            side.as_str(),
            f.text,
            if f.t_ns >= origin { "+" } else { "-" },
            duration_text(f.t_ns.abs_diff(origin))
        ),
    };
    writeln!(
        out,
        "  first irregular: {}; {}",
        describe(front, Side::Front),
        describe(back, Side::Back)
    )?;
    let verdict = match (c.fault, c.actor) {
        (Some(true), Some(a)) => format!("the {}'s fault", a.as_str()),
        (Some(false), _) => "nothing failed".to_string(),
        _ => "unknown".to_string(),
    };
    writeln!(
        out,
        "  cause  {} ({verdict}, failed first: {}): {}",
        c.kind.as_str(),
        c.failed_first(),
        c.text
    )?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_span_to_a_timestamp() {
        let spans = [(100, 200), (1_000, 1_100), (5_000, 6_000)];
        assert_eq!(nearest(&spans, Some(150)), Some(0));
        assert_eq!(nearest(&spans, Some(990)), Some(1));
        assert_eq!(nearest(&spans, Some(7_000)), Some(2));
        // Equidistant: the earlier one.
        assert_eq!(nearest(&spans, Some(600)), Some(0));
        assert_eq!(nearest(&spans, None), Some(0));
        assert_eq!(nearest(&[], Some(1)), None);
    }

    #[test]
    fn confidence_is_one_only_for_a_single_candidate() {
        assert_eq!(confidence(500, &[500], 1_000), 1.0);
        let two = confidence(300_000, &[300_000, 800_000], 1_000_000);
        assert!((two - 0.58).abs() < 0.01, "{two}");
        let far = confidence(300_000, &[300_000, 20_300_000], 1_000_000);
        assert!(far > 0.9 && far < 1.0, "{far}");
        let very_far = confidence(0, &[0, 3_000_000_000], 10_000);
        assert!(very_far < 1.0, "{very_far}");
    }

    #[test]
    fn time_pairing_takes_the_soonest_free_back_end() {
        // Two requests 0.1 ms apart; their back ends open 0.5 ms and 0.9 ms after the first.
        // The first takes the soonest, the second the other one; both are ambiguous.
        let fronts = [(Some(1_000_000), 50_000_000), (Some(1_100_000), 60_000_000)];
        let backs = [1_900_000, 1_500_000, 100_000_000];
        let p = pair_by_time(&fronts, &backs);
        let TimePairing::Paired {
            back, candidates, ..
        } = &p[0].1
        else {
            panic!("{p:?}")
        };
        assert_eq!((p[0].0, *back, *candidates), (0, 1, 2));
        let TimePairing::Paired {
            back,
            confidence,
            alternatives,
            ..
        } = &p[1].1
        else {
            panic!("{p:?}")
        };
        assert_eq!((p[1].0, *back), (1, 0));
        assert!(*confidence < 1.0);
        assert_eq!(alternatives, &vec![(1, 400_000)]);
        // Without a request, or with every candidate taken.
        let p = pair_by_time(&[(None, 10), (Some(5), 10), (Some(5), 10)], &[6]);
        assert_eq!(
            p[0].1,
            TimePairing::Paired {
                back: 0,
                confidence: 1.0,
                delay_ns: 1,
                alternatives: vec![],
                candidates: 1
            }
        );
        assert_eq!(p[1].1, TimePairing::NoCandidate);
        assert_eq!(p[2], (0, TimePairing::NoRequest));
    }
}
