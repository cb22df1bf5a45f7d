//! A worker: one flow table, one ring, fed frames by a source. The same code runs for
//! replayed captures and live sockets. A live worker never blocks on its ring (a full ring
//! is counted); a replaying one waits for the recorder to make room, so replay loses no
//! record. A worker allocates nothing per packet once warmed up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capture::FrameRef;
use flowtable::config::Config;
use flowtable::packet::{parse_into, LinkType, Malformed, Packet};
use flowtable::prefetch;
use flowtable::record::codec;
use flowtable::record::Record;
use flowtable::table::{FlowTable, PacketKey, RecordMode, TableCounters};
use ring::spsc::Producer;

use crate::control::WorkerControl;

/// Counters of one worker, plain integers it owns.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub worker: u16,
    /// The core it was pinned to, if pinning worked.
    pub core: Option<usize>,
    pub bytes: u64,
    /// Malformed frames by reason, in [`Malformed::ALL`] order.
    pub malformed: [u64; Malformed::COUNT],
    pub records: u64,
    pub ring_drops: u64,
    pub table: TableCounters,
    /// Memory reserved per tracked connection at the table's capacity.
    pub bytes_per_flow: usize,
    /// CPU time of the worker's thread (replay; zero where not measured).
    pub cpu: std::time::Duration,
}

impl WorkerStats {
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}

/// Hands records to the ring: encodes into a reused buffer. What does not fit is counted
/// and dropped (live traffic: a worker never waits), or, with a recorder to wait for
/// (replay), pushed again once the recorder has made room.
struct RingSink {
    producer: Producer,
    buf: Vec<u8>,
    records: u64,
    drops: u64,
    /// Set when the recorder is gone; `None`: never wait.
    wait_for: Option<Arc<AtomicBool>>,
}

impl RingSink {
    fn emit(&mut self, rec: &Record<'_>) {
        codec::encode(rec, &mut self.buf);
        if self.producer.push(&self.buf).is_ok() {
            self.records += 1;
            return;
        }
        self.full();
    }

    /// The ring is full: wait for room while the recorder runs, else drop the record (as
    /// at once when the record is larger than the ring can ever hold).
    #[cold]
    fn full(&mut self) {
        let fits = self.buf.len() <= self.producer.max_frame();
        if let (Some(gone), true) = (&self.wait_for, fits) {
            let mut spins = 0u32;
            while !gone.load(Ordering::Acquire) {
                if spins < 64 {
                    spins += 1;
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
                if self.producer.push(&self.buf).is_ok() {
                    self.records += 1;
                    return;
                }
            }
        }
        self.drops += 1;
    }
}

/// Frames between a worker's first look at a frame (parsed, its flow key hashed, its hash
/// bucket prefetched) and its processing; its flow slot is prefetched halfway.
pub const LOOK_AHEAD: usize = 8;
const HALFWAY: usize = LOOK_AHEAD / 2;

/// Frames between the request for a frame's first bytes and the worker's first look at it:
/// a frame arrives from a source that touched it on another core (the reader of a capture)
/// or from the NIC, so its headers are rarely in this core's cache.
const FETCH_AHEAD: usize = 4;

/// A frame as a source hands it to a worker.
#[derive(Clone, Copy, Debug)]
pub struct SourceFrame<'a> {
    pub link: LinkType,
    pub ts_ns: u64,
    pub wire_len: u32,
    /// The interface it came in on (an id of `Config::interface_id`).
    pub interface: u16,
    pub bytes: &'a [u8],
}

impl<'a> SourceFrame<'a> {
    /// A frame of a capture, its bytes in `chunk` (the chunk it came with).
    #[inline]
    pub fn of(frame: &FrameRef, chunk: &'a [u8]) -> SourceFrame<'a> {
        SourceFrame {
            link: frame.link,
            ts_ns: frame.ts_ns,
            wire_len: frame.wire_len,
            interface: frame.interface,
            bytes: frame.bytes(chunk),
        }
    }
}

/// A frame looked at, waiting its turn.
struct Pending<'a> {
    ts_ns: u64,
    wire_len: u32,
    interface: u16,
    parsed: Result<Packet<'a>, Malformed>,
    looked: Option<PacketKey>,
}

impl Pending<'_> {
    /// A ring slot that holds no frame yet.
    const EMPTY: Pending<'static> = Pending {
        ts_ns: 0,
        wire_len: 0,
        interface: 0,
        parsed: Err(Malformed::TruncatedLink),
        looked: None,
    };
}

pub struct Worker {
    table: FlowTable,
    sink: RingSink,
    stats: WorkerStats,
    /// The control plane's end (live runs): watches and requests.
    control: Option<WorkerControl>,
}

impl Worker {
    /// A worker with its flow table (allocated here, before the first packet) and the
    /// producer end of its ring.
    pub fn new(cfg: &Config, worker: u16, mode: RecordMode, producer: Producer) -> Worker {
        let mut table = FlowTable::new(cfg, worker);
        table.set_mode(mode);
        Worker {
            table,
            sink: RingSink {
                producer,
                buf: Vec::with_capacity(64 * 1024),
                records: 0,
                drops: 0,
                wait_for: None,
            },
            stats: WorkerStats {
                worker,
                ..WorkerStats::default()
            },
            control: None,
        }
    }

