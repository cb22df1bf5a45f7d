//! A worker: one flow table, one ring, fed frames by a source. The same code runs for
//! replayed captures and live sockets; a worker never blocks on its ring (a full ring is
//! counted) and allocates nothing per packet once warmed up.

use flowtable::config::Config;
use flowtable::packet::{parse, LinkType, Malformed};
use flowtable::record::Record;
use flowtable::table::{FlowTable, RecordMode, TableCounters};
use ring::codec;
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
    pub encode_errors: u64,
    pub table: TableCounters,
    /// Memory reserved per tracked connection at the table's capacity.
    pub bytes_per_flow: usize,
}

impl WorkerStats {
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}

/// Hands records to the ring: encodes into a reused buffer, counts what does not fit.
struct RingSink {
    producer: Producer,
    buf: Vec<u8>,
    records: u64,
    drops: u64,
    encode_errors: u64,
}

impl RingSink {
    fn emit(&mut self, rec: &Record<'_>) {
        if codec::encode(rec, &mut self.buf).is_err() {
            self.encode_errors += 1;
            return;
        }
        match self.producer.push(&self.buf) {
            Ok(()) => self.records += 1,
            Err(_) => self.drops += 1,
        }
    }
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
                encode_errors: 0,
            },
            stats: WorkerStats {
                worker,
                ..WorkerStats::default()
            },
            control: None,
        }
    }

    pub fn set_core(&mut self, core: Option<usize>) {
        self.stats.core = core;
    }

    /// Says which interface the next frames come in on (an id of
    /// `Config::interface_id`): it chooses the context of the connections they open.
    #[inline]
    pub fn set_interface(&mut self, interface: u16) {
        self.table.set_interface(interface);
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

    /// Processes one frame.
    #[inline]
    pub fn frame(&mut self, link: LinkType, ts_ns: u64, wire_len: u32, bytes: &[u8]) {
        self.stats.bytes += u64::from(wire_len);
        let sink = &mut self.sink;
        match parse(link, bytes) {
            Ok(pkt) => {
                let created = self.table.counters().flows_created;
                self.table
                    .process(&pkt, ts_ns, wire_len, &mut |rec| sink.emit(rec));
                if self.table.counters().flows_created != created {
                    if let Some(c) = self.control.as_mut().filter(|c| c.watching()) {
                        c.on_new_flow(&mut self.table, ts_ns);
                    }
                }
            }
            Err(reason) => {
                self.table.tick(ts_ns, &mut |rec| sink.emit(rec));
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
        s.encode_errors = self.sink.encode_errors;
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
