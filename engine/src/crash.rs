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

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use flowtable::config::{Config, LogConfig};
use recorder::recover::Recovery;
use recorder::writer::Retention;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::ringdir::{self, RingDir};
use forensics::exit;

/// For each worker that has records in `logs`, the sequence number its next record must
/// take so that no record id repeats in them: one more than the highest it left (an id is
/// the worker in its top 16 bits and the sequence below). Damage is skipped: the reader
/// reads past it.
pub fn next_sequences(logs: &[PathBuf]) -> HashMap<u16, u64> {
    let mut next: HashMap<u16, u64> = HashMap::new();
    for log in logs {
        let Ok(reader) = recorder::reader::LogReader::open(log) else {
            continue;
        };
        for frame in reader.flatten() {
            if let Ok(rec) = flowtable::record::codec::decode(&frame.payload) {
                let worker = (rec.id >> 48) as u16;
                let seq = rec.id & ((1 << 48) - 1);
                let slot = next.entry(worker).or_insert(0);
                *slot = (*slot).max(seq + 1);
            }
        }
    }
    next
}

/// What a run file records.
#[derive(Debug, Serialize, Deserialize)]
struct RunManifest {
    pid: u32,
    log: PathBuf,
    /// The logs of contexts 1, 2, ...: records are routed to them by their context.
    #[serde(default)]
    context_logs: Vec<PathBuf>,
    /// The ring files in worker order: names in the ring directory
    /// (`conntrail-PID-N-WORKER.ring`).
    rings: Vec<PathBuf>,
    log_config: LogConfig,
}

/// Longest run file read (a manifest is a few hundred bytes).
const MAX_RUN_FILE: u64 = 1 << 20;

/// The run file of one engine (a `replay` or a `run`), locked while it lives, and the ring
/// directory it is in.
///
/// Dropping it removes its rings and then itself: an engine that ends, or fails to start,
/// leaves nothing behind. An engine whose rings still hold records it could not write calls
/// [`keep`](Self::keep) instead, so that a recovery finds them.
#[derive(Debug)]
pub struct RunFile {
    dir: RingDir,
    name: String,
    rings: Vec<String>,
    ring_paths: Vec<PathBuf>,
    /// Holds the lock.
    file: Option<File>,
}

impl RunFile {
    /// Writes and locks a run file in `dir` for an engine writing `logs` (the default
    /// context's first, then each context's; made absolute) with one ring per worker of
    /// `workers`; [`rings`](Self::rings) are the paths the rings must be created at. Names
    /// are unique to the process and the engine (`conntrail-PID-N.run`,
    /// `conntrail-PID-N-WORKER.ring`). The run file is written under a temporary name
    /// (created with `O_EXCL | O_NOFOLLOW`, mode 0600) and appears under its final name only
    /// once locked, so a recovery never mistakes a starting engine for a dead one.
    pub fn create<W: std::fmt::Display>(
        dir: RingDir,
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
        let rings: Vec<String> = workers
            .into_iter()
            .map(|w| format!("{run}-{w}.ring"))
            .collect();
        let mut logs = logs.iter().map(|log| {
            std::path::absolute(log)
                .with_context(|| format!("resolving log path {}", log.display()))
        });
        let manifest = RunManifest {
            pid,
            log: logs.next().context("no log to write")??,
            context_logs: logs.collect::<Result<_>>()?,
            rings: rings.iter().map(PathBuf::from).collect(),
            log_config: log_config.clone(),
        };
        let name = format!("{run}.run");
        let tmp = format!("{run}.run.tmp");
        let text = serde_json::to_vec_pretty(&manifest).context("encoding the run file")?;
        let mut file = match dir.create_new(&tmp) {
            // A temporary run file of an earlier process with the same pid that died while
            // starting: ours (the directory is private), and never locked under its name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                dir.remove(&tmp)
                    .with_context(|| format!("removing {}", dir.join(&tmp).display()))?;
                dir.create_new(&tmp)
            }
            other => other,
        }
        .with_context(|| format!("creating {}", dir.join(&tmp).display()))?;
        let written = dir
            .hand_over(&file)
            .with_context(|| format!("handing {} over", dir.join(&tmp).display()))
            .and_then(|()| {
                rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)
                    .map_err(std::io::Error::from)
                    .with_context(|| format!("locking {}", dir.join(&tmp).display()))
            })
            .and_then(|()| {
                file.write_all(&text)
                    .with_context(|| format!("writing {}", dir.join(&tmp).display()))
            })
            .and_then(|()| {
                dir.rename(&tmp, &name)
                    .with_context(|| format!("renaming {} to {name}", dir.join(&tmp).display()))
            });
        if let Err(e) = written {
            let _ = dir.remove(&tmp);
            return Err(e);
        }
        Ok(RunFile {
            ring_paths: rings.iter().map(|r| dir.join(r)).collect(),
            dir,
            name,
            rings,
            file: Some(file),
        })
    }

    /// Where the rings go, in worker order.
    pub fn rings(&self) -> &[PathBuf] {
        &self.ring_paths
    }

    /// The ring directory.
    pub fn dir(&self) -> &RingDir {
        &self.dir
    }

    /// Leaves the rings and the run file for a recovery (its lock goes with the process, or
    /// now): the rings hold records that did not reach the log.
    pub fn keep(mut self) {
        self.file = None;
        self.rings.clear();
        self.name.clear();
    }
}

