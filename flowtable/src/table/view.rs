//! The control plane's view of a table: the connection a packet just created (so runtime
//! watches are tested once, at connection start, and can mark it `user`), copies of the
//! open connections for the live sessions view, and new thresholds at reload.
//!
//! Nothing here runs per packet: a worker calls these between batches, when a watch is
//! active and a connection was created, or when the control thread asked for something.

use std::borrow::Cow;

use super::{syn_then_client_rst, FlowTable, Marks, Orient};
use crate::config::Config;
use crate::packet::MAX_VLANS;
use crate::point::Point;
use crate::record::{
    CloseReason, ConnState, DirStats, Endpoint, Flags, History, Latency, Proto, Record,
};
use crate::tcp;

/// An open connection as far as it has come: what `conntrail sessions` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlow {
    pub id: u64,
    pub proto: Proto,
    pub ip_version: u8,
    pub client: Endpoint,
    pub server: Endpoint,
    pub midstream: bool,
    pub vlans: [u16; MAX_VLANS],
    pub vlan_count: u8,
    /// First and latest packet, ns (packet time).
    pub start_ns: u64,
    pub last_ns: u64,
    pub c2s: DirStats,
    pub s2c: DirStats,
    /// The Zeek state the connection would have if it closed now.
    pub conn_state: ConnState,
    pub history: History,
    pub latency: Latency,
    /// A runtime watch matched at its start: it will be recorded whatever its outcome.
    pub user: bool,
    /// Its context (0: default).
    pub context: u16,
}

impl OpenFlow {
    /// The connection as a record that closes now (reason `shutdown`, no points): what
    /// record expressions test.
    pub fn as_record(&self) -> Record<'_> {
        Record {
            id: self.id,
            worker: (self.id >> 48) as u16,
            context: self.context,
            proto: self.proto,
            ip_version: self.ip_version,
            client: self.client,
            server: self.server,
            midstream: self.midstream,
            vlans: Cow::Borrowed(
                self.vlans
                    .get(..usize::from(self.vlan_count))
                    .unwrap_or(&[]),
            ),
            start_ns: self.start_ns,
            end_ns: self.last_ns,
            c2s: self.c2s,
            s2c: self.s2c,
            close_reason: CloseReason::Shutdown,
            conn_state: self.conn_state,
            history: self.history,
            flags: if self.user {
                Flags::USER
            } else {
                Flags::default()
            },
            irregular_point: None,
            latency: self.latency,
            points: Cow::Borrowed(&[]),
            points_dropped: 0,
            icmp_type_code: 0,
        }
    }
}

impl FlowTable {
    /// The connection created last, if it is still open.
    pub fn newest(&self) -> Option<OpenFlow> {
        self.open_flow(self.newest)
    }

    /// Marks the connection created last `user`: its record is kept whatever its outcome.
    pub fn mark_newest_user(&mut self) {
        if let Some(f) = self.flows.get_mut(self.newest as usize) {
            if f.in_use() {
                f.marks.set(Marks::USER, true);
            }
        }
    }

    /// Replaces `out` with the open connections (in slot order).
    pub fn open_flows(&self, out: &mut Vec<OpenFlow>) {
        out.clear();
        out.extend((0..self.flows.len() as u32).filter_map(|idx| self.open_flow(idx)));
    }

    /// The open connection `id` and its tracking points so far (into `points`, in time
    /// order), with the number of points dropped from the middle of its trail.
    pub fn open_flow_by_id(&self, id: u64, points: &mut Vec<Point>) -> Option<(OpenFlow, u32)> {
        let idx = self.flows.iter().position(|f| f.in_use() && f.id == id)?;
        let idx = u32::try_from(idx).ok()?;
        let f = &self.flows[idx as usize];
        let dropped = self.arena.copy_trail(idx, f.trail, points);
        Some((self.open_flow(idx)?, dropped))
    }

    /// Takes the thresholds of `cfg`: the base triggers and overrides, and those of each
    /// context (whose membership must be the table's: a reload that changes it needs a
    /// restart). Open connections keep their override's position; they are judged by the
    /// new values when they close.
    pub fn set_thresholds(&mut self, cfg: &Config) {
        self.cfg.triggers = cfg.triggers.clone();
        self.cfg.overrides = cfg.overrides.clone();
        for (mine, new) in self.cfg.contexts.iter_mut().zip(&cfg.contexts) {
            mine.triggers = new.triggers.clone();
            mine.overrides = new.overrides.clone();
        }
    }

