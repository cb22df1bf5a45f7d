//! The engine's side of NATS JetStream (the `fleet` crate does the work): `--export` on
//! `replay` and `run`, `conntrail export` for what an earlier run left pending, and
//! `--nats` for `query` (the whole fleet's records), `show` and `diff` (records named
//! `HOST:LOG` and `HOST:LOG:ID`), which read the stream.
//!
//! The exporter starts before the engine and follows the log from its own thread; the
//! engine never waits for it. When the engine is done, the summary is printed first (the
//! log is complete at that point), then the export gets `[export] drain_timeout_s` to catch
//! up. If it cannot, the exit status is [`EXIT_EXPORT_PENDING`] and the message says how many
//! records are pending and how to ship them later.
//!
//! ```text
//! conntrail replay --record all --export nats://10.0.0.1:4222 --log box.log capture.pcap
//! conntrail export box.log --nats nats://10.0.0.1:4222
//! conntrail query --nats nats://10.0.0.1:4222 --host box1 reason=tcp-rst-server
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use flowtable::config::Config;
use flowtable::record::Record;

/// Exit status when the log is complete but records are still waiting to be exported.
pub const EXIT_EXPORT_PENDING: u8 = crate::exit::EXPORT_PENDING;

/// `--export` of `replay` and `run`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ExportArgs {
    /// Also ship every record to NATS JetStream: server URLs, comma-separated (replaces
    /// `[export] servers` of the config; the other `[export]` keys still apply).
    #[arg(long = "export", value_name = "URL[,URL...]")]
    pub export: Option<String>,
}

/// `conntrail export`.
#[derive(clap::Args, Debug)]
pub struct ExportCmdArgs {
    /// The log (with its rotated segments); sending starts at the position saved in
    /// LOG.export.json by an earlier export of the same log.
    pub log: PathBuf,
    /// Configuration file whose `[export]` section applies.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NATS server URLs, comma-separated (default: `[export] servers`).
    #[arg(long, value_name = "URL[,URL...]")]
    pub nats: Option<String>,
    /// Give up after this many seconds (default: `[export] drain_timeout_s`).
    #[arg(long, value_name = "SECONDS")]
    pub timeout_s: Option<f64>,
}

/// `--nats` and its companions, for `show` and `diff`: records named `HOST:LOG` (and
/// `HOST:LOG:ID`) are read from the stream.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StreamArgs {
    /// Read the records from NATS JetStream (server URLs, comma-separated) instead of local
    /// logs; logs are then named HOST:LOG, as `query --nats` prints them.
    #[arg(long, value_name = "URL[,URL...]")]
    pub nats: Option<String>,
    /// The stream (default: `[export] stream` of --config, else CONNTRAIL).
    #[arg(long, requires = "nats")]
    pub stream: Option<String>,
    /// Configuration file whose `[export]` section gives the stream, credentials and TLS.
    #[arg(long = "config", requires = "nats", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--nats` and its companions for `query`: the records of the whole fleet, or of one host
/// or context.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FleetArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Only the records of this appliance (its `[export] host`).
    #[arg(long, requires = "nats")]
    pub host: Option<String>,
    /// Only the records of this context (`default` until contexts exist).
    #[arg(long, requires = "nats")]
    pub context: Option<String>,
}

fn split_servers(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {name}"))?;
    Ok(Config::parse(&text, &name)?)
}

/// The settings for `cfg` with the servers of the command line (if given); `None` when
/// there is no server at all (export off).
fn settings(cfg: &Config, servers: Option<&str>) -> Result<Option<fleet::Settings>> {
    let contexts = cfg.contexts.iter().map(|c| c.name.clone()).collect();
    let mut cfg = cfg.export.clone();
    if let Some(urls) = servers {
        cfg.servers = split_servers(urls);
        anyhow::ensure!(!cfg.servers.is_empty(), "no NATS server URL in `{urls}`");
    }
    if cfg.servers.is_empty() {
        return Ok(None);
    }
    let settings = fleet::Settings {
        contexts,
        ..fleet::Settings::from_config(&cfg)
    };
    settings.check()?;
    Ok(Some(settings))
}

/// An export running beside the engine: one exporter per log (per context).
pub struct Shipping {
    exporters: Vec<(fleet::Exporter, PathBuf)>,
    drain: Duration,
}

/// Starts exporting the logs that `replay`/`run` is about to create at `logs` (one per
/// context), if export is on (`--export` or `[export] servers`).
pub fn start(cfg: &Config, args: &ExportArgs, logs: &[PathBuf]) -> Result<Option<Shipping>> {
    let Some(settings) = settings(cfg, args.export.as_deref())? else {
        return Ok(None);
    };
    let mut exporters = Vec::with_capacity(logs.len());
    for log in logs {
        let exporter =
            fleet::Exporter::spawn(settings.clone(), log, fleet::Start::created_from_now())?;
        exporters.push((exporter, log.clone()));
    }
    Ok(Some(Shipping {
        exporters,
        drain: Duration::from_secs_f64(cfg.export.drain_timeout_s),
    }))
}

impl Shipping {
    /// The engine is done and the logs complete: waits for the export to catch up (at most
    /// `[export] drain_timeout_s` in all) and says how it went, log by log.
    pub fn finish(self) -> Result<ExitCode> {
        let deadline = std::time::Instant::now() + self.drain;
        let mut code = ExitCode::SUCCESS;
        for (exporter, log) in self.exporters {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let report = exporter.finish(left)?;
            if say(&report, &log)? != ExitCode::SUCCESS {
                code = ExitCode::from(EXIT_EXPORT_PENDING);
            }
        }
        Ok(code)
    }

