//! `conntrail extract`: the packets of one recorded connection, copied from captures into a
//! new capture.
//!
//! The frames written are exactly those the connection's Wireshark filter selects
//! ([`forensics::filter::Selection`]: both directions, ICMP errors quoting it, its fragments when
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
//! `--overwrite` ([`forensics::evidence::check_outputs`]).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use flowtable::packet::{parse, LinkType};
use flowtable::record::Record;
use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};
use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{create_reader, PcapBlockOwned, PcapError};
use serde_json::json;

use crate::source::pcap::ng_ts_ns;
use forensics::filter::Selection;
use forensics::logs::RecordRef;

/// Jitter tolerated in a time-ordered capture, and how far past the window reading goes
/// before it stops: 1 s.
pub const ORDER_SLACK_NS: u64 = 1_000_000_000;

const BUFFER_BYTES: usize = 1 << 22;

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
    /// Where and why the capture is damaged; reading stopped there.
    pub damage: Option<String>,
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
    let mut damaged = forensics::exit::Damaged::default();
    let rec = args.record.load(|d| damaged.log(d))?;
    let mut read = args.pcaps.clone();
    read.push(args.record.log.clone());
    forensics::evidence::check_outputs(
        "extract",
        &[&args.output],
        &forensics::evidence::Inputs::of_paths(&read),
        args.overwrite,
    )?;
    let format = output_format(&args.pcaps)?;
    let sel = Selection::of(&rec);
    let file = forensics::evidence::create_output(&args.output)?;
    let mut out = Output::new(BufWriter::new(file), format)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let mut reports = Vec::new();
    for path in &args.pcaps {
        let report = copy_capture(path, &sel, !args.read_all, &mut out)?;
        if let Some(d) = &report.damage {
            damaged.report(&format!("capture {}", path.display()), d);
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
    forensics::logs::print_and_exit(&summary, &damaged)
}

/// Why `path` cannot be read as a capture at all.
fn not_a_capture<I>(path: &Path, e: &PcapError<I>) -> anyhow::Error {
    let head = std::fs::File::open(path).and_then(|mut f| {
        let mut head = [0u8; 8];
        std::io::Read::read(&mut f, &mut head).map(|n| head[..n].to_vec())
    });
    if head.is_ok_and(|h| forensics::evidence::is_log_head(&h)) {
        return anyhow::anyhow!(
            "{}: not a pcap or pcapng file (it is a conntrail log: give it as LOG:ID, and the \
             captures it was made from to --pcap)",
            path.display()
        );
    }
    anyhow::anyhow!(
        "{}: not a pcap or pcapng file ({})",
        path.display(),
        capture_problem(e)
    )
}

/// A reading error of the capture parser in words.
fn capture_problem<I>(e: &PcapError<I>) -> String {
    match e {
        PcapError::HeaderNotRecognized => {
            "its first bytes are neither a pcap nor a pcapng header".into()
        }
        PcapError::Eof | PcapError::UnexpectedEof | PcapError::Incomplete(_) => {
            "it ends inside a block".into()
        }
        PcapError::ReadError => "reading it failed".into(),
        PcapError::BufferTooSmall => "a block is larger than the read buffer".into(),
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("a block does not parse ({})", kind.description())
        }
    }
}

/// Looks at the first block of every capture: pcap out when all are legacy pcap of one
/// link type.
pub fn output_format(pcaps: &[PathBuf]) -> Result<OutputFormat> {
    let mut legacy: Option<(u32, bool, u32)> = None;
    for (i, path) in pcaps.iter().enumerate() {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut reader = create_reader(1 << 16, file).map_err(|e| not_a_capture(path, &e))?;
        let first = match reader.next() {
            Ok((_, PcapBlockOwned::LegacyHeader(h))) => {
                Some((h.network.0 as u32, h.is_nanosecond_precision(), h.snaplen))
            }
            Ok(_) => None,
            Err(e) => return Err(not_a_capture(path, &e)),
        };
        match (first, legacy) {
            (Some(h), None) if i == 0 => legacy = Some(h),
            (Some((link, nanos, snaplen)), Some((l, n, s))) if link == l => {
                legacy = Some((l, n || nanos, s.max(snaplen)));
            }
            _ => return Ok(OutputFormat::PcapNg),
        }
    }
    Ok(match legacy {
        Some((linktype, nanos, snaplen)) => OutputFormat::Pcap {
            linktype,
            nanos,
            snaplen,
        },
        None => OutputFormat::PcapNg,
    })
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
    link: Option<LinkType>,
    linktype: u32,
    snaplen: u32,
    /// Raw `if_tsresol` byte (6: microseconds).
    tsresol: u8,
    resolution: u64,
    offset_s: i64,
    name: Option<String>,
    /// Its id in the output, once a frame of it was written.
    out_id: Option<u32>,
}

