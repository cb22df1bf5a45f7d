//! The exporter thread: follows the log, publishes every record to the stream, waits for
//! the acknowledgements, and keeps its position in `LOG.export.json`.
//!
//! Flow control: at most [`IN_FLIGHT`] records are unacknowledged at a time; they are
//! acknowledged in order, and the position moves past a record only once the stream has
//! acknowledged it (and everything before it). When an acknowledgement fails (server down,
//! link down, stream unavailable while a cluster elects a leader, ...) the exporter warns
//! once, goes back to the position, waits a little (100 ms, doubling to 2 s) and sends again
//! from there: records sent before the failure whose acknowledgement was lost are sent again,
//! and the stream drops them as duplicates by their `Nats-Msg-Id`.
//!
//! Nothing here waits on the engine or makes the engine wait: the recorder writes the log
//! whatever happens to the exporter.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, stream::StorageType};
use async_nats::HeaderMap;

use crate::names::{self, HEADER_HOST, HEADER_LOG, HEADER_LOG_CREATED, HEADER_RECORD};
use crate::position::{position_path, Position};
use crate::tail::{log_created_ns, LogTail, TailItem};
use crate::{FleetError, Settings};

/// Records sent and not yet acknowledged, at most.
pub const IN_FLIGHT: usize = 512;
/// How often the log is looked at when the exporter has caught up.
const POLL: Duration = Duration::from_millis(20);
/// The position file is rewritten at most this often (and at the end).
const SAVE_EVERY: Duration = Duration::from_millis(200);
/// Waits between attempts after a failure: from the first, doubling up to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Which log to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The log at the path now (`conntrail export`), from its saved position.
    Existing,
    /// The log that is about to be created at the path: wait for a base file created at or
    /// after this time (ns since the epoch), so an older log at the same path is never
    /// taken for it (`replay --export`, `run --export`).
    CreatedFrom(u64),
}

impl Start {
    /// [`Start::CreatedFrom`] now.
    pub fn created_from_now() -> Start {
        Start::CreatedFrom(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        )
    }

    fn accepts(self, created_ns: u64) -> bool {
        match self {
            Start::Existing => true,
            Start::CreatedFrom(t) => created_ns >= t,
        }
    }
}

/// The outcome of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The stream, the subject prefix and the servers, for messages.
    pub stream: String,
    pub subject: String,
    pub servers: String,
    /// Records acknowledged by the stream during this export.
    pub sent: u64,
    /// Of those, how many the stream already had (sent again after a lost acknowledgement).
    pub duplicates: u64,
    /// Damaged places of the log skipped, and records that could not be decoded.
    pub damaged: u64,
    /// Intact records of the log after the final position: not acknowledged yet.
    pub pending: u64,
    /// Times the server or the link failed during the export.
    pub outages: u64,
    /// The last failure, if the export is incomplete.
    pub last_error: Option<String>,
    /// Where the export stopped (saved in `LOG.export.json`).
    pub position: Position,
}

impl Report {
    /// Whether every record of the log is in the stream.
    pub fn complete(&self) -> bool {
        self.pending == 0
    }
}

/// What the caller and the exporter thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Set by [`Exporter::finish`]: stop once the log is exported, or at this time.
    finish_at: Mutex<Option<Instant>>,
    /// Records acknowledged so far.
    sent: AtomicU64,
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        *self.finish_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finishing(&self) -> bool {
        self.deadline().is_some()
    }

    fn past_deadline(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }
}

/// A running exporter thread (`conntrail-export`).
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<Shared>,
    thread: JoinHandle<Result<Report, FleetError>>,
}

impl Exporter {
    /// Starts exporting the log whose base file is `log` to the stream of `settings`. It
    /// connects in the background; an unreachable server is retried until [`finish`]'s
    /// deadline, while the log goes on being written.
    ///
    /// [`finish`]: Exporter::finish
    pub fn spawn(settings: Settings, log: &Path, start: Start) -> Result<Exporter, FleetError> {
        let shared = Arc::new(Shared::default());
        let log = log.to_path_buf();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("conntrail-export".into())
            .spawn(move || {
                let runtime = crate::runtime()?;
                runtime.block_on(export(&thread_shared, &settings, &log, start))
            })
            .map_err(|e| FleetError::Thread(e.to_string()))?;
        Ok(Exporter { shared, thread })
    }

    /// Records acknowledged by the stream so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Call once no more records will be written to the log: waits until every record is
    /// acknowledged, or at most `wait`; then saves the position and reports (with the
    /// number of records still pending).
    pub fn finish(self, wait: Duration) -> Result<Report, FleetError> {
        *self
            .shared
            .finish_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + wait);
        self.thread
            .join()
            .map_err(|_| FleetError::Thread("the export thread panicked".into()))?
    }
}

