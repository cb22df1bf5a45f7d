//! Replay: capture files through workers into the log.
//!
//! The calling thread reads the captures and spreads frames over the workers in batches, by
//! a symmetric hash of the 5-tuple so both directions of a connection meet on one worker.
//! Each worker thread owns its flow table and ring (and a core of its own, pinned, where the
//! machine has a core for every thread); the recorder thread drains the rings into the log.
//! At the end of the captures every worker closes its open flows (`shutdown`), the recorder
//! drains and flushes, and the summary is returned.
//!
//! Before any of that ([`prepare`]) every capture is opened and checked to be one, and the
//! logs are checked with [`forensics::evidence`]: a log is never written onto a capture of the
//! replay, an existing one is replaced or continued only when [`ReplayOptions::log_target`]
//! says so, and a file that is not a log is never replaced. A replay that fails there has
//! created nothing: no ring, run file, lock file or segment. A capture named `-` is read
//! from standard input, as a stream.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use flowtable::config::Config;
use flowtable::table::RecordMode;

use capture::{Capture, CaptureStats, InterfaceInfo};
use forensics::evidence::{self, Inputs, LogTarget};

use super::spread::Spreader;
use super::worker::{Worker, WorkerStats};
use super::Pipeline;
use crate::source::Batch;

/// What to replay and how.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub workers: usize,
    pub mode: RecordMode,
    pub log: PathBuf,
    pub captures: Vec<PathBuf>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// The interface the captures were taken on, for those that do not name it (pcap
    /// files, pcapng interfaces without `if_name`): it chooses the contexts.
    pub interface: Option<String>,
    /// What to do with a log that exists already: refuse, replace it, or continue it (record
    /// ids then go on from the highest each worker left in it).
    pub log_target: LogTarget,
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default)]
pub struct ReplaySummary {
    pub captures: Vec<(PathBuf, CaptureStats)>,
    pub workers: Vec<WorkerStats>,
    /// Each context's name, log and records written, in context order (`default` first).
    pub contexts: Vec<crate::contexts::ContextSummary>,
    pub frames_written: u64,
    pub log_bytes: u64,
    pub log_segments: u32,
    /// The log writer's counters: retention deletions, records lost to a full disk.
    pub log_writer: recorder::WriterStats,
    /// Records skipped by the recorder because their ring frame failed its checksum.
    pub ring_checksum_failures: u64,
    pub elapsed: Duration,
    /// CPU time of the thread that read the captures (from the start of the replay, the
    /// workers' set-up included) and of the recorder thread (each worker's is in its stats).
    pub reader_cpu: Duration,
    pub recorder_cpu: Duration,
}

impl ReplaySummary {
    pub fn packets(&self) -> u64 {
        self.captures.iter().map(|(_, c)| c.frames).sum()
    }

    pub fn records(&self) -> u64 {
        self.frames_written
    }

    pub fn flows(&self) -> u64 {
        self.workers.iter().map(|w| w.table.flows_created).sum()
    }

    pub fn ring_drops(&self) -> u64 {
        self.workers.iter().map(|w| w.ring_drops).sum()
    }

    /// Records that never reached the log: dropped from a full ring, damaged in a ring, or
    /// lost for lack of space.
    pub fn records_lost(&self) -> u64 {
        self.ring_drops() + self.ring_checksum_failures + self.log_writer.frames_lost
    }

