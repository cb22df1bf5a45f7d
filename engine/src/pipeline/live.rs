//! Live capture: `conntrail run`, AF_XDP sockets through pinned workers into the log.
//!
//! Every `[[capture]]` entry of the configuration names an interface and some of its
//! receive queues; each queue gets an [`XdpSocket`] and a [`Worker`] on a thread of its own,
//! pinned to the entry's core for it, and each interface an [`XdpProgram`]. The worker thread
//! pins itself, opens its socket (so the UMEM is touched first on its own core) and enters
//! it in the program's map; once every socket is open the programs are attached (the mode
//! each socket got is said then), and the workers loop: take a batch from the RX ring, read
//! the clock once, feed every frame to the worker, give the frames back to the fill ring.
//! When the RX ring stays empty it waits in `poll(2)` and ticks the worker with the clock, so
//! idle flows still age out. The same recorder thread as in replay drains the workers' rings
//! into the log.
//!
//! Time: aging runs on the monotonic clock and record timestamps are ns since the epoch.
//! Both come from one reading per batch: the realtime clock is read once at start, and a
//! batch's time is that plus the monotonic time elapsed since, so timestamps never go
//! backwards even when the wall clock is stepped (they do not follow a step either).
//!
//! Counters: each worker copies its counters (and reads the kernel's counters of its socket)
//! into a slot of its own once a second; a stats thread writes the slots to the stats file
//! ([`crate::observe::stats`]). Nothing is shared per packet.
//!
//! Control: a control socket (default `LOG.ctl`, [`crate::control`]) takes runtime
//! watches, answers the live sessions view and reloads thresholds (also on SIGHUP); with
//! `--metrics ADDR` the counters are served in the Prometheus format ([`crate::observe::metrics`]).
//!
//! Stopping: SIGINT or SIGTERM (a second one kills at once) stops the loops; each worker
//! takes what is still in its RX ring, closes every open flow with reason `shutdown`, and
//! the recorder drains the rings and flushes the log.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//! use engine::pipeline::live::{live, LiveOptions};
//! use flowtable::config::Config;
//! use flowtable::table::RecordMode;
//!
//! let text = std::fs::read_to_string("/etc/conntrail.toml").unwrap();
//! let cfg = Config::parse(&text, "/etc/conntrail.toml").unwrap();
//! let opts = LiveOptions {
//!     mode: RecordMode::Anomalous,
//!     log: "tracker.log".into(),
//!     stats: "tracker.log.stats.json".into(),
//!     config_name: "/etc/conntrail.toml".into(),
//!     config_path: Some("/etc/conntrail.toml".into()),
//!     control: Some("tracker.log.ctl".into()),
//!     metrics: None,
//!     user: Some("conntrail".into()),
//! };
//! let stop = Arc::new(AtomicBool::new(false));
//! let summary = live(&cfg, &opts, &stop, |line| println!("{line}")).unwrap();
//! println!("{} packets", summary.packets());
//! ```

use std::fmt::Display;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use crossbeam_channel::bounded;
use flowtable::config::{Capture, Config};
use flowtable::packet::LinkType;
use flowtable::table::RecordMode;
use recorder::thread::Progress;

use super::summary;
use crate::control::{self, ControlOptions, ControlSocket};
use crate::observe::metrics::{ContextSample, MetricsListener, WorkerSample};
use crate::observe::stats::{self, ContextStats, RunState, SocketStats, StatsFile, STATS_VERSION};
use crate::pipeline::worker::{SourceFrame, Worker, WorkerStats};
use crate::privilege;
use crate::source::xdp::{
    self, BindMode, KernelStats, SocketCounters, XdpAttach, XdpProgram, XdpSocket,
};
use forensics::exit;

/// Which connections to record.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RecordArg {
    /// Only connections that tripped a trigger.
    Anomalous,
    /// Every connection (flag `all` added).
    All,
}

/// `conntrail run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Configuration file (TOML) with the thresholds and the `[[capture]]` entries.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which connections to record.
    #[arg(long, value_enum, default_value_t = RecordArg::Anomalous)]
    pub record: RecordArg,
    /// The log to write (rotated segments are LOG.1, LOG.2, ...).
    #[arg(long)]
    pub log: PathBuf,
    /// Where to publish counters every second (default: LOG.stats.json).
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// The control socket for `conntrail watch`, `sessions`, `session` and `reload`
    /// (default: LOG.ctl; mode 0600).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (`127.0.0.1:9187`; port 0 picks
    /// a free one). Off by default.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Once the sockets are open and the XDP programs attached, become this user with no
    /// capability left (the log's directory must be writable by it).
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub export: crate::nats::ExportArgs,
}

