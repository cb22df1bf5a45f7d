//! `conntrail show`: the log decoded as human text (one block per record: the facts, why
//! the record was kept in plain words, and a two-lane timeline of its tracking points), as a
//! self-contained HTML page (`--html`), or as JSON Lines.
//!
//! The JSON form is a contract other tools rely on (see README): field names and units do
//! not change without a format version bump.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flowtable::record::{icmp_type_name, ConnState, DirStats, Endpoint, Record};
use serde_json::{json, Value};

use crate::exit::Damaged;
use crate::html::HtmlPage;
use crate::timeline::{self, Paint};
use crate::units::{dir_text, duration_text, endpoint_text, icmp_text, latency_text, utc_text};

/// When the text output is coloured.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// When stdout is a terminal and `NO_COLOR` is not set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour, given whether stdout is a terminal and the value of `NO_COLOR`.
    pub fn resolve(self, terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }
}

/// Arguments of `conntrail show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The log (its rotated segments are read too), or one record of it as LOG:ID (the
    /// form `query` prints).
    #[arg(value_name = "LOG|LOG:ID")]
    pub log: PathBuf,
    /// Only these records.
    pub ids: Vec<u64>,
    /// JSON Lines, one object per record.
    #[arg(long)]
    pub json: bool,
    /// JSON with Elastic Common Schema field names (not with `--json`).
    #[arg(long, conflicts_with = "json")]
    pub ecs: bool,
    /// Colour warn (yellow) and error (red) points of the text timeline.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Write a self-contained HTML page (inline SVG timelines, no scripts, nothing fetched)
    /// to this file instead of text.
    #[arg(long, value_name = "OUT.html", conflicts_with_all = ["json", "ecs"])]
    pub html: Option<PathBuf>,
    /// Replace OUT.html if it exists (never the log).
    #[arg(long, requires = "html")]
    pub overwrite: bool,
    #[command(flatten)]
    pub order: crate::order::OrderArgs,
    /// The log's records from NATS JetStream (the log named HOST:LOG).
    #[command(flatten)]
    pub nats: crate::stream::StreamArgs,
}

/// What `show` reads: the log, and the ids asked for (none: every record).
struct Selection {
    log: PathBuf,
    ids: Vec<u64>,
}

impl Selection {
    /// `LOG [ID...]`, or `LOG:ID [ID...]` when LOG:ID is not itself the name of a file.
    fn of(args: &ShowArgs) -> Selection {
        let mut ids = args.ids.clone();
        let log = match crate::logs::split_record_ref(&args.log) {
            Some((log, id)) => {
                ids.insert(0, id);
                log
            }
            None => args.log.clone(),
        };
        Selection { log, ids }
    }

    fn wants(&self, rec: &Record<'_>) -> bool {
        self.ids.is_empty() || self.ids.contains(&rec.id)
    }

    /// The records of the log, from the file or from the stream with `--nats`.
    fn open(&self, args: &ShowArgs) -> anyhow::Result<Box<dyn Iterator<Item = crate::logs::Item>>> {
        Ok(match args.nats.nats {
            Some(_) => Box::new(crate::stream::log_records(&args.nats, &self.log)?),
            None => Box::new(crate::logs::Records::open(std::slice::from_ref(&self.log))?),
        })
    }

