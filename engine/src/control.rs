//! The control socket of `conntrail run`: runtime watches, the live sessions view and
//! reload, asked for by `conntrail watch`, `sessions`, `session` and `reload`.
//!
//! The socket is a Unix stream socket (by default `LOG.ctl`, mode 0600: only its owner may
//! talk to it). A client writes one request as a line of JSON and reads one reply, then the
//! connection closes. One control thread answers every client over nonblocking sockets
//! ([`crate::serve`]), so an idle or slow client keeps no other waiting, within [`LIMITS`]:
//! a request line of at most 64 KiB (longer: refused, the rest unread), complete within 2 s
//! of the connect (a deadline, not a per-read timeout), the reply taken within 10 s, at most
//! 16 clients at once (one more closes the oldest still sending its request). Requests are
//! answered one after the other, as they complete.
//!
//! A run holds at most [`watch::MAX_WATCHES`] watches, and `watch add` is refused (nothing
//! changes) once they are that many or once a worker measures them at
//! [`watch::BUDGET_NS`] or more per new connection; the refusal gives the cap, the budget
//! and the cost measured.
//!
//! Workers are never locked and never wait for the control thread. What the control thread
//! has for them is announced by one atomic generation counter on a shared [`Board`]; a
//! worker compares it with the last generation it saw once per batch, and after every idle
//! wait (at most a few tens of ms apart, so an idle worker answers too). Only when it
//! changed does the worker look further: it takes the new watch list (a mutex taken once
//! per change, never per packet) into its own copy, and serves the requests queued on its
//! channel: a copy of its open connections (into a buffer the control thread hands it and
//! gets back), one connection with its tracking points so far, the cost of its watches,
//! new thresholds. Replies go back on a channel; a worker never blocks on it.
//!
//! Watches expire on their own: a worker ignores a watch from the instant it expires, and
//! the control thread removes it from the list soon after.
//!
//! Reload (`conntrail reload`, or SIGHUP to the process) re-reads the configuration file.
//! A file that does not parse or validate is refused with its file, line and key, and the
//! running configuration stays. Otherwise the thresholds (`[triggers]` and `[[override]]`)
//! are handed to every worker; sections that cannot change without a restart (table, ring,
//! log, timeouts, captures) are named in the reply when they differ, and not applied.
//!
//! ```no_run
//! use engine::control::{ask, Reply, Request};
//!
//! let reply = ask("tracker.log.ctl".as_ref(), &Request::WatchList).expect("a running engine");
//! if let Reply::Watches { watches, .. } = reply {
//!     println!("{} watches", watches.len());
//! }
//! ```

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use flowtable::config::{Config, DEFAULT_CONTEXT};
use flowtable::point::Point;
use flowtable::record::Record;
use flowtable::table::{FlowTable, OpenFlow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::serve::{self, Limits, Server};
use crate::watch::{self, Watch, WatchCost, WorkerWatches};
use forensics::expr::{self, Expr};
use forensics::show;
use forensics::units;

/// The control socket beside a log: `LOG.ctl`.
pub fn default_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// What the control thread has for the workers, announced by one counter.
#[derive(Debug)]
pub struct Board {
    /// Bumped whenever the watch list changes or a request is queued.
    generation: AtomicU64,
    watches: Mutex<Arc<[Watch]>>,
    watch_generation: AtomicU64,
    /// Per worker: the last generation it has acted on.
    acks: Box<[AtomicU64]>,
}

/// A request to one worker, numbered so a late answer to an earlier one is recognised.
#[derive(Debug)]
struct Ask {
    seq: u64,
    kind: AskKind,
}

#[derive(Debug)]
enum AskKind {
    /// Fill the buffer with the open connections.
    Sessions(Vec<OpenFlow>),
    /// One connection, its points into the buffer.
    Session(u64, Vec<Point>),
    Costs,
    Thresholds(Box<Config>),
}

#[derive(Debug)]
struct Answer {
    seq: u64,
    worker: usize,
    kind: AnswerKind,
}

#[derive(Debug)]
enum AnswerKind {
    Sessions(Vec<OpenFlow>),
    Session(Option<Box<(OpenFlow, u32)>>, Vec<Point>),
    Costs(Vec<WatchCost>),
    Applied,
}

/// A worker's end: its copy of the watches, its request queue and its reply channel.
#[derive(Debug)]
pub struct WorkerControl {
    board: Arc<Board>,
    index: usize,
    seen: u64,
    watch_seen: u64,
    watches: WorkerWatches,
    requests: Receiver<Ask>,
    answers: Sender<Answer>,
}

impl WorkerControl {
    /// Once per batch and after every idle wait: acts on what the control thread has
    /// announced since the last call (one atomic load when nothing has).
    #[inline]
    pub fn poll(&mut self, table: &mut FlowTable) {
        let generation = self.board.generation.load(Ordering::Acquire);
        if generation != self.seen {
            self.serve(table, generation);
        }
    }

    /// Whether a connection just created must be tested against watches.
    #[inline]
    pub fn watching(&self) -> bool {
        self.watches.any()
    }

    /// Tests the connection `table` created last against the active watches.
    pub fn on_new_flow(&mut self, table: &mut FlowTable, now_ns: u64) {
        self.watches.on_new_flow(table, now_ns);
    }

    #[cold]
    fn serve(&mut self, table: &mut FlowTable, generation: u64) {
        self.seen = generation;
        let watch_generation = self.board.watch_generation.load(Ordering::Acquire);
        if watch_generation != self.watch_seen {
            let list = match self.board.watches.lock() {
                Ok(l) => Arc::clone(&l),
                Err(poisoned) => Arc::clone(&poisoned.into_inner()),
            };
            self.watches.replace(list);
            self.watch_seen = watch_generation;
        }
        while let Ok(ask) = self.requests.try_recv() {
            let kind = match ask.kind {
                AskKind::Sessions(mut buf) => {
                    table.open_flows(&mut buf);
                    AnswerKind::Sessions(buf)
                }
                AskKind::Session(id, mut points) => {
                    let found = table.open_flow_by_id(id, &mut points).map(Box::new);
                    AnswerKind::Session(found, points)
                }
                AskKind::Costs => AnswerKind::Costs(self.watches.costs().to_vec()),
                AskKind::Thresholds(cfg) => {
                    table.set_thresholds(&cfg);
                    AnswerKind::Applied
                }
            };
            let _ = self.answers.try_send(Answer {
                seq: ask.seq,
                worker: self.index,
                kind,
            });
        }
        if let Some(ack) = self.board.acks.get(self.index) {
            ack.store(generation, Ordering::Release);
        }
    }
}

/// The control thread's end of the workers.
pub struct Workers {
    board: Arc<Board>,
    requests: Vec<Sender<Ask>>,
    answers: Receiver<Answer>,
    seq: u64,
}

/// The shared board, one [`WorkerControl`] per worker (in worker order) and the control
/// thread's end.
pub fn channels(workers: usize) -> (Vec<WorkerControl>, Workers) {
    let board = Arc::new(Board {
        generation: AtomicU64::new(0),
        watches: Mutex::new(Arc::from(Vec::new())),
        watch_generation: AtomicU64::new(0),
        acks: (0..workers).map(|_| AtomicU64::new(0)).collect(),
    });
    let (answer_tx, answer_rx) = bounded(workers.max(1) * 4);
    let mut ends = Vec::new();
    let mut requests = Vec::new();
    for index in 0..workers {
        let (tx, rx) = bounded(4);
        requests.push(tx);
        ends.push(WorkerControl {
            board: Arc::clone(&board),
            index,
            seen: 0,
            watch_seen: 0,
            watches: WorkerWatches::default(),
            requests: rx,
            answers: answer_tx.clone(),
        });
    }
    (
        ends,
        Workers {
            board,
            requests,
            answers: answer_rx,
            seq: 0,
        },
    )
}

/// How long the control thread waits for the workers to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

impl Workers {
    fn count(&self) -> usize {
        self.requests.len()
    }

    /// Sends `make(worker)` to every worker it gives a request for, announces it, and
    /// collects the answers that come within [`ANSWER_WAIT`].
    fn ask(&mut self, mut make: impl FnMut(usize) -> Option<AskKind>) -> Vec<Answer> {
        self.seq += 1;
        let seq = self.seq;
        let mut asked = 0;
        for (i, tx) in self.requests.iter().enumerate() {
            let Some(kind) = make(i) else { continue };
            if tx.try_send(Ask { seq, kind }).is_ok() {
                asked += 1;
            }
        }
        self.board.generation.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + ANSWER_WAIT;
        let mut got = Vec::new();
        while got.len() < asked {
            match self.answers.recv_deadline(deadline) {
                Ok(a) if a.seq == seq => got.push(a),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        got
    }

    /// Announces a new watch list to the workers (each takes it at its next poll);
    /// returns the generation that announces it.
    pub fn set_watches(&self, list: Vec<Watch>) -> u64 {
        match self.board.watches.lock() {
            Ok(mut l) => *l = Arc::from(list),
            Err(poisoned) => *poisoned.into_inner() = Arc::from(list),
        }
        self.board.watch_generation.fetch_add(1, Ordering::AcqRel);
        self.board.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Publishes a new watch list; returns how many workers took it within
    /// [`ANSWER_WAIT`].
    fn publish_watches(&self, list: Vec<Watch>) -> usize {
        let generation = self.set_watches(list);
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let took = self
                .board
                .acks
                .iter()
                .filter(|a| a.load(Ordering::Acquire) >= generation)
                .count();
            if took == self.count() || Instant::now() >= deadline {
                return took;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Add a watch (an expression of [`crate::watch`]), for a while or until deleted.
    WatchAdd {
        expr: String,
        for_ns: Option<u64>,
    },
    WatchList,
    WatchDel {
        id: u32,
    },
    /// The open connections, those matching `expr` if given; the first `limit` of them
    /// by id (none: all).
    Sessions {
        expr: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// One open connection with its tracking points so far.
    Session {
        id: u64,
    },
    /// Re-read the configuration file.
    Reload,
}

/// A watch as `watch list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchRow {
    pub id: u32,
    pub expr: String,
    pub added_ns: u64,
    pub until_ns: Option<u64>,
    /// What it cost each worker that answered (worker index, counts).
    pub costs: Vec<(usize, WatchCost)>,
}

/// An open connection as `sessions` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: u64,
    pub worker: u16,
    pub proto: String,
    pub client: String,
    pub server: String,
    pub state: String,
    pub history: String,
    /// Since its first packet, and since its latest one.
    pub age_ns: u64,
    pub idle_ns: u64,
    pub c2s_pkts: u64,
    pub c2s_bytes: u64,
    pub s2c_pkts: u64,
    pub s2c_bytes: u64,
    /// A watch matched at its start.
    pub user: bool,
    /// Its context's name.
    #[serde(default)]
    pub context: String,
}

/// The reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The request was refused or failed; nothing changed.
    Error {
        message: String,
    },
    /// The watches after the request, and what happened.
    Watches {
        message: String,
        watches: Vec<WatchRow>,
        workers: usize,
        answered: usize,
    },
    Sessions {
        sessions: Vec<SessionRow>,
        /// How many open connections matched (more than `sessions` holds past the limit).
        matching: usize,
        workers: usize,
        answered: usize,
    },
    /// One connection: `show`'s text block and JSON object of it as it is now.
    Session {
        text: String,
        json: Value,
    },
    Reloaded {
        message: String,
    },
}

/// Sends one request to the control socket at `path` and reads the reply.
pub fn ask(path: &Path, request: &Request) -> Result<Reply> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the control socket {} (is `conntrail run` running with this log?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut text = String::new();
    stream
        .take(MAX_REPLY)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the reply of {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} sent a reply that is not understood", path.display()))
}

/// Longest request accepted (bytes).
const MAX_MESSAGE: usize = 64 * 1024;
/// Longest reply read (bytes): a million sessions.
const MAX_REPLY: u64 = 1 << 30;

/// What the control thread needs besides the workers.
pub struct ControlOptions {
    pub path: PathBuf,
    /// The configuration file to re-read at reload (none: reload is refused).
    pub config_path: Option<PathBuf>,
    /// The configuration running now.
    pub config: Config,
    /// The run's clock: ns since the epoch, as workers stamp packets.
    pub now_ns: Box<dyn Fn() -> u64 + Send>,
}

/// The bounds of a client: its request line, its time, and how many are served at once.
pub const LIMITS: Limits = Limits {
    max_request: MAX_MESSAGE,
    request_deadline: Duration::from_secs(2),
    reply_deadline: Duration::from_secs(10),
    max_connections: 16,
};

/// A bound control socket, before its thread starts.
pub struct ControlSocket {
    server: Server<UnixListener>,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600. A socket file left by a run that died is replaced; one
    /// that answers belongs to a running engine and is an error.
    pub fn bind(path: &Path) -> Result<ControlSocket> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; remove it or give another --control",
                    path.display()
                );
            }
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "{} answers: another conntrail run uses it; give another --control",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        // SAFETY: umask(2) only swaps the process's file mode mask; the socket is created
        // with no permission for group and others, and the old mask is put back at once.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener =
            bound.with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        let server = Server::new(listener, LIMITS, line_end)
            .with_context(|| format!("serving the control socket {}", path.display()))?;
        Ok(ControlSocket {
            server,
            path: path.to_path_buf(),
        })
    }

    /// Starts the control thread; it answers until `stop`. The socket file is removed when
    /// the thread ends (or when an unspawned socket is dropped).
    pub fn spawn(
        mut self,
        workers: Workers,
        opts: ControlOptions,
        stop: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        hangup::install()?;
        thread::Builder::new()
            .name("conntrail-control".into())
            .spawn(move || {
                let mut state = State {
                    workers,
                    opts,
                    watches: Vec::new(),
                    next_id: 1,
                    buffers: Vec::new(),
                };
                while !stop.load(Ordering::Acquire) {
                    if hangup::take() {
                        match state.reload() {
                            Reply::Reloaded { message } => log::info!("SIGHUP: {message}"),
                            Reply::Error { message } => log::warn!("SIGHUP: {message}"),
                            _ => {}
                        }
                    }
                    state.prune();
                    self.server
                        .turn(Duration::from_millis(20), &mut |r| state.answer(r));
                }
            })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct State {
    workers: Workers,
    opts: ControlOptions,
    watches: Vec<Watch>,
    next_id: u32,
    /// Session buffers, handed to the workers and back.
    buffers: Vec<Vec<OpenFlow>>,
}

/// A request is one line; at the client's close, whatever came.
fn line_end(bytes: &[u8], eof: bool) -> Option<usize> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => Some(i + 1),
        None => (eof && !bytes.is_empty()).then_some(bytes.len()),
    }
}

impl State {
    /// The reply line to one client's request.
    fn answer(&mut self, request: serve::Request<'_>) -> Vec<u8> {
        let reply = match request {
            serve::Request::Complete(line) => match serde_json::from_slice::<Request>(line) {
                Ok(r) => self.handle(r),
                Err(e) => Reply::Error {
                    message: format!("not a control request: {e}"),
                },
            },
            serve::Request::TooLarge => Reply::Error {
                message: format!("the request is longer than {MAX_MESSAGE} bytes"),
            },
        };
        let mut text = serde_json::to_vec(&reply).unwrap_or_default();
        text.push(b'\n');
        text
    }

    fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::WatchAdd { expr, for_ns } => self.watch_add(&expr, for_ns),
            Request::WatchList => self.watch_reply(String::new()),
            Request::WatchDel { id } => {
                let before = self.watches.len();
                self.watches.retain(|w| w.id != id);
                if self.watches.len() == before {
                    return Reply::Error {
                        message: format!("there is no watch {id} (`conntrail watch list`)"),
                    };
                }
                let took = self.workers.publish_watches(self.watches.clone());
                self.watch_reply(format!(
                    "watch {id} deleted on {took} of {} workers",
                    self.workers.count()
                ))
            }
            Request::Sessions { expr, limit } => self.sessions(expr.as_deref(), limit),
            Request::Session { id } => self.session(id),
            Request::Reload => self.reload(),
        }
    }

    fn watch_add(&mut self, text: &str, for_ns: Option<u64>) -> Reply {
        let expr = match watch::compile(text) {
            Ok(e) => e,
            Err(e) => {
                return Reply::Error {
                    message: format!("watch `{text}`: {e}"),
                }
            }
        };
        if let Some(why) = refusal(self.watches.len(), &self.costs()) {
            return Reply::Error {
                message: format!("watch `{text}` refused: {why}"),
            };
        }
        let now = (self.opts.now_ns)();
        let id = self.next_id;
        self.next_id += 1;
        self.watches.push(Watch {
            id,
            expr,
            added_ns: now,
            until_ns: for_ns.map(|d| now.saturating_add(d)),
        });
        let took = self.workers.publish_watches(self.watches.clone());
        self.watch_reply(format!(
            "watch {id} active on {took} of {} workers{}",
            self.workers.count(),
            for_ns.map_or_else(
                || " until deleted".to_string(),
                |d| format!(" for {}", units::duration_text(d))
            )
        ))
    }

    /// Drops the watches that have expired and tells the workers.
    fn prune(&mut self) {
        let now = (self.opts.now_ns)();
        let before = self.watches.len();
        self.watches.retain(|w| w.active_at(now));
        if self.watches.len() != before {
            self.workers.publish_watches(self.watches.clone());
        }
    }

    /// What the watches cost each worker that answered.
    fn costs(&mut self) -> Vec<(usize, Vec<WatchCost>)> {
        self.workers
            .ask(|_| Some(AskKind::Costs))
            .into_iter()
            .filter_map(|a| match a.kind {
                AnswerKind::Costs(c) => Some((a.worker, c)),
                _ => None,
            })
            .collect()
    }

    fn watch_reply(&mut self, message: String) -> Reply {
        let answers = self.costs();
        let answered = answers.len();
        let watches = self
            .watches
            .iter()
            .map(|w| WatchRow {
                id: w.id,
                expr: w.expr.to_string(),
                added_ns: w.added_ns,
                until_ns: w.until_ns,
                costs: answers
                    .iter()
                    .filter_map(|(worker, c)| {
                        c.iter().find(|c| c.id == w.id).map(|c| (*worker, *c))
                    })
                    .collect(),
            })
            .collect();
        Reply::Watches {
            message,
            watches,
            workers: self.workers.count(),
            answered,
        }
    }

    fn sessions(&mut self, text: Option<&str>, limit: Option<usize>) -> Reply {
        let filter = match text.map(Expr::parse).transpose() {
            Ok(f) => f,
            Err(e) => {
                return Reply::Error {
                    message: format!("sessions `{}`: {e}", text.unwrap_or_default()),
                }
            }
        };
        let mut buffers = std::mem::take(&mut self.buffers);
        let answers = self
            .workers
            .ask(|_| Some(AskKind::Sessions(buffers.pop().unwrap_or_default())));
        let now = (self.opts.now_ns)();
        let answered = answers.len();
        let mut sessions = Vec::new();
        for a in answers {
            if let AnswerKind::Sessions(buf) = a.kind {
                for f in &buf {
                    if filter.as_ref().is_none_or(|e| e.matches(&f.as_record())) {
                        let mut row = session_row(f, now);
                        row.context = self.opts.config.context_name(f.context);
                        sessions.push(row);
                    }
                }
                self.buffers.push(buf);
            }
        }
        sessions.sort_by_key(|s| s.id);
        let matching = sessions.len();
        if let Some(limit) = limit {
            sessions.truncate(limit);
        }
        Reply::Sessions {
            sessions,
            matching,
            workers: self.workers.count(),
            answered,
        }
    }

    fn session(&mut self, id: u64) -> Reply {
        let worker = (id >> 48) as usize;
        if worker >= self.workers.count() {
            return Reply::Error {
                message: format!(
                    "there is no connection {id}: its worker {worker} does not exist \
                     (`conntrail sessions` lists the open ones)"
                ),
            };
        }
        let answers = self
            .workers
            .ask(|w| (w == worker).then(|| AskKind::Session(id, Vec::new())));
        for a in answers {
            if let AnswerKind::Session(Some(found), points) = a.kind {
                let (flow, dropped) = *found;
                let mut rec: Record<'_> = flow.as_record();
                rec.points = std::borrow::Cow::Owned(points);
                rec.points_dropped = dropped;
                rec.irregular_point = rec
                    .points
                    .iter()
                    .position(|p| p.severity >= flowtable::point::Severity::Warn)
                    .and_then(|i| u16::try_from(i).ok());
                let mut text = Vec::new();
                let _ = show::write_text(&mut text, &rec);
                let mut json = show::to_json(&rec);
                if let Some(o) = json.as_object_mut() {
                    o.insert("open".into(), Value::Bool(true));
                    o.remove("close_reason");
                }
                return Reply::Session {
                    text: String::from_utf8_lossy(&text).into_owned(),
                    json,
                };
            }
        }
        Reply::Error {
            message: format!(
                "connection {id} is not open (closed already, or never seen; `conntrail show` \
                 has it if it was recorded)"
            ),
        }
    }

    fn reload(&mut self) -> Reply {
        let Some(path) = self.opts.config_path.clone() else {
            return Reply::Error {
                message: "this run has no configuration file to re-read".into(),
            };
        };
        let name = path.display().to_string();
        let new = match std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("reading {name}: {e}"))
            .and_then(|text| Config::parse(&text, &name).map_err(|e| anyhow!(e)))
        {
            Ok(c) => c,
            Err(e) => {
                return Reply::Error {
                    message: format!("{e}; the running configuration is kept"),
                }
            }
        };
        let old = &self.opts.config;
        let same_contexts = new.contexts.len() == old.contexts.len()
            && new
                .contexts
                .iter()
                .zip(&old.contexts)
                .all(|(n, o)| n.same_membership(o));
        let mut fixed = Vec::new();
        for (section, same) in [
            ("[table]", new.table == old.table),
            ("[timeouts]", new.timeouts == old.timeouts),
            ("[ring]", new.ring == old.ring),
            ("[log]", new.log == old.log),
            ("[[capture]]", new.captures == old.captures),
            (
                "[[context]] names, interfaces, VLANs or logs",
                same_contexts,
            ),
        ] {
            if !same {
                fixed.push(section);
            }
        }
        let restart = if fixed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} changed but need a restart (not applied)",
                fixed.join(", ")
            )
        };
        // The running configuration with the new thresholds: the default context's, and the
        // other contexts' when they are the same contexts.
        let mut thresholds = old.clone();
        thresholds.triggers = new.triggers;
        thresholds.overrides = new.overrides;
        if same_contexts {
            thresholds.contexts = new.contexts;
        }
        if thresholds == *old {
            return Reply::Reloaded {
                message: format!("{name}: thresholds unchanged{restart}"),
            };
        }
        let answers = self
            .workers
            .ask(|_| Some(AskKind::Thresholds(Box::new(thresholds.clone()))));
        let applied = answers
            .iter()
            .filter(|a| matches!(a.kind, AnswerKind::Applied))
            .count();
        self.opts.config = thresholds;
        Reply::Reloaded {
            message: format!(
                "{name}: thresholds reloaded on {applied} of {} workers{restart}",
                self.workers.count()
            ),
        }
    }
}

