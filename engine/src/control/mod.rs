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

pub mod board;
pub mod client;
pub mod protocol;
pub mod server;
pub mod watch;

use std::path::{Path, PathBuf};

pub use board::{channels, Board, WorkerControl, Workers};
pub use client::*;
pub use protocol::*;
pub use server::*;

/// The control socket beside a log: `LOG.ctl`.
pub fn default_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::board::{AnswerKind, AskKind};
    use super::server::refusal;
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use flowtable::config::Config;
    use flowtable::table::FlowTable;

    use super::watch::{self, Watch, WatchCost};

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
