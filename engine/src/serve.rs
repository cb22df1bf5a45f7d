//! One request and one reply per connection, for the side doors of a run: the metrics
//! endpoint ([`crate::observe::metrics`]) and the control socket ([`crate::control`]). One thread
//! drives every connection over nonblocking sockets with poll(2), so no client can keep
//! another waiting; it never touches a worker.
//!
//! Every connection is bounded ([`Limits`]):
//! - in size: at most `max_request` bytes of a request are read; a request not complete by
//!   then gets the caller's answer to [`Request::TooLarge`] and is closed, never buffered
//!   further;
//! - in time: the request must be complete within `request_deadline` of the accept (one
//!   deadline, not a per-read timeout: a byte now and then does not extend it), and the
//!   reply written within `reply_deadline` of the request's end; past either the
//!   connection is closed;
//! - in number: at most `max_connections` are open; one more closes the oldest connection
//!   still sending its request (else the oldest) to make room.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::time::Duration;
//! use engine::serve::{Limits, Request, Server};
//!
//! let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//! let limits = Limits {
//!     max_request: 1024,
//!     request_deadline: Duration::from_secs(2),
//!     reply_deadline: Duration::from_secs(5),
//!     max_connections: 16,
//! };
//! // A request is one line.
//! let mut server = Server::new(listener, limits, |bytes, _eof| {
//!     bytes.iter().position(|&b| b == b'\n').map(|i| i + 1)
//! })
//! .unwrap();
//! loop {
//!     server.turn(Duration::from_millis(50), &mut |request| match request {
//!         Request::Complete(line) => line.to_vec(),
//!         Request::TooLarge => b"too long\n".to_vec(),
//!     });
//! }
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// The bounds of every connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest request read (bytes).
    pub max_request: usize,
    /// From the accept to the end of the request.
    pub request_deadline: Duration,
    /// From the end of the request to the last byte of the reply.
    pub reply_deadline: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// A listening socket whose connections the server takes.