/// Why one more watch is refused, with `active` watches that cost the workers `costs`: the
/// cap [`watch::MAX_WATCHES`] is reached, or a worker measured them at
/// [`watch::BUDGET_NS`] or more per new connection.
fn refusal(active: usize, costs: &[(usize, Vec<WatchCost>)]) -> Option<String> {
    let costliest = costs
        .iter()
        .map(|(worker, c)| (*worker, watch::cost_per_connection_ns(c)))
        .max_by_key(|(_, ns)| *ns);
    let measured = match costliest {
        Some((worker, ns)) if ns > 0 => format!(
            "they cost worker {worker} {} per new connection as it measures them",
            micros(ns)
        ),
        _ => "their cost is not measured yet (no new connection since they were added)".into(),
    };
    let budget = micros(watch::BUDGET_NS);
    if active >= watch::MAX_WATCHES {
        return Some(format!(
            "{active} watches are active, the most a run takes is {}; {measured} (budget \
             {budget}); delete one first (`conntrail watch del ID`)",
            watch::MAX_WATCHES
        ));
    }
    match costliest {
        Some((worker, ns)) if ns >= watch::BUDGET_NS => Some(format!(
            "the {active} active watches cost worker {worker} {} per new connection as it \
             measures them, the budget is {budget}; delete one first (`conntrail watch del ID`)",
            micros(ns)
        )),
        _ => None,
    }
}