/// What to run and where to write.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub mode: RecordMode,
    pub log: PathBuf,
    pub stats: PathBuf,
    /// The configuration file's name, for errors that point into it.
    pub config_name: String,
    /// The configuration file, re-read at reload.
    pub config_path: Option<PathBuf>,
    /// The control socket to open (none: no control socket).
    pub control: Option<PathBuf>,
    /// Where to serve metrics (none: not served).
    pub metrics: Option<SocketAddr>,
    /// The user to become once the sockets are open (none: stay as started).
    pub user: Option<String>,
}

/// One socket and its worker at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct SocketSummary {
    pub interface: String,
    pub queue: u32,
    pub mode: String,
    /// Faster modes tried first, with why they failed.
    pub fallbacks: Vec<String>,
    pub counters: SocketCounters,
    pub kernel: KernelStats,
    pub worker: WorkerStats,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct LiveSummary {
    pub sockets: Vec<SocketSummary>,
    /// Each context's name, log and records written, in context order (`default` first).
    pub contexts: Vec<crate::contexts::ContextSummary>,
    pub records_written: u64,
    pub log_bytes: u64,
    pub log_segments: u32,
    /// Records lost for lack of space on the log's file system.
    pub frames_lost: u64,
    /// Records skipped by the recorder because their ring frame failed its checksum.
    pub ring_checksum_failures: u64,
    pub elapsed: Duration,
}

impl LiveSummary {
    pub fn packets(&self) -> u64 {
        self.sockets.iter().map(|s| s.counters.frames).sum()
    }

    pub fn flows(&self) -> u64 {
        self.sockets
            .iter()
            .map(|s| s.worker.table.flows_created)
            .sum()
    }

    pub fn ring_drops(&self) -> u64 {
        self.sockets.iter().map(|s| s.worker.ring_drops).sum()
    }

    /// Records that never reached the log: dropped from a full ring, damaged in a ring, or
    /// lost for lack of space.
    pub fn records_lost(&self) -> u64 {
        self.ring_drops() + self.ring_checksum_failures + self.frames_lost
    }
}

/// `conntrail run`: until SIGINT or SIGTERM, then the summary.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let Some(config) = args.config.as_deref() else {
        bail!(
            "conntrail run needs --config FILE with a [[capture]] entry per interface \
             (`conntrail config default` documents it)"
        );
    };
    let name = config.display().to_string();
    let text = std::fs::read_to_string(config).with_context(|| format!("reading config {name}"))?;
    let cfg = Config::parse(&text, &name)?;
    let opts = LiveOptions {
        mode: match args.record {
            RecordArg::Anomalous => RecordMode::Anomalous,
            RecordArg::All => RecordMode::All,
        },
        stats: args.stats.unwrap_or_else(|| stats::default_path(&args.log)),
        control: Some(
            args.control
                .unwrap_or_else(|| control::default_path(&args.log)),
        ),
        metrics: args.metrics,
        user: args.user,
        log: args.log,
        config_name: name,
        config_path: Some(config.to_path_buf()),
    };
    let shipping = crate::nats::start(
        &cfg,
        &args.export,
        &crate::contexts::log_paths(&cfg, &opts.log)?,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    signals::install().context("installing the SIGINT/SIGTERM handlers")?;
    let watcher = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("conntrail-signal".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if signals::received() {
                        stop.store(true, Ordering::Release);
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            })
            .context("starting the signal thread")?
    };
    let result = live(&cfg, &opts, &stop, |line| {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
    stop.store(true, Ordering::Release);
    let _ = watcher.join();
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            if let Some(shipping) = shipping {
                shipping.abandon();
            }
            return Err(e);
        }
    };
    print_summary(&summary, &opts)?;
    let shipped = match shipping {
        Some(shipping) => shipping.finish()?,
        None => ExitCode::SUCCESS,
    };
    Ok(exit::of_run(shipped, summary.records_lost(), false))
}

/// One planned socket: which entry, which queue, which core, which worker.
struct Plan {
    worker: u16,
    entry: usize,
    queue: u32,
    core: Option<usize>,
}

/// What a worker thread says once it is pinned and its socket is open.
struct Ready {
    bind: BindMode,
    fallbacks: Vec<String>,
    core: Option<usize>,
}

/// The per-worker slot of published counters.
#[derive(Clone, Default)]
struct Published {
    counters: SocketCounters,
    kernel: KernelStats,
    stats: Option<WorkerCounters>,
    /// All of them, for the metrics endpoint.
    worker: WorkerStats,
}

/// The parts of [`WorkerStats`] the stats file shows (plain integers: copying them in the
/// slot allocates nothing).
#[derive(Clone, Copy, Default)]
struct WorkerCounters {
    malformed: u64,
    flows: u64,
    flows_closed: u64,
    records: u64,
    ring_drops: u64,
    evictions: u64,
}

