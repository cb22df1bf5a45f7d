//! The metrics endpoint under hostile clients: a request that never ends, a client that
//! sends a byte a second, and hundreds of connections that send nothing. Each test runs the
//! responder in this process on 127.0.0.1 (port 0) with a fixed sample, and checks that a
//! normal scrape still gets its whole reply and that the process does not grow.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use engine::observe::metrics::{ContextSample, MetricsListener, WorkerSample};

/// A responder on a free loopback port, stopped on drop.
struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    fn start() -> Endpoint {
        let listener =
            MetricsListener::bind("127.0.0.1:0".parse().expect("an address")).expect("binds");
        let addr = listener.local_addr().expect("its address");
        let stop = Arc::new(AtomicBool::new(false));
        let sample = || {
            (
                vec![WorkerSample {
                    worker: 0,
                    interface: "lo".into(),
                    packets: 42,
                    ..WorkerSample::default()
                }],
                vec![ContextSample {
                    name: "default".into(),
                    records_written: 1,
                }],
            )
        };
        let thread = listener
            .spawn(sample, Arc::clone(&stop))
            .expect("the metrics thread starts");
        Endpoint {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// A normal scrape, with generous timeouts: the whole reply.
    fn scrape(&self) -> String {
        let mut s = TcpStream::connect(self.addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("sends the request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reads the whole reply");
        reply
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply carries the sample: status, then the series of worker 0.
fn assert_full_reply(reply: &str) {
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("conntrail_packets_total{worker=\"0\",interface=\"lo\",queue=\"0\"} 42\n"),
        "{reply}"
    );
    assert!(
        reply.ends_with("conntrail_context_records_written_total{context=\"default\"} 1\n"),
        "{reply}"
    );
}

/// A field of /proc/self/status in KiB (`VmHWM:`, `VmRSS:`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

#[test]
fn a_request_line_that_never_ends_is_cut_off_and_not_buffered() {
    let endpoint = Endpoint::start();
    assert_full_reply(&endpoint.scrape());
    let peak_before = status_kib("VmHWM:");

    // 64 MiB of request line, no newline, from one fixed buffer.
    let total: usize = 64 << 20;
    let mut s = TcpStream::connect(endpoint.addr).expect("connects");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(b"GET /").expect("starts the request");
    let chunk = [b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < total,
        "the whole 64 MiB request line was taken; the server must close after its bound"
    );
    let grown_kib = status_kib("VmHWM:").saturating_sub(peak_before);
    assert!(
        grown_kib < 4 * 1024,
        "the peak memory grew by {grown_kib} KiB for one long request line"
    );
    assert_full_reply(&endpoint.scrape());
}

#[test]
fn a_client_sending_a_byte_a_second_does_not_hold_up_a_scrape() {
    let endpoint = Endpoint::start();
    let request = b"GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n";
    let mut slow = TcpStream::connect(endpoint.addr).expect("connects");
    slow.write_all(&request[..1]).expect("first byte");
    let slow_done = Arc::new(AtomicBool::new(false));
    let trickle = {
        let done = Arc::clone(&slow_done);
        let mut slow = slow.try_clone().expect("a second handle");
        thread::spawn(move || {
            // Returns when the server cut it off (or when the test is over).
            for b in &request[1..] {
                thread::sleep(Duration::from_secs(1));
                if done.load(Ordering::Acquire) || slow.write_all(&[*b]).is_err() {
                    return;
                }
            }
        })
    };
    // Give the server time to take the slow connection first.
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let reply = endpoint.scrape();
    assert_full_reply(&reply);
    // The slow client is cut off by the request deadline, not served 37 s later.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut rest = Vec::new();
    let cut = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    slow_done.store(true, Ordering::Release);
    if let Err(e) = &cut {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the slow client was still connected {waited:?} after the scrape"
        );
    }
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "the slow request was served"
    );
    let _ = trickle.join();
}

#[test]
fn two_hundred_idle_connections_do_not_stop_a_scrape() {
    let endpoint = Endpoint::start();
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(endpoint.addr).expect("an idle connection"))
        .collect();
    thread::sleep(Duration::from_millis(300));
    assert_full_reply(&endpoint.scrape());
    drop(idle);
}