/// `ns` as microseconds: `3.2 us`.
fn micros(ns: u64) -> String {
    format!("{}.{} us", ns / 1000, ns % 1000 / 100)
}

fn session_row(f: &OpenFlow, now_ns: u64) -> SessionRow {
    SessionRow {
        id: f.id,
        worker: (f.id >> 48) as u16,
        proto: f.proto.as_str().to_string(),
        client: units::endpoint_text(f.client.ip, f.client.port),
        server: units::endpoint_text(f.server.ip, f.server.port),
        state: f.conn_state.as_str().to_string(),
        history: f.history.as_str().to_string(),
        age_ns: now_ns.saturating_sub(f.start_ns),
        idle_ns: now_ns.saturating_sub(f.last_ns),
        c2s_pkts: f.c2s.pkts,
        c2s_bytes: f.c2s.bytes,
        s2c_pkts: f.s2c.pkts,
        s2c_bytes: f.s2c.bytes,
        user: f.user,
        context: String::new(),
    }
}

/// SIGHUP sets a flag the control thread takes.
mod hangup {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};

    static RECEIVED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_signal: libc::c_int) {
        RECEIVED.store(true, Ordering::SeqCst);
    }

    pub fn install() -> io::Result<()> {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); the sigaction
        // struct is zeroed, then its handler, flags and empty mask are set.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn take() -> bool {
        RECEIVED.swap(false, Ordering::SeqCst)
    }
}

