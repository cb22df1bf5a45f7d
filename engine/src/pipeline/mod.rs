//! The running tracker: frames from a source through workers and rings into the log.
//!
//! Replay ([`replay`]) and a live run ([`live`]) differ only in where frames come from: a
//! reader thread spreading capture frames ([`spread`]) or one AF_XDP socket per worker. What
//! lies behind the workers is the same and is set up and torn down here, once, by
//! [`Pipeline`]:
//!
//! 1. what crashed runs left in the ring directory is written to their logs
//!    ([`crate::crash::recover_at_start`]);
//! 2. the run file is written and locked, and one ring per worker created beside it
//!    ([`crate::crash::RunFile`]);
//! 3. the logs are opened (continued, or made anew), and record ids go on from the highest
//!    each worker left in a continued log;
//! 4. the recorder thread drains the rings into the logs.
//!
//! At the end the recorder drains what is left and flushes; the rings and the run file are
//! removed, or kept for a recovery when a worker or the recorder failed and the rings may
//! still hold records. [`summary`] writes the lines both runs end with.

pub mod live;
pub mod replay;
pub mod spread;
pub mod summary;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, Context, Result};
use flowtable::config::Config;
use recorder::thread::{Progress, RecorderStats};
use recorder::{RecorderError, WriterStats};

use crate::contexts::ContextSummary;
use crate::crash::RunFile;
use crate::ringdir::RingDir;

/// The rings, run file, logs and recorder thread of one run.
pub struct Pipeline {
    run_file: RunFile,
    log_paths: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    gone: Arc<AtomicBool>,
    progress: Arc<Progress>,
    recorder: JoinHandle<thread::Result<Result<RecorderStats, RecorderError>>>,
}

/// What a worker needs from the pipeline: its ring and the record id it starts at.
pub struct WorkerEnd {
    pub id: u16,
    pub producer: ring::Producer,
    /// The next record id, where a continued log holds this worker's records already.
    pub first_sequence: Option<u64>,
}

/// What the recorder wrote, once the run is over.
pub struct Recorded {
    pub stats: RecorderStats,
    /// The counters of all the logs added up.
    pub total: WriterStats,
    /// Each context's name, log and records written, in context order (`default` first).
    pub contexts: Vec<ContextSummary>,
}

impl Recorded {
    /// Records skipped by the recorder because their ring frame failed its checksum.
    pub fn ring_checksum_failures(&self) -> u64 {
        self.stats
            .checksum_failures_per_ring
            .iter()
            .map(|f| f.frames)
            .sum()
    }
}

impl Pipeline {
    /// Sets up the run of `workers` into `log_paths` (each context's log, in context order)
    /// with its rings in `ring_dir`: steps 1 to 4 of the module's list. `resume` continues
    /// logs that exist (ids go on) instead of making them anew. Returns each worker's end, in
    /// the order of `workers`.
    pub fn start(
        cfg: &Config,
        ring_dir: RingDir,
        log_paths: Vec<PathBuf>,
        workers: &[u16],
        resume: bool,
    ) -> Result<(Pipeline, Vec<WorkerEnd>)> {
        crate::crash::recover_at_start(&ring_dir);
        let sequences: HashMap<u16, u64> = if resume {
            crate::crash::next_sequences(&log_paths)
        } else {
            HashMap::new()
        };
        let run_file = RunFile::create(ring_dir, &log_paths, workers.iter(), &cfg.log)?;
        let mut ends = Vec::with_capacity(workers.len());
        let mut consumers = Vec::with_capacity(workers.len());
        for (&id, path) in workers.iter().zip(run_file.rings()) {
            let (producer, consumer) = ring::create(path, cfg.ring.bytes as usize)
                .with_context(|| format!("creating ring {}", path.display()))?;
            consumers.push(consumer);
            ends.push(WorkerEnd {
                id,
                producer,
                first_sequence: sequences.get(&id).copied(),
            });
        }
        let logs = crate::contexts::open_logs(cfg, &log_paths, |_| resume)?;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Progress::new(consumers.len(), logs.len());
        let recorder =
            recorder::thread::spawn(consumers, logs, Arc::clone(&stop), Arc::clone(&progress));
        // Set once the recorder thread has ended, so workers stop waiting for room in their
        // rings.
        let gone = Arc::new(AtomicBool::new(false));
        let recorder = {
            let gone = Arc::clone(&gone);
            thread::Builder::new()
                .name("conntrail-recorder-watch".into())
                .spawn(move || {
                    let ended = recorder.join();
                    gone.store(true, Ordering::Release);
                    ended
                })
                .context("starting the recorder's watch")?
        };
        Ok((
            Pipeline {
                run_file,
                log_paths,
                stop,
                gone,
                progress,
                recorder,
            },
            ends,
        ))
    }

    /// The recorder's running counts, per ring and per log.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Set once the recorder thread has ended ([`worker::Worker::wait_for_recorder`]).
    pub fn recorder_gone(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.gone)
    }

    /// The logs, in context order.
    pub fn log_paths(&self) -> &[PathBuf] {
        &self.log_paths
    }

    /// The rings, in worker order.
    pub fn ring_paths(&self) -> &[PathBuf] {
        self.run_file.rings()
    }

    /// Ends the run once the workers have stopped (`workers_panicked`: one of them did): the
    /// recorder drains the rings and flushes, then the rings and the run file are removed, or
    /// kept for a recovery when a worker or the recorder failed.
    pub fn finish(self, cfg: &Config, workers_panicked: bool) -> Result<Recorded> {
        self.stop.store(true, Ordering::Release);
        let ended = self.recorder.join().unwrap_or_else(Err);
        if workers_panicked || !matches!(ended, Ok(Ok(_))) {
            // The rings may still hold records: leave them to a recovery.
            self.run_file.keep();
        } else {
            drop(self.run_file);
        }
        if workers_panicked {
            return Err(anyhow!("a worker thread panicked"));
        }
        let stats = match ended {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => return Err(anyhow::Error::from(e).context("writing the log")),
            Err(_) => return Err(anyhow!("the recorder thread panicked")),
        };
        let total = stats.writers_total();
        let contexts = crate::contexts::summaries(cfg, self.log_paths, &stats.frames_per_log);
        Ok(Recorded {
            stats,
            total,
            contexts,
        })
    }
}
