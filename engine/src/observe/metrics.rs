//! `conntrail run --metrics ADDR`: the run's counters in the Prometheus text format, served
//! over plain HTTP by a thread of its own (off unless asked for).
//!
//! Every series is per worker (`worker="N"`, with its `interface` and `queue`): packets and
//! bytes received, flows open, created and closed (by `reason`), records handed to the
//! recorder and records the recorder wrote to the log, drops by `cause` (the ring to the
//! recorder full, the flow table full, a trail truncated in its arena, a record that did
//! not encode, an incomplete IP datagram dropped from a full fragment table or timed out),
//! malformed frames by `reason`, and the kernel's own drop counters of the socket. Records
//! written are also given per context (`context="NAME"`). The numbers are those the workers
//! and the recorder publish; a scrape never touches a worker.
//!
//! The responder answers `GET /metrics` (and `GET /`) with the exposition, anything else
//! with 404, and closes each connection after its reply. It serves every connection from
//! one thread over nonblocking sockets ([`crate::serve`]), so no client holds up another,
//! within [`LIMITS`]: the request line and headers at most 8 KiB (larger: 431, the rest
//! unread), complete within 2 s of the accept (a deadline, not a per-read timeout), the
//! reply taken within 5 s, at most 64 connections open (one more closes the oldest still
//! sending its request).
//!
//! ```
//! use engine::observe::metrics::{render, ContextSample, WorkerSample};
//! let text = render(
//!     &[WorkerSample { worker: 0, interface: "eth0".into(), queue: 0,
//!         ..WorkerSample::default() }],
//!     &[ContextSample { name: "default".into(), records_written: 3 }],
//! );
//! assert!(text.contains("conntrail_packets_total{worker=\"0\",interface=\"eth0\",queue=\"0\"} 0"));
//! assert!(text.contains("conntrail_context_records_written_total{context=\"default\"} 3"));
//! ```

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use flowtable::packet::Malformed;
use flowtable::record::CloseReason;

use crate::pipeline::worker::WorkerStats;
use crate::serve::{Limits, Request, Server};
use crate::source::xdp::KernelStats;

/// One worker's counters as last published.
#[derive(Clone, Debug, Default)]
pub struct WorkerSample {
    pub worker: u16,
    pub interface: String,
    pub queue: u32,
    /// Frames and bytes received from the kernel.
    pub packets: u64,
    pub bytes: u64,
    pub kernel: KernelStats,
    pub stats: WorkerStats,
    /// Records from this worker's ring the recorder has written to the logs.
    pub records_written: u64,
    /// Records from this worker's ring the recorder skipped: their frame failed its checksum.
    pub ring_checksum_failures: u64,
}

/// Records written to one context's log.
#[derive(Clone, Debug, Default)]
pub struct ContextSample {
    pub name: String,
    pub records_written: u64,
}

/// A family with one value per worker: name, type, help and how to read the value.
type Simple = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerSample) -> u64,
);

