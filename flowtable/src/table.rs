//! The flow table of one worker: fixed capacity, every byte allocated in [`FlowTable::new`].
//!
//! Per packet: advance the timer wheel to the packet's time (closing idle flows), account IP
//! fragments, attribute ICMP errors to the flow they quote, find or create the flow, update
//! its counters, TCP state and tracking points. When a flow closes its record is built,
//! the anomaly rules decide whether it is kept, and kept records are handed to the caller's
//! `emit` closure (which encodes them into the worker's ring). Nothing here allocates after
//! construction.

use std::borrow::Cow;

use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;

use crate::config::{Config, Limit, Triggers};
use crate::frag::FragTable;
use crate::index::FlowIndex;
use crate::key::{FlowKey, KeyKind};
use crate::packet::{tcp_flags, Packet, L4, MAX_VLANS};
use crate::point::{Arena, Dir, Point, PointKind, Severity, Trail};
use crate::prefetch;
use crate::record::Latency;
use crate::record::{Addr, CloseReason, ConnState, DirStats, Endpoint, Flags, Proto, Record};
use crate::rules::{self, Events};
use crate::tcp::{self, Findings, Segment, Tcp};
use crate::tls::{self, TlsEvent};
use crate::wheel::{Due, Wheel};

mod compact;
mod view;

use compact::{Letters, Marks, Span};
pub use view::OpenFlow;

/// Which records a table hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordMode {
    /// Only connections that tripped a trigger.
    Anomalous,
    /// Every connection, with flag `all` added.
    All,
}

/// How the client of a flow was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Orient {
    /// Sender of the first SYN without ACK.
    Syn,
    /// Receiver of the first SYN-ACK.
    SynAck,
    /// Sender of the first packet (mid-stream pick-up, UDP, ICMP).
    FirstPacket,
}

/// How a TCP connection ended, once it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Terminal {
    Open,
    Fin,
    /// First RST, by direction index.
    Rst(bool),
}

const NS_PER_US: u64 = 1_000;
/// No flow slot (the end of the free list).
const NO_SLOT: u32 = u32::MAX;

/// One tracked connection. Directions are indexed by the canonical key: 0 is `lo -> hi`.
#[derive(Clone)]
struct Flow {
    key: FlowKey,
    /// Its record id; in a free slot, the next free slot (see `FlowTable::free`).
    id: u64,
    start_ns: u64,
    /// Its latest packet; it ages out `timeout_of` its state after this (worked out when its
    /// timer comes due, not at every packet).
    last_ns: u64,
    stats: [DirStats; 2],
    tcp: Tcp,
    /// The client's first SYN, from the start.
    syn_ns: Span,
    /// The server's first SYN-ACK, from the start.
    synack_ns: Span,
    /// SYN-ACK to the client's first ACK. SYN to SYN-ACK follows from `syn_ns` and
    /// `synack_ns` with a bit of `events`.
    synack_ack: Span,
    max_stall: Span,
    /// When the longest silence ended, from the start.
    max_stall_end: Span,
    /// The time (from the start) of the first payload of the direction that sent one first;
    /// once the other
    /// answered, the time to the first response byte if it did (`events` bit `TTFB`).
    first_payload: Span,
    history: Letters,
    trail: Trail,
    events: Events,
    vlans: [u16; MAX_VLANS],
    vlan_count: u8,
    ttl: [u8; 2],
    /// Direction index whose sender is the client.
    client_dir: u8,
    orient: Orient,
    terminal: Terminal,
    proto: Proto,
    ip_version: u8,
    icmp_type_code: u16,
    /// 0: the context's base triggers; n: its override n-1.
    triggers_idx: u8,
    /// Its context (0: default), chosen from its first packet.
    context: u16,
    /// In use; `user` (a runtime watch matched at its start: keep its record whatever its
    /// outcome); reopened (a SYN or SYN-ACK came after the terminal event: the connection
    /// lives on, as a client that retransmits its SYN after resetting a stray ACK, so it
    /// ages as an open one); which directions sent payload.
    marks: Marks,
}

impl Flow {
    fn empty() -> Flow {
        Flow {
            key: FlowKey {
                lo_ip: [0; 16],
                hi_ip: [0; 16],
                lo_port: 0,
                hi_port: 0,
                proto: 0,
                kind: KeyKind::Ports,
            },
            id: 0,
            start_ns: 0,
            last_ns: 0,
            stats: [DirStats::default(); 2],
            tcp: Tcp::default(),
            syn_ns: Span::NONE,
            synack_ns: Span::NONE,
            synack_ack: Span::NONE,
            max_stall: Span::NONE,
            max_stall_end: Span::NONE,
            first_payload: Span::NONE,
            history: Letters::default(),
            trail: Trail::default(),
            events: Events::default(),
            vlans: [0; MAX_VLANS],
            vlan_count: 0,
            ttl: [0; 2],
            client_dir: 0,
            orient: Orient::FirstPacket,
            terminal: Terminal::Open,
            proto: Proto::Udp,
            ip_version: 4,
            icmp_type_code: 0,
            triggers_idx: 0,
            context: 0,
            marks: Marks::default(),
        }
    }

    fn latency(&self) -> Latency {
        Latency {
            syn_synack_ns: if self.events.has(Events::SYN_SYNACK) {
                match (self.synack_ns.get(), self.syn_ns.get()) {
                    (Some(l), Some(e)) => Some(l.saturating_sub(e)),
                    _ => None,
                }
            } else {
                None
            },
            synack_ack_ns: self.synack_ack.get(),
            ttfb_ns: self
                .events
                .has(Events::TTFB)
                .then(|| self.first_payload.get())
                .flatten(),
            max_stall_ns: self.max_stall.get(),
        }
    }

    /// A point for the end of the longest silence between two packets (the record's
    /// `max_stall`), so that the timelines draw the gap the header reports.
    fn longest_silence(&self) -> Option<Point> {
        let (gap, end) = (self.max_stall.get()?, self.max_stall_end.get()?);
        let d = usize::from(self.marks.has(Marks::STALL_END_1));
        Some(Point {
            t_ns: end,
            kind: PointKind::Stall,
            dir: self.dir_of(d),
            severity: Severity::Info,
            arg: us(gap),
        })
    }

    /// Notes the first payload of direction `d`, at `ts_ns`: `None` when it is not the
    /// first, else the time to the first response byte when this one is it. ICMP messages
    /// other than request/reply pairs (echo, timestamp, information, address mask) answer
    /// nothing: a neighbour advertisement each way is two announcements, not a question and
    /// its answer, so they have no response time.
    fn first_payload_at(&mut self, d: usize, ts_ns: u64) -> Option<Option<u64>> {
        let (mine, other) = (Marks::FIRST_DATA << d, Marks::FIRST_DATA << (1 - d));
        if self.marks.has(mine) {
            return None;
        }
        self.marks.set(mine, true);
        if self.key.kind == KeyKind::IcmpMessage {
            return Some(None);
        }
        if !self.marks.has(other) {
            self.first_payload = Span::of(ts_ns.saturating_sub(self.start_ns));
            return Some(None);
        }
        if self.is_client(d) {
            return Some(None);
        }
        let since_start = ts_ns.saturating_sub(self.start_ns);
        let ttfb = self
            .first_payload
            .get()
            .map(|c| since_start.saturating_sub(c));
        self.first_payload = ttfb.map_or(Span::NONE, Span::of);
        self.events.set(Events::TTFB);
        Some(ttfb)
    }

