//! The order in which `show` and `query` print records: `--sort` and `--reverse`.
//!
//! A log holds records in the order connections closed (per worker, interleaved by the
//! recorder). Analysts read them in time order, so both commands sort by start time, then
//! record id, unless told otherwise. Sorting holds the selected records in memory;
//! `--sort log` prints them as the log holds them, streamed in constant memory, for logs too
//! large to sort.

use std::cmp::Ordering;

use flowtable::record::Record;

/// The key of `--sort`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// First packet time.
    #[default]
    Start,
    /// Last packet time.
    End,
    /// Last packet time minus first.
    Duration,
    /// Bytes both ways (IP lengths).
    Bytes,
    /// Record id.
    Id,
    /// As the log holds them (close order), not sorted: streams any size of log.
    Log,
}

/// `--sort KEY [--reverse]`.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct OrderArgs {
    /// Print records by this key; ties go by start time, then record id.
    #[arg(long, value_enum, default_value_t = SortKey::Start, value_name = "KEY")]
    pub sort: SortKey,
    /// Largest (latest, longest) first.
    #[arg(long)]
    pub reverse: bool,
}

impl OrderArgs {
    /// Whether records are printed as they are read (`--sort log` without `--reverse`).
    pub fn streams(&self) -> bool {
        self.sort == SortKey::Log && !self.reverse
    }

    /// Sorts `items` (in log order) as asked, `record` giving each one's record. The sort
    /// is stable: records equal in every key keep their log order, as they do with
    /// `--sort log`, which `--reverse` turns around.
    pub fn sort<T>(&self, items: &mut [T], record: impl Fn(&T) -> &Record<'_>) {
        if self.sort != SortKey::Log {
            items.sort_by(|a, b| self.compare(record(a), record(b)));
        }
        if self.reverse {
            items.reverse();
        }
    }

    fn compare(&self, a: &Record<'_>, b: &Record<'_>) -> Ordering {
        let key = |r: &Record<'_>| match self.sort {
            SortKey::Start | SortKey::Id | SortKey::Log => 0,
            SortKey::End => r.end_ns,
            SortKey::Duration => r.duration_ns(),
            SortKey::Bytes => r.c2s.bytes.saturating_add(r.s2c.bytes),
        };
        let by_key = key(a).cmp(&key(b));
        match self.sort {
            SortKey::Id => a.id.cmp(&b.id),
            _ => by_key
                .then(a.start_ns.cmp(&b.start_ns))
                .then(a.id.cmp(&b.id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::{IpAddr, Ipv4Addr};

    use flowtable::record::{
        Addr, CloseReason, ConnState, DirStats, Endpoint, Flags, History, Latency, Proto,
    };

    use super::*;

    fn rec(id: u64, start_ns: u64, end_ns: u64, bytes: u64) -> Record<'static> {
        let ep = |port| Endpoint {
            ip: Addr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            port,
        };
        Record {
            id,
            worker: 0,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 4,
            client: ep(40000),
            server: ep(80),
            midstream: false,
            vlans: Cow::Owned(Vec::new()),
            start_ns,
            end_ns,
            c2s: DirStats {
                bytes,
                ..DirStats::default()
            },
            s2c: DirStats::default(),
            close_reason: CloseReason::TcpFin,
            conn_state: ConnState::SF,
            history: History::default(),
            flags: Flags::ALL,
            irregular_point: None,
            latency: Latency::default(),
            points: Cow::Owned(Vec::new()),
            points_dropped: 0,
            icmp_type_code: 0,
        }
    }

    fn ids(order: OrderArgs, records: &[Record<'static>]) -> Vec<u64> {
        let mut v = records.to_vec();
        order.sort(&mut v, |r| r);
        v.iter().map(|r| r.id).collect()
    }

    #[test]
    fn each_key_orders_and_ties_go_by_start_then_id() {
        let records = [
            rec(5, 300, 400, 10),
            rec(1, 100, 900, 50),
            rec(3, 100, 150, 50),
            rec(2, 200, 250, 1),
        ];
        let by = |sort, reverse| OrderArgs { sort, reverse };
        assert_eq!(ids(by(SortKey::Start, false), &records), [1, 3, 2, 5]);
        assert_eq!(ids(by(SortKey::Start, true), &records), [5, 2, 3, 1]);
        assert_eq!(ids(by(SortKey::End, false), &records), [3, 2, 5, 1]);
        assert_eq!(ids(by(SortKey::Duration, false), &records), [3, 2, 5, 1]);
        assert_eq!(ids(by(SortKey::Bytes, false), &records), [2, 5, 1, 3]);
        assert_eq!(ids(by(SortKey::Bytes, true), &records), [3, 1, 5, 2]);
        assert_eq!(ids(by(SortKey::Id, false), &records), [1, 2, 3, 5]);
        assert_eq!(ids(by(SortKey::Log, false), &records), [5, 1, 3, 2]);
        assert_eq!(ids(by(SortKey::Log, true), &records), [2, 3, 1, 5]);
        assert!(by(SortKey::Log, false).streams());
        assert!(!by(SortKey::Log, true).streams());
    }
}
