//! `conntrail query`: the records of one or more logs that satisfy an expression (the
//! language of [`crate::expr`]), as a one-line-per-session table, JSON Lines (`--json`,
//! `--ecs`), or a table of counts (`--count-by`).
//!
//! Records come in log order (the order their connections closed), each log after the one
//! before. Streaming: one record in memory at a time (plus, for the table, the first
//! [`SIZING_ROWS`] lines held back to size its columns; for `--count-by`, one counter per
//! distinct value), so a log of millions of records costs no more memory than a small one.
//! Damaged places of a log are reported on stderr (file and byte offset), skipped, and make
//! the exit status 1.
//!
//! ```text
//! conntrail query a.log b.log reason=tcp-rst-server and port 443
//! conntrail query a.log --where 'latency.syn_synack>100ms' --json
//! conntrail query a.log --count-by server 'state=REJ,S0'
//! conntrail query --nats nats://10.0.0.1:4222 --host box1 reason=tcp-rst-server
//! ```
//!
//! With `--nats` the records come from the NATS JetStream stream the appliances export to
//! (see [`crate::stream`]), in stream order, narrowed by `--host` and `--context`; a record's
//! `LOG:ID` is then `HOST:LOG:ID`, and the JSON forms add the host.

use std::ffi::OsString;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use flowtable::record::{Addr, CloseReason, ConnState, Flags, Proto, Record};
use hashbrown::HashMap;
use serde_json::{json, Value};

use crate::exit::Damaged;
use crate::expr::{Expr, ExprErrorKind};
use crate::logs::Records;
use crate::units::{duration_text, endpoint_text, utc_text};

/// Lines of the table held back to size its columns; later lines keep those widths (a wider
/// cell pushes the rest of its line to the right).
pub const SIZING_ROWS: usize = 100;

/// Arguments of `conntrail query`.
#[derive(clap::Args, Debug)]
#[command(override_usage = "conntrail query [OPTIONS] LOG... [EXPR...]\n       \
    conntrail query --nats URL [--host H] [--context C] [OPTIONS] [EXPR...]")]
#[command(after_help = "EXPR examples:\n  \
    reason=tcp-rst-server and port 443\n  \
    state=REJ,S0 and server net 10.0.0.0/8\n  \
    latency.syn_synack>100ms or latency.ttfb>1s\n  \
    s2c.retrans>=3 and time>=2024-05-01T09:00:00Z and time<2024-05-01T10:00:00Z\n  \
    point tls-alert or (udp and not host 192.0.2.53)\n\
    Quote words the shell would take (< > ! ( )). The language: README, section `query`.")]
pub struct QueryArgs {
    /// Logs (the leading arguments that are existing files; each is read with its rotated
    /// segments), then the expression, its words joined with spaces. Without an expression
    /// every record is selected.
    #[arg(required_unless_present = "nats", value_name = "LOG|EXPR")]
    pub args: Vec<OsString>,
    /// The expression; every positional argument is then a log.
    #[arg(short = 'e', long = "where", value_name = "EXPR")]
    pub expr: Option<String>,
    /// JSON Lines: the `show --json` object of each record, plus `"log"`.
    #[arg(long)]
    pub json: bool,
    /// JSON Lines with Elastic Common Schema field names (the log in `log.file.path`; not
    /// with `--json`).
    #[arg(long, conflicts_with_all = ["count_by", "json"])]
    pub ecs: bool,
    /// Instead of the records, how many records have each value of this field, most
    /// frequent first, with the total (`port` is the server's port).
    #[arg(long, value_enum, value_name = "FIELD")]
    pub count_by: Option<CountBy>,
    /// Print only the first N records (in the order of `--sort`).
    #[arg(long, value_name = "N", conflicts_with = "count_by")]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub order: crate::order::OrderArgs,
    /// Records from NATS JetStream instead of logs (every positional argument is then part
    /// of the expression).
    #[command(flatten)]
    pub fleet: crate::stream::FleetArgs,
}