    /// Client and server, with ports only where the key has ports.
    fn endpoints(&self) -> (Endpoint, Endpoint) {
        let lo = Endpoint {
            ip: Addr(self.key.lo_ip),
            port: self.key.lo_port,
        };
        let hi = Endpoint {
            ip: Addr(self.key.hi_ip),
            port: self.key.hi_port,
        };
        let (mut client, mut server) = if self.client_dir == 0 {
            (lo, hi)
        } else {
            (hi, lo)
        };
        if self.key.kind != KeyKind::Ports {
            client.port = 0;
            server.port = 0;
        }
        (client, server)
    }

    fn in_use(&self) -> bool {
        self.marks.has(Marks::IN_USE)
    }

    fn dir_of(&self, d: usize) -> Dir {
        if d == usize::from(self.client_dir) {
            Dir::C2s
        } else {
            Dir::S2c
        }
    }

    fn is_client(&self, d: usize) -> bool {
        d == usize::from(self.client_dir)
    }

    /// The outermost VLAN of its first packet.
    fn outer_vlan(&self) -> Option<u16> {
        (self.vlan_count > 0).then_some(self.vlans[0])
    }
}

/// Counters of one table, plain integers owned by its worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    pub packets: u64,
    pub flows_created: u64,
    /// Flows closed, by [`CloseReason`] in [`CloseReason::ALL`] order.
    pub flows_closed: [u64; 8],
    pub records_emitted: u64,
    /// Fragments that did not (yet) complete a datagram.
    pub fragments_pending: u64,
    /// Incomplete datagrams dropped because the fragment table was full, or because their
    /// other fragments did not come within `fragment_s`.
    pub fragments_evicted: u64,
    pub fragments_expired: u64,
    /// ICMP errors attributed to a tracked flow.
    pub icmp_errors_attributed: u64,
    /// Packets of protocols we do not track (and non-first fragments of unknown datagrams).
    pub untracked: u64,
    /// Flows evicted because the table was full.
    pub evictions: u64,
    /// Closed flows whose trail outgrew its arena slot (points dropped from the middle).
    pub trails_truncated: u64,
}

/// A packet's flow key and its hash, worked out by [`FlowTable::look`] a few packets before
/// the table processes it; valid for that table only.
#[derive(Clone, Copy, Debug)]
pub struct PacketKey {
    key: FlowKey,
    src_is_lo: bool,
    hash: u64,
    /// The slot the hash's bucket most likely leads to, once [`FlowTable::prefetch_flow`]
    /// has read the bucket ([`NO_SLOT`] before): the first one tried.
    likely: u32,
}

/// The flow table of one worker.
pub struct FlowTable {
    /// Slot indexes of the open flows, found by the hash of their key (the keys themselves
    /// live in the flow slots).
    index: FlowIndex,
    hasher: DefaultHashBuilder,
    /// Flow slots, reserved for the full capacity at start and initialised the first time
    /// each is used (so untouched capacity costs no page faults and no start-up time).
    flows: Vec<Flow>,
    /// The configured capacity: `flows` never grows past it.
    capacity: usize,
    /// The last slot freed by a closed flow (or `NO_SLOT`): freed slots are reused, last
    /// first, before never-used ones; each free slot's `id` holds the next.
    free: u32,
    arena: Arena,
    wheel: Wheel,
    frags: FragTable,
    scratch_points: Vec<Point>,
    cfg: Config,
    /// The interface the packets come in on now (an id of [`Config::interface_id`]).
    interface: u16,
    timeouts_ns: TimeoutsNs,
    worker: u16,
    next_id: u64,
    /// Slot of the connection created last.
    newest: u32,
    mode: RecordMode,
    /// Plain in-order segments take the short way ([`tcp::steady`]); off only to check that
    /// the short way changes nothing.
    steady_path: bool,
    counters: TableCounters,
}

#[derive(Clone, Copy)]
struct TimeoutsNs {
    tcp_syn: u64,
    tcp_established: u64,
    tcp_closing: u64,
    tcp_closed: u64,
    udp: u64,
    icmp: u64,
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

const WHEEL_SLOTS: usize = 4096;
const WHEEL_TICK_NS: u64 = 100_000_000;

impl FlowTable {
    /// Allocates a table for `cfg.table.capacity` flows, with its arena, wheel and fragment
    /// table; records say they come from `worker`. Records only anomalous connections until
    /// [`FlowTable::set_mode`] says otherwise.
    pub fn new(cfg: &Config, worker: u16) -> FlowTable {
        let cap = cfg.table.capacity as usize;
        let per_slot = cfg.table.points_per_flow as usize;
        let t = &cfg.timeouts;
        FlowTable {
            index: FlowIndex::with_capacity(cap),
            hasher: DefaultHashBuilder::default(),
            flows: Vec::with_capacity(cap),
            capacity: cap,
            free: NO_SLOT,
            arena: Arena::new(cap, per_slot),
            wheel: Wheel::new(cap, WHEEL_SLOTS, WHEEL_TICK_NS),
            frags: FragTable::new(cfg.table.fragments as usize, secs_to_ns(t.fragment_s)),
            scratch_points: Vec::with_capacity(per_slot.max(2) + 2),
            timeouts_ns: TimeoutsNs {
                tcp_syn: secs_to_ns(t.tcp_syn_s),
                tcp_established: secs_to_ns(t.tcp_established_s),
                tcp_closing: secs_to_ns(t.tcp_closing_s),
                tcp_closed: secs_to_ns(t.tcp_closed_s),
                udp: secs_to_ns(t.udp_s),
                icmp: secs_to_ns(t.icmp_s),
            },
            cfg: cfg.clone(),
            interface: 0,
            worker,
            next_id: 0,
            newest: 0,
            mode: RecordMode::Anomalous,
            steady_path: true,
            counters: TableCounters::default(),
        }
    }

    /// Numbers the next connection's record `sequence` (its id is the worker in the top 16
    /// bits and the sequence below): a run continuing a log goes on from its highest.
    pub fn set_next_sequence(&mut self, sequence: u64) {
        self.next_id = sequence & ((1 << 48) - 1);
    }

    pub fn set_mode(&mut self, mode: RecordMode) {
        self.mode = mode;
    }

    /// Sends every TCP segment the full way through the analysis, plain in-order ones too
    /// (they take a short way otherwise, to the same effect): for tests that check that
    /// sameness.
    #[doc(hidden)]
    pub fn set_steady_path(&mut self, on: bool) {
        self.steady_path = on;
    }

    /// Says which interface the next packets come in on (an id of
    /// [`Config::interface_id`]; 0 for one no context names): a connection's context is
    /// chosen from the interface and outer VLAN of its first packet.
    #[inline]
    pub fn set_interface(&mut self, interface: u16) {
        self.interface = interface;
    }

    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Flows currently open.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of memory reserved per tracked connection at the configured capacity: flow
    /// slots, the tracking-point arena, the hash table as allocated (buckets and control
    /// bytes, at its load factor), the timer wheel and the free and expiry lists, divided by
    /// the capacity.
    pub fn bytes_per_flow(&self) -> usize {
        let bytes = std::mem::size_of::<Flow>() * self.flows.capacity()
            + self.arena.bytes()
            + self.index.bytes()
            + self.wheel.bytes();
        bytes / self.capacity.max(1)
    }

