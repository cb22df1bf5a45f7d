//! The control thread: it binds the socket ([`ControlSocket`]), answers each request, asks
//! the workers through the [`super::board`] when a request needs them, and reloads the
//! configuration on request or on SIGHUP.

use super::board::{AnswerKind, AskKind, Workers};
use super::protocol::{Reply, Request, SessionRow, WatchRow, MAX_MESSAGE};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flowtable::config::Config;
use flowtable::record::Record;
use flowtable::table::OpenFlow;
use serde_json::Value;

use crate::control::watch::{self, Watch, WatchCost};
use crate::serve::{self, Limits, Server};
use forensics::expr::Expr;
use forensics::show;
use forensics::units;

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
pub(super) fn refusal(active: usize, costs: &[(usize, Vec<WatchCost>)]) -> Option<String> {
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
