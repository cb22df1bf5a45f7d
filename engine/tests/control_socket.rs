//! The control socket under many clients, without AF_XDP: the control thread of this
//! process on a socket in a temporary directory, with one worker that polls its control end
//! as a live worker does between batches (an empty flow table, no traffic).
//!
//! Idle clients do not keep `watch list` from another client; `watch add` past the cap on
//! watches is refused, by the control socket and by the `conntrail watch add` command (exit
//! status 2), and the list stays at the cap.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::control::watch::MAX_WATCHES;
use engine::control::{ask, channels, ControlOptions, ControlSocket, Reply, Request};
use flowtable::config::Config;
use flowtable::table::FlowTable;

mod common;
use common::{bin, temp_dir};

/// A control thread and its one worker, stopped and removed on drop.
struct Control {
    dir: PathBuf,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Control {
    fn start(name: &str) -> Control {
        let dir = temp_dir(name);
        let path = dir.join("t.log.ctl");
        let stop = Arc::new(AtomicBool::new(false));
        let (mut ends, workers) = channels(1);
        let mut end = ends.pop().expect("one worker end");
        let worker_stop = Arc::clone(&stop);
        let worker = thread::spawn(move || {
            let mut table = FlowTable::new(&Config::default(), 0);
            while !worker_stop.load(Ordering::Acquire) {
                end.poll(&mut table);
                thread::sleep(Duration::from_millis(5));
            }
        });
        let socket = ControlSocket::bind(&path).expect("binds");
        let opts = ControlOptions {
            path: path.clone(),
            config_path: None,
            config: Config::default(),
            now_ns: Box::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        };
        let control = socket
            .spawn(workers, opts, Arc::clone(&stop))
            .expect("the control thread starts");
        Control {
            dir,
            path,
            stop,
            threads: vec![worker, control],
        }
    }

    fn watches(&self) -> usize {
        match ask(&self.path, &Request::WatchList) {
            Ok(Reply::Watches { watches, .. }) => watches.len(),
            other => panic!("watch list: {other:?}"),
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn fifty_idle_clients_do_not_block_watch_list() {
    let control = Control::start("ctl-idle");
    let idle: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&control.path).expect("an idle client"))
        .collect();
    thread::sleep(Duration::from_millis(300));
    // `ask` gives up after 10 s without a reply.
    let reply = ask(&control.path, &Request::WatchList).expect("watch list answers");
    assert!(
        matches!(&reply, Reply::Watches { watches, .. } if watches.is_empty()),
        "{reply:?}"
    );
    drop(idle);
}

#[test]
fn watch_add_past_the_cap_is_refused_and_the_list_stays_at_the_cap() {
    let control = Control::start("ctl-cap");
    for port in 1..=MAX_WATCHES {
        let r = ask(
            &control.path,
            &Request::WatchAdd {
                expr: format!("server port {port}"),
                for_ns: None,
            },
        )
        .expect("watch add answers");
        assert!(matches!(r, Reply::Watches { .. }), "watch {port}: {r:?}");
    }
    assert_eq!(control.watches(), MAX_WATCHES);
    let r = ask(
        &control.path,
        &Request::WatchAdd {
            expr: "server port 9999".into(),
            for_ns: None,
        },
    )
    .expect("watch add answers");
    let Reply::Error { message } = r else {
        panic!("one watch past the cap was taken: {r:?}");
    };
    assert!(
        message.contains(&format!(
            "{MAX_WATCHES} watches are active, the most a run takes is {MAX_WATCHES}"
        )) && message.contains("not measured yet"),
        "{message}"
    );
    // The command says so too, with the refusal's exit status.
    let o = Command::new(bin())
        .args(["watch", "add", "server port 9998", "--control"])
        .arg(&control.path)
        .output()
        .expect("conntrail watch add runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(i32::from(forensics::exit::USAGE)),
        "{stderr}"
    );
    assert!(
        stderr.contains("watch `server port 9998` refused: 64 watches are active"),
        "{stderr}"
    );
    assert_eq!(control.watches(), MAX_WATCHES);
}