    /// First look at a packet that [`FlowTable::process_looked`] gets a few packets later:
    /// works out its flow key and hash and asks for its hash bucket to be brought into the
    /// cache meanwhile. `None` (nothing to do ahead) for fragments, ICMP errors and packets
    /// of no flow. Changes nothing.
    #[inline]
    pub fn look(&self, pkt: &Packet<'_>) -> Option<PacketKey> {
        if pkt.fragment.is_some()
            || matches!(
                pkt.l4,
                L4::Icmp {
                    quoted: Some(_),
                    ..
                }
            )
        {
            return None;
        }
        let (key, src_is_lo) = FlowKey::of(pkt)?;
        let hash = self.hasher.hash_one(key);
        self.index.prefetch(hash);
        Some(PacketKey {
            key,
            src_is_lo,
            hash,
            likely: NO_SLOT,
        })
    }

    /// Second look, a few packets on: asks for the flow slot the hash most likely leads to
    /// (read from its bucket, by now in the cache; no key compared), and notes it in
    /// `looked`, where processing tries it before going through the bucket again.
    #[inline]
    pub fn prefetch_flow(&self, looked: &mut PacketKey) {
        if let Some(slot) = self.index.likely_slot(looked.hash) {
            looked.likely = slot;
            if let Some(f) = self.flows.get(slot as usize) {
                prefetch::value(f);
            }
        }
    }

    /// Advances time to `now_ns` without a packet (idle periods of a live source).
    pub fn tick<F: FnMut(&Record<'_>)>(&mut self, now_ns: u64, emit: &mut F) {
        self.expire(now_ns, emit);
    }

    /// Processes one parsed packet seen at `ts_ns` with `frame_len` bytes on the wire.
    pub fn process<F: FnMut(&Record<'_>)>(
        &mut self,
        pkt: &Packet<'_>,
        ts_ns: u64,
        frame_len: u32,
        emit: &mut F,
    ) {
        self.process_looked(pkt, None, ts_ns, frame_len, emit);
    }

    /// [`FlowTable::process`] for a packet this table looked at before
    /// ([`FlowTable::look`]), with what that look worked out.
    pub fn process_looked<F: FnMut(&Record<'_>)>(
        &mut self,
        pkt: &Packet<'_>,
        looked: Option<&PacketKey>,
        ts_ns: u64,
        frame_len: u32,
        emit: &mut F,
    ) {
        self.counters.packets += 1;
        self.expire(ts_ns, emit);
        if pkt.fragment.is_some() {
            let whole = self.frags.feed(pkt, ts_ns);
            self.counters.fragments_evicted = self.frags.evicted_full();
            self.counters.fragments_expired = self.frags.expired();
            match whole {
                Some(whole) => self.track(&whole, None, ts_ns, frame_len, true, emit),
                None => self.counters.fragments_pending += 1,
            }
            return;
        }
        self.track(pkt, looked, ts_ns, frame_len, false, emit);
    }

    /// Closes every open flow with reason `shutdown` (or the reason it already had).
    pub fn shutdown<F: FnMut(&Record<'_>)>(&mut self, emit: &mut F) {
        for idx in 0..self.flows.len() as u32 {
            if self.flows[idx as usize].in_use() {
                self.close(idx, CloseReason::Shutdown, emit);
            }
        }
    }

    fn expire<F: FnMut(&Record<'_>)>(&mut self, now_ns: u64, emit: &mut F) {
        let (flows, timeouts) = (&self.flows, &self.timeouts_ns);
        let any = self.wheel.advance(now_ns, |idx, horizon| {
            let f = &flows[idx as usize];
            let deadline = f.last_ns.saturating_add(timeout_of(f, timeouts));
            if deadline < horizon {
                Due::Expire
            } else {
                Due::Later(deadline)
            }
        });
        if !any {
            return;
        }
        while let Some(idx) = self.wheel.pop_expired() {
            self.close(idx, CloseReason::AgedOut, emit);
        }
    }

    #[inline(always)]
    fn track<F: FnMut(&Record<'_>)>(
        &mut self,
        pkt: &Packet<'_>,
        looked: Option<&PacketKey>,
        ts_ns: u64,
        frame_len: u32,
        fragmented: bool,
        emit: &mut F,
    ) {
        if let L4::Icmp {
            quoted: Some(q),
            icmp_type,
            code,
            v6,
            ..
        } = pkt.l4
        {
            let (key, _) =
                FlowKey::from_endpoints(q.proto, q.src, q.sport, q.dst, q.dport, KeyKind::Ports);
            if let Some(idx) = self.find(self.hasher.hash_one(key), &key) {
                self.icmp_error(idx, pkt, ts_ns, v6, icmp_type, code);
                return;
            }
        }
        // The key is read where it lies (in `looked`) rather than copied out.
        let worked_out;
        let (key, src_is_lo, hash, likely) = match looked {
            Some(l) => (&l.key, l.src_is_lo, l.hash, l.likely),
            None => {
                let Some((key, src_is_lo)) = FlowKey::of(pkt) else {
                    self.counters.untracked += 1;
                    return;
                };
                worked_out = key;
                (&worked_out, src_is_lo, self.hasher.hash_one(key), NO_SLOT)
            }
        };
        let d = usize::from(!src_is_lo);
        // An open flow is in the index under its key and nowhere else, so the likely slot,
        // open and with this key, is the one the index would give.
        let found = match self.flows.get(likely as usize) {
            Some(f) if f.in_use() && f.key == *key => Some(likely),
            _ => self.find(hash, key),
        };
        let idx = match found {
            Some(idx) => {
                if self.is_new_connection(idx, d, pkt) {
                    let reason = match self.flows[idx as usize].terminal {
                        Terminal::Open => CloseReason::TcpReuse,
                        _ => CloseReason::TcpFin,
                    };
                    self.close(idx, reason, emit);
                    self.create(*key, hash, d, pkt, ts_ns, emit)
                } else {
                    idx
                }
            }
            None => self.create(*key, hash, d, pkt, ts_ns, emit),
        };
        self.update(idx, d, pkt, ts_ns, frame_len, fragmented);
    }

    /// A SYN whose sequence number differs from the first one its sender used starts a new
    /// connection on the same 5-tuple (as Wireshark splits streams).
    fn is_new_connection(&self, idx: u32, d: usize, pkt: &Packet<'_>) -> bool {
        let L4::Tcp { flags, seq, .. } = pkt.l4 else {
            return false;
        };
        if flags & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN {
            return false;
        }
        self.flows[idx as usize].tcp.dirs[d]
            .base_seq()
            .is_some_and(|base| base != seq)
    }

    /// A slot freed by a closed flow, if there is one.
    fn take_free(&mut self) -> Option<u32> {
        let idx = self.free;
        let next = self.flows.get(idx as usize)?.id;
        self.free = u32::try_from(next).unwrap_or(NO_SLOT);
        Some(idx)
    }

    /// The slot of the open flow with `key`, whose hash is `hash`.
    #[inline]
    fn find(&self, hash: u64, key: &FlowKey) -> Option<u32> {
        let flows = &self.flows;
        self.index.find(hash, |idx| {
            flows.get(idx as usize).is_some_and(|f| f.key == *key)
        })
    }