/// A metric family: name, type and help, then one value per worker (and label).
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, s: &WorkerSample, extra: Option<(&str, &str)>, v: u64) {
        let _ = write!(
            self.out,
            "{name}{{worker=\"{}\",interface=\"{}\",queue=\"{}\"",
            s.worker,
            escape(&s.interface),
            s.queue
        );
        if let Some((k, val)) = extra {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(val));
        }
        let _ = writeln!(self.out, "}} {v}");
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of `samples` (per worker) and `contexts`.
pub fn render(samples: &[WorkerSample], contexts: &[ContextSample]) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let simple: [Simple; 8] = [
        (
            "conntrail_packets_total",
            "counter",
            "Frames received from the kernel.",
            |s| s.packets,
        ),
        (
            "conntrail_bytes_total",
            "counter",
            "Bytes of the frames received.",
            |s| s.bytes,
        ),
        (
            "conntrail_flows_open",
            "gauge",
            "Connections tracked now.",
            |s| {
                s.stats
                    .table
                    .flows_created
                    .saturating_sub(s.stats.table.flows_closed.iter().sum())
            },
        ),
        (
            "conntrail_flows_created_total",
            "counter",
            "Connections created.",
            |s| s.stats.table.flows_created,
        ),
        (
            "conntrail_records_total",
            "counter",
            "Records handed to the recorder.",
            |s| s.stats.records,
        ),
        (
            "conntrail_records_written_total",
            "counter",
            "Records of this worker the recorder wrote to the logs.",
            |s| s.records_written,
        ),
        (
            "conntrail_ring_checksum_failures_total",
            "counter",
            "Records of this worker lost because their ring frame failed its checksum \
             (damaged in the ring's memory).",
            |s| s.ring_checksum_failures,
        ),
        (
            "conntrail_untracked_packets_total",
            "counter",
            "Packets of protocols that are not tracked.",
            |s| s.stats.table.untracked,
        ),
    ];
    for (name, kind, help, get) in simple {
        f.head(name, kind, help);
        for s in samples {
            f.value(name, s, None, get(s));
        }
    }
    let name = "conntrail_flows_closed_total";
    f.head(name, "counter", "Connections closed, by close reason.");
    for s in samples {
        for (r, n) in CloseReason::ALL.iter().zip(s.stats.table.flows_closed) {
            f.value(name, s, Some(("reason", r.as_str())), n);
        }
    }
    let name = "conntrail_drops_total";
    f.head(
        name,
        "counter",
        "Losses by cause: ring-full (record lost), table-full (connection evicted), \
         arena-truncation (points dropped from a trail), \
         fragment-table-full and fragment-timeout (incomplete IP datagram dropped).",
    );
    for s in samples {
        for (cause, n) in [
            ("ring-full", s.stats.ring_drops),
            ("table-full", s.stats.table.evictions),
            ("arena-truncation", s.stats.table.trails_truncated),
            ("fragment-table-full", s.stats.table.fragments_evicted),
            ("fragment-timeout", s.stats.table.fragments_expired),
        ] {
            f.value(name, s, Some(("cause", cause)), n);
        }
    }
    let name = "conntrail_malformed_total";
    f.head(name, "counter", "Frames not IP or malformed, by reason.");
    for s in samples {
        for (m, n) in Malformed::ALL.iter().zip(s.stats.malformed) {
            f.value(name, s, Some(("reason", m.as_str())), n);
        }
    }
    let name = "conntrail_kernel_drops_total";
    f.head(
        name,
        "counter",
        "The kernel's counters of the AF_XDP socket (XDP_STATISTICS), by cause.",
    );
    for s in samples {
        for (cause, n) in [
            ("rx-dropped", s.kernel.rx_dropped),
            ("rx-ring-full", s.kernel.rx_ring_full),
            ("fill-ring-empty", s.kernel.fill_ring_empty),
            ("rx-invalid-descs", s.kernel.rx_invalid_descs),
        ] {
            f.value(name, s, Some(("cause", cause)), n);
        }
    }
    let name = "conntrail_context_records_written_total";
    f.head(name, "counter", "Records written to each context's log.");
    for c in contexts {
        let _ = writeln!(
            f.out,
            "{name}{{context=\"{}\"}} {}",
            escape(&c.name),
            c.records_written
        );
    }
    out
}

/// The bounds of a scrape: the request line and headers, their time, open connections.
pub const LIMITS: Limits = Limits {
    max_request: 8 * 1024,
    request_deadline: Duration::from_secs(2),
    reply_deadline: Duration::from_secs(5),
    max_connections: 64,
};

/// A bound metrics listener, before its thread starts.
pub struct MetricsListener {
    server: Server<TcpListener>,
}

impl MetricsListener {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsListener> {
        let server = Server::new(TcpListener::bind(addr)?, LIMITS, headers_end)?;
        Ok(MetricsListener { server })
    }

    /// The address bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.server.listener().local_addr()
    }

    /// Serves scrapes until `stop`, with the samples `source` gives at each.
    pub fn spawn(
        mut self,
        source: impl Fn() -> (Vec<WorkerSample>, Vec<ContextSample>) + Send + 'static,
        stop: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("conntrail-metrics".into())
            .spawn(move || {
                let mut answer = |request: Request<'_>| respond(request, &source);
                while !stop.load(Ordering::Acquire) {
                    self.server.turn(Duration::from_millis(50), &mut answer);
                }
            })
    }
}