/// Where the control socket of a run is.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArg {
    /// The control socket (default: LOG.ctl).
    #[arg(long, global = true)]
    pub control: Option<PathBuf>,
    /// The log of the run, beside which its control socket is.
    #[arg(long, global = true, default_value = "tracker.log")]
    pub log: PathBuf,
}

impl ControlArg {
    fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| default_path(&self.log))
    }
}

/// `conntrail watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(subcommand)]
    pub action: WatchAction,
    #[command(flatten)]
    pub at: ControlArg,
}

/// What to do with watches.
#[derive(clap::Subcommand, Debug)]
pub enum WatchAction {
    /// Record every connection that starts matching EXPR while the watch lasts (flag
    /// `user`), whatever its outcome. EXPR tests host, net, port, client, server, proto,
    /// ip4/ip6, vlan with and/or/not.
    Add {
        expr: String,
        /// Expire after this long (`30s`, `5m`, `1h`); without it, until deleted.
        #[arg(long = "for", value_parser = parse_for)]
        for_ns: Option<u64>,
    },
    /// The active watches and what each costs each worker.
    List,
    /// Delete a watch.
    Del { id: u32 },
}

fn parse_for(text: &str) -> Result<u64, String> {
    match expr::parse_duration(text) {
        Ok(0) => Err("a watch must last longer than 0".into()),
        Ok(ns) => Ok(ns),
        Err(e) => Err(format!("`{text}` is not {e}")),
    }
}