/// Why [`Pump::run`] stopped.
enum Stop {
    /// [`Exporter::finish`]'s deadline passed.
    Deadline,
    /// The server, the link or the stream failed.
    Failed(String),
}

/// The state of one export.
struct Pump<'a> {
    shared: &'a Shared,
    settings: &'a Settings,
    log: PathBuf,
    log_created_ns: u64,
    position_file: PathBuf,
    position: Position,
    saved_at: Instant,
    dirty: bool,
    tail: LogTail,
    report: Report,
}

async fn export(
    shared: &Shared,
    settings: &Settings,
    log: &Path,
    start: Start,
) -> Result<Report, FleetError> {
    let created = loop {
        match log_created_ns(log) {
            Some(t) if start.accepts(t) => break t,
            _ if shared.past_deadline() => return Err(FleetError::NoLog(log.to_path_buf())),
            _ => tokio::time::sleep(POLL).await,
        }
    };
    let position_file = position_path(log);
    let position = Position::load(&position_file, created)
        .unwrap_or_else(|| Position::start(created, &settings.host));
    // A log is exported under one host name: the one of its first export.
    let mut settings = settings.clone();
    if position.host != settings.host {
        log::info!(
            "export of {}: host `{}` as in {}, not `{}`",
            log.display(),
            position.host,
            position_file.display(),
            settings.host
        );
        settings.host = position.host.clone();
    }
    let settings = &settings;
    let client = settings.connect(true).await?;
    let js = settings.jetstream(client.clone(), IN_FLIGHT);
    let mut pump = Pump {
        shared,
        settings,
        log: log.to_path_buf(),
        log_created_ns: created,
        position_file,
        tail: LogTail::new(log, position.segment, position.offset),
        position,
        saved_at: Instant::now(),
        dirty: true,
        report: Report {
            stream: settings.stream.clone(),
            subject: format!("{}.{}", names::SUBJECT_PREFIX, settings.host),
            servers: settings.servers_text(),
            sent: 0,
            duplicates: 0,
            damaged: 0,
            pending: 0,
            outages: 0,
            last_error: None,
            position: Position::start(created, &settings.host),
        },
    };
    pump.save();
    let mut backoff = BACKOFF.0;
    let mut stream_ready = false;
    let mut failing = false;
    loop {
        let attempt = if stream_ready {
            pump.run(&js).await
        } else {
            match within(shared, ensure_stream(&js, settings)).await {
                Ok(Ok(())) => {
                    stream_ready = true;
                    continue;
                }
                Ok(Err(e)) => Err(Stop::Failed(e)),
                Err(stop) => Err(stop),
            }
        };
        match attempt {
            Ok(()) => break,
            Err(Stop::Deadline) => break,
            Err(Stop::Failed(e)) => {
                if !failing {
                    log::warn!(
                        "export to {} stream {}: {e}; the log keeps every record, sending again \
                         from the log when the stream answers",
                        settings.servers_text(),
                        settings.stream
                    );
                    pump.report.outages += 1;
                }
                failing = true;
                pump.report.last_error = Some(e);
                pump.save();
                let (segment, offset) = (pump.position.segment, pump.position.offset);
                pump.tail.seek(segment, offset);
                stream_ready = false;
                if within(shared, tokio::time::sleep(backoff)).await.is_err() {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        }
    }
    pump.save();
    pump.report.pending = pending(&pump.log, &pump.position);
    if pump.report.pending == 0 {
        pump.report.last_error = None;
    } else if client.connection_state() != async_nats::connection::State::Connected {
        pump.report.last_error = Some("no server could be reached".into());
    }
    pump.report.position = pump.position.clone();
    Ok(pump.report)
}

/// `f`, or [`Stop::Deadline`] if [`Exporter::finish`]'s deadline comes first (including a
/// deadline set while `f` is under way).
async fn within<F: std::future::Future>(shared: &Shared, f: F) -> Result<F::Output, Stop> {
    tokio::pin!(f);
    loop {
        let tick = match shared.deadline() {
            Some(deadline) => tokio::time::sleep_until(deadline.into()),
            None => tokio::time::sleep(POLL),
        };
        tokio::select! {
            out = &mut f => return Ok(out),
            () = tick => {
                if shared.past_deadline() {
                    return Err(Stop::Deadline);
                }
            }
        }
    }
}

/// Creates the stream if it does not exist: subjects `conntrail.records.>`, file storage,
/// the configured replicas and duplicate window. An existing stream is used as it is.
async fn ensure_stream(js: &jetstream::Context, settings: &Settings) -> Result<(), String> {
    let config = jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", names::SUBJECT_PREFIX)],
        storage: StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map(|_| ())
        .map_err(|e| format!("stream {}: {e}", settings.stream))
}

/// One record sent and not yet acknowledged.
struct InFlight {
    ack: PublishAckFuture,
    next: (u32, u64),
    record_id: u64,
}

impl Pump<'_> {
    /// Sends from the tail's position and moves the position with the acknowledgements,
    /// until the log is exported after [`Exporter::finish`] (`Ok`), its deadline, or a
    /// failure.
    async fn run(&mut self, js: &jetstream::Context) -> Result<(), Stop> {
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(IN_FLIGHT);
        loop {
            // Looked at before the log: when set, the recorder had finished writing, so
            // finding nothing more below means the end of the log.
            let finishing = self.shared.finishing();
            let mut at_end = false;
            while in_flight.len() < IN_FLIGHT {
                match self.tail.next_item() {
                    Ok(Some(TailItem::Frame(frame))) => {
                        let record = match flowtable::record::codec::decode(&frame.payload) {
                            Ok(r) => r,
                            Err(e) => {
                                self.damaged(
                                    &format!(
                                        "segment {} byte {}: undecodable record: {e}",
                                        frame.segment, frame.offset
                                    ),
                                    in_flight.is_empty(),
                                );
                                continue;
                            }
                        };
                        let mut headers = HeaderMap::new();
                        let id = names::message_id(
                            &self.settings.host,
                            &self.log,
                            self.log_created_ns,
                            record.id,
                            frame.crc,
                        );
                        headers.insert("Nats-Msg-Id", id.as_str());
                        headers.insert(HEADER_HOST, self.settings.host.as_str());
                        headers.insert(HEADER_LOG, self.log.to_string_lossy().as_ref());
                        headers
                            .insert(HEADER_LOG_CREATED, self.log_created_ns.to_string().as_str());
                        headers.insert(HEADER_RECORD, record.id.to_string().as_str());
                        let subject = names::subject(
                            &self.settings.host,
                            &self.settings.contexts,
                            record.context,
                        );
                        let sent = js.publish_with_headers(subject, headers, frame.payload.into());
                        let ack = within(self.shared, sent)
                            .await?
                            .map_err(|e| Stop::Failed(e.to_string()))?;
                        in_flight.push_back(InFlight {
                            ack,
                            next: frame.next,
                            record_id: record.id,
                        });
                    }
                    Ok(Some(TailItem::Damage(what))) => self.damaged(&what, in_flight.is_empty()),
                    Ok(None) => {
                        at_end = true;
                        break;
                    }
                    Err(e) => {
                        log::warn!("export: reading {}: {e}", self.log.display());
                        at_end = true;
                        break;
                    }
                }
            }
            if let Some(sent) = in_flight.pop_front() {
                let ack = within(self.shared, sent.ack.into_future())
                    .await?
                    .map_err(|e| {
                        Stop::Failed(match e.kind() {
                            PublishErrorKind::StreamNotFound => format!(
                                "no stream takes subject {}.* (is JetStream up, the stream there?)",
                                self.report.subject
                            ),
                            _ => format!("acknowledgement: {e}"),
                        })
                    })?;
                self.position.segment = sent.next.0;
                self.position.offset = sent.next.1;
                self.position.records += 1;
                self.position.last_record_id = Some(sent.record_id);
                self.report.sent += 1;
                self.report.duplicates += u64::from(ack.duplicate);
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
                self.dirty = true;
                if self.saved_at.elapsed() >= SAVE_EVERY {
                    self.save();
                }
                continue;
            }
            self.save();
            if at_end && finishing {
                return Ok(());
            }
            if self.shared.past_deadline() {
                return Err(Stop::Deadline);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A damaged place or undecodable record: reported and skipped. With nothing in flight
    /// the position moves past it at once (otherwise the next acknowledgement does).
    fn damaged(&mut self, what: &str, nothing_in_flight: bool) {
        log::warn!("export: damaged log, not exported: {what}");
        self.report.damaged += 1;
        if nothing_in_flight {
            let (segment, offset) = self.tail.position();
            self.position.segment = segment;
            self.position.offset = offset;
            self.dirty = true;
        }
    }

    /// Writes the position file if it changed.
    fn save(&mut self) {
        if !self.dirty {
            return;
        }
        match self.position.save(&self.position_file) {
            Ok(()) => self.dirty = false,
            Err(e) => log::warn!(
                "export: saving the position in {}: {e}",
                self.position_file.display()
            ),
        }
        self.saved_at = Instant::now();
    }
}

/// Intact records of `log` after `position`.
pub fn pending(log: &Path, position: &Position) -> u64 {
    let mut tail = LogTail::new(log, position.segment, position.offset);
    let mut n = 0;
    while let Ok(Some(item)) = tail.next_item() {
        if let TailItem::Frame(_) = item {
            n += 1;
        }
    }
    n
}