/// The capture being written.
enum Output<W: Write> {
    Pcap {
        writer: PcapWriter<W>,
        nanos: bool,
    },
    PcapNg {
        writer: PcapNgWriter<W>,
        interfaces: u32,
    },
}

/// A frame to write, with its timestamp as the input stored it.
struct OutFrame<'a> {
    /// Legacy pcap: seconds and the fraction in `nanos`' unit.
    legacy: Option<(u32, u32, bool)>,
    /// pcapng: raw timestamp units of its interface.
    units: u64,
    orig_len: u32,
    data: &'a [u8],
}

impl<W: Write> Output<W> {
    fn new(w: W, format: OutputFormat) -> Result<Output<W>> {
        Ok(match format {
            OutputFormat::Pcap {
                linktype,
                nanos,
                snaplen,
            } => {
                let header = PcapHeader {
                    version_major: 2,
                    version_minor: 4,
                    ts_correction: 0,
                    ts_accuracy: 0,
                    snaplen,
                    datalink: DataLink::from(linktype),
                    ts_resolution: if nanos {
                        TsResolution::NanoSecond
                    } else {
                        TsResolution::MicroSecond
                    },
                    endianness: Endianness::native(),
                };
                Output::Pcap {
                    writer: PcapWriter::with_header(w, header)?,
                    nanos,
                }
            }
            OutputFormat::PcapNg => Output::PcapNg {
                writer: PcapNgWriter::new(w)?,
                interfaces: 0,
            },
        })
    }

    fn write(&mut self, iface: &mut Interface, frame: &OutFrame<'_>) -> Result<()> {
        match self {
            Output::Pcap { writer, nanos } => {
                let (ts_sec, frac, frac_nanos) = frame.legacy.unwrap_or_default();
                let ts_frac = if *nanos && !frac_nanos {
                    frac.saturating_mul(1000)
                } else {
                    frac
                };
                writer.write_raw_packet(&RawPcapPacket {
                    ts_sec,
                    ts_frac,
                    incl_len: frame.data.len() as u32,
                    orig_len: frame.orig_len,
                    data: Cow::Borrowed(frame.data),
                })?;
            }
            Output::PcapNg { writer, interfaces } => {
                let out_id = match iface.out_id {
                    Some(id) => id,
                    None => {
                        let mut options = Vec::new();
                        if let Some(name) = &iface.name {
                            options
                                .push(InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())));
                        }
                        if iface.tsresol != 6 {
                            options.push(InterfaceDescriptionOption::IfTsResol(iface.tsresol));
                        }
                        if iface.offset_s != 0 {
                            options.push(InterfaceDescriptionOption::IfTsOffset(
                                iface.offset_s as u64,
                            ));
                        }
                        writer.write_pcapng_block(InterfaceDescriptionBlock {
                            linktype: DataLink::from(iface.linktype),
                            snaplen: iface.snaplen,
                            options,
                        })?;
                        let id = *interfaces;
                        *interfaces += 1;
                        iface.out_id = Some(id);
                        id
                    }
                };
                // pcap-file 2 writes `timestamp.as_nanos()` verbatim as the block's timestamp
                // units, whatever the interface's resolution: hand it the raw units, which the
                // copied `if_tsresol` then interprets as the input did.
                writer.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: out_id,
                    timestamp: Duration::from_nanos(frame.units),
                    original_len: frame.orig_len,
                    data: Cow::Borrowed(frame.data),
                    options: Vec::new(),
                })?;
            }
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Output::Pcap { writer, .. } => writer.into_writer().flush(),
            Output::PcapNg { writer, .. } => writer.into_inner().flush(),
        }
    }
}