/// The field of `--count-by`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountBy {
    /// Close reason.
    Reason,
    /// The whole set of flags of a record (`error,all`).
    Flags,
    /// Zeek conn_state (`none` for UDP/ICMP).
    State,
    /// tcp, udp or icmp.
    Proto,
    /// Client address.
    Client,
    /// Server address.
    Server,
    /// Server port.
    Port,
}

impl CountBy {
    fn name(self) -> &'static str {
        match self {
            CountBy::Reason => "reason",
            CountBy::Flags => "flags",
            CountBy::State => "state",
            CountBy::Proto => "proto",
            CountBy::Client => "client",
            CountBy::Server => "server",
            CountBy::Port => "port",
        }
    }

    fn key(self, rec: &Record<'_>) -> Key {
        match self {
            CountBy::Reason => Key::Reason(rec.close_reason),
            CountBy::Flags => Key::Flags(rec.flags),
            CountBy::State => Key::State(rec.conn_state),
            CountBy::Proto => Key::Proto(rec.proto),
            CountBy::Client => Key::Addr(rec.client.ip),
            CountBy::Server => Key::Addr(rec.server.ip),
            CountBy::Port => Key::Port(rec.server.port),
        }
    }
}

/// One value counted by `--count-by`: plain data, so counting allocates only for a value
/// not seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Reason(CloseReason),
    Flags(Flags),
    State(ConnState),
    Proto(Proto),
    Addr(Addr),
    Port(u16),
}

impl Key {
    /// The value as the expression language writes it.
    fn text(self) -> String {
        match self {
            Key::Reason(r) => r.as_str().to_string(),
            Key::Flags(f) if f.is_empty() => "-".to_string(),
            Key::Flags(f) => f.names().collect::<Vec<_>>().join(","),
            Key::State(s) => s.as_str().to_string(),
            Key::Proto(p) => p.as_str().to_string(),
            Key::Addr(a) => a.to_string(),
            Key::Port(p) => p.to_string(),
        }
    }
}

pub fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let (logs, text) = if args.fleet.stream.nats.is_some() {
        (Vec::new(), expression(&args.args, args.expr.as_ref())?)
    } else {
        split_args(&args)?
    };
    let expr = match &text {
        Some(t) => Some(parse_expr(t, args.expr.is_none())?),
        None => None,
    };
    let output = match args.count_by {
        Some(by) => Output::Count(by, HashMap::new()),
        None if args.ecs => Output::Json { ecs: true },
        None if args.json => Output::Json { ecs: false },
        None => Output::Table(Table::default()),
    };
    let mut query = Query {
        expr,
        limit: args.limit.unwrap_or(u64::MAX),
        json_counts: args.json,
        order: args.order,
        held: Vec::new(),
        output,
        selected: 0,
        damaged: Damaged::default(),
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let done = match args.fleet.stream.nats {
        Some(_) => query.run_fleet(&args.fleet, &mut out),
        None => query.run(&logs, &mut out),
    };
    match done {
        Ok(()) => {}
        Err(e) if is_broken_pipe(&e) => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e),
    }
    Ok(query.damaged.status())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// The logs (leading existing files) and the expression (the rest, or `--where`).
fn split_args(args: &QueryArgs) -> anyhow::Result<(Vec<PathBuf>, Option<String>)> {
    let n_logs = args
        .args
        .iter()
        .take_while(|a| recorder::reader::log_exists(Path::new(a)))
        .count();
    let (logs, rest) = args.args.split_at(n_logs);
    let logs: Vec<PathBuf> = logs.iter().map(PathBuf::from).collect();
    if logs.is_empty() {
        let first = args.args.first().map(|a| a.to_string_lossy());
        bail!(
            "no log given: `{}` is not an existing file",
            first.unwrap_or_default()
        );
    }
    if let (Some(_), Some(extra)) = (&args.expr, rest.first()) {
        bail!(
            "`{}` is not an existing file (with --where, every other argument is a log)",
            extra.to_string_lossy()
        );
    }
    Ok((logs, expression(rest, args.expr.as_ref())?))
}