/// The end of an HTTP request's headers (the empty line); at the client's close, whatever
/// came.
fn headers_end(bytes: &[u8], eof: bool) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(a), None) | (None, Some(a)) => Some(a),
        (None, None) => (eof && !bytes.is_empty()).then_some(bytes.len()),
    }
}

/// The whole reply to one request.
fn respond(
    request: Request<'_>,
    source: &impl Fn() -> (Vec<WorkerSample>, Vec<ContextSample>),
) -> Vec<u8> {
    let plain = "text/plain; charset=utf-8";
    let (status, kind, body) = match request {
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            plain,
            format!(
                "the request line and headers are longer than {} bytes\n",
                LIMITS.max_request
            ),
        ),
        Request::Complete(bytes) => {
            let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            match (method, path) {
                ("GET", "/metrics" | "/") => {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", {
                        let (workers, contexts) = source();
                        render(&workers, &contexts)
                    })
                }
                _ => (
                    "404 Not Found",
                    plain,
                    "conntrail serves GET /metrics\n".to_string(),
                ),
            }
        }
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn sample() -> WorkerSample {
        let mut s = WorkerSample {
            worker: 1,
            interface: "veth\"0".into(),
            queue: 2,
            packets: 10,
            bytes: 1000,
            ..WorkerSample::default()
        };
        s.stats.table.flows_created = 5;
        s.stats.table.flows_closed[0] = 3;
        s.stats.table.fragments_evicted = 8;
        s.stats.ring_drops = 4;
        s.records_written = 7;
        s.ring_checksum_failures = 9;
        s.stats.malformed[0] = 2;
        s.kernel.rx_ring_full = 6;
        s
    }

    #[test]
    fn every_series_is_per_worker_with_escaped_labels() {
        let contexts = [
            ContextSample {
                name: "default".into(),
                records_written: 5,
            },
            ContextSample {
                name: "dmz".into(),
                records_written: 2,
            },
        ];
        let text = render(&[sample()], &contexts);
        let labels = r#"worker="1",interface="veth\"0",queue="2""#;
        for line in [
            format!("conntrail_packets_total{{{labels}}} 10"),
            format!("conntrail_flows_open{{{labels}}} 2"),
            format!(
                "conntrail_flows_closed_total{{{labels},reason=\"{}\"}} 3",
                CloseReason::ALL[0].as_str()
            ),
            format!("conntrail_drops_total{{{labels},cause=\"ring-full\"}} 4"),
            format!("conntrail_drops_total{{{labels},cause=\"fragment-table-full\"}} 8"),
            format!("conntrail_records_written_total{{{labels}}} 7"),
            format!("conntrail_ring_checksum_failures_total{{{labels}}} 9"),
            "conntrail_context_records_written_total{context=\"dmz\"} 2".to_string(),
            format!(
                "conntrail_malformed_total{{{labels},reason=\"{}\"}} 2",
                Malformed::ALL[0].as_str()
            ),
            format!("conntrail_kernel_drops_total{{{labels},cause=\"rx-ring-full\"}} 6"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Every sample line belongs to a family announced before it.
        let mut typed = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap_or("").to_string());
            } else if !l.starts_with('#') {
                let name = l.split('{').next().unwrap_or("");
                assert_eq!(typed.last().map(String::as_str), Some(name), "{l}");
            }
        }
    }

    #[test]
    fn scrapes_get_the_exposition_and_other_paths_404() {
        let listener = MetricsListener::bind("127.0.0.1:0".parse().expect("addr")).expect("binds");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let h = listener
            .spawn(|| (vec![sample()], Vec::new()), Arc::clone(&stop))
            .expect("spawns");
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).expect("connects");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("writes");
            let mut text = String::new();
            s.read_to_string(&mut text).expect("reads");
            text
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("conntrail_bytes_total{"), "{ok}");
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        stop.store(true, Ordering::Release);
        h.join().expect("joins");
    }
}
