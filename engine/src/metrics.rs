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
//! with 404, one connection at a time, and closes each connection after its reply.
//!
//! ```
//! use engine::metrics::{render, ContextSample, WorkerSample};
//! let text = render(
//!     &[WorkerSample { worker: 0, interface: "eth0".into(), queue: 0,
//!         ..WorkerSample::default() }],
//!     &[ContextSample { name: "default".into(), records_written: 3 }],
//! );
//! assert!(text.contains("conntrail_packets_total{worker=\"0\",interface=\"eth0\",queue=\"0\"} 0"));
//! assert!(text.contains("conntrail_context_records_written_total{context=\"default\"} 3"));
//! ```

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use flowtable::packet::Malformed;
use flowtable::record::CloseReason;

use crate::source::xdp::KernelStats;
use crate::worker::WorkerStats;

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
    let simple: [Simple; 7] = [
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

/// A bound metrics listener, before its thread starts.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsListener> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsListener { listener })
    }

    /// The address bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until `stop`, with the samples `source` gives at each.
    pub fn spawn(
        self,
        source: impl Fn() -> (Vec<WorkerSample>, Vec<ContextSample>) + Send + 'static,
        stop: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("conntrail-metrics".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match self.listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = respond(stream, &source) {
                                log::debug!("metrics: {e}");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            log::warn!("metrics listener: {e}");
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
    }
}

fn respond(
    stream: TcpStream,
    source: &impl Fn() -> (Vec<WorkerSample>, Vec<ContextSample>),
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers up to the empty line (capped), unread otherwise.
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics" | "/") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", {
            let (workers, contexts) = source();
            render(&workers, &contexts)
        }),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "conntrail serves GET /metrics\n".to_string(),
        ),
    };
    let mut w = &stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