    fn open_flow(&self, idx: u32) -> Option<OpenFlow> {
        let f = self.flows.get(idx as usize).filter(|f| f.in_use())?;
        let client = usize::from(f.client_dir);
        let server = 1 - client;
        let (c_ep, s_ep) = f.endpoints();
        let conn_state = if f.proto == Proto::Tcp {
            tcp::conn_state(
                f.tcp.dirs[client].state,
                f.tcp.dirs[server].state,
                f.stats[client].payload,
                f.stats[server].payload,
                syn_then_client_rst(f.history.history().as_str()),
            )
        } else {
            ConnState::None
        };
        Some(OpenFlow {
            id: f.id,
            proto: f.proto,
            ip_version: f.ip_version,
            client: c_ep,
            server: s_ep,
            midstream: f.proto == Proto::Tcp && f.orient == Orient::FirstPacket,
            vlans: f.vlans,
            vlan_count: f.vlan_count,
            start_ns: f.start_ns,
            last_ns: f.last_ns,
            c2s: f.stats[client],
            s2c: f.stats[server],
            conn_state,
            history: f.history.history(),
            latency: f.latency(),
            user: f.marks.has(Marks::USER),
            context: f.context,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::packet::{parse, LinkType};
    use crate::table::RecordMode;

    /// An Ethernet/IPv4/TCP segment without payload from 10.0.0.1:40000 (the client) or
    /// 10.0.0.2:80 with these flags.
    fn frame(from_client: bool, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        crate::table::tests::tcp_frame(from_client, seq, ack, flags, 0)
    }

    fn feed(t: &mut FlowTable, bytes: &[u8], ts_ns: u64, kept: &mut Vec<Flags>) {
        let pkt = parse(LinkType::Ethernet, bytes).expect("parses");
        t.process(&pkt, ts_ns, bytes.len() as u32, &mut |r| kept.push(r.flags));
    }

    #[test]
    fn an_open_connection_is_listed_and_a_marked_one_is_kept_though_normal() {
        let mut t = FlowTable::new(&Config::default(), 3);
        t.set_mode(RecordMode::Anomalous);
        let mut kept = Vec::new();
        feed(&mut t, &frame(true, 0x02, 100, 0), 1_000, &mut kept);
        let newest = t.newest().expect("a new flow");
        assert_eq!(newest.client.port, 40000);
        assert_eq!(newest.server.port, 80);
        assert_eq!(newest.id >> 48, 3);
        t.mark_newest_user();
        feed(&mut t, &frame(false, 0x12, 500, 101), 2_000, &mut kept);
        feed(&mut t, &frame(true, 0x10, 101, 501), 3_000, &mut kept);

        let mut open = Vec::new();
        t.open_flows(&mut open);
        assert_eq!(open.len(), 1);
        let f = open[0];
        assert_eq!((f.c2s.pkts, f.s2c.pkts), (2, 1));
        assert_eq!(f.conn_state, ConnState::S1);
        assert!(f.user);
        assert!(f.as_record().flags.contains(Flags::USER));
        let mut points = Vec::new();
        let (one, dropped) = t.open_flow_by_id(f.id, &mut points).expect("by id");
        assert_eq!((one, dropped), (f, 0));
        assert!(points.len() >= 2, "{points:?}");
        assert!(t.open_flow_by_id(f.id + 1, &mut points).is_none());

        // A clean close: only the mark keeps it.
        feed(&mut t, &frame(true, 0x11, 101, 501), 4_000, &mut kept);
        feed(&mut t, &frame(false, 0x11, 501, 102), 5_000, &mut kept);
        feed(&mut t, &frame(true, 0x10, 102, 502), 6_000, &mut kept);
        t.shutdown(&mut |r| kept.push(r.flags));
        assert_eq!(kept, vec![Flags::USER]);

        // The same connection again, unmarked: not kept.
        let mut t = FlowTable::new(&Config::default(), 0);
        let mut kept = Vec::new();
        for (i, (c, fl, s, a)) in [
            (true, 0x02, 100, 0),
            (false, 0x12, 500, 101),
            (true, 0x10, 101, 501),
            (true, 0x11, 101, 501),
            (false, 0x11, 501, 102),
            (true, 0x10, 102, 502),
        ]
        .into_iter()
        .enumerate()
        {
            feed(
                &mut t,
                &frame(c, fl, s, a),
                1_000 * (i as u64 + 1),
                &mut kept,
            );
        }
        t.shutdown(&mut |r| kept.push(r.flags));
        assert!(kept.is_empty(), "{kept:?}");
    }

    #[test]
    fn new_thresholds_judge_connections_that_close_after_them() {
        let mut t = FlowTable::new(&Config::default(), 0);
        let mut kept = Vec::new();
        feed(&mut t, &frame(true, 0x02, 100, 0), 1_000, &mut kept);
        feed(&mut t, &frame(false, 0x14, 0, 101), 2_000, &mut kept);
        let mut cfg = Config::default();
        cfg.triggers.error.rejected = false;
        cfg.triggers.error.rst_server = false;
        t.set_thresholds(&cfg);
        t.shutdown(&mut |r| kept.push(r.flags));
        assert!(kept.is_empty(), "{kept:?}");
    }
}