    fn create<F: FnMut(&Record<'_>)>(
        &mut self,
        key: FlowKey,
        hash: u64,
        d: usize,
        pkt: &Packet<'_>,
        ts_ns: u64,
        emit: &mut F,
    ) -> u32 {
        let idx = match self.take_free() {
            Some(idx) => idx,
            None if self.flows.len() < self.capacity => {
                self.flows.push(Flow::empty());
                (self.flows.len() - 1) as u32
            }
            None => {
                // Table full: evict the flow that is due soonest.
                let victim = self.wheel.soonest().unwrap_or(0);
                self.counters.evictions += 1;
                let f = &mut self.flows[victim as usize];
                let t = ts_ns.saturating_sub(f.start_ns);
                let dir = f.dir_of(0);
                self.arena.push(
                    victim,
                    &mut f.trail,
                    Point {
                        t_ns: t,
                        kind: PointKind::Eviction,
                        dir,
                        severity: Severity::Error,
                        arg: 0,
                    },
                );
                self.close(victim, CloseReason::ResourceLimit, emit);
                self.take_free().unwrap_or(victim)
            }
        };
        self.counters.flows_created += 1;
        let id = u64::from(self.worker) << 48 | self.next_id;
        self.next_id += 1;
        let (proto, orient, client_dir, icmp_type_code) = match pkt.l4 {
            L4::Tcp { flags, .. } => {
                let syn = flags & tcp_flags::SYN != 0;
                let ack = flags & tcp_flags::ACK != 0;
                match (syn, ack) {
                    (true, false) => (Proto::Tcp, Orient::Syn, d, 0),
                    (true, true) => (Proto::Tcp, Orient::SynAck, 1 - d, 0),
                    _ => (Proto::Tcp, Orient::FirstPacket, d, 0),
                }
            }
            L4::Icmp {
                icmp_type, code, ..
            } => (
                Proto::Icmp,
                Orient::FirstPacket,
                d,
                u16::from(icmp_type) << 8 | u16::from(code),
            ),
            _ => (Proto::Udp, Orient::FirstPacket, d, 0),
        };
        let mut vlans = [0u16; MAX_VLANS];
        let vlan_count = usize::from(pkt.vlan_count).min(MAX_VLANS);
        vlans[..vlan_count].copy_from_slice(&pkt.vlans[..vlan_count]);
        let f = &mut self.flows[idx as usize];
        *f = Flow {
            key,
            id,
            start_ns: ts_ns,
            last_ns: ts_ns,
            vlans,
            vlan_count: vlan_count as u8,
            client_dir: client_dir as u8,
            orient,
            proto,
            ip_version: pkt.ip_version,
            icmp_type_code,
            marks: Marks::IN_USE_ONLY,
            ..Flow::empty()
        };
        if !self.cfg.contexts.is_empty() {
            f.context = self
                .cfg
                .context_of(self.interface, (vlan_count > 0).then_some(vlans[0]));
        }
        f.triggers_idx = triggers_index(&self.cfg, f);
        // The table never holds more flows than the index has room for.
        let indexed = self.index.insert(hash, idx);
        debug_assert!(indexed, "flow index full at {} flows", self.index.len());
        self.newest = idx;
        self.wheel
            .schedule(idx, ts_ns.saturating_add(self.timeouts_ns.tcp_closed));
        idx
    }

    #[inline(always)]
    fn update(
        &mut self,
        idx: u32,
        d: usize,
        pkt: &Packet<'_>,
        ts_ns: u64,
        frame_len: u32,
        fragmented: bool,
    ) {
        let Some(f) = self.flows.get_mut(idx as usize) else {
            return;
        };
        let mut slot = PacketFlow {
            f,
            arena: &mut self.arena,
            idx,
            d,
            ts_ns,
        };
        let steady = self.steady_path && !fragmented;
        slot.update(&self.cfg, pkt, frame_len, fragmented, steady);
    }

    fn icmp_error(
        &mut self,
        idx: u32,
        pkt: &Packet<'_>,
        ts_ns: u64,
        v6: bool,
        icmp_type: u8,
        code: u8,
    ) {
        self.counters.icmp_errors_attributed += 1;
        let frag_needed = if v6 {
            icmp_type == 2
        } else {
            icmp_type == 3 && code == 4
        };
        let f = &mut self.flows[idx as usize];
        f.events.set(Events::ICMP_ERROR);
        if frag_needed {
            f.events.set(Events::FRAG_NEEDED);
        }
        f.marks.set(Marks::ICMP_LAST, ts_ns >= f.last_ns);
        let arg = u32::from(icmp_type) << 8 | u32::from(code);
        // The error travels towards the sender of the quoted packet.
        let d = usize::from(pkt.dst != f.key.hi_ip);
        let mut slot = PacketFlow {
            f,
            arena: &mut self.arena,
            idx,
            d,
            ts_ns,
        };
        slot.point(PointKind::IcmpError, Severity::Error, arg);
    }

    fn close<F: FnMut(&Record<'_>)>(&mut self, idx: u32, cause: CloseReason, emit: &mut F) {
        let Some(f) = self.flows.get_mut(idx as usize) else {
            return;
        };
        if !f.in_use() {
            return;
        }
        f.marks.set(Marks::IN_USE, false);
        let f = &self.flows[idx as usize];
        let client = usize::from(f.client_dir);
        let server = 1 - client;
        let close_reason = match f.terminal {
            Terminal::Fin => CloseReason::TcpFin,
            Terminal::Rst(d1) if usize::from(d1) == client => CloseReason::TcpRstClient,
            Terminal::Rst(_) => CloseReason::TcpRstServer,
            Terminal::Open => match cause {
                CloseReason::AgedOut | CloseReason::Shutdown if f.marks.has(Marks::ICMP_LAST) => {
                    CloseReason::IcmpError
                }
                _ => cause,
            },
        };
        let history = f.history.history();
        let conn_state = if f.proto == Proto::Tcp {
            let syn_then_rst = syn_then_client_rst(history.as_str());
            tcp::conn_state(
                f.tcp.dirs[client].state,
                f.tcp.dirs[server].state,
                f.stats[client].payload,
                f.stats[server].payload,
                syn_then_rst,
            )
        } else {
            ConnState::None
        };
        let (c_ep, s_ep) = f.endpoints();
        let dropped = self.arena.dropped(f.trail);
        if dropped > 0 {
            self.counters.trails_truncated += 1;
        }
        // The rules need no points: the trail is only copied out for a record that is kept.
        let mut rec = Record {
            id: f.id,
            worker: self.worker,
            context: f.context,
            proto: f.proto,
            ip_version: f.ip_version,
            client: c_ep,
            server: s_ep,
            midstream: f.proto == Proto::Tcp && f.orient == Orient::FirstPacket,
            vlans: Cow::Borrowed(&f.vlans[..usize::from(f.vlan_count)]),
            start_ns: f.start_ns,
            end_ns: f.last_ns,
            c2s: f.stats[client],
            s2c: f.stats[server],
            close_reason,
            conn_state,
            history,
            flags: Flags::default(),
            irregular_point: None,
            latency: f.latency(),
            points: Cow::Borrowed(&[]),
            points_dropped: dropped,
            icmp_type_code: f.icmp_type_code,
        };
        rec.flags = rules::evaluate(
            &rec,
            f.events,
            self.cfg.triggers_at(f.context, f.triggers_idx),
        );
        if self.mode == RecordMode::All {
            rec.flags.insert(Flags::ALL);
        }
        if f.marks.has(Marks::USER) {
            rec.flags.insert(Flags::USER);
        }
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == close_reason) {
            self.counters.flows_closed[i] += 1;
        }
        if !rec.flags.is_empty() {
            self.counters.records_emitted += 1;
            self.arena
                .copy_record_trail(idx, f.trail, &mut self.scratch_points);
            if let Some(p) = f.longest_silence() {
                mark_longest_silence(&mut self.scratch_points, p);
            }
            rec.irregular_point = self
                .scratch_points
                .iter()
                .position(|p| p.severity >= Severity::Warn)
                .and_then(|i| u16::try_from(i).ok());
            rec.points = Cow::Borrowed(&self.scratch_points);
            emit(&rec);
        }
        let hash = self.hasher.hash_one(f.key);
        self.index.remove(hash, idx);
        self.wheel.cancel(idx);
        self.flows[idx as usize].id = u64::from(self.free);
        self.free = idx;
    }
}