pub trait Listener: AsFd {
    type Stream: Read + Write + AsFd;
    /// The next pending connection, made nonblocking (`WouldBlock`: none).
    fn accept_nonblocking(&self) -> io::Result<Self::Stream>;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn accept_nonblocking(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_nonblocking(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

/// What a client sent, for the caller to answer.
#[derive(Debug)]
pub enum Request<'a> {
    /// A whole request: its bytes up to its end.
    Complete(&'a [u8]),
    /// `max_request` bytes and no end yet: the rest is not read.
    TooLarge,
}

/// Where a request ends: given the bytes so far and whether the client has closed its
/// side, the length of the request (none: not complete; at the client's close, none closes
/// the connection with no reply).
pub type RequestEnd = fn(&[u8], bool) -> Option<usize>;

enum Phase {
    Reading(Vec<u8>),
    Writing {
        reply: Vec<u8>,
        written: usize,
        since: Instant,
    },
}

struct Connection<S> {
    stream: S,
    accepted: Instant,
    phase: Phase,
    /// poll(2) said it can make progress (or it is new).
    ready: bool,
}

/// What a connection does after a step.
enum Next {
    Keep,
    Close,
}

/// The connections of one listener.
pub struct Server<L: Listener> {
    listener: L,
    limits: Limits,
    end: RequestEnd,
    /// In the order they were accepted.
    connections: Vec<Connection<L::Stream>>,
}

impl<L: Listener> Server<L> {
    /// Serves `listener` (made nonblocking) within `limits`; `end` finds a request's end.
    pub fn new(listener: L, limits: Limits, end: RequestEnd) -> io::Result<Server<L>> {
        rustix::io::ioctl_fionbio(&listener, true)?;
        Ok(Server {
            listener,
            limits,
            end,
            connections: Vec::new(),
        })
    }

    /// The listening socket.
    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.connections.len()
    }

    /// Waits at most `wait` for a client, then does what can be done without blocking:
    /// accepts, reads, answers each complete request with `answer`, writes, and closes the
    /// connections that are done or past their deadline.
    pub fn turn(&mut self, wait: Duration, answer: &mut impl FnMut(Request<'_>) -> Vec<u8>) {
        let listener_ready = self.wait(wait);
        if listener_ready {
            self.accept();
        }
        let now = Instant::now();
        let (limits, end) = (self.limits, self.end);
        self.connections.retain_mut(|c| {
            let next = if c.ready {
                c.ready = false;
                step(c, &limits, end, answer)
            } else {
                Next::Keep
            };
            matches!(next, Next::Keep) && !past_deadline(c, &limits, now)
        });
    }

    /// poll(2) on the listener and every connection; marks those ready. Whether the
    /// listener has a connection pending.
    fn wait(&mut self, wait: Duration) -> bool {
        let mut fds = Vec::with_capacity(self.connections.len() + 1);
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        for c in &self.connections {
            let events = match c.phase {
                Phase::Reading(_) => PollFlags::IN,
                Phase::Writing { .. } => PollFlags::OUT,
            };
            fds.push(PollFd::new(&c.stream, events));
        }
        let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return false,
            Err(e) => {
                log::warn!("poll: {}", io::Error::from(e));
                std::thread::sleep(wait);
                return false;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for (c, r) in self.connections.iter_mut().zip(ready.iter().skip(1)) {
            c.ready = *r;
        }
        ready.first().copied().unwrap_or(false)
    }

    /// Takes every pending connection, making room by closing the oldest still reading.
    fn accept(&mut self) {
        loop {
            match self.listener.accept_nonblocking() {
                Ok(stream) => {
                    if self.connections.len() >= self.limits.max_connections.max(1) {
                        let oldest = self
                            .connections
                            .iter()
                            .position(|c| matches!(c.phase, Phase::Reading(_)))
                            .unwrap_or(0);
                        self.connections.remove(oldest);
                    }
                    self.connections.push(Connection {
                        stream,
                        accepted: Instant::now(),
                        phase: Phase::Reading(Vec::new()),
                        ready: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: the pending ones wait for the next turn.
                    log::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                    return;
                }
            }
        }
    }
}

fn past_deadline<S>(c: &Connection<S>, limits: &Limits, now: Instant) -> bool {
    match &c.phase {
        Phase::Reading(_) => now.duration_since(c.accepted) > limits.request_deadline,
        Phase::Writing { since, .. } => now.duration_since(*since) > limits.reply_deadline,
    }
}

/// Reads what has come (answering the request once it is complete or too large), or writes
/// what the socket takes.
fn step<S: Read + Write>(
    c: &mut Connection<S>,
    limits: &Limits,
    end: RequestEnd,
    answer: &mut impl FnMut(Request<'_>) -> Vec<u8>,
) -> Next {
    if let Phase::Reading(buf) = &mut c.phase {
        let reply = match read_request(&mut c.stream, buf, limits.max_request, end) {
            Progress::Pending => return Next::Keep,
            Progress::Closed => return Next::Close,
            Progress::Complete(n) => answer(Request::Complete(buf.get(..n).unwrap_or(buf))),
            Progress::TooLarge => answer(Request::TooLarge),
        };
        c.phase = Phase::Writing {
            reply,
            written: 0,
            since: Instant::now(),
        };
    }
    let Phase::Writing { reply, written, .. } = &mut c.phase else {
        return Next::Keep;
    };
    loop {
        let Some(rest) = reply.get(*written..).filter(|r| !r.is_empty()) else {
            let _ = c.stream.flush();
            return Next::Close;
        };
        match c.stream.write(rest) {
            Ok(0) => return Next::Close,
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

enum Progress {
    Pending,
    Closed,
    Complete(usize),
    TooLarge,
}

/// Reads into `buf` what has come, never past `max` bytes.
fn read_request(
    stream: &mut impl io::Read,
    buf: &mut Vec<u8>,
    max: usize,
    end: RequestEnd,
) -> Progress {
    let mut chunk = [0u8; 4096];
    loop {
        let room = max.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Progress::TooLarge;
        }
        let Some(into) = chunk.get_mut(..room) else {
            return Progress::TooLarge;
        };
        match stream.read(into) {
            Ok(0) => {
                return match end(buf, true) {
                    Some(n) => Progress::Complete(n),
                    None => Progress::Closed,
                }
            }
            Ok(n) => {
                buf.extend_from_slice(into.get(..n).unwrap_or_default());
                if let Some(n) = end(buf, false) {
                    return Progress::Complete(n);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Progress::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_request: 16,
            request_deadline: Duration::from_millis(300),
            reply_deadline: Duration::from_secs(2),
            max_connections: 3,
        }
    }

    fn line_end(bytes: &[u8], _eof: bool) -> Option<usize> {
        bytes.iter().position(|&b| b == b'\n').map(|i| i + 1)
    }

    fn echo(r: Request<'_>) -> Vec<u8> {
        match r {
            Request::Complete(line) => line.to_vec(),
            Request::TooLarge => b"too large\n".to_vec(),
        }
    }

    /// Turns the server until `done`, or 5 s.
    fn turn_until(
        server: &mut Server<UnixListener>,
        mut done: impl FnMut(&Server<UnixListener>) -> bool,
    ) {
        let until = Instant::now() + Duration::from_secs(5);
        while !done(server) && Instant::now() < until {
            server.turn(Duration::from_millis(10), &mut echo);
        }
    }

    fn pair() -> (std::path::PathBuf, Server<UnixListener>) {
        let dir = std::env::temp_dir().join(format!(
            "conntrail-serve-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("binds");
        (
            dir,
            Server::new(listener, limits(), line_end).expect("a server"),
        )
    }

    #[test]
    fn a_request_is_answered_and_an_oversized_one_is_refused_unread() {
        let (dir, mut server) = pair();
        let path = dir.join("s");
        let client = |request: Vec<u8>| {
            let mut s = UnixStream::connect(&path).expect("connects");
            std::thread::spawn(move || {
                s.write_all(&request).expect("writes");
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                reply
            })
        };
        let (ok, big) = (client(b"hello\n".to_vec()), client(vec![b'x'; 100]));
        turn_until(&mut server, |_| ok.is_finished() && big.is_finished());
        assert_eq!(ok.join().expect("joins"), b"hello\n");
        assert_eq!(big.join().expect("joins"), b"too large\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Whether the server has closed `s` (end of file or reset, not "nothing yet").
    fn closed(s: &mut UnixStream) -> bool {
        s.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    #[test]
    fn the_oldest_idle_connection_makes_room_and_the_deadline_closes_the_rest() {
        let (dir, mut server) = pair();
        let path = dir.join("s");
        let mut idle: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).expect("connects"))
            .collect();
        turn_until(&mut server, |s| s.open() == 3);
        let late = UnixStream::connect(&path).expect("connects");
        turn_until(&mut server, |_| closed(&mut idle[0]));
        assert!(
            closed(&mut idle[0]),
            "the oldest idle connection makes room"
        );
        assert!(!closed(&mut idle[1]) && !closed(&mut idle[2]));
        assert_eq!(server.open(), 3);
        // A byte every 50 ms does not extend the request deadline (300 ms).
        let started = Instant::now();
        let mut last = started;
        turn_until(&mut server, |s| {
            if last.elapsed() > Duration::from_millis(50) {
                let _ = idle[1].write_all(b"x");
                last = Instant::now();
            }
            s.open() == 0
        });
        assert_eq!(server.open(), 0, "closed by the deadline");
        assert!(closed(&mut idle[1]));
        drop(late);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
