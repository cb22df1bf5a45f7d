//! The engine's side of NATS JetStream (the `fleet` crate does the work): `--export` on
//! `replay` and `run`, and `conntrail export` for what an earlier run left pending. Reading
//! the stream back is [`forensics::stream`].
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

use anyhow::Result;
use flowtable::config::Config;
use forensics::stream::{load_config, settings};

/// Exit status when the log is complete but records are still waiting to be exported.
pub const EXIT_EXPORT_PENDING: u8 = forensics::exit::EXPORT_PENDING;

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
            if print_export_report(&report, &log)? != ExitCode::SUCCESS {
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
fn print_export_report(report: &fleet::Report, log: &Path) -> Result<ExitCode> {
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
    print_export_report(&report, &args.log)
}