impl WorkerCounters {
    fn of(s: &WorkerStats) -> WorkerCounters {
        WorkerCounters {
            malformed: s.malformed_total(),
            flows: s.table.flows_created,
            flows_closed: s.table.flows_closed.iter().sum(),
            records: s.records,
            ring_drops: s.ring_drops,
            evictions: s.table.evictions,
        }
    }
}

type Slot = Arc<Mutex<Published>>;

/// How often workers publish and the stats file is written.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Empty looks at the RX ring before a worker waits in `poll(2)`.
const IDLE_SPINS: u32 = 2048;
/// Longest wait for traffic: the worker ticks its flow table at least this often.
const IDLE_WAIT_MS: i32 = 50;

/// Runs the `[[capture]]` entries of `cfg` until `stop` is set; `say` gets a line per
/// socket once they are all open.
pub fn live(
    cfg: &Config,
    opts: &LiveOptions,
    stop: &Arc<AtomicBool>,
    mut say: impl FnMut(String),
) -> Result<LiveSummary> {
    let started = Instant::now();
    // A run continues its logs (a crashed run's, just completed from its rings, too), but
    // never writes onto a file that is not one: checked before anything is opened.
    let log_paths = crate::contexts::log_paths(cfg, &opts.log)?;
    forensics::evidence::check_logs(
        "run",
        &log_paths,
        &forensics::evidence::Inputs::default(),
        forensics::evidence::LogTarget::Continue,
    )?;
    let (workers, umem_bytes) = crate::preflight::live_workers(cfg);
    crate::preflight::check_memory(cfg, workers, umem_bytes)?;
    let plans = plan(cfg, &opts.config_name)?;
    let control_socket = opts
        .control
        .as_deref()
        .map(ControlSocket::bind)
        .transpose()?;
    let metrics = opts
        .metrics
        .map(|a| MetricsListener::bind(a).with_context(|| format!("serving metrics on {a}")))
        .transpose()?;
    let (control_ends, control_workers) = control::channels(plans.len());
    let mut control_ends = control_ends.into_iter();
    // With --user, the ring directory is the user's: the engine becomes it and then still
    // removes its rings, and the next start trusts what it left there.
    let ring_owner = match &opts.user {
        Some(user) => privilege::lookup(user)?.uid,
        None => crate::ringdir::euid(),
    };
    let ring_dir = crate::ringdir::RingDir::open_for(&cfg.ring.dir, ring_owner)?;
    crate::crash::recover_at_start(&ring_dir);
    let run_file = crate::crash::RunFile::create(
        ring_dir,
        &log_paths,
        plans.iter().map(|p| p.worker),
        &cfg.log,
    )?;
    // A run continues its logs, whether the last run ended cleanly, crashed (its records
    // just recovered) or never was; record ids go on from the highest each worker left.
    let logs = crate::contexts::open_logs(cfg, &log_paths, |_| true)?;
    let sequences = crate::crash::next_sequences(&log_paths);
    let clock = Clock::new();
    // One XDP program per interface; frames reach the sockets once it is attached.
    let mut programs: Vec<(String, Arc<XdpProgram>)> = Vec::new();
    for (entry, c) in cfg.captures.iter().enumerate() {
        if programs.iter().any(|(name, _)| *name == c.interface) {
            continue;
        }
        let slots = cfg
            .captures
            .iter()
            .filter(|o| o.interface == c.interface)
            .flat_map(|o| o.queues.iter().map(|q| q + 1))
            .max()
            .unwrap_or(1)
            .max(xdp::rx_queue_count(&c.interface).unwrap_or(1));
        let program = XdpProgram::load(&c.interface, slots)
            .map_err(|e| capture_error(&opts.config_name, c, entry, e.config_key(), e))?;
        programs.push((c.interface.clone(), Arc::new(program)));
    }
    let (ready_tx, ready_rx) = bounded::<(u16, Result<Ready, (&'static str, String)>)>(plans.len());
    let mut consumers = Vec::new();
    let mut ring_paths = Vec::new();
    let mut handles: Vec<JoinHandle<Option<SocketSummary>>> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    for (p, path) in plans.iter().zip(run_file.rings()) {
        let path = path.clone();
        let created = ring::create(&path, cfg.ring.bytes as usize);
        let (producer, consumer) = match created {
            Ok(pc) => pc,
            Err(e) => {
                stop.store(true, Ordering::Release);
                for h in handles {
                    let _ = h.join();
                }
                return Err(anyhow!(e).context(format!("creating ring {}", path.display())));
            }
        };
        ring_paths.push(path);
        consumers.push(consumer);
        let slot = Slot::default();
        slots.push(Arc::clone(&slot));
        let capture = cfg.captures[p.entry].clone();
        let program = programs
            .iter()
            .find(|(name, _)| *name == capture.interface)
            .map(|(_, prog)| Arc::clone(prog))
            .ok_or_else(|| anyhow!("no XDP program for {}", capture.interface))?;
        let cfg = cfg.clone();
        let (queue, core, worker_id, mode) = (p.queue, p.core, p.worker, opts.mode);
        let worker_stop = Arc::clone(stop);
        let ready = ready_tx.clone();
        let worker_control = control_ends.next().filter(|_| control_socket.is_some());
        let first_sequence = sequences.get(&worker_id).copied().unwrap_or(0);
        let handle = thread::Builder::new()
            .name(format!("conntrail-w{worker_id}"))
            .spawn(move || {
                let pinned = match core {
                    Some(c) if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) => {
                        let _ = ready.send((
                            worker_id,
                            Err(("cores", format!("could not pin the worker to core {c}"))),
                        ));
                        return None;
                    }
                    c => c,
                };
                let opened = XdpSocket::open(&capture, queue, &program);
                drop(program);
                let mut socket = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready.send((worker_id, Err((e.config_key(), e.to_string()))));
                        return None;
                    }
                };
                let mut worker = Worker::new(&cfg, worker_id, mode, producer);
                worker.continue_ids(first_sequence);
                worker.set_core(pinned);
                let interface = cfg.interface_id(&capture.interface);
                if let Some(c) = worker_control {
                    worker.attach_control(c);
                }
                let _ = ready.send((
                    worker_id,
                    Ok(Ready {
                        bind: socket.mode(),
                        fallbacks: socket.fallbacks().to_vec(),
                        core: pinned,
                    }),
                ));
                drop(ready);
                capture_loop(
                    &mut socket,
                    &mut worker,
                    interface,
                    &worker_stop,
                    &slot,
                    &clock,
                );
                let kernel = socket.kernel_stats().unwrap_or_default();
                let counters = socket.counters;
                let summary = SocketSummary {
                    interface: capture.interface.clone(),
                    queue,
                    mode: socket.mode().as_str().to_string(),
                    fallbacks: socket.fallbacks().to_vec(),
                    counters,
                    kernel,
                    worker: WorkerStats::default(),
                };
                drop(socket);
                let worker = worker.finish();
                Some(SocketSummary { worker, ..summary })
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop.store(true, Ordering::Release);
                for h in handles {
                    let _ = h.join();
                }
                return Err(anyhow!(e).context("starting a worker thread"));
            }
        }
    }
    drop(ready_tx);
    let rec_stop = Arc::new(AtomicBool::new(false));
    let progress = Progress::new(consumers.len(), logs.len());
    let recorder = recorder::thread::spawn(
        consumers,
        logs,
        Arc::clone(&rec_stop),
        Arc::clone(&progress),
    );

    // Wait until every socket is open (or one failed).
    let mut ready: Vec<Option<Ready>> = (0..plans.len()).map(|_| None).collect();
    let mut failure = None;
    for _ in 0..plans.len() {
        match ready_rx.recv() {
            Ok((w, Ok(r))) => ready[w as usize] = Some(r),
            Ok((w, Err((key, e)))) => {
                let p = &plans[w as usize];
                let c = &cfg.captures[p.entry];
                failure = Some(capture_error(
                    &opts.config_name,
                    c,
                    p.entry,
                    key,
                    format!("{} queue {}: {e}", c.interface, p.queue),
                ));
                break;
            }
            Err(_) => {
                failure = Some(anyhow!("a worker thread ended before opening its socket"));
                break;
            }
        }
    }
    // Attach each interface's program, now that its sockets are in its map.
    let mut modes: Vec<(String, XdpAttach, Vec<String>)> = Vec::new();
    for (name, program) in &programs {
        if failure.is_some() {
            break;
        }
        let entries: Vec<(usize, &Capture)> = cfg
            .captures
            .iter()
            .enumerate()
            .filter(|(_, c)| c.interface == *name)
            .collect();
        let any_zero_copy = plans.iter().zip(&ready).any(|(p, r)| {
            cfg.captures[p.entry].interface == *name
                && r.as_ref().is_some_and(|r| r.bind == BindMode::ZeroCopy)
        });
        let Some(&(first, c)) = entries.first() else {
            continue;
        };
        let mut candidates = XdpAttach::candidates(c.mode, any_zero_copy).to_vec();
        for (_, other) in &entries {
            let allowed = XdpAttach::candidates(other.mode, any_zero_copy);
            candidates.retain(|a| allowed.contains(a));
        }
        if candidates.is_empty() {
            failure = Some(capture_error(
                &opts.config_name,
                c,
                first,
                "mode",
                format!("the [[capture]] entries of {name} ask for modes that exclude each other"),
            ));
            break;
        }
        match program.attach(&candidates) {
            Ok((attach, tried)) => modes.push((name.clone(), attach, tried)),
            Err(e) => {
                failure = Some(capture_error(
                    &opts.config_name,
                    c,
                    first,
                    e.config_key(),
                    e,
                ));
            }
        }
    }
    if let (None, Some(user)) = (&failure, &opts.user) {
        // Everything that needs a privilege is done: become `user`, with no capability.
        let mut handed: Vec<&std::path::Path> = log_paths.iter().map(PathBuf::as_path).collect();
        handed.extend(ring_paths.iter().map(PathBuf::as_path));
        handed.extend(opts.control.as_deref());
        match privilege::drop_to(user, &handed) {
            Ok(()) => say(format!("running as user {user}, with no capability")),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        stop.store(true, Ordering::Release);
        for h in handles {
            let _ = h.join();
        }
        rec_stop.store(true, Ordering::Release);
        let _ = recorder.join();
        return Err(e);
    }
    let mode_of = |p: &Plan, r: &Ready| {
        let c = &cfg.captures[p.entry];
        let (attach, tried) = modes
            .iter()
            .find(|(name, _, _)| *name == c.interface)
            .map_or(("?", &[][..]), |(_, a, t)| (a.as_str(), &t[..]));
        let not: Vec<&String> = tried.iter().chain(&r.fallbacks).collect();
        let fallback = if not.is_empty() {
            String::new()
        } else {
            format!(
                " (not {})",
                not.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; not ")
            )
        };
        (format!("{attach} {}", r.bind), fallback)
    };
    let describe = |p: &Plan, r: &Ready| {
        let c = &cfg.captures[p.entry];
        let (mode, fallback) = mode_of(p, r);
        format!(
            "{} queue {}: {mode}{fallback}; worker {} {}",
            c.interface,
            p.queue,
            p.worker,
            r.core
                .map_or_else(|| "not pinned".to_string(), |c| format!("on core {c}"))
        )
    };
    let mut template = StatsFile {
        version: STATS_VERSION,
        state: RunState::Running,
        pid: std::process::id(),
        log: opts.log.display().to_string(),
        started_ns: clock.realtime_ns(Instant::now()),
        updated_ns: 0,
        sockets: Vec::new(),
        control: opts.control.as_ref().map(|p| p.display().to_string()),
        contexts: log_paths
            .iter()
            .enumerate()
            .map(|(i, log)| ContextStats {
                name: cfg.context_name(u16::try_from(i).unwrap_or(u16::MAX)),
                log: log.display().to_string(),
                records_written: 0,
            })
            .collect(),
    };
    for (p, r) in plans.iter().zip(&ready) {
        let Some(r) = r else { continue };
        let line = describe(p, r);
        log::info!("{line}");
        say(line);
        template.sockets.push(SocketStats {
            worker: p.worker,
            interface: cfg.captures[p.entry].interface.clone(),
            queue: p.queue,
            core: r.core,
            mode: mode_of(p, r).0,
            ..SocketStats::default()
        });
    }
    let mut extra = String::new();
    let mut control_thread = None;
    if let Some(socket) = control_socket {
        let path = opts.control.clone().unwrap_or_default();
        let spawned = socket.spawn(
            control_workers,
            ControlOptions {
                path: path.clone(),
                config_path: opts.config_path.clone(),
                config: cfg.clone(),
                now_ns: Box::new(move || clock.realtime_ns(Instant::now())),
            },
            Arc::clone(stop),
        );
        match spawned {
            Ok(h) => control_thread = Some(h),
            Err(e) => log::warn!("starting the control thread: {e}"),
        }
        extra.push_str(&format!(", control {}", path.display()));
    }
    let mut metrics_thread = None;
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            extra.push_str(&format!(", metrics http://{addr}/metrics"));
        }
        let slots = slots.clone();
        let rows: Vec<(u16, String, u32)> = template
            .sockets
            .iter()
            .map(|r| (r.worker, r.interface.clone(), r.queue))
            .collect();
        let progress = Arc::clone(&progress);
        let names: Vec<String> = (0..log_paths.len())
            .map(|i| cfg.context_name(u16::try_from(i).unwrap_or(u16::MAX)))
            .collect();
        let source = move || {
            let workers = rows
                .iter()
                .zip(&slots)
                .enumerate()
                .map(|(ring, ((worker, interface, queue), slot))| {
                    let p = match slot.lock() {
                        Ok(p) => p.clone(),
                        Err(poisoned) => poisoned.into_inner().clone(),
                    };
                    WorkerSample {
                        worker: *worker,
                        interface: interface.clone(),
                        queue: *queue,
                        packets: p.counters.frames,
                        bytes: p.counters.bytes,
                        kernel: p.kernel,
                        stats: p.worker,
                        records_written: progress.written_from_ring(ring),
                        ring_checksum_failures: progress.checksum_failures_in_ring(ring),
                    }
                })
                .collect();
            let contexts = names
                .iter()
                .enumerate()
                .map(|(i, name)| ContextSample {
                    name: name.clone(),
                    records_written: progress.written_to_log(i),
                })
                .collect();
            (workers, contexts)
        };
        match listener.spawn(source, Arc::clone(stop)) {
            Ok(h) => metrics_thread = Some(h),
            Err(e) => log::warn!("starting the metrics thread: {e}"),
        }
    }
    say(format!(
        "running: log {}, stats {}{extra}; SIGINT or SIGTERM stops",
        opts.log.display(),
        opts.stats.display()
    ));

    // The stats thread, until stop.
    let stats_thread = {
        let stop = Arc::clone(stop);
        let slots = slots.clone();
        let template = template.clone();
        let progress = Arc::clone(&progress);
        let path = opts.stats.clone();
        thread::Builder::new()
            .name("conntrail-stats".into())
            .spawn(move || {
                let mut failed = false;
                loop {
                    let file = assemble(&template, &slots, &progress, stats::now_ns());
                    if let Err(e) = file.write_atomic(&path) {
                        if !failed {
                            log::warn!("writing stats file {}: {e}", path.display());
                        }
                        failed = true;
                    }
                    let next = Instant::now() + PUBLISH_EVERY;
                    while Instant::now() < next && !stop.load(Ordering::Acquire) {
                        thread::sleep(Duration::from_millis(20));
                    }
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                }
            })
            .context("starting the stats thread")?
    };

    let mut sockets = Vec::new();
    let mut panicked = false;
    for h in handles {
        match h.join() {
            Ok(Some(s)) => sockets.push(s),
            Ok(None) => {}
            Err(_) => panicked = true,
        }
    }
    let _ = stats_thread.join();
    for h in [control_thread, metrics_thread].into_iter().flatten() {
        let _ = h.join();
    }
    // Detach the programs (the sockets are closed).
    drop(programs);
    for (s, row) in sockets.iter_mut().zip(&template.sockets) {
        s.mode.clone_from(&row.mode);
    }
    rec_stop.store(true, Ordering::Release);
    let rec = recorder.join();
    if panicked || !matches!(rec, Ok(Ok(_))) {
        // The rings may still hold records: leave them to a recovery.
        run_file.keep();
    } else {
        drop(run_file);
    }
    if panicked {
        bail!("a worker thread panicked");
    }
    let rec = rec
        .map_err(|_| anyhow!("the recorder thread panicked"))?
        .context("writing the log")?;

    // The final stats file.
    let mut file = template;
    file.state = RunState::Stopped;
    file.updated_ns = stats::now_ns();
    for (c, n) in file.contexts.iter_mut().zip(&rec.frames_per_log) {
        c.records_written = *n;
    }
    for (row, s) in file.sockets.iter_mut().zip(&sockets) {
        fill_row(
            row,
            &Published {
                counters: s.counters,
                kernel: s.kernel,
                stats: Some(WorkerCounters::of(&s.worker)),
                worker: s.worker.clone(),
            },
        );
    }
    file.write_atomic(&opts.stats)
        .with_context(|| format!("writing stats file {}", opts.stats.display()))?;
    let total = rec.writers_total();
    let contexts = crate::contexts::summaries(cfg, log_paths, &rec.frames_per_log);
    Ok(LiveSummary {
        sockets,
        contexts,
        records_written: total.frames,
        log_bytes: total.file_bytes,
        log_segments: total.segments,
        frames_lost: total.frames_lost,
        ring_checksum_failures: rec
            .checksum_failures_per_ring
            .iter()
            .map(|f| f.frames)
            .sum(),
        elapsed: started.elapsed(),
    })
}

