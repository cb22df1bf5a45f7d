//! `conntrail extract`: the packets of one recorded connection, copied from captures into a
//! new capture.
//!
//! The frames written are exactly those the connection's Wireshark filter selects
//! ([`crate::filter::Selection`]: both directions, ICMP errors quoting it, its fragments when
//! it had some, on its VLANs, within its time window); each frame is parsed with the
//! tracker's own parser ([`flowtable::packet::parse`]) and keyed as the tracker keys it.
//!
//! Captures are streamed (constant memory). Frames before the window are skipped on their
//! timestamp alone. Reading a capture stops at the first frame stamped more than
//! [`ORDER_SLACK_NS`] after the window, provided no frame so far was stamped more than
//! `ORDER_SLACK_NS` before an earlier one (the capture is time-ordered up to that jitter);
//! a capture that was not stops nothing and is read to its end, as is every capture with
//! `--read-all` (for captures joined end to end whose times overlap).
//!
//! Output: a legacy pcap when every input is a legacy pcap of the same link type (with the
//! inputs' timestamp precision, nanoseconds if any input has it, and their largest snap
//! length); otherwise pcapng, with one interface per input interface that contributed a
//! frame, keeping its link type, snap length, name, timestamp resolution and offset.
//! Timestamps and frame bytes are copied unchanged.
//!
//! The output is never one of the captures read nor the log, and an existing file is replaced only with
//! `--overwrite` ([`crate::evidence::check_outputs`]).

use std::cell::RefCell;
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use capture::{
    Capture, CaptureError, CaptureStats, FileKind, FrameRef, InterfaceInfo, NgInterface,
    PcapNgWriter, PcapWriter, Stamp,
};
use flowtable::packet::parse;
use flowtable::record::Record;
use serde_json::json;

use crate::filter::Selection;
use crate::logs::RecordRef;

/// Jitter tolerated in a time-ordered capture, and how far past the window reading goes
/// before it stops: 1 s.
pub const ORDER_SLACK_NS: u64 = 1_000_000_000;

/// Arguments of `conntrail extract`.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// The connection, as LOG:ID.
    pub record: RecordRef,
    /// Captures to take its packets from (pcap or pcapng), read in order.
    #[arg(long = "pcap", value_name = "CAPTURE", required = true)]
    pub pcaps: Vec<PathBuf>,
    /// Output capture: pcap when every input is pcap of one link type, else pcapng.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
    /// Replace OUT if it exists (never one of the captures read, nor the log).
    #[arg(long)]
    pub overwrite: bool,
    /// Read every capture to its end, even when it looks time-ordered.
    #[arg(long)]
    pub read_all: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What reading one capture gave.
#[derive(Clone, Debug, Default)]
pub struct CaptureReport {
    pub path: PathBuf,
    pub bytes_total: u64,
    pub bytes_read: u64,
    pub frames_read: u64,
    pub written: u64,
    /// Reading stopped once the capture was past the window.
    pub stopped_early: bool,
    /// Frames without a timestamp (pcapng simple packet blocks) or of link types we do not
    /// decode: never selected.
    pub skipped: u64,
    /// The first damaged place of the capture, where and why.
    pub damage: Option<String>,
    /// Reading stopped at a damaged place: no plausible frame came after it.
    pub damage_ends_it: bool,
}

/// The output format chosen for a set of inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Pcap {
        linktype: u32,
        nanos: bool,
        snaplen: u32,
    },
    PcapNg,
}