    pub fn pps(&self) -> f64 {
        self.packets() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Batches in flight per worker (bounded: the reader waits for a free batch, workers never
/// wait for anything but work).
const BATCHES_PER_WORKER: usize = 8;

/// A replay ready to start: its captures open and its logs checked, nothing created yet.
pub struct Prepared {
    captures: Vec<Capture>,
    log_paths: Vec<PathBuf>,
}

/// Checks what a replay of `opts` under `cfg` would read and write, creating nothing: the
/// options, the memory it needs, every capture (opened, and checked to start like one) and
/// every log (see [`forensics::evidence::check_logs`]).
pub fn prepare(cfg: &Config, opts: &ReplayOptions) -> Result<Prepared> {
    if opts.workers == 0 || opts.workers > 256 {
        bail!("--workers must be between 1 and 256");
    }
    crate::preflight::check_memory(cfg, opts.workers, 0)?;
    let stdin = opts
        .captures
        .iter()
        .filter(|p| p.as_os_str() == evidence::STDIN);
    if stdin.count() > 1 {
        bail!("standard input (-) can be read once: give it as one capture only");
    }
    let log_paths = crate::contexts::log_paths(cfg, &opts.log)?;
    let mut captures = Vec::with_capacity(opts.captures.len());
    let mut inputs = Inputs::default();
    for path in &opts.captures {
        let capture = Capture::open(path)?;
        if let Ok(meta) = capture.metadata() {
            inputs.add(&meta, path);
        }
        captures.push(capture);
    }
    evidence::check_logs("replay", &log_paths, &inputs, opts.log_target)?;
    Ok(Prepared {
        captures,
        log_paths,
    })
}

/// Replays `opts.captures` under `cfg` into `opts.log`: [`prepare`], then [`Prepared::run`].
pub fn replay(cfg: &Config, opts: &ReplayOptions) -> Result<ReplaySummary> {
    prepare(cfg, opts)?.run(cfg, opts)
}

impl Prepared {
    /// Runs the replay [`prepare`] checked, with the same `cfg` and `opts`.
    pub fn run(self, cfg: &Config, opts: &ReplayOptions) -> Result<ReplaySummary> {
        run(cfg, opts, self)
    }
}

fn run(cfg: &Config, opts: &ReplayOptions, prepared: Prepared) -> Result<ReplaySummary> {
    let Prepared {
        captures,
        log_paths,
    } = prepared;
    let started = Instant::now();
    let cpu_at_start = recorder::thread::thread_cpu_time();
    let ring_dir = crate::ringdir::RingDir::open(&cfg.ring.dir)?;
    let ids: Vec<u16> = (0..opts.workers as u16).collect();
    let resume = opts.log_target == LogTarget::Continue;
    let (pipeline, ends) = Pipeline::start(cfg, ring_dir, log_paths, &ids, resume)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // Workers are pinned when every thread can have a core of its own: the reader, the
    // workers and the recorder. With fewer cores, fixed places only keep the scheduler from
    // balancing the threads that must share them (two cores, two workers: ~1.25x faster
    // unpinned).
    let pin = cores.len() >= opts.workers + 2;
    let mut worker_handles = Vec::new();
    let mut to_workers: Vec<Sender<Batch>> = Vec::new();
    let (recycle_tx, recycle_rx) = bounded::<Batch>(opts.workers * BATCHES_PER_WORKER);
    for _ in 0..opts.workers * BATCHES_PER_WORKER {
        recycle_tx.send(Batch::new()).context("preparing batches")?;
    }
    for end in ends {
        let w = usize::from(end.id);
        let (tx, rx) = bounded::<Batch>(BATCHES_PER_WORKER);
        to_workers.push(tx);
        // Worker w on core w + 1, core 0 left to the reader.
        let core = pin.then(|| cores[w + 1]);
        let mut worker = Worker::new(cfg, end.id, opts.mode, end.producer);
        if let Some(sequence) = end.first_sequence {
            worker.continue_ids(sequence);
        }
        worker.wait_for_recorder(pipeline.recorder_gone());
        let recycle = recycle_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("conntrail-w{w}"))
            .spawn(move || {
                let pinned = core.filter(|c| core_affinity::set_for_current(*c));
                worker.set_core(pinned.map(|c| c.id));
                run_worker(&mut worker, &rx, &recycle);
                let mut stats = worker.finish();
                stats.cpu = recorder::thread::thread_cpu_time();
                stats
            })
            .context("starting a worker thread")?;
        worker_handles.push(handle);
    }
    drop(recycle_tx);

    let read_result = read_all(cfg, opts, captures, &to_workers, &recycle_rx);
    let reader_cpu = recorder::thread::thread_cpu_time().saturating_sub(cpu_at_start);
    drop(to_workers);
    let mut workers = Vec::new();
    let mut panicked = false;
    for h in worker_handles {
        match h.join() {
            Ok(stats) => workers.push(stats),
            Err(_) => panicked = true,
        }
    }
    let recorded = pipeline.finish(cfg, panicked)?;
    let captures = read_result?;
    Ok(ReplaySummary {
        captures,
        workers,
        frames_written: recorded.total.frames,
        log_bytes: recorded.total.file_bytes,
        log_segments: recorded.total.segments,
        ring_checksum_failures: recorded.ring_checksum_failures(),
        recorder_cpu: recorded.stats.cpu,
        log_writer: recorded.total,
        contexts: recorded.contexts,
        elapsed: started.elapsed(),
        reader_cpu,
    })
}

fn run_worker(worker: &mut Worker, rx: &Receiver<Batch>, recycle: &Sender<Batch>) {
    while let Ok(mut batch) = rx.recv() {
        worker.frames(batch.len(), |i| batch.frame(i));
        batch.clear();
        // The reader may be gone already at the end; a lost batch is fine then.
        let _ = recycle.send(batch);
    }
}

fn read_all(
    cfg: &Config,
    opts: &ReplayOptions,
    captures: Vec<Capture>,
    to_workers: &[Sender<Batch>],
    recycle: &Receiver<Batch>,
) -> Result<Vec<(PathBuf, CaptureStats)>> {
    let n = to_workers.len();
    // The bytes of each capture, for the progress bar (0 for a pipe).
    let sizes: Vec<u64> = captures
        .iter()
        .map(|c| {
            c.metadata()
                .map_or(0, |m| if m.is_file() { m.len() } else { 0 })
        })
        .collect();
    let total_bytes: u64 = sizes.iter().sum();
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replay [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let mut spreader = Spreader::new(n);
    let mut current: Vec<Option<Batch>> = (0..n).map(|_| None).collect();
    let mut results = Vec::new();
    let mut done_bytes = 0u64;
    for (capture, size) in captures.into_iter().zip(sizes) {
        let path = capture.path().to_path_buf();
        let mut send_failed = false;
        let interface_id = |iface: &InterfaceInfo<'_>| {
            iface
                .name
                .or(opts.interface.as_deref())
                .map_or(0, |n| cfg.interface_id(n))
        };
        let stats = capture.frames(
            interface_id,
            |f, chunk, _| {
                if send_failed {
                    return ControlFlow::Break(());
                }
                let w = spreader.worker_for(f.link, f.bytes(chunk));
                let slot = &mut current[w];
                if slot.as_mut().is_some_and(|b| b.push(f, chunk)) {
                    return ControlFlow::Continue(());
                }
                // No batch for this worker yet, or its batch has no room: a fresh one.
                if let Some(full) = slot.take() {
                    send_failed |= to_workers[w].send(full).is_err();
                }
                match recycle.recv() {
                    Ok(mut b) => {
                        // A recycled batch is empty: it takes any frame.
                        let taken = b.push(f, chunk);
                        debug_assert!(taken, "an empty batch refused a frame");
                        *slot = Some(b);
                        ControlFlow::Continue(())
                    }
                    Err(_) => {
                        send_failed = true;
                        ControlFlow::Break(())
                    }
                }
            },
            |walked| {
                if let Some(bar) = &bar {
                    bar.set_position(done_bytes + walked);
                }
            },
        );
        // The batches still filling go out at the end of each capture (the run's last
        // ones must).
        for (w, slot) in current.iter_mut().enumerate() {
            if let Some(b) = slot.take() {
                if !b.is_empty() {
                    send_failed |= to_workers[w].send(b).is_err();
                }
            }
        }
        done_bytes += size;
        results.push((path, stats));
        if send_failed {
            bail!("a worker stopped early");
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(results)
}