/// The receive loop of one worker, until `stop`; then what is left in the RX ring. Frames
/// come in on `interface` (an id of `Config::interface_id`).
fn capture_loop(
    socket: &mut XdpSocket,
    worker: &mut Worker,
    interface: u16,
    stop: &AtomicBool,
    slot: &Mutex<Published>,
    clock: &Clock,
) {
    let mut next_publish = Instant::now();
    let mut empty = 0u32;
    loop {
        let n = socket.receive();
        if n > 0 {
            empty = 0;
            let now = Instant::now();
            feed(socket, worker, interface, n, clock.realtime_ns(now));
            socket.counters.busy_ns +=
                Instant::now().saturating_duration_since(now).as_nanos() as u64;
            worker.poll_control();
            if now >= next_publish {
                publish(slot, socket, worker);
                next_publish = now + PUBLISH_EVERY;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        empty += 1;
        if empty < IDLE_SPINS {
            std::hint::spin_loop();
            continue;
        }
        socket.wait(IDLE_WAIT_MS);
        let now = Instant::now();
        worker.tick(clock.realtime_ns(now));
        worker.poll_control();
        if now >= next_publish {
            publish(slot, socket, worker);
            next_publish = now + PUBLISH_EVERY;
        }
    }
    // Drain: whatever the kernel put in the RX ring before the stop.
    loop {
        let n = socket.receive();
        if n == 0 {
            break;
        }
        feed(
            socket,
            worker,
            interface,
            n,
            clock.realtime_ns(Instant::now()),
        );
    }
    publish(slot, socket, worker);
}

/// Feeds the `n` frames of the last receive to the worker, all stamped `ts_ns`, and gives
/// them back to the kernel.
#[inline]
fn feed(socket: &mut XdpSocket, worker: &mut Worker, interface: u16, n: usize, ts_ns: u64) {
    worker.frames(n, |i| {
        let bytes = socket.frame(i);
        SourceFrame {
            link: LinkType::Ethernet,
            ts_ns,
            wire_len: bytes.len() as u32,
            interface,
            bytes,
        }
    });
    socket.recycle(n);
}

/// Copies a worker's counters into its slot (once a second: one kernel call, no
/// allocation; skipped if the stats thread holds the slot right now).
fn publish(slot: &Mutex<Published>, socket: &XdpSocket, worker: &Worker) {
    let kernel = socket.kernel_stats().unwrap_or_default();
    let all = worker.stats();
    let stats = WorkerCounters::of(&all);
    if let Ok(mut p) = slot.try_lock() {
        *p = Published {
            counters: socket.counters,
            kernel,
            stats: Some(stats),
            worker: all,
        };
    }
}

fn fill_row(row: &mut SocketStats, p: &Published) {
    row.packets = p.counters.frames;
    row.bytes = p.counters.bytes;
    row.batches = p.counters.batches;
    row.idle_waits = p.counters.idle_waits;
    row.busy_ns = p.counters.busy_ns;
    row.kernel = p.kernel;
    if let Some(s) = &p.stats {
        row.not_ip_or_malformed = s.malformed;
        row.flows = s.flows;
        row.flows_open = s.flows.saturating_sub(s.flows_closed);
        row.records = s.records;
        row.ring_drops = s.ring_drops;
        row.evictions = s.evictions;
    }
}

fn assemble(template: &StatsFile, slots: &[Slot], progress: &Progress, now_ns: u64) -> StatsFile {
    let mut file = template.clone();
    file.updated_ns = now_ns;
    for (i, c) in file.contexts.iter_mut().enumerate() {
        c.records_written = progress.written_to_log(i);
    }
    for (row, slot) in file.sockets.iter_mut().zip(slots) {
        let p = match slot.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        fill_row(row, &p);
    }
    file
}

/// An error about a `[[capture]]` entry: file, line, entry and key.
fn capture_error(
    origin: &str,
    c: &Capture,
    entry: usize,
    key: &str,
    message: impl Display,
) -> anyhow::Error {
    match c.line_of(key) {
        Some(line) => anyhow!(
            "{origin} line {line}: [[capture]] {} key `{key}`: {message}",
            entry + 1
        ),
        None => anyhow!("{origin}: [[capture]] {} key `{key}`: {message}", entry + 1),
    }
}

/// Sockets to open, after checking everything that can be checked before opening any:
/// interfaces, queues, cores and the memory to lock.
fn plan(cfg: &Config, origin: &str) -> Result<Vec<Plan>> {
    if cfg.captures.is_empty() {
        bail!(
            "{origin}: no [[capture]] entry: `conntrail run` needs one per interface \
             (`conntrail config default` documents them)"
        );
    }
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    let mut plans = Vec::new();
    let mut umem_bytes = 0u64;
    for (entry, c) in cfg.captures.iter().enumerate() {
        xdp::check_interface(&c.interface)
            .map_err(|e| capture_error(origin, c, entry, "interface", e))?;
        for (i, &queue) in c.queues.iter().enumerate() {
            xdp::check_queue(&c.interface, queue)
                .map_err(|e| capture_error(origin, c, entry, "queues", e))?;
            let core = c.cores.get(i).copied();
            if let Some(core) = core {
                if !cores.contains(&core) {
                    return Err(capture_error(
                        origin,
                        c,
                        entry,
                        "cores",
                        format!(
                            "core {core} does not exist or is not allowed to this process (it may \
                             use {}); change `cores`",
                            ranges(&cores)
                        ),
                    ));
                }
            }
            plans.push(Plan {
                worker: u16::try_from(plans.len()).map_err(|_| {
                    capture_error(origin, c, entry, "queues", "more than 65536 sockets")
                })?,
                entry,
                queue,
                core,
            });
            umem_bytes += c.umem_bytes();
        }
    }
    if let Err(e) = xdp::check_memlock(umem_bytes) {
        let (entry, c) = cfg
            .captures
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| c.umem_bytes())
            .unwrap_or((0, &cfg.captures[0]));
        return Err(capture_error(
            origin,
            c,
            entry,
            "frames",
            format!(
                "{} socket{}: {e}",
                plans.len(),
                if plans.len() == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(plans)
}

/// `0-3,6` for a list of core ids.
fn ranges(ids: &[usize]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end = ids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

/// The clock of a run: realtime read once at start, then advanced by the monotonic clock.
#[derive(Clone, Copy)]
struct Clock {
    mono0: Instant,
    real0_ns: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            mono0: Instant::now(),
            real0_ns: stats::now_ns(),
        }
    }

    /// ns since the epoch at monotonic instant `now`.
    #[inline]
    fn realtime_ns(&self, now: Instant) -> u64 {
        self.real0_ns + now.saturating_duration_since(self.mono0).as_nanos() as u64
    }
}

fn print_summary(s: &LiveSummary, opts: &LiveOptions) -> Result<()> {
    let mut out = io::stdout().lock();
    summary::write_totals(
        &mut out,
        &summary::Totals {
            packets: s.packets(),
            flows: s.flows(),
            records: s.records_written,
            ring_drops: s.ring_drops(),
            elapsed: s.elapsed,
        },
    )?;
    let tables: Vec<_> = s.sockets.iter().map(|x| &x.worker.table).collect();
    summary::write_closed(&mut out, &tables, &s.contexts)?;
    for x in &s.sockets {
        let w = &x.worker;
        writeln!(
            out,
            "{} queue {} ({}): kernel rx dropped {}, rx ring full {}, fill ring empty {}, \
             invalid descriptors {}; worker {} (core {}): packets {}, bytes {}, flows {}, \
             records {}, ring drops {}, evictions {}, non-ip or malformed {}",
            x.interface,
            x.queue,
            x.mode,
            x.kernel.rx_dropped,
            x.kernel.rx_ring_full,
            x.kernel.fill_ring_empty,
            x.kernel.rx_invalid_descs,
            w.worker,
            w.core
                .map_or_else(|| "unpinned".to_string(), |c| c.to_string()),
            x.counters.frames,
            x.counters.bytes,
            w.table.flows_created,
            w.records,
            w.ring_drops,
            w.table.evictions,
            w.malformed_total()
        )?;
    }
    writeln!(
        out,
        "log: {} bytes in {} segment(s); stats: {}",
        s.log_bytes,
        s.log_segments,
        opts.stats.display()
    )?;
    forensics::exit::warn_records_lost(s.ring_drops(), s.ring_checksum_failures, s.frames_lost);
    Ok(())
}

/// SIGINT and SIGTERM set a flag; the first of them resets the handler, so a second one
/// ends the process at once.
mod signals {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};

    static RECEIVED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_signal: libc::c_int) {
        RECEIVED.store(true, Ordering::SeqCst);
    }

    pub fn install() -> io::Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic (async-signal-safe); the
            // sigaction struct is zeroed, then its handler, flags and empty mask are set.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub fn received() -> bool {
        RECEIVED.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_read_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(ranges(&[5, 1]), "1,5");
        assert_eq!(ranges(&[]), "none");
    }

    #[test]
    fn the_clock_is_epoch_time_advanced_monotonically() {
        let c = Clock::new();
        let t0 = c.realtime_ns(Instant::now());
        let t1 = c.realtime_ns(Instant::now() + Duration::from_millis(5));
        assert!(t0 >= c.real0_ns && t0 > 1_600_000_000_000_000_000);
        assert!(t1 >= t0 + 5_000_000);
    }

    fn config(text: &str) -> Config {
        Config::parse(text, "c.toml").expect("parses")
    }

    #[test]
    fn start_errors_name_the_file_line_key_and_the_fix() {
        let e = plan(&Config::default(), "c.toml")
            .err()
            .expect("no capture");
        assert!(e.to_string().contains("no [[capture]]"), "{e}");

        let cfg = config("[table]\ncapacity = 10\n\n[[capture]]\ninterface = \"nosuch0\"\n");
        let e = plan(&cfg, "c.toml")
            .err()
            .expect("no interface")
            .to_string();
        assert!(
            e.starts_with(
                "c.toml line 5: [[capture]] 1 key `interface`: there is no interface `nosuch0`"
            ),
            "{e}"
        );

        if xdp::rx_queue_count("lo").is_some() {
            let cfg = config("[[capture]]\ninterface = \"lo\"\nqueues = [0, 999]\n");
            let e = plan(&cfg, "c.toml").err().expect("no queue").to_string();
            assert!(
                e.starts_with(
                    "c.toml line 3: [[capture]] 1 key `queues`: lo has no receive queue 999"
                ),
                "{e}"
            );
        }

        let cfg = config("[[capture]]\ninterface = \"lo\"\ncores = [100000]\n");
        let e = plan(&cfg, "c.toml").err().expect("no core").to_string();
        assert!(
            e.starts_with("c.toml line 3: [[capture]] 1 key `cores`: core 100000 does not exist"),
            "{e}"
        );
    }
}