pub fn run(args: ExtractArgs) -> Result<ExitCode> {
    let mut damaged = crate::exit::Damaged::default();
    let rec = args.record.load(|d| damaged.log(d))?;
    let mut read = args.pcaps.clone();
    read.push(args.record.log.clone());
    crate::evidence::check_outputs(
        "extract",
        &[&args.output],
        &crate::evidence::Inputs::of_paths(&read),
        args.overwrite,
    )?;
    let captures = args
        .pcaps
        .iter()
        .map(|p| Capture::open(p).map_err(not_a_capture))
        .collect::<Result<Vec<_>>>()?;
    let format = output_format(&captures);
    let sel = Selection::of(&rec);
    let file = crate::evidence::create_output(&args.output)?;
    let mut out = Output::new(BufWriter::new(file), format)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let mut reports = Vec::new();
    for capture in captures {
        let (report, stats) = copy_capture(capture, &sel, !args.read_all, &mut out)
            .with_context(|| format!("writing {}", args.output.display()))?;
        for d in &stats.damage {
            damaged.report(&format!("capture {}", report.path.display()), d);
        }
        reports.push(report);
    }
    out.finish()
        .with_context(|| format!("writing {}", args.output.display()))?;
    let written: u64 = reports.iter().map(|r| r.written).sum();
    if written == 0 {
        eprintln!(
            "conntrail: warning: no packet of record {} in the given captures",
            rec.id
        );
    }
    let mut summary = if args.json {
        summary_json(&rec, &args.output, format, &reports).to_string()
    } else {
        summary_text(&rec, &args.output, format, &reports)
    };
    summary.push('\n');
    crate::logs::print_and_exit(&summary, &damaged)
}

/// Why a capture cannot be read at all, in words; a log given as a capture gets a hint.
fn not_a_capture(e: CaptureError) -> anyhow::Error {
    match e {
        CaptureError::Log { path } => anyhow::anyhow!(
            "{}: not a pcap or pcapng file (it is a conntrail log: give it as LOG:ID, and the \
             captures it was made from to --pcap)",
            path.display()
        ),
        e => anyhow::Error::new(e),
    }
}

/// The output format for these captures: pcap when all are pcap of one link type (the
/// finest precision and the largest snapshot length of them), else pcapng.
pub fn output_format(captures: &[Capture]) -> OutputFormat {
    let mut legacy: Option<(u32, bool, u32)> = None;
    for (i, capture) in captures.iter().enumerate() {
        match (capture.kind(), legacy) {
            (
                FileKind::Pcap {
                    linktype,
                    nanos,
                    snaplen,
                },
                None,
            ) if i == 0 => legacy = Some((linktype, nanos, snaplen)),
            (
                FileKind::Pcap {
                    linktype,
                    nanos,
                    snaplen,
                },
                Some((l, n, s)),
            ) if linktype == l => legacy = Some((l, n || nanos, s.max(snaplen))),
            _ => return OutputFormat::PcapNg,
        }
    }
    match legacy {
        Some((linktype, nanos, snaplen)) => OutputFormat::Pcap {
            linktype,
            nanos,
            snaplen,
        },
        None => OutputFormat::PcapNg,
    }
}

impl OutputFormat {
    fn text(self) -> String {
        match self {
            OutputFormat::Pcap {
                linktype, nanos, ..
            } => format!(
                "pcap, {}, {}",
                linktype_text(linktype),
                if nanos { "nanoseconds" } else { "microseconds" }
            ),
            OutputFormat::PcapNg => "pcapng".to_string(),
        }
    }
}

/// The link types conntrail decodes by name, others by number.
fn linktype_text(linktype: u32) -> String {
    match linktype {
        1 => "Ethernet".to_string(),
        113 => "Linux cooked".to_string(),
        276 => "Linux cooked v2".to_string(),
        12 | 14 | 101 => "raw IP".to_string(),
        228 => "raw IPv4".to_string(),
        229 => "raw IPv6".to_string(),
        0 | 108 => "loopback".to_string(),
        n => format!("link type {n}"),
    }
}

/// One input interface as the output needs it.
#[derive(Clone, Debug)]
struct Interface {
    /// How the output describes it, should it come to be written.
    described: NgInterface,
    /// Timestamp units per second.
    resolution: u64,
    /// Its id in the output, once a frame of it was written.
    out_id: Option<u32>,
}

impl Interface {
    fn of(info: &InterfaceInfo<'_>) -> Interface {
        Interface {
            described: NgInterface {
                linktype: info.linktype,
                snaplen: info.snaplen,
                tsresol: info.tsresol,
                offset_s: info.offset_s,
                name: info.name.map(str::to_string),
            },
            resolution: info.resolution,
            out_id: None,
        }
    }
}