impl Drop for RunFile {
    /// Removes the rings and then the run file.
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        for ring in &self.rings {
            let _ = self.dir.remove(ring);
        }
        let _ = self.dir.remove(&self.name);
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

/// Recovers every dead engine's rings found in `dir`. Engines still running (their run file
/// is locked) are left alone. Only run files the directory's rules trust are read (see
/// [`crate::ringdir`]); any other `.run` file is reported and left untouched, as is
/// everything it names. Each dead run gives its outcome; a run that fails (its log cannot be
/// written, say) keeps its rings and run file for a later attempt.
pub fn recover_orphans(dir: &RingDir) -> Result<Vec<Result<Recovered>>> {
    let mut outcomes = Vec::new();
    for name in dir.names()? {
        if !name.ends_with(".run") {
            continue;
        }
        let outcome = match ringdir::run_stem(&name, ".run") {
            Some(stem) => recover_run(dir, &name, stem).transpose(),
            None => Some(Err(anyhow!(
                "not a name conntrail gives a run file: left alone"
            ))),
        };
        if let Some(outcome) = outcome {
            outcomes
                .push(outcome.with_context(|| format!("recovering {}", dir.join(&name).display())));
        }
    }
    Ok(outcomes)
}

/// Recovers one run file's rings; `None` when its engine is alive or it is already gone.
fn recover_run(dir: &RingDir, name: &str, stem: &str) -> Result<Option<Recovered>> {
    if !dir.has(name) {
        return Ok(None);
    }
    let file = dir.open_trusted(name)?;
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(None);
    }
    // Another recovery may have finished and removed it between our open and our lock.
    if !dir.still_names(name, &file) {
        return Ok(None);
    }
    let mut text = Vec::new();
    (&file)
        .take(MAX_RUN_FILE)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {}", dir.join(name).display()))?;
    let manifest: RunManifest =
        serde_json::from_slice(&text).map_err(|e| anyhow!("not a run file ({e}): left alone"))?;
    // The rings must be this run's own files in this directory: a name, or (written by an
    // earlier version) a path into this directory.
    let mut rings = Vec::new();
    for ring in &manifest.rings {
        let own = ringdir::plain_name(ring)
            .or_else(|| {
                (ring.parent() == Some(dir.path()))
                    .then(|| ring.file_name().and_then(|n| n.to_str()))
                    .flatten()
            })
            .filter(|n| ringdir::is_ring_of(stem, n));
        match own {
            Some(n) => rings.push(n.to_string()),
            None => bail!(
                "names a ring {} that is not one of its own in {}: refused, nothing touched",
                ring.display(),
                dir.path().display()
            ),
        }
    }
    let mut logs = vec![manifest.log.clone()];
    logs.extend(manifest.context_logs.iter().cloned());
    // Written by the user a root engine became (`--user`): that user's logs only, never a
    // new file where root may write and that user may not.
    let writer = rustix::fs::fstat(&file).map_or(u32::MAX, |st| st.st_uid);
    for log in &logs {
        forensics::evidence::check_continuable(log)?;
        if writer != ringdir::euid() {
            let owner = std::fs::symlink_metadata(log).map(|m| m.uid()).ok();
            if owner != Some(writer) {
                bail!(
                    "names a log {} that is not uid {writer}'s, who wrote the run file: refused, \
                     nothing touched",
                    log.display()
                );
            }
        }
    }
    let mut consumers = Vec::new();
    let mut present = Vec::new();
    for ring in &rings {
        if !dir.has(ring) {
            continue;
        }
        let path = dir.join(ring);
        if let Err(e) = dir.open_trusted(ring) {
            log::error!("{e:#}; its records cannot be recovered");
            continue;
        }
        match ring::open_owned_by(&path, writer) {
            Ok(consumer) => {
                consumers.push(consumer);
                present.push(path);
            }
            Err(e) => log::error!("{}: {e}; its records cannot be recovered", path.display()),
        }
    }
    let retention = crate::contexts::retention(&manifest.log_config);
    let targets: Vec<(&Path, Retention)> = logs.iter().map(|l| (l.as_path(), retention)).collect();
    let route = (logs.len() > 1).then_some(crate::contexts::route as recorder::thread::Route);
    let recovery = recorder::recover::recover_routed(&targets, route, consumers)
        .with_context(|| format!("writing to log {}", manifest.log.display()))?;
    for (index, problem) in &recovery.corrupt_rings {
        if let Some(ring) = present.get(*index) {
            log::error!("{}: {problem}; recovered up to there", ring.display());
        }
    }
    for ring in &rings {
        let _ = dir.remove(ring);
    }
    let _ = dir.remove(name);
    Ok(Some(Recovered {
        run_file: dir.join(name),
        logs,
        recovery,
    }))
}