/// Puts `stall` among `points` in time order (after those of the same time), unless the
/// `stall` trigger already marked that silence.
fn mark_longest_silence(points: &mut Vec<Point>, stall: Point) {
    let marked = points
        .iter()
        .any(|p| p.kind == PointKind::Stall && p.t_ns == stall.t_ns);
    if !marked {
        let at = points.partition_point(|p| p.t_ns <= stall.t_ns);
        points.insert(at, stall);
    }
}

/// A flow and the arena its points go to, borrowed once for the whole of a packet (rather
/// than indexing the table at every step), with the packet's direction and time.
struct PacketFlow<'a> {
    f: &'a mut Flow,
    arena: &'a mut Arena,
    idx: u32,
    d: usize,
    ts_ns: u64,
}

impl PacketFlow<'_> {
    fn point(&mut self, kind: PointKind, severity: Severity, arg: u32) {
        let p = Point {
            t_ns: self.ts_ns.saturating_sub(self.f.start_ns),
            kind,
            dir: self.f.dir_of(self.d),
            severity,
            arg,
        };
        self.arena.push(self.idx, &mut self.f.trail, p);
    }

    fn triggers<'c>(&self, cfg: &'c Config) -> &'c Triggers {
        cfg.triggers_at(self.f.context, self.f.triggers_idx)
    }

    fn update(
        &mut self,
        cfg: &Config,
        pkt: &Packet<'_>,
        frame_len: u32,
        fragmented: bool,
        steady: bool,
    ) {
        let (d, ts_ns) = (self.d, self.ts_ns);
        let first_packet = {
            let f = &*self.f;
            f.stats[0].pkts + f.stats[1].pkts == 0
        };
        if !first_packet && self.f.proto == Proto::Tcp {
            let gap = ts_ns.saturating_sub(self.f.last_ns);
            if self.f.max_stall.get().is_none_or(|m| gap > m) {
                self.longest_gap(cfg, gap);
            }
        }
        {
            let f = &mut *self.f;
            f.last_ns = f.last_ns.max(ts_ns);
            if f.marks.has(Marks::ICMP_LAST) {
                f.marks.set(Marks::ICMP_LAST, false);
            }
            let s = &mut f.stats[d];
            s.pkts += 1;
            s.bytes += u64::from(frame_len);
        }
        let f = &*self.f;
        let outer = (pkt.vlan_count > 0).then_some(pkt.vlans[0]);
        if f.ttl[d] != pkt.ttl || outer != f.outer_vlan() {
            self.path_change(pkt.ttl, outer);
        }
        if fragmented {
            self.f.events.set(Events::FRAGMENT);
            let off = pkt.fragment.map_or(0, |f| f.offset);
            self.point(PointKind::Fragment, Severity::Warn, off);
        }
        match pkt.l4 {
            L4::Tcp {
                seq,
                ack,
                flags,
                window,
                wscale,
                payload_len,
                payload,
                ..
            } => {
                let seg = Segment {
                    seq,
                    ack,
                    flags,
                    window,
                    wscale,
                    payload_len,
                };
                if !(steady && !first_packet && self.steady_segment(cfg, &seg, payload)) {
                    self.tcp_segment(cfg, &seg, payload);
                }
            }
            L4::Udp { payload_len, .. } => {
                self.f.stats[d].payload += u64::from(payload_len);
                self.first_payload(PointKind::FirstData);
            }
            L4::Icmp { payload_len, .. } => {
                self.f.stats[d].payload += u64::from(payload_len);
                self.first_payload(PointKind::Start);
            }
            L4::Fragment | L4::Other { .. } => {}
        }
    }

    /// The longest silence between two packets of the connection so far, `gap`: the
    /// record's `max_stall`, from the first packet to the last. The `stall` trigger only
    /// looks at silences before the connection closed (both FINs, or the first RST): a
    /// late FIN or RST repeated seconds after the close is no stall of the connection.
    #[cold]
    fn longest_gap(&mut self, cfg: &Config, gap: u64) {
        self.f.max_stall = Span::of(gap);
        self.f.max_stall_end = Span::of(self.ts_ns.saturating_sub(self.f.start_ns));
        self.f.marks.set(Marks::STALL_END_1, self.d == 1);
        let limit = self.triggers(cfg).latency.stall;
        let f = &mut *self.f;
        if f.terminal == Terminal::Open && !f.events.has(Events::STALL) && limit.over(gap) {
            f.events.set(Events::STALL);
            self.point(PointKind::Stall, Severity::Warn, us(gap));
        }
    }

    /// A packet whose TTL (hop limit) or outer VLAN is not what its direction had so far:
    /// the first one of the direction, or a change of path (a point, the first time).
    #[cold]
    fn path_change(&mut self, ttl: u8, outer: Option<u16>) {
        let f = &mut *self.f;
        let d = self.d;
        let ttl_changed = f.ttl[d] != 0 && f.ttl[d] != ttl && !f.events.has(Events::TTL_CHANGE);
        if f.ttl[d] == 0 {
            f.ttl[d] = ttl;
        }
        let vlan_changed = outer != f.outer_vlan() && !f.events.has(Events::VLAN_CHANGE);
        if ttl_changed {
            f.events.set(Events::TTL_CHANGE);
            self.point(PointKind::TtlChange, Severity::Warn, u32::from(ttl));
        }
        if vlan_changed {
            self.f.events.set(Events::VLAN_CHANGE);
            self.point(
                PointKind::VlanChange,
                Severity::Warn,
                u32::from(outer.unwrap_or(0)),
            );
        }
    }

    /// First packet of a direction of a UDP/ICMP flow: one point, and the time to the first
    /// answer.
    fn first_payload(&mut self, kind: PointKind) {
        let (d, ts_ns) = (self.d, self.ts_ns);
        if let Some(ttfb) = self.f.first_payload_at(d, ts_ns) {
            self.point(kind, Severity::Info, ttfb.map_or(0, us));
        }
    }

    /// A segment [`tcp::steady`] takes, on a connection past its handshake with nothing
    /// pending that such a segment would settle: to the same effect as
    /// [`PacketFlow::tcp_segment`], in fewer steps. False (and nothing changed) for any other.
    #[inline]
    fn steady_segment(&mut self, cfg: &Config, seg: &Segment, payload: &[u8]) -> bool {
        let (d, ts_ns) = (self.d, self.ts_ns);
        let f = &mut *self.f;
        let is_client = f.is_client(d);
        let handshake_pending = is_client && f.synack_ns.is_some() && f.synack_ack.is_none();
        if f.terminal != Terminal::Open
            || handshake_pending
            || !tcp::steady(&mut f.tcp, d, seg, ts_ns)
        {
            return false;
        }
        f.stats[d].payload += u64::from(seg.payload_len);
        let letter = if seg.payload_len > 0 { b'd' } else { b'a' };
        f.history.push_once(if is_client {
            letter.to_ascii_uppercase()
        } else {
            letter
        });
        if seg.payload_len > 0 {
            self.tcp_payload(cfg, payload);
        }
        true
    }

    /// The points of what the sequence analysis found in a segment: every retransmission
    /// (by kind, but a SYN's, which has its own point), out-of-order segment, lost segment,
    /// keep-alive and zero-window probe; the first zero window and window full; the
    /// duplicate ACK that makes a run as long as the trigger's.
    #[cold]
    fn tcp_findings(&mut self, cfg: &Config, seg: &Segment, found: Findings) {
        let d = self.d;
        let syn = seg.flags & tcp_flags::SYN != 0;
        let retransmission = if found.has(Findings::FAST_RETRANSMISSION) {
            Some(PointKind::FastRetransmission)
        } else if found.has(Findings::SPURIOUS_RETRANSMISSION) {
            Some(PointKind::SpuriousRetransmission)
        } else if found.has(Findings::RETRANSMISSION) {
            Some(PointKind::Retransmission)
        } else {
            None
        };
        if let (Some(kind), false) = (retransmission, syn) {
            self.point(kind, Severity::Warn, seg.seq);
        }
        if found.has(Findings::OUT_OF_ORDER) {
            self.point(PointKind::OutOfOrder, Severity::Warn, seg.seq);
        }
        if found.has(Findings::LOST_SEGMENT) {
            self.point(PointKind::LostSegment, Severity::Warn, seg.seq);
        }
        if found.has(Findings::DUP_ACK) {
            let (run, need) = (
                self.f.tcp.dirs[d].dup_acks(),
                self.triggers(cfg).protocol.dup_acks,
            );
            if need > 0 && u32::from(run) == need {
                self.f.events.set(Events::DUP_ACK_RUN);
                self.point(PointKind::DupAck, Severity::Warn, u32::from(run));
            }
        }
        if found.has(Findings::ZERO_WINDOW) && self.f.stats[d].zero_window == 1 {
            self.point(PointKind::ZeroWindow, Severity::Warn, 0);
        }
        if found.has(Findings::ZERO_WINDOW_PROBE) {
            self.point(PointKind::ZeroWindowProbe, Severity::Warn, seg.seq);
        }
        if found.has(Findings::WINDOW_FULL) && !self.f.marks.has(Marks::WINDOW_FULL) {
            self.f.marks.set(Marks::WINDOW_FULL, true);
            self.point(PointKind::WindowFull, Severity::Info, seg.payload_len);
        }
        if found.has(Findings::KEEP_ALIVE) {
            self.point(PointKind::KeepAlive, Severity::Info, 0);
        }
        if found.has(Findings::BAD_FLAGS) {
            self.point(PointKind::BadFlags, Severity::Warn, u32::from(seg.flags));
        }
        if found.has(Findings::DATA_AFTER_FIN) {
            self.point(PointKind::DataAfterFin, Severity::Warn, seg.payload_len);
        }
    }

    fn tcp_segment(&mut self, cfg: &Config, seg: &Segment, payload: &[u8]) {
        let (d, ts_ns) = (self.d, self.ts_ns);
        use tcp_flags::{ACK, FIN, RST, SYN};
        let fl = seg.flags;
        let syn = fl & SYN != 0;
        let ack = fl & ACK != 0;
        let fin = fl & FIN != 0;
        let rst = fl & RST != 0;

        // Orientation: the first SYN or SYN-ACK decides who the client is.
        {
            let f = &mut *self.f;
            if f.orient == Orient::FirstPacket && syn {
                let (o, client) = if ack {
                    (Orient::SynAck, 1 - d)
                } else {
                    (Orient::Syn, d)
                };
                f.orient = o;
                f.client_dir = client as u8;
                f.triggers_idx = triggers_index(cfg, f);
            }
        }
        let is_client = self.f.is_client(d);
        let prior_syns = self.f.tcp.dirs[d].syns;
        let found = tcp::analyse(&mut self.f.tcp, d, seg, ts_ns);

        if syn && !ack && is_client {
            let f = &mut *self.f;
            f.events.set(Events::CLIENT_SYN);
            if f.syn_ns.is_none() {
                f.syn_ns = Span::of(ts_ns.saturating_sub(f.start_ns));
                f.history.push_once(b'S');
                self.point(PointKind::Syn, Severity::Info, 0);
            } else if prior_syns > 0 {
                f.events.set(Events::SYN_RETRANSMIT);
                self.point(
                    PointKind::SynRetransmission,
                    Severity::Warn,
                    u32::from(prior_syns) + 1,
                );
            }
        } else if syn && ack && !is_client {
            let f = &mut *self.f;
            if f.synack_ns.is_none() {
                f.synack_ns = Span::of(ts_ns.saturating_sub(f.start_ns));
                f.history.push_once(b'h');
                let lat = f.syn_ns.get().map(|s| ts_ns.saturating_sub(f.start_ns + s));
                if lat.is_some() {
                    f.events.set(Events::SYN_SYNACK);
                }
                self.point(PointKind::SynAck, Severity::Info, lat.map_or(0, us));
                self.threshold(lat, self.triggers(cfg).latency.syn_synack);
            }
        } else if ack && !syn && !rst && is_client {
            let f = &mut *self.f;
            if let (Some(sa), true) = (f.synack_ns.get(), f.synack_ack.is_none()) {
                let lat = ts_ns.saturating_sub(f.start_ns + sa);
                f.synack_ack = Span::of(lat);
                self.point(PointKind::HandshakeDone, Severity::Info, us(lat));
                self.threshold(Some(lat), self.triggers(cfg).latency.synack_ack);
            }
        }

        {
            let f = &mut *self.f;
            let s = &mut f.stats[d];
            s.payload += u64::from(seg.payload_len);
            let retransmitted = found.has(Findings::ANY_RETRANSMISSION);
            s.retrans += u32::from(retransmitted);
            s.out_of_order += u32::from(found.has(Findings::OUT_OF_ORDER));
            s.dup_ack += u32::from(found.has(Findings::DUP_ACK));
            s.zero_window += u32::from(found.has(Findings::ZERO_WINDOW));
            let bad_flags = found.has(Findings::BAD_FLAGS);
            if bad_flags {
                f.events.set(Events::BAD_FLAGS);
            }
            if found.has(Findings::DATA_AFTER_FIN) {
                f.events.set(Events::DATA_AFTER_FIN);
            }
            let letter = |l: u8| if is_client { l.to_ascii_uppercase() } else { l };
            push_history_once(&mut f.history, letter(b'q'), bad_flags);
            push_history_once(&mut f.history, letter(b'd'), seg.payload_len > 0);
            push_history_once(
                &mut f.history,
                letter(b'a'),
                ack && seg.payload_len == 0 && !syn && !fin && !rst,
            );
            push_history_once(&mut f.history, letter(b't'), retransmitted);
            push_history_once(
                &mut f.history,
                letter(b'w'),
                found.has(Findings::ZERO_WINDOW),
            );
            push_history_once(&mut f.history, letter(b'f'), fin);
            push_history_once(&mut f.history, letter(b'r'), rst);
        }
        if found.0 != 0 {
            self.tcp_findings(cfg, seg, found);
        }

        if seg.payload_len > 0 {
            self.tcp_payload(cfg, payload);
        }
        let f = &mut *self.f;
        if fin && !f.events.has(fin_bit(d)) {
            f.events.set(fin_bit(d));
            self.point(PointKind::Fin, Severity::Info, 0);
        }
        let f = &mut *self.f;
        if syn && f.terminal != Terminal::Open {
            f.marks.set(Marks::REOPENED, true);
        }
        if rst {
            f.marks.set(Marks::REOPENED, false);
            if f.terminal == Terminal::Open {
                f.terminal = Terminal::Rst(d == 1);
            }
            self.point(PointKind::Rst, Severity::Error, 0);
        } else if f.terminal == Terminal::Open
            && f.tcp.dirs[0].fin_seen()
            && f.tcp.dirs[1].fin_seen()
        {
            f.terminal = Terminal::Fin;
        }
    }

    /// A data segment: its direction's first data (time to first byte, TLS hellos) and TLS
    /// alerts. Once a direction has sent data only an alert record (content type 21) can
    /// matter, which one byte tells; most segments stop there.
    #[inline(always)]
    fn tcp_payload(&mut self, cfg: &Config, payload: &[u8]) {
        if self.f.marks.has(Marks::FIRST_DATA << self.d) && payload.first() != Some(&tls::ALERT) {
            return;
        }
        self.payload_events(cfg, payload);
    }

    fn payload_events(&mut self, cfg: &Config, payload: &[u8]) {
        let (d, ts_ns) = (self.d, self.ts_ns);
        let first = self.f.first_payload_at(d, ts_ns);
        if let Some(ttfb) = first {
            self.point(PointKind::FirstData, Severity::Info, ttfb.map_or(0, us));
            self.threshold(ttfb, self.triggers(cfg).latency.ttfb);
        }
        match tls::inspect(payload) {
            Some(TlsEvent::ClientHello { sni_hash }) if first.is_some() => {
                self.point(PointKind::TlsClientHello, Severity::Info, sni_hash);
            }
            Some(TlsEvent::ServerHello { version }) if first.is_some() => {
                self.point(
                    PointKind::TlsServerHello,
                    Severity::Info,
                    u32::from(version),
                );
            }
            Some(TlsEvent::Alert { level, description }) => {
                let severity = if level == 2 {
                    self.f.events.set(Events::TLS_FATAL);
                    Severity::Error
                } else {
                    Severity::Warn
                };
                let arg = u32::from(level) << 8 | u32::from(description);
                self.point(PointKind::TlsAlert, severity, arg);
            }
            Some(TlsEvent::EncryptedAlert) => {
                self.point(PointKind::TlsAlert, Severity::Info, 0xffff);
            }
            _ => {}
        }
    }

    /// Adds a threshold point (arg: the threshold in microseconds) right after the point that
    /// measured `value_ns`, when that is over `limit`.
    fn threshold(&mut self, value_ns: Option<u64>, limit: Limit) {
        if value_ns.is_some_and(|v| limit.over(v)) {
            self.point(PointKind::Threshold, Severity::Warn, limit.us);
        }
    }
}