/// The capture being written.
enum Output<W: Write> {
    Pcap(PcapWriter<W>),
    PcapNg(PcapNgWriter<W>),
}

impl<W: Write> Output<W> {
    fn new(w: W, format: OutputFormat) -> io::Result<Output<W>> {
        Ok(match format {
            OutputFormat::Pcap {
                linktype,
                nanos,
                snaplen,
            } => Output::Pcap(PcapWriter::new(w, linktype, nanos, snaplen)?),
            OutputFormat::PcapNg => Output::PcapNg(PcapNgWriter::new(w)?),
        })
    }

    /// Writes `frame` of `iface`, its timestamp copied as the input stored it.
    fn write(
        &mut self,
        iface: &mut Interface,
        frame: &FrameRef,
        stamp: Stamp,
        data: &[u8],
    ) -> io::Result<()> {
        match self {
            Output::Pcap(writer) => match stamp {
                Stamp::Pcap { secs, frac } => {
                    // A microsecond input in a nanosecond output.
                    let frac = if writer.nanos() && iface.resolution != 1_000_000_000 {
                        frac.saturating_mul(1000)
                    } else {
                        frac
                    };
                    writer.frame(secs, frac, frame.wire_len, data)
                }
                _ => writer.frame_at(frame.ts_ns, frame.wire_len, data),
            },
            Output::PcapNg(writer) => {
                let out_id = match iface.out_id {
                    Some(id) => id,
                    None => {
                        let id = writer.interface(&iface.described)?;
                        iface.out_id = Some(id);
                        id
                    }
                };
                let units = match stamp {
                    Stamp::PcapNg { units } => units,
                    Stamp::Pcap { secs, frac } => {
                        u64::from(secs) * iface.resolution + u64::from(frac)
                    }
                    Stamp::None => 0,
                };
                writer.frame(out_id, units, frame.wire_len, data)
            }
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Output::Pcap(writer) => writer.finish().map(drop),
            Output::PcapNg(writer) => writer.finish().map(drop),
        }
    }
}

/// Copies the selected frames of one capture; what it read, and what the reader found.
fn copy_capture<W: Write>(
    capture: Capture,
    sel: &Selection,
    early_stop: bool,
    out: &mut Output<W>,
) -> io::Result<(CaptureReport, CaptureStats)> {
    let bytes_total = capture.metadata().map_or(0, |m| m.len());
    let path = capture.path().to_path_buf();
    // The capture's interfaces, numbered as the reader is told; both callbacks use them.
    let interfaces = RefCell::new(Vec::new());
    let mut copy = Copier {
        sel,
        early_stop,
        out,
        interfaces: &interfaces,
        latest_ns: 0,
        ordered: true,
        written: 0,
        untimed: 0,
        error: None,
    };
    let stats = capture.frames(
        |info| {
            let mut interfaces = interfaces.borrow_mut();
            interfaces.push(Interface::of(info));
            u16::try_from(interfaces.len() - 1).unwrap_or(u16::MAX)
        },
        |frame, chunk, stamp| copy.frame(&frame, frame.bytes(chunk), stamp),
        |_| {},
    );
    if let Some(e) = copy.error {
        return Err(e);
    }
    let damage_ends_it = stats.damage.last().is_some_and(|d| !d.resumed);
    let bytes_read = match stats.damage.last() {
        Some(d) if damage_ends_it => d.offset,
        _ => stats.walked,
    };
    let report = CaptureReport {
        path,
        bytes_total,
        bytes_read,
        frames_read: stats.frames,
        written: copy.written,
        stopped_early: stats.stopped,
        skipped: stats.unsupported_link + copy.untimed,
        damage: stats.damage.first().map(ToString::to_string),
        damage_ends_it,
    };
    Ok((report, stats))
}