/// `conntrail sessions`.
#[derive(clap::Args, Debug)]
pub struct SessionsArgs {
    /// Only connections matching this record expression (as `conntrail query`).
    pub expr: Option<String>,
    /// Print JSON Lines.
    #[arg(long)]
    pub json: bool,
    /// At most this many connections, the oldest ids first (0: all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[command(flatten)]
    pub at: ControlArg,
}

/// `conntrail session`.
#[derive(clap::Args, Debug)]
pub struct SessionArgs {
    /// The connection's id (the first column of `conntrail sessions`).
    pub id: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub at: ControlArg,
}

/// `conntrail reload`.
#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub at: ControlArg,
}

/// Sends a request and turns an error reply into a failure.
fn request(at: &ControlArg, r: &Request) -> Result<Reply> {
    match ask(&at.path(), r)? {
        Reply::Error { message } => bail!("{message}"),
        reply => Ok(reply),
    }
}

/// `conntrail watch add|list|del`.
pub fn run_watch(args: WatchArgs) -> Result<ExitCode> {
    let r = match args.action {
        WatchAction::Add { expr, for_ns } => Request::WatchAdd { expr, for_ns },
        WatchAction::List => Request::WatchList,
        WatchAction::Del { id } => Request::WatchDel { id },
    };
    let reply = request(&args.at, &r)?;
    let mut out = io::stdout().lock();
    if let Reply::Watches {
        message, watches, ..
    } = &reply
    {
        if !message.is_empty() {
            writeln!(out, "{message}")?;
        }
        out.write_all(watch_table(watches).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The watches as a table: id, expiry, cost per worker, expression.
pub fn watch_table(watches: &[WatchRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if watches.is_empty() {
        s.push_str("no active watch\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:>4}  {:<24}  {:>12}  {:>10}  {:>10}  expression",
        "id", "expires", "evaluations", "matches", "ns/eval"
    );
    for w in watches {
        let until = w
            .until_ns
            .map_or_else(|| "never".to_string(), units::utc_text);
        let (evals, matches, ns) = w.costs.iter().fold((0, 0, 0), |(e, m, n), (_, c)| {
            (e + c.evaluations, m + c.matches, n + c.ns)
        });
        let per = ns.checked_div(evals).unwrap_or(0);
        let until: String = until.chars().take(24).collect();
        let _ = writeln!(
            s,
            "{:>4}  {until:<24}  {evals:>12}  {matches:>10}  {per:>10}  {}",
            w.id, w.expr
        );
        for (worker, c) in &w.costs {
            let _ = writeln!(
                s,
                "{:>4}  {:<24}  {:>12}  {:>10}  {:>10}  worker {worker}: {} ns in all",
                "",
                "",
                c.evaluations,
                c.matches,
                c.ns.checked_div(c.evaluations).unwrap_or(0),
                c.ns
            );
        }
    }
    s
}

/// `conntrail sessions`.
pub fn run_sessions(args: SessionsArgs) -> Result<ExitCode> {
    let limit = (args.limit > 0).then_some(args.limit);
    let reply = request(
        &args.at,
        &Request::Sessions {
            expr: args.expr,
            limit,
        },
    )?;
    let Reply::Sessions {
        sessions,
        matching,
        workers,
        answered,
    } = reply
    else {
        bail!("unexpected reply to sessions");
    };
    let mut out = io::stdout().lock();
    if args.json {
        for s in &sessions {
            serde_json::to_writer(&mut out, s)?;
            writeln!(out)?;
        }
    } else {
        writeln!(
            out,
            "{:>18}  {:<5} {:<24} {:<24} {:<6} {:>10} {:>8} {:>10} {:>8} {:>10}",
            "id",
            "proto",
            "client",
            "server",
            "state",
            "age",
            "c2s pkts",
            "c2s bytes",
            "s2c pkts",
            "s2c bytes"
        )?;
        for s in &sessions {
            writeln!(
                out,
                "{:>18}  {:<5} {:<24} {:<24} {:<6} {:>10} {:>8} {:>10} {:>8} {:>10}{}{}",
                s.id,
                s.proto,
                s.client,
                s.server,
                s.state,
                units::duration_text(s.age_ns),
                s.c2s_pkts,
                s.c2s_bytes,
                s.s2c_pkts,
                s.s2c_bytes,
                if s.user { "  user" } else { "" },
                if s.context.is_empty() || s.context == DEFAULT_CONTEXT {
                    String::new()
                } else {
                    format!("  context {}", s.context)
                }
            )?;
        }
        if matching > sessions.len() {
            writeln!(
                out,
                "{matching} open connection(s), the first {} shown (--limit)",
                sessions.len()
            )?;
        } else {
            writeln!(out, "{matching} open connection(s)")?;
        }
    }
    if answered < workers {
        eprintln!(
            "conntrail: only {answered} of {workers} workers answered; the list is incomplete"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `conntrail session ID`.
pub fn run_session(args: SessionArgs) -> Result<ExitCode> {
    let reply = request(&args.at, &Request::Session { id: args.id })?;
    let Reply::Session { text, json } = reply else {
        bail!("unexpected reply to session");
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &json)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "open connection, so far (the reason is that of a stop now):"
        )?;
        out.write_all(text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `conntrail reload`.
pub fn run_reload(args: ReloadArgs) -> Result<ExitCode> {
    match ask(&args.at.path(), &Request::Reload)? {
        Reply::Reloaded { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { message } => {
            eprintln!("conntrail: reload refused: {message}");
            Ok(ExitCode::from(1))
        }
        _ => bail!("unexpected reply to reload"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_read_back() {
        for r in [
            Request::WatchAdd {
                expr: "port 80".into(),
                for_ns: Some(5),
            },
            Request::WatchList,
            Request::WatchDel { id: 3 },
            Request::Sessions {
                expr: None,
                limit: Some(10),
            },
            Request::Session { id: 1 << 48 },
            Request::Reload,
        ] {
            let text = serde_json::to_string(&r).expect("serialises");
            assert_eq!(serde_json::from_str::<Request>(&text).expect("parses"), r);
        }
        let text = r#"{"request":"watch-add","expr":"tcp","for_ns":null}"#;
        assert!(matches!(
            serde_json::from_str::<Request>(text),
            Ok(Request::WatchAdd { .. })
        ));
    }

    #[test]
    fn an_idle_worker_answers_and_takes_watches() {
        let (mut ends, mut workers) = channels(2);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for mut end in ends.drain(..) {
            let stop = Arc::clone(&stop);
            handles.push(thread::spawn(move || {
                let mut table = FlowTable::new(&Config::default(), end.index as u16);
                while !stop.load(Ordering::Acquire) {
                    end.poll(&mut table);
                    thread::sleep(Duration::from_millis(5));
                }
                end.watching()
            }));
        }
        let list = vec![Watch {
            id: 7,
            expr: watch::compile("port 80").expect("parses"),
            added_ns: 0,
            until_ns: None,
        }];
        assert_eq!(workers.publish_watches(list), 2);
        let answers = workers.ask(|_| Some(AskKind::Sessions(Vec::new())));
        assert_eq!(answers.len(), 2);
        let costs = workers.ask(|_| Some(AskKind::Costs));
        for a in &costs {
            match &a.kind {
                AnswerKind::Costs(c) => assert_eq!(c.len(), 1),
                other => panic!("{other:?}"),
            }
        }
        stop.store(true, Ordering::Release);
        for h in handles {
            assert!(h.join().expect("joins"));
        }
    }

    #[test]
    fn watch_add_is_refused_at_the_cap_or_the_budget_with_the_measured_cost() {
        let cost = |id, evaluations, ns| WatchCost {
            id,
            evaluations,
            matches: 0,
            ns,
        };
        // Two workers: 0 measured 1.5 us + 0.2 us per new connection, 1 nothing yet.
        let cheap = vec![
            (0, vec![cost(1, 10, 15_000), cost(2, 10, 2_000)]),
            (1, Vec::new()),
        ];
        assert_eq!(refusal(2, &cheap), None);
        let at_cap = refusal(watch::MAX_WATCHES, &cheap).expect("refused at the cap");
        assert!(
            at_cap.starts_with(
                "64 watches are active, the most a run takes is 64; they cost \
                 worker 0 1.7 us per new connection as it measures them (budget 10.0 us)"
            ),
            "{at_cap}"
        );
        let unmeasured = refusal(watch::MAX_WATCHES, &[(0, Vec::new())]).expect("refused");
        assert!(unmeasured.contains("not measured yet"), "{unmeasured}");
        let costly = vec![
            (0, vec![cost(1, 10, 15_000)]),
            (3, vec![cost(1, 4, 40_000)]),
        ];
        let over = refusal(2, &costly).expect("refused over the budget");
        assert!(
            over.starts_with(
                "the 2 active watches cost worker 3 10.0 us per new connection \
                 as it measures them, the budget is 10.0 us"
            ),
            "{over}"
        );
        let under = vec![(0, vec![cost(1, 4, 39_996)])];
        assert_eq!(refusal(2, &under), None, "9.999 us is within the budget");
    }

    #[test]
    fn a_second_bind_on_a_live_socket_is_refused_and_the_mode_is_0600() {
        let dir = std::env::temp_dir().join(format!("conntrail-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.ctl");
        let first = ControlSocket::bind(&path).expect("binds");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = ControlSocket::bind(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("another conntrail run"), "{e}");
        drop(first);
        // A stale file (no listener) is replaced.
        ControlSocket::bind(&path).expect("rebinds over a stale socket");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