fn fin_bit(d: usize) -> u16 {
    if d == 0 {
        Events::FIN_C
    } else {
        Events::FIN_S
    }
}

/// Zeek's `^?S[^HAFGIQ]*R.*`: a client SYN, then a client RST before the client did
/// anything else of note.
fn syn_then_client_rst(history: &str) -> bool {
    let h = history.strip_prefix('^').unwrap_or(history);
    let Some(rest) = h.strip_prefix('S') else {
        return false;
    };
    for c in rest.chars() {
        if c == 'R' {
            return true;
        }
        if "HAFGIQ".contains(c) {
            return false;
        }
    }
    false
}

fn push_history_once(h: &mut Letters, letter: u8, cond: bool) {
    if cond {
        h.push_once(letter);
    }
}

fn us(ns: u64) -> u32 {
    u32::try_from(ns / NS_PER_US).unwrap_or(u32::MAX)
}

fn timeout_of(f: &Flow, t: &TimeoutsNs) -> u64 {
    match f.proto {
        Proto::Udp => t.udp,
        Proto::Icmp => t.icmp,
        Proto::Tcp => {
            let both_fins = f.tcp.dirs[0].fin_seen() && f.tcp.dirs[1].fin_seen();
            if f.terminal != Terminal::Open && (!f.marks.has(Marks::REOPENED) || both_fins) {
                t.tcp_closed
            } else if f.tcp.dirs[0].fin_seen() || f.tcp.dirs[1].fin_seen() {
                t.tcp_closing
            } else if f.synack_ns.is_some() && f.synack_ack.is_some()
                || f.orient == Orient::FirstPacket
            {
                t.tcp_established
            } else {
                t.tcp_syn
            }
        }
    }
}