/// The copying of one capture, frame by frame.
struct Copier<'a, W: Write> {
    sel: &'a Selection,
    early_stop: bool,
    out: &'a mut Output<W>,
    /// The capture's interfaces, numbered as the reader was told.
    interfaces: &'a RefCell<Vec<Interface>>,
    latest_ns: u64,
    /// No frame so far was stamped more than [`ORDER_SLACK_NS`] before an earlier one.
    ordered: bool,
    written: u64,
    /// Frames without a timestamp.
    untimed: u64,
    /// Writing failed: the copy stopped there.
    error: Option<io::Error>,
}

impl<W: Write> Copier<'_, W> {
    /// Writes `frame` when the connection's filter selects it; breaks once the capture is
    /// past the window (when it may stop early) or writing failed.
    fn frame(&mut self, frame: &FrameRef, data: &[u8], stamp: Stamp) -> ControlFlow<()> {
        if stamp == Stamp::None {
            self.untimed += 1;
            return ControlFlow::Continue(());
        }
        let ts = frame.ts_ns;
        if ts.saturating_add(ORDER_SLACK_NS) < self.latest_ns {
            self.ordered = false;
        }
        self.latest_ns = self.latest_ns.max(ts);
        let in_window = ts >= self.sel.from_ns && ts <= self.sel.to_ns;
        if in_window && parse(frame.link, data).is_ok_and(|pkt| self.sel.matches(ts, &pkt)) {
            let mut interfaces = self.interfaces.borrow_mut();
            let Some(iface) = interfaces.get_mut(usize::from(frame.interface)) else {
                return ControlFlow::Continue(());
            };
            if let Err(e) = self.out.write(iface, frame, stamp, data) {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
            self.written += 1;
        }
        if self.early_stop && self.ordered && ts > self.sel.to_ns.saturating_add(ORDER_SLACK_NS) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        100
    } else {
        (u128::from(part) * 100 / u128::from(whole)) as u64
    }
}

fn record_text(rec: &Record<'_>) -> String {
    format!(
        "record {} ({} {} -> {})",
        rec.id,
        rec.proto.as_str(),
        crate::units::endpoint_text(rec.client.ip, rec.client.port),
        crate::units::endpoint_text(rec.server.ip, rec.server.port)
    )
}

fn summary_text(
    rec: &Record<'_>,
    output: &Path,
    format: OutputFormat,
    reports: &[CaptureReport],
) -> String {
    let written: u64 = reports.iter().map(|r| r.written).sum();
    let mut s = format!(
        "wrote {written} packets of {} to {} ({})",
        record_text(rec),
        output.display(),
        format.text()
    );
    for r in reports {
        let how = if r.stopped_early {
            format!(
                "read {}% ({} of {} bytes, {} frames) before the window closed",
                percent(r.bytes_read, r.bytes_total),
                r.bytes_read,
                r.bytes_total,
                r.frames_read
            )
        } else if r.damage_ends_it {
            format!(
                "read {} of {} bytes ({} frames) up to the damage",
                r.bytes_read, r.bytes_total, r.frames_read
            )
        } else if r.damage.is_some() {
            format!(
                "read all {} bytes ({} frames) past damaged places",
                r.bytes_read, r.frames_read
            )
        } else {
            format!("read all {} bytes ({} frames)", r.bytes_read, r.frames_read)
        };
        s.push_str(&format!(
            "\n  {}: {} packets; {how}",
            r.path.display(),
            r.written
        ));
    }
    s
}

fn summary_json(
    rec: &Record<'_>,
    output: &Path,
    format: OutputFormat,
    reports: &[CaptureReport],
) -> serde_json::Value {
    let captures: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            json!({
                "path": r.path.display().to_string(),
                "packets": r.written,
                "frames_read": r.frames_read,
                "bytes_read": r.bytes_read,
                "bytes_total": r.bytes_total,
                "stopped_early": r.stopped_early,
                "skipped": r.skipped,
                "damage": r.damage,
            })
        })
        .collect();
    json!({
        "id": rec.id,
        "output": output.display().to_string(),
        "format": match format { OutputFormat::Pcap { .. } => "pcap", OutputFormat::PcapNg => "pcapng" },
        "packets": reports.iter().map(|r| r.written).sum::<u64>(),
        "captures": captures,
    })
}
