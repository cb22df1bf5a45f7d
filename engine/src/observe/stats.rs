//! The stats file of `conntrail run`, and `conntrail stats`, which prints it.
//!
//! While it runs, `conntrail run` publishes per-socket and per-worker counters once a second
//! to a JSON file (by default `LOG.stats.json`), written atomically (a temporary file renamed
//! over the old one), so a reader never sees half a file. Each worker copies its own plain
//! counters into a slot of its own once a second; a stats thread assembles the file. The
//! last version, written after the workers stopped, has `"state": "stopped"` and the final
//! counts.
//!
//! ```no_run
//! use engine::observe::stats::StatsFile;
//!
//! let stats = StatsFile::read("tracker.log.stats.json".as_ref()).expect("stats file");
//! println!("{} packets", stats.total().packets);
//! ```

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::source::xdp::KernelStats;

/// Format version of the stats file.
pub const STATS_VERSION: u32 = 1;

/// Whether the run that writes the file is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    #[default]
    Running,
    Stopped,
}

/// The whole stats file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsFile {
    pub version: u32,
    pub state: RunState,
    pub pid: u32,
    /// The record log of the run.
    pub log: String,
    /// Realtime clock, ns since the epoch.
    pub started_ns: u64,
    pub updated_ns: u64,
    pub sockets: Vec<SocketStats>,
    /// The run's control socket, if it has one (`conntrail stats` asks it for the watches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Each context's log and the records written to it, `default` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<ContextStats>,
}

/// The log of one context and the records the recorder has written to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextStats {
    pub name: String,
    pub log: String,
    pub records_written: u64,
}

/// One socket and the worker behind it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketStats {
    pub worker: u16,
    pub interface: String,
    pub queue: u32,
    /// The core the worker is pinned to (none: not pinned).
    pub core: Option<usize>,
    /// The mode the socket got (`native zero-copy`, `native copy`, `generic copy`).
    pub mode: String,
    /// Frames received from the kernel, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Frames that were not IP or were malformed.
    pub not_ip_or_malformed: u64,
    pub flows: u64,
    pub flows_open: u64,
    pub records: u64,
    /// Records lost because the worker's ring to the recorder was full.
    pub ring_drops: u64,
    pub evictions: u64,
    /// Non-empty batches and idle waits of the receive loop.
    pub batches: u64,
    pub idle_waits: u64,
    /// Time the worker spent handling frames (not waiting or spinning for them).
    pub busy_ns: u64,
    /// The kernel's own counters of the socket (`XDP_STATISTICS`).
    pub kernel: KernelStats,
}

impl StatsFile {
    /// Reads and parses a stats file.
    pub fn read(path: &Path) -> Result<StatsFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading stats file {}", path.display()))?;
        let file: StatsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a conntrail stats file", path.display()))?;
        Ok(file)
    }

    /// Writes `self` to `path` atomically: a temporary file beside it, renamed over it.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.write_all(b"\n")?;
        }
        std::fs::rename(&tmp, path)
    }

    /// All sockets added up (worker, queue and core of the first).
    pub fn total(&self) -> SocketStats {
        let mut t = SocketStats {
            interface: "total".into(),
            ..SocketStats::default()
        };
        for s in &self.sockets {
            t.packets += s.packets;
            t.bytes += s.bytes;
            t.not_ip_or_malformed += s.not_ip_or_malformed;
            t.flows += s.flows;
            t.flows_open += s.flows_open;
            t.records += s.records;
            t.ring_drops += s.ring_drops;
            t.evictions += s.evictions;
            t.batches += s.batches;
            t.idle_waits += s.idle_waits;
            t.busy_ns += s.busy_ns;
            t.kernel.rx_dropped += s.kernel.rx_dropped;
            t.kernel.rx_ring_full += s.kernel.rx_ring_full;
            t.kernel.fill_ring_empty += s.kernel.fill_ring_empty;
            t.kernel.rx_invalid_descs += s.kernel.rx_invalid_descs;
        }
        t
    }
}

/// Realtime clock now, ns since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The stats file of a log, when none is named: `LOG.stats.json`.
pub fn default_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".stats.json");
    PathBuf::from(s)
}

/// `conntrail stats [FILE]`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The stats file of a `conntrail run` (or its log, whose `LOG.stats.json` is read).
    #[arg(default_value = "tracker.log.stats.json")]
    pub file: PathBuf,
    /// Print the file as it is (JSON).
    #[arg(long)]
    pub json: bool,
}

/// What the file at `path` is when it is a log or a capture rather than a stats file.
fn not_a_stats_file(path: &Path) -> Option<&'static str> {
    if let Some(kind) = forensics::evidence::capture_kind(path) {
        return Some(kind);
    }
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .ok()?;
    forensics::evidence::is_log_head(&head[..n]).then_some("a conntrail log")
}