/// The expression: `--where`, else the words joined with spaces; `None` if neither.
fn expression(words: &[OsString], where_: Option<&String>) -> anyhow::Result<Option<String>> {
    if let Some(e) = where_ {
        if let Some(extra) = words.first() {
            bail!(
                "`{}`: with --where there is no expression word",
                extra.to_string_lossy()
            );
        }
        return Ok(Some(e.clone()));
    }
    if words.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = words
        .iter()
        .map(|w| {
            w.to_str()
                .with_context(|| format!("the expression word {w:?} is not UTF-8"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(words.join(" ")))
}

/// Parses the expression; an error shows it with a caret under the offending column.
fn parse_expr(text: &str, from_positionals: bool) -> anyhow::Result<Expr> {
    let e = match Expr::parse(text) {
        Ok(e) => return Ok(e),
        Err(e) => e,
    };
    let mut message = format!(
        "bad expression: {e}\n  {text}\n  {}^",
        " ".repeat(e.column.saturating_sub(1))
    );
    if let ExprErrorKind::UnknownWord { word, .. } = &e.kind {
        if from_positionals && e.column == 1 && (word.contains('/') || word.contains(".log")) {
            message.push_str(&format!(
                "\n  (`{word}` is not an existing file, so it was read as the start of the expression)"
            ));
        }
    }
    bail!(message)
}

/// What is done with the selected records.
enum Output {
    Table(Table),
    Json { ecs: bool },
    Count(CountBy, HashMap<Key, u64>),
}

struct Query {
    /// `None`: every record.
    expr: Option<Expr>,
    limit: u64,
    /// `--count-by` with `--json`.
    json_counts: bool,
    order: crate::order::OrderArgs,
    /// The selected records, with their host and log, until they are sorted (not with
    /// `--count-by` nor `--sort log`).
    held: Vec<(Record<'static>, Option<String>, String)>,
    output: Output,
    selected: u64,
    damaged: Damaged,
}

impl Query {
    fn run(&mut self, logs: &[PathBuf], out: &mut impl Write) -> anyhow::Result<()> {
        'logs: for log in logs {
            if self.selected >= self.limit {
                break;
            }
            let log_text = log.display().to_string();
            for item in Records::open(std::slice::from_ref(log))? {
                let rec = match item {
                    Ok(rec) => rec,
                    Err(damage) => {
                        self.damaged.log(damage);
                        continue;
                    }
                };
                if !self.offer(&rec, None, &log_text, out)? {
                    break 'logs;
                }
            }
        }
        self.finish(out)?;
        out.flush()?;
        Ok(())
    }

    /// The same over the records of a NATS JetStream stream.
    fn run_fleet(
        &mut self,
        args: &crate::stream::FleetArgs,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        for item in crate::stream::fleet_records(args)? {
            let rec = match item {
                Ok(rec) => rec,
                Err(damage) => {
                    self.damaged.report("stream message", damage);
                    continue;
                }
            };
            if !self.offer(&rec.record, Some(&rec.host), &rec.log, out)? {
                break;
            }
        }
        self.finish(out)?;
        out.flush()?;
        Ok(())
    }

    /// Emits `rec` if it matches; false once the limit is reached.
    fn offer(
        &mut self,
        rec: &Record<'_>,
        host: Option<&str>,
        log: &str,
        out: &mut impl Write,
    ) -> io::Result<bool> {
        if !self.expr.as_ref().is_none_or(|e| e.matches(rec)) {
            return Ok(true);
        }
        if self.sorts() {
            self.held.push((
                rec.clone().into_owned(),
                host.map(str::to_string),
                log.into(),
            ));
            return Ok(true);
        }
        self.selected += 1;
        self.emit(rec, host, log, out)?;
        Ok(self.selected < self.limit)
    }

    /// Whether the selected records are held to be sorted before they are printed.
    fn sorts(&self) -> bool {
        !matches!(self.output, Output::Count(..)) && !self.order.streams()
    }

    fn emit(
        &mut self,
        rec: &Record<'_>,
        host: Option<&str>,
        log: &str,
        out: &mut impl Write,
    ) -> io::Result<()> {
        match &mut self.output {
            Output::Table(t) => match host {
                Some(host) => t.row(out, cells(rec, &format!("{host}:{log}"))),
                None => t.row(out, cells(rec, log)),
            },
            Output::Json { ecs: false } => {
                let mut doc = crate::show::to_json(rec);
                doc["log"] = json!(log);
                if let Some(host) = host {
                    doc["host"] = json!(host);
                }
                write_json_line(out, &doc)
            }
            Output::Json { ecs: true } => {
                let mut doc = crate::ecs::to_ecs(rec);
                doc["log"]["file"]["path"] = json!(log);
                if let Some(host) = host {
                    doc["host"]["name"] = json!(host);
                }
                write_json_line(out, &doc)
            }
            Output::Count(by, counts) => {
                *counts.entry(by.key(rec)).or_insert(0) += 1;
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        let mut held = std::mem::take(&mut self.held);
        self.order.sort(&mut held, |(rec, _, _)| rec);
        for (rec, host, log) in held
            .iter()
            .take(usize::try_from(self.limit).unwrap_or(usize::MAX))
        {
            self.selected += 1;
            self.emit(rec, host.as_deref(), log, out)?;
        }
        match &mut self.output {
            Output::Table(t) => t.flush(out),
            Output::Json { .. } => Ok(()),
            Output::Count(by, counts) => {
                let mut rows: Vec<(String, u64)> =
                    counts.iter().map(|(k, n)| (k.text(), *n)).collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                if self.json_counts {
                    write_counts_json(out, *by, &rows, self.selected)
                } else {
                    write_counts(out, *by, &rows, self.selected)
                }
            }
        }
    }
}

/// One JSON document and a newline, serialized straight into `out` (several times faster
/// than through `Display`).
fn write_json_line(out: &mut impl Write, doc: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, doc)?;
    out.write_all(b"\n")
}

/// `{"count_by": "reason", "total": N, "counts": [{"reason": "...", "count": n}, ...]}`.
fn write_counts_json(
    out: &mut impl Write,
    by: CountBy,
    rows: &[(String, u64)],
    total: u64,
) -> io::Result<()> {
    let counts: Vec<Value> = rows
        .iter()
        .map(|(v, n)| json!({ by.name(): v, "count": n }))
        .collect();
    let doc = json!({"count_by": by.name(), "total": total, "counts": counts});
    write_json_line(out, &doc)
}

/// A right-aligned count, the share of the total, the value; then the total.
fn write_counts(
    out: &mut impl Write,
    by: CountBy,
    rows: &[(String, u64)],
    total: u64,
) -> io::Result<()> {
    let width = total.to_string().len().max("COUNT".len());
    writeln!(
        out,
        "{:>width$}  {:>6}  {}",
        "COUNT",
        "SHARE",
        by.name().to_ascii_uppercase()
    )?;
    for (value, n) in rows {
        let share = *n as f64 * 100.0 / total.max(1) as f64;
        writeln!(out, "{n:>width$}  {share:>5.1}%  {value}")?;
    }
    writeln!(out, "{total:>width$}  {:>5.1}%  total", 100.0)
}

const COLUMNS: usize = 9;
const HEADER: [&str; COLUMNS] = [
    "START (UTC)",
    "DURATION",
    "PROTO",
    "CLIENT",
    "SERVER",
    "REASON",
    "STATE",
    "FLAGS",
    "RECORD",
];
/// Which columns are right-aligned (numbers).
const RIGHT: [bool; COLUMNS] = [false, true, false, false, false, false, false, false, false];

/// The cells of a record's line: start (UTC, to the microsecond), duration, proto, client,
/// server, close reason, conn_state, flags, and `LOG:ID` for `show`, `diff`, `filter`.
fn cells(rec: &Record<'_>, log: &str) -> [String; COLUMNS] {
    let start = utc_text(rec.start_ns);
    // `YYYY-MM-DD HH:MM:SS.uuuuuu` of `YYYY-MM-DD HH:MM:SS.nnnnnnnnn UTC`.
    let start = start.get(..26).unwrap_or(&start).to_string();
    let flags: Vec<&str> = rec.flags.names().collect();
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    [
        start,
        duration_text(rec.duration_ns()),
        rec.proto.as_str().to_string(),
        endpoint_text(rec.client.ip, rec.client.port),
        endpoint_text(rec.server.ip, rec.server.port),
        rec.close_reason.as_str().to_string(),
        dash(rec.conn_state.as_str().to_string()),
        dash(flags.join(",")),
        format!("{log}:{}", rec.id),
    ]
}

/// The one-line-per-session table: the first [`SIZING_ROWS`] lines are held back to size
/// the columns, then lines are written as they come.
struct Table {
    widths: [usize; COLUMNS],
    held: Vec<[String; COLUMNS]>,
    started: bool,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            widths: HEADER.map(str::len),
            held: Vec::new(),
            started: false,
        }
    }
}

impl Table {
    fn row(&mut self, out: &mut impl Write, cells: [String; COLUMNS]) -> io::Result<()> {
        if self.started {
            return write_line(out, &self.widths, &cells);
        }
        for (w, c) in self.widths.iter_mut().zip(&cells) {
            *w = (*w).max(c.chars().count());
        }
        self.held.push(cells);
        if self.held.len() >= SIZING_ROWS {
            self.flush(out)?;
        }
        Ok(())
    }

    /// Writes the header and the held lines (once).
    fn flush(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        write_line(out, &self.widths, &HEADER)?;
        for cells in std::mem::take(&mut self.held) {
            write_line(out, &self.widths, &cells)?;
        }
        Ok(())
    }
}

fn write_line<S: AsRef<str>>(
    out: &mut impl Write,
    widths: &[usize; COLUMNS],
    cells: &[S; COLUMNS],
) -> io::Result<()> {
    // Padding from a slice of spaces: much cheaper than `{:<w$}`, which pads a character at
    // a time.
    const SPACES: &[u8] = &[b' '; 64];
    let pad = |out: &mut dyn Write, n: usize| -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            let k = left.min(SPACES.len());
            out.write_all(&SPACES[..k])?;
            left -= k;
        }
        Ok(())
    };
    for (i, cell) in cells.iter().enumerate() {
        let cell = cell.as_ref();
        let fill = widths[i].saturating_sub(cell.chars().count());
        if RIGHT[i] {
            pad(out, fill)?;
        }
        out.write_all(cell.as_bytes())?;
        if i + 1 == COLUMNS {
            out.write_all(b"\n")?;
        } else {
            if !RIGHT[i] {
                pad(out, fill)?;
            }
            out.write_all(b"  ")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_sized_by_the_held_rows() {
        let mut t = Table::default();
        let mut out = Vec::new();
        let row = |client: &str| {
            let mut c: [String; COLUMNS] = HEADER.map(|h| h.to_lowercase());
            c[3] = client.to_string();
            c
        };
        t.row(&mut out, row("[2001:db8::1]:443")).expect("row");
        t.row(&mut out, row("10.0.0.1:1")).expect("row");
        assert!(out.is_empty(), "rows are held until the flush");
        t.flush(&mut out).expect("flush");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let at = |l: &str| l.find("server").expect("server column");
        assert_eq!(at(lines[1]), at(lines[2]), "{text}");
        assert_eq!(lines[0].find("SERVER"), Some(at(lines[1])), "{text}");
    }

    #[test]
    fn count_table_has_shares_and_a_total() {
        let mut out = Vec::new();
        let rows = vec![
            ("tcp-rst-server".to_string(), 3),
            ("shutdown".to_string(), 1),
        ];
        write_counts(&mut out, CountBy::Reason, &rows, 4).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "COUNT   SHARE  REASON\n    3   75.0%  tcp-rst-server\n    1   25.0%  shutdown\n    4  100.0%  total\n"
        );
    }
}