    /// Reads the selected records and gives them to `emit` in the order asked for, and the
    /// damaged places as they are met (`Err`). Ids asked for and not found are returned.
    fn each(
        &self,
        args: &ShowArgs,
        mut emit: impl FnMut(Result<&Record<'_>, &str>) -> io::Result<()>,
    ) -> anyhow::Result<Vec<u64>> {
        let mut found = Vec::new();
        let mut held = Vec::new();
        for item in self.open(args)? {
            match item {
                Ok(rec) if self.wants(&rec) => {
                    found.push(rec.id);
                    if args.order.streams() {
                        emit(Ok(&rec))?;
                    } else {
                        held.push(rec);
                    }
                }
                Ok(_) => {}
                Err(d) => emit(Err(&d))?,
            }
        }
        args.order.sort(&mut held, |r| r);
        for rec in &held {
            emit(Ok(rec))?;
        }
        Ok(self
            .ids
            .iter()
            .copied()
            .filter(|id| !found.contains(id))
            .collect())
    }
}

/// The exit status of a `show` that printed what it found: 2 when an id asked for is not in
/// the log (said on stderr), 1 when damage was reported, else 0.
fn status(log: &std::path::Path, missing: &[u64], damaged: &Damaged) -> ExitCode {
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(u64::to_string).collect();
        eprintln!(
            "conntrail: {}: no record with id {}",
            log.display(),
            ids.join(", ")
        );
        return ExitCode::from(crate::exit::USAGE);
    }
    damaged.status()
}

pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let sel = Selection::of(&args);
    if let Some(page) = &args.html {
        return run_html(&args, &sel, page);
    }
    let json = args.json || args.ecs;
    let stdout = io::stdout();
    let paint = Paint {
        color: args.color.resolve(
            stdout.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ),
    };
    let mut out = BufWriter::new(stdout.lock());
    let mut damaged = Damaged::default();
    let shown = sel.each(&args, |item| match item {
        Ok(rec) if json => {
            let doc = if args.ecs {
                crate::ecs::to_ecs(rec)
            } else {
                to_json(rec)
            };
            writeln!(out, "{doc}")
        }
        Ok(rec) => write_text_painted(&mut out, rec, paint),
        Err(damage) => {
            damaged.log(damage);
            Ok(())
        }
    });
    let missing = match shown {
        Ok(missing) => missing,
        Err(e) if is_broken_pipe(&e) => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e),
    };
    if let Err(e) = out.flush() {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(status(&sel.log, &missing, &damaged))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// `show --html OUT`: the selected records as one page.
fn run_html(args: &ShowArgs, sel: &Selection, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let inputs = crate::evidence::Inputs::of_paths(std::slice::from_ref(&sel.log));
    crate::evidence::check_outputs("show", &[path], &inputs, args.overwrite)?;
    let file = crate::evidence::create_output(path)?;
    let mut page = HtmlPage::start(BufWriter::new(file), &sel.log.display().to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    let (mut shown, mut damaged) = (0u64, Damaged::default());
    let missing = sel.each(args, |item| match item {
        Ok(rec) => {
            shown += 1;
            page.record(rec)
        }
        Err(damage) => {
            damaged.log(damage);
            page.damage(damage)
        }
    });
    let missing = missing.with_context(|| format!("writing {}", path.display()))?;
    page.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{shown} record{} written to {}",
        if shown == 1 { "" } else { "s" },
        path.display()
    );
    Ok(status(&sel.log, &missing, &damaged))
}

/// One record as the `show --json` object.
pub fn to_json(rec: &Record<'_>) -> Value {
    let ep = |e: &Endpoint| json!({"ip": e.ip.to_string(), "port": e.port});
    let dir = |d: &DirStats| {
        json!({
            "pkts": d.pkts, "bytes": d.bytes, "payload": d.payload, "retrans": d.retrans,
            "out_of_order": d.out_of_order, "dup_ack": d.dup_ack, "zero_window": d.zero_window,
        })
    };
    let points: Vec<Value> = rec
        .points
        .iter()
        .map(|p| {
            json!({
                "t_ns": p.t_ns, "kind": p.kind.as_str(), "dir": p.dir.as_str(),
                "severity": p.severity.as_str(), "arg": p.arg,
            })
        })
        .collect();
    let mut v = json!({
        "id": rec.id,
        "worker": rec.worker,
        "context": rec.context,
        "proto": rec.proto.as_str(),
        "ip_version": rec.ip_version,
        "client": ep(&rec.client),
        "server": ep(&rec.server),
        "midstream": rec.midstream,
        "vlans": rec.vlans.as_ref(),
        "start_ns": rec.start_ns,
        "end_ns": rec.end_ns,
        "duration_ns": rec.duration_ns(),
        "c2s": dir(&rec.c2s),
        "s2c": dir(&rec.s2c),
        "close_reason": rec.close_reason.as_str(),
        "conn_state": rec.conn_state.as_str(),
        "history": rec.history.as_str(),
        "flags": rec.flags.names().collect::<Vec<_>>(),
        "irregular_point": rec.irregular_point,
        "latency_ns": {
            "syn_synack": rec.latency.syn_synack_ns,
            "synack_ack": rec.latency.synack_ack_ns,
            "ttfb": rec.latency.ttfb_ns,
            "max_stall": rec.latency.max_stall_ns,
        },
        "points": points,
        "points_dropped": rec.points_dropped,
    });
    if let (Some((icmp_type, code)), Some(map)) = (rec.icmp(), v.as_object_mut()) {
        map.insert(
            "icmp".to_string(),
            json!({
                "type": icmp_type,
                "code": code,
                "name": icmp_type_name(rec.ip_version == 6, icmp_type),
            }),
        );
    }
    v
}

/// Writes one record as a human-readable block, without colour.
pub fn write_text(out: &mut impl Write, rec: &Record<'_>) -> std::io::Result<()> {
    write_text_painted(out, rec, Paint::default())
}

/// Writes one record as a human-readable block: the header (addresses and close reason,
/// times, state and flags), why it was kept in plain words, the counters and latencies,
/// then the two-lane timeline of its tracking points.
pub fn write_text_painted(
    out: &mut impl Write,
    rec: &Record<'_>,
    paint: Paint,
) -> std::io::Result<()> {
    let title = format!(
        "record {} {} {} -> {}{}: {} ({})",
        rec.id,
        rec.proto.as_str(),
        endpoint_text(rec.client.ip, rec.client.port),
        endpoint_text(rec.server.ip, rec.server.port),
        icmp_text(rec),
        rec.close_reason.in_words(),
        rec.close_reason.as_str()
    );
    writeln!(out, "{}", paint.bold(&title))?;
    writeln!(out, "  why kept: {}", timeline::explain(rec))?;
    let flags: Vec<&str> = rec.flags.names().collect();
    let mut extra = String::new();
    if !rec.vlans.is_empty() {
        let v: Vec<String> = rec.vlans.iter().map(u16::to_string).collect();
        extra.push_str(&format!(", vlan {}", v.join("/")));
    }
    if rec.context != 0 {
        extra.push_str(&format!(", context {}", rec.context));
    }
    if rec.midstream {
        extra.push_str(", picked up mid-stream");
    }
    writeln!(
        out,
        "  start {}, duration {}, worker {}{}",
        utc_text(rec.start_ns),
        duration_text(rec.duration_ns()),
        rec.worker,
        extra
    )?;
    if rec.conn_state == ConnState::None {
        writeln!(out, "  flags {}", flags.join(","))?;
    } else {
        writeln!(
            out,
            "  state {}, history {}, flags {}",
            rec.conn_state.as_str(),
            rec.history.as_str(),
            flags.join(",")
        )?;
    }
    writeln!(out, "  c2s {}", dir_text(rec.proto, &rec.c2s))?;
    writeln!(out, "  s2c {}", dir_text(rec.proto, &rec.s2c))?;
    writeln!(out, "  latency {}", latency_text(rec))?;
    timeline::write_ladder(out, rec, paint)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let empty = std::ffi::OsStr::new("");
        let one = std::ffi::OsStr::new("1");
        assert!(ColorChoice::Auto.resolve(true, None));
        assert!(ColorChoice::Auto.resolve(true, Some(empty)));
        assert!(!ColorChoice::Auto.resolve(true, Some(one)));
        assert!(!ColorChoice::Auto.resolve(false, None));
        assert!(ColorChoice::Always.resolve(false, Some(one)));
        assert!(!ColorChoice::Never.resolve(true, None));
    }
}