fn triggers_index(cfg: &Config, f: &Flow) -> u8 {
    let client = usize::from(f.client_dir);
    let (c_ip, s_ip, s_port) = if client == 0 {
        (&f.key.lo_ip, &f.key.hi_ip, f.key.hi_port)
    } else {
        (&f.key.hi_ip, &f.key.lo_ip, f.key.lo_port)
    };
    cfg.override_index(f.context, s_port, c_ip, s_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{parse, LinkType};

    /// A raw-IP IPv4/UDP datagram 10.0.0.1:`sport` -> 10.0.0.2:53 with 4 payload bytes.
    fn udp(sport: u16) -> [u8; 32] {
        let [hi, lo] = sport.to_be_bytes();
        [
            0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, hi, lo, 0, 53, 0,
            12, 0, 0, 1, 2, 3, 4,
        ]
    }

    /// An Ethernet/IPv4/TCP segment between 10.0.0.1:40000 (the client) and 10.0.0.2:80 with
    /// `payload` bytes.
    pub(super) fn tcp_frame(
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: usize,
    ) -> Vec<u8> {
        let (src, dst, sport, dport) = if from_client {
            ([10, 0, 0, 1], [10, 0, 0, 2], 40000u16, 80u16)
        } else {
            ([10, 0, 0, 2], [10, 0, 0, 1], 80, 40000)
        };
        let total = u16::try_from(40 + payload).expect("small segment");
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00, 0x45, 0]);
        f.extend(total.to_be_bytes());
        f.extend([0, 1, 0, 0, 64, 6, 0, 0]);
        f.extend(src);
        f.extend(dst);
        f.extend(sport.to_be_bytes());
        f.extend(dport.to_be_bytes());
        f.extend(seq.to_be_bytes());
        f.extend(ack.to_be_bytes());
        f.extend([0x50, flags, 0x10, 0, 0, 0, 0, 0]);
        f.resize(14 + usize::from(total), b'x');
        f
    }

    /// Records (as text) of a table fed `frames` a millisecond apart, every connection kept.
    fn records_of(frames: &[Vec<u8>], steady: bool) -> Vec<String> {
        let mut table = FlowTable::new(&Config::default(), 0);
        table.set_mode(RecordMode::All);
        table.set_steady_path(steady);
        let mut out = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let pkt = parse(LinkType::Ethernet, frame).expect("well-formed");
            let ts = 1_000_000_000 + i as u64 * 1_000_000;
            table.process(&pkt, ts, 60, &mut |r| out.push(format!("{r:?}")));
        }
        table.shutdown(&mut |r| out.push(format!("{r:?}")));
        out
    }

    /// A record's `max_stall`, flags and `stall` points as (time, severity).
    type Stalls = (Option<u64>, Flags, Vec<(u64, Severity)>);

    /// The stalls of each record of a table fed
    /// `frames` at their times (ms from the start), every connection kept.
    fn stalls_of(frames: &[(u64, Vec<u8>)]) -> Vec<Stalls> {
        let mut table = FlowTable::new(&Config::default(), 0);
        table.set_mode(RecordMode::All);
        let mut out = Vec::new();
        let mut emit = |r: &Record<'_>| {
            let stalls = r
                .points
                .iter()
                .filter(|p| p.kind == PointKind::Stall)
                .map(|p| (p.t_ns, p.severity))
                .collect();
            out.push((r.latency.max_stall_ns, r.flags, stalls));
        };
        for (ms, frame) in frames {
            let pkt = parse(LinkType::Ethernet, frame).expect("well-formed");
            table.process(&pkt, 1_000_000_000 + ms * 1_000_000, 60, &mut emit);
        }
        table.shutdown(&mut emit);
        out
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_silence_before_the_close_is_a_stall_and_one_after_it_only_the_largest_gap() {
        use tcp_flags::{ACK, FIN, PSH, SYN};
        let handshake = || {
            vec![
                (0, tcp_frame(true, 100, 0, SYN, 0)),
                (1, tcp_frame(false, 500, 101, SYN | ACK, 0)),
                (2, tcp_frame(true, 101, 501, ACK, 0)),
            ]
        };
        // 10 s of silence while open: over the 5 s stall threshold.
        let mut open = handshake();
        open.push((10_002, tcp_frame(true, 101, 501, ACK | PSH, 10)));
        let Ok([(stall, flags, points)]) = <[_; 1]>::try_from(stalls_of(&open)) else {
            panic!("one record");
        };
        assert_eq!(stall, Some(10_000 * MS));
        assert!(flags.contains(Flags::LATENCY));
        assert_eq!(points, [(10_002 * MS, Severity::Warn)]);

        // Closed with FIN both ways, then the server's FIN again 8 s later.
        let mut closed = handshake();
        closed.extend([
            (3, tcp_frame(true, 101, 501, FIN | ACK, 0)),
            (4, tcp_frame(false, 501, 102, FIN | ACK, 0)),
            (5, tcp_frame(true, 102, 502, ACK, 0)),
            (8_005, tcp_frame(false, 501, 102, FIN | ACK, 0)),
        ]);
        let Ok([(stall, flags, points)]) = <[_; 1]>::try_from(stalls_of(&closed)) else {
            panic!("one record");
        };
        assert_eq!(stall, Some(8_000 * MS), "from the first packet to the last");
        assert!(
            !flags.contains(Flags::LATENCY),
            "no stall trigger after the close"
        );
        assert_eq!(
            points,
            [(8_005 * MS, Severity::Info)],
            "the largest gap is drawn"
        );
    }

    /// Processing tries the slot a packet's bucket pointed at when its flow was prefetched;
    /// by then that flow may have closed, or its slot gone to another connection: the packet
    /// finds (or starts) its own flow all the same.
    #[test]
    fn a_stale_likely_slot_is_not_taken() {
        let mut emit = |_: &Record<'_>| {};
        let (a, b) = (udp(1000), udp(2000));
        let pa = parse(LinkType::RawIp, &a).expect("well-formed");
        let pb = parse(LinkType::RawIp, &b).expect("well-formed");
        let (t0, later) = (1_000_000_000, 3_600_000_000_000);
        let looked_at = |table: &mut FlowTable| {
            let mut emit = |_: &Record<'_>| {};
            table.process(&pa, t0, 60, &mut emit);
            let mut looked = table.look(&pa).expect("a flow's packet");
            table.prefetch_flow(&mut looked);
            assert_eq!(looked.likely, 0);
            // The flow times out before the packet's turn.
            table.tick(later, &mut emit);
            assert_eq!(table.len(), 0);
            looked
        };
        // The slot is free (its key still there).
        let mut table = FlowTable::new(&Config::default(), 0);
        let looked = looked_at(&mut table);
        table.process_looked(&pa, Some(&looked), later, 60, &mut emit);
        assert_eq!((table.len(), table.counters().flows_created), (1, 2));
        // The slot holds another connection.
        let mut table = FlowTable::new(&Config::default(), 0);
        let looked = looked_at(&mut table);
        table.process(&pb, later, 60, &mut emit);
        table.process_looked(&pa, Some(&looked), later, 60, &mut emit);
        assert_eq!((table.len(), table.counters().flows_created), (2, 3));
    }

    #[test]
    fn a_late_handshake_is_not_taken_the_short_way() {
        use tcp_flags::{ACK, PSH, SYN};
        // Picked up mid-stream; then the server's SYN-ACK shows up late, and the client's
        // next in-order ACK completes that handshake: it must not go the short way.
        let frames = [
            tcp_frame(true, 1000, 4000, ACK | PSH, 10),
            tcp_frame(false, 5000, 1000, SYN | ACK, 0),
            tcp_frame(true, 1010, 5001, ACK, 0),
            tcp_frame(true, 1010, 5001, ACK | PSH, 20),
            tcp_frame(false, 5001, 1030, ACK | PSH, 30),
            tcp_frame(true, 1030, 5031, ACK, 0),
        ];
        let short = records_of(&frames, true);
        assert_eq!(short, records_of(&frames, false));
        assert_eq!(short.len(), 1);
        assert!(short[0].contains("HandshakeDone"), "{}", short[0]);
    }

    #[test]
    fn bytes_per_flow_counts_arena_and_hash_table() {
        let mut cfg = Config::default();
        cfg.table.capacity = 1024;
        cfg.table.points_per_flow = 8;
        let small = FlowTable::new(&cfg, 0).bytes_per_flow();
        cfg.table.points_per_flow = 24;
        let big = FlowTable::new(&cfg, 0).bytes_per_flow();
        // 16 more points of 12 bytes per slot.
        assert_eq!(big - small, 16 * 12);
        // The wheel holds two links per slot and per wheel slot; the hash table a slot
        // index and a control byte per bucket, with two buckets per slot at this capacity.
        let wheel = (1024 + WHEEL_SLOTS + 1) * 8 / 1024;
        let parts = std::mem::size_of::<Flow>() + 8 * 12 + wheel;
        assert_eq!(small - parts, 2 * (4 + 1), "{small} vs {parts}");
    }

    #[test]
    fn default_table_keeps_a_connection_in_512_bytes() {
        let bytes = FlowTable::new(&Config::default(), 0).bytes_per_flow();
        assert!(bytes <= 512, "{bytes} bytes per connection");
    }

    #[test]
    fn a_full_table_evicts_and_never_grows_past_its_capacity() {
        let mut cfg = Config::default();
        cfg.table.capacity = 4;
        let mut table = FlowTable::new(&cfg, 0);
        table.set_mode(RecordMode::All);
        let mut closed = Vec::new();
        for (i, sport) in (1000..1006u16).enumerate() {
            let frame = udp(sport);
            let pkt = parse(LinkType::RawIp, &frame).expect("well-formed");
            let ts = 1_000_000_000 + i as u64 * 1_000;
            table.process(&pkt, ts, 32, &mut |r| {
                closed.push((r.client.port, r.close_reason))
            });
            assert!(table.len() <= 4);
        }
        assert_eq!(table.counters().evictions, 2);
        assert_eq!(closed.len(), 2);
        assert!(closed
            .iter()
            .all(|(_, reason)| *reason == CloseReason::ResourceLimit));
        table.shutdown(&mut |r| closed.push((r.client.port, r.close_reason)));
        let mut ports: Vec<u16> = closed.iter().map(|(p, _)| *p).collect();
        ports.sort_unstable();
        assert_eq!(ports, (1000..1006).collect::<Vec<_>>());
    }
}