/// Copies the selected frames of one capture.
fn copy_capture<W: Write>(
    path: &Path,
    sel: &Selection,
    early_stop: bool,
    out: &mut Output<W>,
) -> Result<CaptureReport> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut report = CaptureReport {
        path: path.to_path_buf(),
        bytes_total: file.metadata().map(|m| m.len()).unwrap_or(0),
        ..CaptureReport::default()
    };
    let mut reader = create_reader(BUFFER_BYTES, file).map_err(|e| not_a_capture(path, &e))?;
    let mut legacy: Option<(Interface, bool)> = None;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut latest_ns = 0u64;
    let mut ordered = true;
    loop {
        let (offset, block) = match reader.next() {
            Ok(next) => next,
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if let Err(e) = reader.refill() {
                    report.damage = Some(format!(
                        "at byte {}: {}",
                        report.bytes_read,
                        capture_problem(&e)
                    ));
                    break;
                }
                continue;
            }
            Err(PcapError::UnexpectedEof) => {
                report.damage = Some(format!(
                    "at byte {}: the last block is cut short",
                    report.bytes_read
                ));
                break;
            }
            Err(e) => {
                report.damage = Some(format!(
                    "at byte {}: {}",
                    report.bytes_read,
                    capture_problem(&e)
                ));
                break;
            }
        };
        // The frame, its interface and its time, when the block is a frame.
        let mut seen: Option<(u64, OutFrame<'_>, &mut Interface)> = None;
        match &block {
            PcapBlockOwned::LegacyHeader(h) => {
                let nanos = h.is_nanosecond_precision();
                legacy = Some((
                    Interface {
                        link: LinkType::from_linktype(h.network.0),
                        linktype: h.network.0 as u32,
                        snaplen: h.snaplen,
                        tsresol: if nanos { 9 } else { 6 },
                        resolution: if nanos { 1_000_000_000 } else { 1_000_000 },
                        offset_s: 0,
                        name: None,
                        out_id: None,
                    },
                    nanos,
                ));
            }
            PcapBlockOwned::Legacy(b) => {
                report.frames_read += 1;
                if let Some((iface, nanos)) = legacy.as_mut() {
                    let frac_ns = if *nanos {
                        u64::from(b.ts_usec)
                    } else {
                        u64::from(b.ts_usec) * 1000
                    };
                    let ts = u64::from(b.ts_sec) * 1_000_000_000 + frac_ns;
                    let units = u64::from(b.ts_sec) * iface.resolution + u64::from(b.ts_usec);
                    let frame = OutFrame {
                        legacy: Some((b.ts_sec, b.ts_usec, *nanos)),
                        units,
                        orig_len: b.origlen,
                        data: b.data.get(..b.caplen as usize).unwrap_or(b.data),
                    };
                    seen = Some((ts, frame, iface));
                }
            }
            PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                // A new section: new interfaces, whose output ids are new too.
                interfaces.clear();
            }
            PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                interfaces.push(Interface {
                    link: LinkType::from_linktype(idb.linktype.0),
                    linktype: idb.linktype.0 as u32,
                    snaplen: idb.snaplen,
                    tsresol: idb.if_tsresol,
                    resolution: idb.ts_resolution().unwrap_or(1_000_000),
                    offset_s: idb.ts_offset(),
                    name: idb.if_name().and_then(|n| n.ok()).map(str::to_string),
                    out_id: None,
                });
            }
            PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                report.frames_read += 1;
                if let Some(iface) = interfaces.get_mut(epb.if_id as usize) {
                    let ts = ng_ts_ns(epb.ts_high, epb.ts_low, iface.resolution, iface.offset_s);
                    let frame = OutFrame {
                        legacy: None,
                        units: u64::from(epb.ts_high) << 32 | u64::from(epb.ts_low),
                        orig_len: epb.origlen,
                        data: epb.packet_data(),
                    };
                    seen = Some((ts, frame, iface));
                } else {
                    report.skipped += 1;
                }
            }
            PcapBlockOwned::NG(Block::SimplePacket(_)) => {
                report.frames_read += 1;
                report.skipped += 1;
            }
            PcapBlockOwned::NG(_) => {}
        }
        let mut stop = false;
        if let Some((ts, frame, iface)) = seen {
            if ts.saturating_add(ORDER_SLACK_NS) < latest_ns {
                ordered = false;
            }
            latest_ns = latest_ns.max(ts);
            if ts >= sel.from_ns && ts <= sel.to_ns {
                match iface.link {
                    Some(link) => {
                        if parse(link, frame.data).is_ok_and(|pkt| sel.matches(ts, &pkt)) {
                            out.write(iface, &frame)?;
                            report.written += 1;
                        }
                    }
                    None => report.skipped += 1,
                }
            }
            stop = early_stop && ordered && ts > sel.to_ns.saturating_add(ORDER_SLACK_NS);
        }
        reader.consume(offset);
        report.bytes_read += offset as u64;
        if stop {
            report.stopped_early = true;
            break;
        }
    }
    Ok(report)
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
        forensics::units::endpoint_text(rec.client.ip, rec.client.port),
        forensics::units::endpoint_text(rec.server.ip, rec.server.port)
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
        } else if r.damage.is_some() {
            format!(
                "read {} of {} bytes ({} frames) up to the damage",
                r.bytes_read, r.bytes_total, r.frames_read
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
