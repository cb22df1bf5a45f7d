//! Runtime watches: record expressions that, while they are active, mark every connection
//! that starts matching them `user`, so its record is kept whatever its outcome.
//!
//! A watch is written in the language of [`forensics::expr`], restricted to what is known when
//! a connection starts: its ends (`host`, `net`, `port`, `client`, `server`,
//! `client.port`, `server.port`), `proto`, `ip4`/`ip6`, `vlan`, `midstream` and `worker`,
//! combined with `and`, `or`, `not`. Anything measured later (`reason`, `state`, `pkts`,
//! latencies, ...) is refused with the reason.
//!
//! Each worker holds its own copy of the active watches ([`WorkerWatches`]) and tests them
//! only when its table created a connection, never per packet; it counts evaluations,
//! matches and the time they took, per watch, so `conntrail watch list` and `conntrail
//! stats` can show what a watch costs. A watch that has expired matches nothing from the
//! instant it expires, before the control thread has removed it. The cost of a new
//! connection grows with every watch (2 000 watches: 239 µs per new connection instead of
//! 7.9 µs), so a run takes at most [`MAX_WATCHES`] and no more once they cost a worker
//! [`BUDGET_NS`] per new connection.
//!
//! ```
//! use engine::control::watch::compile;
//! assert!(compile("port 443 and not net 10.0.0.0/8").is_ok());
//! let e = compile("port 443 and reason=tcp-rst-server").unwrap_err();
//! assert!(e.to_string().contains("not known when a connection starts"), "{e}");
//! ```

use std::sync::Arc;
use std::time::Instant;

use flowtable::table::FlowTable;
use serde::{Deserialize, Serialize};

use forensics::expr::{Expr, ExprError, Field, Test};

/// Why a watch expression is refused.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Syntax(#[from] ExprError),
    #[error(
        "`{0}` is not known when a connection starts; a watch may test host, net, port, \
         client, server, client.port, server.port, proto, ip4, ip6, vlan, midstream and worker"
    )]
    NotAtStart(String),
}

/// Parses a watch expression and checks that it tests only what a connection's first
/// packet tells.
pub fn compile(text: &str) -> Result<Expr, WatchError> {
    let expr = Expr::parse(text)?;
    check(&expr)?;
    Ok(expr)
}

fn check(e: &Expr) -> Result<(), WatchError> {
    match e {
        Expr::And(all) | Expr::Or(all) => all.iter().try_for_each(check),
        Expr::Not(inner) => check(inner),
        Expr::Test(t) => match t {
            Test::Host(..)
            | Test::Net(..)
            | Test::Port(..)
            | Test::Proto(_)
            | Test::IpVersion(_)
            | Test::Vlan(_)
            | Test::Midstream
            | Test::Compare(
                Field::ClientPort | Field::ServerPort | Field::Worker | Field::Context,
                _,
                _,
            ) => Ok(()),
            _ => Err(WatchError::NotAtStart(e.to_string())),
        },
    }
}

/// The most watches a run holds: a worker tests every new connection against each in turn.
pub const MAX_WATCHES: usize = 64;

/// The most the watches may cost a worker per new connection (ns, as it measures them,
/// [`cost_per_connection_ns`]); `watch add` is refused at or past it.
pub const BUDGET_NS: u64 = 10_000;

/// What `costs` (one worker's) come to for a new connection that no watch matches: the sum
/// of each watch's mean time per evaluation (ns).
pub fn cost_per_connection_ns(costs: &[WatchCost]) -> u64 {
    costs
        .iter()
        .map(|c| c.ns.checked_div(c.evaluations).unwrap_or(0))
        .sum()
}

/// One active watch, as the control thread hands it to the workers.
#[derive(Clone, Debug)]
pub struct Watch {
    pub id: u32,
    pub expr: Expr,
    /// When it was added and when it expires (run clock, ns since the epoch; none: never).
    pub added_ns: u64,
    pub until_ns: Option<u64>,
}

impl Watch {
    /// Whether it is still active at `now_ns`.
    pub fn active_at(&self, now_ns: u64) -> bool {
        self.until_ns.is_none_or(|u| now_ns < u)
    }
}

/// What a watch cost one worker: evaluations, matches and the time spent testing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCost {
    pub id: u32,
    pub evaluations: u64,
    pub matches: u64,
    pub ns: u64,
}

/// A worker's own copy of the active watches and what they cost it.
#[derive(Debug, Default)]
pub struct WorkerWatches {
    watches: Arc<[Watch]>,
    /// Per watch, in the order of `watches`.
    costs: Vec<WatchCost>,
}