/// Recovers dead engines' rings at the start of an engine, reporting each on the log.
pub fn recover_at_start(dir: &RingDir) {
    match recover_orphans(dir) {
        Ok(outcomes) => {
            for outcome in outcomes {
                match outcome {
                    Ok(r) => log::warn!("{}", describe(&r)),
                    Err(e) => log::error!("{e:#}"),
                }
            }
        }
        Err(e) => log::error!("{e:#}"),
    }
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

/// Runs `conntrail recover`: one line per dead engine recovered. The status is
/// [`exit::DAMAGE`] when a ring was damaged (frames failing their checksum, a ring that could
/// not be recovered) and [`exit::RECORDS_LOST`] when records could not be written.
pub fn run(args: RecoverArgs) -> Result<ExitCode> {
    let ring_dir = match (&args.ring_dir, &args.config) {
        (Some(dir), _) => dir
            .to_str()
            .with_context(|| format!("ring directory {} is not UTF-8", dir.display()))?
            .to_string(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            Config::parse(&text, &path.display().to_string())?.ring.dir
        }
        (None, None) => Config::default().ring.dir,
    };
    let dir = RingDir::open(&ring_dir)?;
    let outcomes = recover_orphans(&dir)?;
    if outcomes.is_empty() {
        println!("nothing to recover in {}", dir.path().display());
    }
    let mut codes = vec![exit::OK];
    for outcome in outcomes {
        match outcome {
            Ok(r) => {
                println!("{}", describe(&r));
                if !r.recovery.checksum_failures.is_empty() {
                    codes.push(exit::DAMAGE);
                }
                if r.recovery.frames_lost() > 0 {
                    codes.push(exit::RECORDS_LOST);
                }
            }
            Err(e) => {
                eprintln!("conntrail: {e:#}");
                codes.push(exit::DAMAGE);
            }
        }
    }
    Ok(exit::worst(codes))
}