/// Prints a stats file: one line per socket and a total.
pub fn run(args: StatsArgs) -> Result<ExitCode> {
    let path = if args.file.extension().is_some_and(|e| e == "json")
        || !default_path(&args.file).exists()
    {
        args.file.clone()
    } else {
        default_path(&args.file)
    };
    if path == args.file && args.file.extension().is_none_or(|e| e != "json") {
        if let Some(what) = not_a_stats_file(&args.file) {
            bail!(
                "{} is {what} with no stats file beside it ({}): a `conntrail run` writes one \
                 every second; a replay prints its counters when it ends",
                args.file.display(),
                default_path(&args.file).display()
            );
        }
    }
    let stats = StatsFile::read(&path)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    out.write_all(render(&stats, now_ns(), pid_alive(stats.pid)).as_bytes())?;
    let control = stats
        .control
        .as_deref()
        .filter(|_| stats.state == RunState::Running);
    if let Some(path) = control {
        // The watches and their cost, if the run still answers.
        let asked = crate::control::ask(Path::new(path), &crate::control::Request::WatchList);
        if let Ok(crate::control::Reply::Watches { watches, .. }) = asked {
            writeln!(out, "watches:")?;
            out.write_all(crate::control::watch_table(&watches).as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// The text `conntrail stats` prints.
pub fn render(stats: &StatsFile, now_ns: u64, alive: bool) -> String {
    let mut s = String::new();
    let age_s = now_ns.saturating_sub(stats.updated_ns) as f64 / 1e9;
    let up_s = stats.updated_ns.saturating_sub(stats.started_ns) as f64 / 1e9;
    let state = match stats.state {
        RunState::Stopped => "stopped".to_string(),
        RunState::Running if !alive => "not running (the process is gone)".to_string(),
        RunState::Running if age_s > 5.0 => format!("running, but no update for {age_s:.0} s"),
        RunState::Running => "running".to_string(),
    };
    let _ = writeln!(
        s,
        "conntrail run, pid {}: {state}; updated {age_s:.1} s ago after {up_s:.1} s; log {}",
        stats.pid, stats.log
    );
    let _ = writeln!(
        s,
        "{:<7} {:<12} {:>5} {:>4} {:<16} {:>12} {:>14} {:>9} {:>8} {:>9} {:>10} | {:>10} {:>12} {:>15}",
        "worker",
        "interface",
        "queue",
        "core",
        "mode",
        "packets",
        "bytes",
        "flows",
        "open",
        "records",
        "ring-drops",
        "rx-dropped",
        "rx-ring-full",
        "fill-ring-empty"
    );
    let total = stats.total();
    let rows = stats.sockets.iter().map(|x| (x.worker.to_string(), x));
    for (worker, x) in rows.chain(std::iter::once(("all".to_string(), &total))) {
        let _ = writeln!(
            s,
            "{:<7} {:<12} {:>5} {:>4} {:<16} {:>12} {:>14} {:>9} {:>8} {:>9} {:>10} | {:>10} {:>12} {:>15}",
            worker,
            x.interface,
            if worker == "all" { "-".into() } else { x.queue.to_string() },
            x.core.map_or_else(|| "-".to_string(), |c| c.to_string()),
            if worker == "all" { "-" } else { &x.mode },
            x.packets,
            x.bytes,
            x.flows,
            x.flows_open,
            x.records,
            x.ring_drops,
            x.kernel.rx_dropped,
            x.kernel.rx_ring_full,
            x.kernel.fill_ring_empty
        );
    }
    if stats.contexts.len() > 1 {
        for c in &stats.contexts {
            let _ = writeln!(
                s,
                "context {}: {} records written to {}",
                c.name, c.records_written, c.log
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatsFile {
        StatsFile {
            version: STATS_VERSION,
            state: RunState::Running,
            pid: 42,
            log: "/var/log/conntrail/tracker.log".into(),
            started_ns: 1_000_000_000,
            updated_ns: 11_000_000_000,
            control: None,
            contexts: Vec::new(),
            sockets: vec![
                SocketStats {
                    worker: 0,
                    interface: "eth0".into(),
                    queue: 0,
                    core: Some(2),
                    mode: "native copy".into(),
                    packets: 1000,
                    flows: 10,
                    kernel: KernelStats {
                        rx_ring_full: 3,
                        ..KernelStats::default()
                    },
                    ..SocketStats::default()
                },
                SocketStats {
                    worker: 1,
                    interface: "eth0".into(),
                    queue: 1,
                    core: Some(3),
                    mode: "native copy".into(),
                    packets: 500,
                    flows: 5,
                    ..SocketStats::default()
                },
            ],
        }
    }

    #[test]
    fn the_file_round_trips_and_replaces_atomically() {
        let dir = std::env::temp_dir().join(format!("conntrail-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.log.stats.json");
        let mut s = sample();
        s.write_atomic(&path).unwrap();
        s.state = RunState::Stopped;
        s.write_atomic(&path).unwrap();
        assert_eq!(StatsFile::read(&path).unwrap(), s);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_table_has_one_line_per_socket_and_a_total() {
        let text = render(&sample(), 11_500_000_000, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].contains("pid 42: running"), "{text}");
        assert!(
            lines[2].contains("native copy") && lines[2].contains("1000"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("all") && lines[4].contains("1500"),
            "{text}"
        );
        let gone = render(&sample(), 11_500_000_000, false);
        assert!(gone.contains("the process is gone"), "{gone}");
    }

    #[test]
    fn contexts_get_a_line_each_when_there_are_several() {
        let mut s = sample();
        s.contexts = vec![ContextStats {
            name: "default".into(),
            log: "/var/log/t.log".into(),
            records_written: 9,
        }];
        assert!(!render(&s, 0, true).contains("context"), "default alone");
        s.contexts.push(ContextStats {
            name: "dmz".into(),
            log: "/var/log/t.log.dmz".into(),
            records_written: 4,
        });
        let text = render(&s, 0, true);
        assert!(
            text.contains("context default: 9 records written to /var/log/t.log\n")
                && text.contains("context dmz: 4 records written to /var/log/t.log.dmz\n"),
            "{text}"
        );
    }

    #[test]
    fn the_default_file_sits_beside_the_log() {
        assert_eq!(
            default_path(Path::new("/var/log/tracker.log")),
            PathBuf::from("/var/log/tracker.log.stats.json")
        );
    }
}
