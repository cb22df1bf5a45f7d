//! The workers' side of the control socket: the [`Board`] whose generation counter tells
//! them something is waiting, each worker's [`WorkerControl`] end and the control thread's
//! [`Workers`] end, and the requests and answers between them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use flowtable::config::Config;
use flowtable::point::Point;
use flowtable::table::{FlowTable, OpenFlow};

use crate::control::watch::{Watch, WatchCost, WorkerWatches};

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
pub(super) struct Ask {
    seq: u64,
    kind: AskKind,
}

#[derive(Debug)]
pub(super) enum AskKind {
    /// Fill the buffer with the open connections.
    Sessions(Vec<OpenFlow>),
    /// One connection, its points into the buffer.
    Session(u64, Vec<Point>),
    Costs,
    Thresholds(Box<Config>),
}

#[derive(Debug)]
pub(super) struct Answer {
    seq: u64,
    pub(super) worker: usize,
    pub(super) kind: AnswerKind,
}

#[derive(Debug)]
pub(super) enum AnswerKind {
    Sessions(Vec<OpenFlow>),
    Session(Option<Box<(OpenFlow, u32)>>, Vec<Point>),
    Costs(Vec<WatchCost>),
    Applied,
}

/// A worker's end: its copy of the watches, its request queue and its reply channel.
#[derive(Debug)]
pub struct WorkerControl {
    board: Arc<Board>,
    pub(super) index: usize,
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
    pub(super) fn count(&self) -> usize {
        self.requests.len()
    }

    /// Sends `make(worker)` to every worker it gives a request for, announces it, and
    /// collects the answers that come within [`ANSWER_WAIT`].
    pub(super) fn ask(&mut self, mut make: impl FnMut(usize) -> Option<AskKind>) -> Vec<Answer> {
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
    pub(super) fn publish_watches(&self, list: Vec<Watch>) -> usize {
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