impl WorkerWatches {
    /// Takes a new list of watches, keeping the counts of those still in it.
    pub fn replace(&mut self, watches: Arc<[Watch]>) {
        let old = std::mem::take(&mut self.costs);
        self.costs = watches
            .iter()
            .map(|w| {
                old.iter()
                    .find(|c| c.id == w.id)
                    .copied()
                    .unwrap_or(WatchCost {
                        id: w.id,
                        ..WatchCost::default()
                    })
            })
            .collect();
        self.watches = watches;
    }

    /// Whether any watch is in the list (expired or not).
    #[inline]
    pub fn any(&self) -> bool {
        !self.watches.is_empty()
    }

    /// Tests the connection `table` created last against every watch active at `now_ns`;
    /// marks it `user` if one matches.
    pub fn on_new_flow(&mut self, table: &mut FlowTable, now_ns: u64) {
        let Some(flow) = table.newest() else { return };
        let rec = flow.as_record();
        let mut matched = false;
        for (w, cost) in self.watches.iter().zip(self.costs.iter_mut()) {
            if !w.active_at(now_ns) {
                continue;
            }
            let t0 = Instant::now();
            let hit = w.expr.matches(&rec);
            cost.ns += t0.elapsed().as_nanos() as u64;
            cost.evaluations += 1;
            if hit {
                cost.matches += 1;
                matched = true;
                break;
            }
        }
        if matched {
            table.mark_newest_user();
        }
    }

    /// The counts so far, per watch.
    pub fn costs(&self) -> &[WatchCost] {
        &self.costs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::config::Config;
    use flowtable::packet::{parse, LinkType};
    use flowtable::record::Flags;

    #[test]
    fn only_what_the_first_packet_tells_is_allowed() {
        for ok in [
            "host 10.0.0.1",
            "server net 10.0.0.0/8 and not port 22",
            "tcp or (udp and port 53)",
            "client.port>=1024 and ip6",
            "vlan 10 or midstream or worker=2",
        ] {
            assert!(compile(ok).is_ok(), "{ok}");
        }
        for (bad, what) in [
            ("port 80 and reason=tcp-fin", "reason=tcp-fin"),
            ("not state=REJ", "state=REJ"),
            ("c2s.pkts>3", "c2s.pkts>3"),
            ("flag error", "flags=error"),
            ("latency.ttfb>1s or tcp", "latency.ttfb>1s"),
        ] {
            let e = compile(bad).expect_err(bad).to_string();
            assert!(
                e.starts_with(&format!("`{what}` is not known")),
                "{bad}: {e}"
            );
        }
        assert!(matches!(compile("port"), Err(WatchError::Syntax(_))));
    }

    fn syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn a_watch_marks_matching_connections_until_it_expires() {
        let mut table = FlowTable::new(&Config::default(), 0);
        let mut w = WorkerWatches::default();
        let watches: Arc<[Watch]> = vec![
            Watch {
                id: 1,
                expr: compile("port 80").expect("parses"),
                added_ns: 0,
                until_ns: Some(5_000),
            },
            Watch {
                id: 2,
                expr: compile("server.port=81").expect("parses"),
                added_ns: 0,
                until_ns: None,
            },
        ]
        .into();
        w.replace(watches);
        assert!(w.any());
        let mut kept = Vec::new();
        // port 80 at 1000 (watch 1 active), 9999 at 2000 (none), 80 at 6000 (expired),
        // 81 at 7000 (watch 2).
        for (sport, dport, ts) in [
            (40000, 80, 1_000),
            (40001, 9999, 2_000),
            (40002, 80, 6_000),
            (40003, 81, 7_000),
        ] {
            let bytes = syn(sport, dport);
            let pkt = parse(LinkType::Ethernet, &bytes).expect("parses");
            table.process(&pkt, ts, 54, &mut |_| {});
            w.on_new_flow(&mut table, ts);
        }
        // A SYN alone is kept anyway (unanswered): look at the user flag only.
        table.shutdown(&mut |r| {
            kept.push((r.server.port, r.flags.contains(Flags::USER)));
        });
        kept.sort_unstable();
        assert_eq!(
            kept,
            vec![(80, false), (80, true), (81, true), (9999, false)]
        );
        let c = w.costs();
        assert_eq!((c[0].id, c[0].evaluations, c[0].matches), (1, 2, 1));
        assert_eq!((c[1].id, c[1].evaluations, c[1].matches), (2, 3, 1));

        // Replacing the list keeps the counts of the watches that stay.
        let only2: Arc<[Watch]> = vec![Watch {
            id: 2,
            expr: compile("port 81").expect("parses"),
            added_ns: 0,
            until_ns: None,
        }]
        .into();
        w.replace(only2);
        assert_eq!(w.costs().len(), 1);
        assert_eq!(w.costs()[0].evaluations, 3);
    }
}