    /// The engine failed: stops the export where it is (its position is saved).
    pub fn abandon(self) {
        for (exporter, _) in self.exporters {
            if let Err(e) = exporter.finish(Duration::ZERO) {
                log::debug!("export stopped: {e}");
            }
        }
    }
}

/// Prints the outcome of an export; the exit status is [`EXIT_EXPORT_PENDING`] when records
/// are pending.
fn say(report: &fleet::Report, log: &Path) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "export: {} records to stream {} ({}.*) on {}, {} already there; {} pending",
        report.sent,
        report.stream,
        report.subject,
        report.servers,
        report.duplicates,
        report.pending
    )?;
    out.flush()?;
    if report.complete() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "conntrail: export incomplete: {} records of {} not in the stream yet (NATS {}: {}); \
         the log is complete and `conntrail export {} --nats {}` ships them from where this \
         export stopped",
        report.pending,
        log.display(),
        report.servers,
        report
            .last_error
            .as_deref()
            .unwrap_or("the time to catch up ran out"),
        log.display(),
        report.servers,
    );
    Ok(ExitCode::from(EXIT_EXPORT_PENDING))
}

/// `conntrail export LOG`: ships what is not in the stream yet and exits.
pub fn run_export(args: ExportCmdArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        args.log.is_file(),
        "log {}: not an existing file",
        args.log.display()
    );
    let cfg = load_config(args.config.as_deref())?;
    let Some(settings) = settings(&cfg, args.nats.as_deref())? else {
        anyhow::bail!("no NATS server: give --nats URL or [export] servers in --config");
    };
    let wait = args.timeout_s.unwrap_or(cfg.export.drain_timeout_s);
    anyhow::ensure!(
        wait.is_finite() && wait >= 0.0,
        "--timeout-s must be a number of seconds, not {wait}"
    );
    let exporter = fleet::Exporter::spawn(settings, &args.log, fleet::Start::Existing)?;
    let report = exporter.finish(Duration::from_secs_f64(wait))?;
    say(&report, &args.log)
}

/// One record read from the stream, decoded, with where it came from.
pub struct FleetRecord {
    pub record: Record<'static>,
    /// The appliance, and the log on it (`HOST:LOG:ID` names the record).
    pub host: String,
    pub log: String,
    /// Sequence number in the stream.
    pub sequence: u64,
}

/// The records of the stream selected by `args` (`--nats` given), in stream order; a
/// message that does not decode is an `Err` describing it (reported and skipped like a
/// damaged place of a log).
pub fn fleet_records(
    args: &FleetArgs,
) -> Result<impl Iterator<Item = std::result::Result<FleetRecord, String>>> {
    stream_records(&args.stream, args.host.as_deref(), args.context.as_deref())
}

fn stream_records(
    args: &StreamArgs,
    host: Option<&str>,
    context: Option<&str>,
) -> Result<impl Iterator<Item = std::result::Result<FleetRecord, String>>> {
    let mut cfg = load_config(args.config.as_deref())?;
    if let Some(stream) = &args.stream {
        cfg.export.stream = stream.clone();
    }
    let settings =
        settings(&cfg, args.nats.as_deref())?.context("no NATS server: give --nats URL")?;
    let reader = fleet::StreamReader::open(&settings, host, context)?;
    let stream = settings.stream;
    Ok(reader.map(move |item| {
        let message = item.map_err(|e| e.to_string())?;
        let record = flowtable::record::codec::decode(&message.payload).map_err(|e| {
            format!(
                "stream {stream} message {} ({}): undecodable record: {e}",
                message.sequence, message.subject
            )
        })?;
        Ok(FleetRecord {
            record,
            host: message.host,
            log: message.log,
            sequence: message.sequence,
        })
    }))
}

/// The records of one appliance's log in the stream, named `HOST:LOG` as `query --nats`
/// prints it, in the form [`crate::logs::Records`] gives a local log's.
pub fn log_records(
    args: &StreamArgs,
    origin: &Path,
) -> Result<impl Iterator<Item = crate::logs::Item>> {
    let origin = origin.to_string_lossy().into_owned();
    let Some((host, log)) = origin.split_once(':') else {
        anyhow::bail!("`{origin}`: with --nats, name a log HOST:LOG (as query --nats prints it)");
    };
    let (host, log) = (host.to_string(), log.to_string());
    let records = stream_records(args, Some(&host), None)?;
    Ok(records.filter_map(move |item| match item {
        Ok(r) if r.log == log => Some(Ok(r.record)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    }))
}

/// The record named `HOST:LOG:ID`, read from the stream; messages that do not decode go to
/// `damage`.
pub fn load_record(
    args: &StreamArgs,
    at: &crate::logs::RecordRef,
    mut damage: impl FnMut(&str),
) -> Result<Record<'static>> {
    for item in log_records(args, &at.log)? {
        match item {
            Ok(rec) if rec.id == at.id => return Ok(rec),
            Ok(_) => {}
            Err(e) => damage(&e),
        }
    }
    anyhow::bail!(
        "{}: no record with id {} in the stream",
        at.log.display(),
        at.id
    )
}
