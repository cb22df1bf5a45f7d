//! Crash safety: what lets `conntrail recover` (and the next start of the engine) write the
//! records a crashed engine left in its shared-memory rings, exactly once.
//!
//! A running engine keeps a *run file* `conntrail-PID-N.run` beside its ring files (in the
//! `[ring] dir` of the configuration). It names the log, the ring files in worker order and
//! the log's retention settings, and the engine holds an exclusive `flock` on it while it
//! runs. The lock goes away with the process however it ends, so a run file whose lock can
//! be taken belongs to an engine that died: [`recover_orphans`] then writes what its rings
//! hold to its log with [`recorder::recover::recover`] (which skips what the log already
//! has), and removes the rings and the run file. An engine that ends normally drains its
//! rings and removes both itself.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use flowtable::config::{Config, LogConfig};
use recorder::recover::Recovery;
use recorder::writer::{LogWriter, Retention};
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

/// Environment variable: a pause in microseconds after every record the recorder appends.
/// It makes records pile up in the rings so crash tests can kill the engine while records
/// are in flight; never set it in operation.
pub const RECORDER_DELAY_ENV: &str = "CONNTRAIL_RECORDER_DELAY_US";

/// Opens the log at `path` with the `[log]` retention of `cfg` (and the recorder delay of
/// [`RECORDER_DELAY_ENV`] when set): a new log replacing any there, or with `resume` the
/// existing one continued after its last intact record.
pub fn create_log(cfg: &Config, path: &Path, resume: bool) -> Result<LogWriter> {
    let retention = Retention::from_config(&cfg.log);
    let mut writer = if resume {
        LogWriter::resume(path, retention)
    } else {
        LogWriter::create_with(path, retention)
    }
    .with_context(|| format!("opening log {}", path.display()))?;
    if let Ok(us) = std::env::var(RECORDER_DELAY_ENV) {
        let us: u64 = us
            .parse()
            .with_context(|| format!("{RECORDER_DELAY_ENV}={us} is not a number of µs"))?;
        writer.set_append_delay(Some(Duration::from_micros(us)));
    }
    Ok(writer)
}

/// What a run file records.
#[derive(Debug, Serialize, Deserialize)]
struct RunManifest {
    pid: u32,
    log: PathBuf,
    /// The logs of contexts 1, 2, ...: records are routed to them by their context.
    #[serde(default)]
    context_logs: Vec<PathBuf>,
    rings: Vec<PathBuf>,
    log_config: LogConfig,
}

/// The run file of one engine (a `replay` or a `run`), locked while it lives.
#[derive(Debug)]
pub struct RunFile {
    path: PathBuf,
    rings: Vec<PathBuf>,
    /// Holds the lock.
    _file: File,
}

impl RunFile {
    /// Writes and locks a run file in `ring_dir` for an engine writing `logs` (the default
    /// context's first, then each context's; made absolute) with one ring per worker of
    /// `workers`; [`rings`](Self::rings) are the paths the rings
    /// must be created at. Names are unique to the process and the engine
    /// (`conntrail-PID-N.run`, `conntrail-PID-N-WORKER.ring`). The run file appears under its
    /// final name only once locked, so a recovery never mistakes a starting engine for a
    /// dead one.
    pub fn create<W: std::fmt::Display>(
        ring_dir: &Path,
        logs: &[PathBuf],
        workers: impl IntoIterator<Item = W>,
        log_config: &LogConfig,
    ) -> Result<RunFile> {
        static ENGINES: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let run = format!(
            "conntrail-{pid}-{}",
            ENGINES.fetch_add(1, Ordering::Relaxed)
        );
        let rings: Vec<PathBuf> = workers
            .into_iter()
            .map(|w| ring_dir.join(format!("{run}-{w}.ring")))
            .collect();
        let mut logs = logs.iter().map(|log| {
            std::path::absolute(log)
                .with_context(|| format!("resolving log path {}", log.display()))
        });
        let manifest = RunManifest {
            pid,
            log: logs.next().context("no log to write")??,
            context_logs: logs.collect::<Result<_>>()?,
            rings: rings.clone(),
            log_config: log_config.clone(),
        };
        let path = ring_dir.join(format!("{run}.run"));
        let tmp = ring_dir.join(format!("{run}.run.tmp"));
        let text = serde_json::to_vec_pretty(&manifest).context("encoding the run file")?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        let file = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)
            .with_context(|| format!("locking {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(RunFile {
            path,
            rings,
            _file: file,
        })
    }

    /// Where the rings go, in worker order.
    pub fn rings(&self) -> &[PathBuf] {
        &self.rings
    }

    /// Removes the run file: the engine has drained and removed its rings.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The records of one dead engine, recovered.
#[derive(Debug)]
pub struct Recovered {
    /// Its run file (removed now).
    pub run_file: PathBuf,
    /// Its logs: the default context's, then each context's.
    pub logs: Vec<PathBuf>,
    /// Counts per ring.
    pub recovery: Recovery,
}

/// Recovers every dead engine's rings found in `ring_dir`. Engines still running (their run
/// file is locked) are left alone. Each dead run gives its outcome; a run that fails (its
/// log cannot be written, say) keeps its rings and run file for a later attempt.
pub fn recover_orphans(ring_dir: &Path) -> Result<Vec<Result<Recovered>>> {
    let entries = std::fs::read_dir(ring_dir)
        .with_context(|| format!("listing ring directory {}", ring_dir.display()))?;
    let mut runs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("conntrail-") && n.ends_with(".run"))
        })
        .collect();
    runs.sort();
    let mut outcomes = Vec::new();
    for run_file in runs {
        if let Some(outcome) = recover_run(&run_file).transpose() {
            outcomes.push(outcome.with_context(|| format!("recovering {}", run_file.display())));
        }
    }
    Ok(outcomes)
}