    /// Numbers this worker's records from `sequence` on (a run continuing a log).
    pub fn continue_ids(&mut self, sequence: u64) {
        self.table.set_next_sequence(sequence);
    }

    /// Waits for the recorder when the ring is full instead of dropping the record, until
    /// `recorder_gone` is set (replay: a capture is not live traffic, nothing is lost by
    /// waiting). Live workers never wait.
    pub fn wait_for_recorder(&mut self, recorder_gone: Arc<AtomicBool>) {
        self.sink.wait_for = Some(recorder_gone);
    }

    pub fn set_core(&mut self, core: Option<usize>) {
        self.stats.core = core;
    }

    /// Connects the worker to the control thread (runtime watches, sessions, reload).
    pub fn attach_control(&mut self, control: WorkerControl) {
        self.control = Some(control);
    }

    /// Acts on what the control thread announced; call once per batch and after every
    /// idle wait.
    #[inline]
    pub fn poll_control(&mut self) {
        if let Some(c) = self.control.as_mut() {
            c.poll(&mut self.table);
        }
    }

    /// Processes the `n` frames of a batch in their order (`frame(i)` is the i-th; it may
    /// be asked for more than once). Each frame's first bytes are asked for `FETCH_AHEAD`
    /// frames before the worker first looks at it; then it is parsed, and its flow key hashed
    /// and hash bucket prefetched, `LOOK_AHEAD` frames before its turn; its flow slot is
    /// prefetched halfway. So the memory a packet needs is on its way while the ones before
    /// it are processed, instead of stalling the worker when its turn comes.
    #[inline]
    pub fn frames<'a>(&mut self, n: usize, frame: impl Fn(usize) -> SourceFrame<'a>) {
        for i in 0..n.min(FETCH_AHEAD) {
            prefetch::head(frame(i).bytes);
        }
        let mut ring: [Pending<'a>; LOOK_AHEAD] = std::array::from_fn(|_| Pending::EMPTY);
        // The slot of the oldest frame looked at, where the next one goes; slots from
        // `filled` on hold no frame yet.
        let mut at = 0;
        let mut filled = 0;
        for i in 0..n {
            if i + FETCH_AHEAD < n {
                prefetch::head(frame(i + FETCH_AHEAD).bytes);
            }
            if filled == LOOK_AHEAD {
                self.process(&ring[at]);
            } else {
                filled += 1;
            }
            // An empty slot's `looked` is `None`.
            if let Some(looked) = &mut ring[(at + HALFWAY) % LOOK_AHEAD].looked {
                self.table.prefetch_flow(looked);
            }
            self.look(frame(i), &mut ring[at]);
            at = (at + 1) % LOOK_AHEAD;
        }
        for k in 0..LOOK_AHEAD {
            let slot = (at + k) % LOOK_AHEAD;
            if slot < filled {
                self.process(&ring[slot]);
            }
        }
    }

    /// Parses `frame` straight into its ring slot (a `Pending` is large: built elsewhere
    /// and moved in, it costs a copy per frame), then hashes its key.
    #[inline]
    fn look<'a>(&mut self, frame: SourceFrame<'a>, slot: &mut Pending<'a>) {
        self.stats.bytes += u64::from(frame.wire_len);
        slot.ts_ns = frame.ts_ns;
        slot.wire_len = frame.wire_len;
        slot.interface = frame.interface;
        parse_into(frame.link, frame.bytes, &mut slot.parsed);
        slot.looked = slot
            .parsed
            .as_ref()
            .ok()
            .and_then(|pkt| self.table.look(pkt));
    }

    #[inline(always)]
    fn process(&mut self, p: &Pending<'_>) {
        let sink = &mut self.sink;
        self.table.set_interface(p.interface);
        match &p.parsed {
            Ok(pkt) => {
                let created = self.table.counters().flows_created;
                self.table.process_looked(
                    pkt,
                    p.looked.as_ref(),
                    p.ts_ns,
                    p.wire_len,
                    &mut |rec| sink.emit(rec),
                );
                if self.table.counters().flows_created != created {
                    if let Some(c) = self.control.as_mut().filter(|c| c.watching()) {
                        c.on_new_flow(&mut self.table, p.ts_ns);
                    }
                }
            }
            Err(reason) => {
                self.table.tick(p.ts_ns, &mut |rec| sink.emit(rec));
                self.stats.malformed[reason.index()] += 1;
            }
        }
    }

    /// Advances time without a packet (a quiet live source).
    pub fn tick(&mut self, now_ns: u64) {
        let sink = &mut self.sink;
        self.table.tick(now_ns, &mut |rec| sink.emit(rec));
    }

    /// The counters so far.
    pub fn stats(&self) -> WorkerStats {
        let mut s = self.stats.clone();
        s.records = self.sink.records;
        s.ring_drops = self.sink.drops;
        s.table = self.table.counters().clone();
        s.bytes_per_flow = self.table.bytes_per_flow();
        s
    }

    /// Closes every open flow (reason `shutdown`) and returns the final counters.
    pub fn finish(mut self) -> WorkerStats {
        let sink = &mut self.sink;
        self.table.shutdown(&mut |rec| sink.emit(rec));
        self.stats()
    }
}