/// Recovers one run file's rings; `None` when its engine is alive or it is already gone.
fn recover_run(run_file: &Path) -> Result<Option<Recovered>> {
    let Ok(mut file) = File::open(run_file) else {
        return Ok(None);
    };
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(None);
    }
    // Another recovery may have finished and removed it between our open and our lock.
    let same = match (rustix::fs::fstat(&file), rustix::fs::stat(run_file)) {
        (Ok(held), Ok(named)) => held.st_ino == named.st_ino && held.st_dev == named.st_dev,
        _ => false,
    };
    if !same {
        return Ok(None);
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .with_context(|| format!("reading {}", run_file.display()))?;
    let manifest: RunManifest = serde_json::from_slice(&text)
        .map_err(|e| anyhow!("{}: not a run file: {e}", run_file.display()))?;
    let mut consumers = Vec::new();
    let mut present = Vec::new();
    for ring in &manifest.rings {
        if !ring.exists() {
            continue;
        }
        match ring::open(ring) {
            Ok(consumer) => {
                consumers.push(consumer);
                present.push(ring.clone());
            }
            Err(e) => log::error!("{}: {e}; its records cannot be recovered", ring.display()),
        }
    }
    let mut logs = vec![manifest.log.clone()];
    logs.extend(manifest.context_logs.iter().cloned());
    let retention = Retention::from_config(&manifest.log_config);
    let targets: Vec<(&Path, Retention)> = logs.iter().map(|l| (l.as_path(), retention)).collect();
    let route = (logs.len() > 1).then_some(crate::contexts::route as recorder::thread::Route);
    let recovery = recorder::recover::recover_routed(&targets, route, consumers)
        .with_context(|| format!("writing to log {}", manifest.log.display()))?;
    for (index, problem) in &recovery.corrupt_rings {
        if let Some(ring) = present.get(*index) {
            log::error!("{}: {problem}; recovered up to there", ring.display());
        }
    }
    for ring in &manifest.rings {
        let _ = std::fs::remove_file(ring);
    }
    let _ = std::fs::remove_file(run_file);
    Ok(Some(Recovered {
        run_file: run_file.to_path_buf(),
        logs,
        recovery,
    }))
}

/// Recovers dead engines' rings at the start of an engine, reporting each on the log;
/// returns the logs written to.
pub fn recover_at_start(ring_dir: &Path) -> Vec<PathBuf> {
    let mut logs = Vec::new();
    match recover_orphans(ring_dir) {
        Ok(outcomes) => {
            for outcome in outcomes {
                match outcome {
                    Ok(r) => {
                        log::warn!("{}", describe(&r));
                        logs.extend(r.logs);
                    }
                    Err(e) => log::error!("{e:#}"),
                }
            }
        }
        Err(e) => log::error!("{e:#}"),
    }
    logs
}

/// Whether `log` is one of `logs` (compared as absolute paths).
pub fn names_log(logs: &[PathBuf], log: &Path) -> bool {
    std::path::absolute(log).is_ok_and(|log| logs.contains(&log))
}

fn describe(r: &Recovered) -> String {
    let lost = r.recovery.frames_lost();
    let logs = match &r.logs[..] {
        [one] => one.display().to_string(),
        many => many
            .iter()
            .zip(&r.recovery.writers)
            .map(|(log, w)| format!("{} ({})", log.display(), w.frames))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let skipped: String = r
        .recovery
        .checksum_failures
        .iter()
        .map(|c| {
            let frames = c.failures.frames;
            format!(
                "; {frames} {} {} checksum in {} at offset {}, skipped",
                if frames == 1 { "frame" } else { "frames" },
                if frames == 1 {
                    "failed its"
                } else {
                    "failed their"
                },
                c.path.display(),
                c.failures.first_offset
            )
        })
        .collect();
    format!(
        "recovered {}: {} records written to {logs}, {} already there{}{skipped}",
        r.run_file.display(),
        r.recovery.written(),
        r.recovery.already_logged(),
        if lost > 0 {
            format!(", {lost} lost (no space)")
        } else {
            String::new()
        }
    )
}

/// `conntrail recover`: write the records that crashed engines left in their rings.
#[derive(clap::Args, Debug)]
pub struct RecoverArgs {
    /// Configuration file whose `[ring] dir` holds the rings (defaults apply without one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Ring directory to look in, instead of the configuration's.
    #[arg(long)]
    pub ring_dir: Option<PathBuf>,
}

/// Runs `conntrail recover`: one line per dead engine recovered; exit status 1 when one
/// could not be.
pub fn run(args: RecoverArgs) -> Result<ExitCode> {
    let ring_dir = match (&args.ring_dir, &args.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            PathBuf::from(Config::parse(&text, &path.display().to_string())?.ring.dir)
        }
        (None, None) => PathBuf::from(Config::default().ring.dir),
    };
    let outcomes = recover_orphans(&ring_dir)?;
    if outcomes.is_empty() {
        println!("nothing to recover in {}", ring_dir.display());
    }
    let mut failed = false;
    for outcome in outcomes {
        match outcome {
            Ok(r) => println!("{}", describe(&r)),
            Err(e) => {
                eprintln!("conntrail: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
