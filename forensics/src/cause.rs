//! Why a proxied request went wrong, reasoned over both of its connections as one story.
//!
//! `conntrail correlate` hands [`judge`] the front-end record (client -> proxy) and the
//! back-end record (proxy -> server) of one request, either of which may be missing, and
//! what the proxy logged about it, if anything ([`Evidence`]). The answer is a [`Cause`]:
//! what happened ([`Kind`]), who did it ([`Actor`]), when, whether it is a fault, and one
//! sentence in plain words.
//!
//! # The rules, in the order they are tried
//!
//! Times are the packets' own. The *request* of a side is its first payload byte from the
//! client (the `first-data` point); its *response* the first payload byte from the server.
//!
//! | what the two connections show | kind | actor | fault |
//! |---|---|---|---|
//! | the server answered the proxy's SYN with RST | `server-refused` | server | yes |
//! | the server never answered the proxy's SYN | `server-unanswered` | server | yes |
//! | the client reset or closed before any response reached it, and before the server reset or closed and before the proxy gave up on the back end | `client-abort` | client | yes |
//! | the server reset after the forwarded request, before the proxy closed | `server-reset` | server | yes |
//! | the server closed (FIN) after the forwarded request without answering, before the proxy closed | `server-closed-early` | server | yes |
//! | the forwarded request got no answer, and the proxy gave up (RST or FIN) or the record ended | `server-silent` | server, from the moment the request was forwarded | yes |
//! | the client sent no request | `client-no-request` | client | yes |
//! | the server's first response byte, or the front end's, tripped the first-byte threshold: the server's when the back end took at least half of the front end's wait | `slow-server` / `slow-proxy` | server / proxy | yes |
//! | the client reset after the response | `client-reset` | client | yes |
//! | the proxy reset the front-end connection | `proxy-reset` | proxy | yes |
//! | the response came, and the proxy closed the back-end connection with RST | `completed-proxy-rst` | proxy | no: routine |
//! | the response came; some other point was irregular (a retransmission...) | `completed-irregular` | that point's sender | no |
//! | the response came | `completed` | none | no |
//! | the front end got a response and the proxy opened no back-end connection | `proxy-answered` | proxy | no |
//! | nothing to go on (a side not recorded and the other unremarkable) | `unknown` | none | unknown |
//!
//! The server's reset or close counts before a client abort that came later: a client gives
//! up on a broken back end, not the other way round. A back end whose request was never
//! answered is at fault from the moment the request was forwarded, even when the front
//! end's first-byte threshold trips before the proxy's reset reaches the back end: that is
//! the proxy's timeout, not the first failure.
//!
//! # What the proxy logged
//!
//! A proxy access log line can carry the HTTP status and, for HAProxy, the termination state
//! (`sH--`: server-side timeout while waiting for the response headers). Both are optional:
//! an Airlock conntrace message has neither, and the packets alone decide. When they are
//! given they are evidence:
//!
//! - they settle a request the packets cannot (`unknown`), and a request that completed at
//!   the TCP level but that the proxy logged as failed (a server's own `500`, an HTTP-level
//!   client abort);
//! - otherwise the packets decide, and the sentence says whether the log agrees.
//!
//! HAProxy's first termination letter: `C`/`c` the client (abort, timeout), `S`/`s`/`D` the
//! server (abort or refusal, timeout, server down), `P`/`R`/`I`/`K`/`U` the proxy, `L` and
//! `-` nobody. Without one, a status of 499 names the client, 502 and 504 the server, 503
//! the proxy when it opened no back-end connection, any other 5xx the server, the rest
//! nobody.

use flowtable::point::{Dir, PointKind, Severity};
use flowtable::record::{CloseReason, ConnState, Record};

use crate::timeline::point_label;
use crate::units::duration_text;

/// Who caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    Client,
    Proxy,
    Server,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Client => "client",
            Actor::Proxy => "proxy",
            Actor::Server => "server",
        }
    }

    /// The side an actor's fault is put on: `front`, `back` or `proxy`.
    pub fn side(self) -> &'static str {
        match self {
            Actor::Client => "front",
            Actor::Proxy => "proxy",
            Actor::Server => "back",
        }
    }
}

/// What happened (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ServerRefused,
    ServerUnanswered,
    ClientAbort,
    ServerReset,
    ServerClosedEarly,
    ServerSilent,
    ClientNoRequest,
    SlowServer,
    SlowProxy,
    ClientReset,
    ProxyReset,
    CompletedProxyRst,
    CompletedIrregular,
    Completed,
    ProxyAnswered,
    /// Decided by the proxy's log where the packets could not.
    Logged,
    Unknown,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::ServerRefused,
        Kind::ServerUnanswered,
        Kind::ClientAbort,
        Kind::ServerReset,
        Kind::ServerClosedEarly,
        Kind::ServerSilent,
        Kind::ClientNoRequest,
        Kind::SlowServer,
        Kind::SlowProxy,
        Kind::ClientReset,
        Kind::ProxyReset,
        Kind::CompletedProxyRst,
        Kind::CompletedIrregular,
        Kind::Completed,
        Kind::ProxyAnswered,
        Kind::Logged,
        Kind::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServerRefused => "server-refused",
            Kind::ServerUnanswered => "server-unanswered",
            Kind::ClientAbort => "client-abort",
            Kind::ServerReset => "server-reset",
            Kind::ServerClosedEarly => "server-closed-early",
            Kind::ServerSilent => "server-silent",
            Kind::ClientNoRequest => "client-no-request",
            Kind::SlowServer => "slow-server",
            Kind::SlowProxy => "slow-proxy",
            Kind::ClientReset => "client-reset",
            Kind::ProxyReset => "proxy-reset",
            Kind::CompletedProxyRst => "completed-proxy-rst",
            Kind::CompletedIrregular => "completed-irregular",
            Kind::Completed => "completed",
            Kind::ProxyAnswered => "proxy-answered",
            Kind::Logged => "logged",
            Kind::Unknown => "unknown",
        }
    }
}

/// What the proxy logged about the request, when it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The HTTP status the proxy logged.
    pub status: Option<i64>,
    /// HAProxy's termination state (`sH--`, `CD--`, `----`).
    pub termination: Option<String>,
}

impl Evidence {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.termination.is_none()
    }

    /// Who the log blames (`Some(None)`: nobody), and in what words; `None` when it says
    /// nothing either way. `back_connected`: the proxy opened a back-end connection.
    pub fn verdict(&self, back_connected: bool) -> Option<(Option<Actor>, String)> {
        let said = match (&self.status, &self.termination) {
            (Some(s), Some(t)) => format!("the proxy logged {s}, termination {t}"),
            (Some(s), None) => format!("the proxy logged {s}"),
            (None, Some(t)) => format!("the proxy logged termination {t}"),
            (None, None) => return None,
        };
        if let Some(letter) = self.termination.as_deref().and_then(|t| t.chars().next()) {
            let who = match letter {
                'C' => Some((Some(Actor::Client), "the client aborted")),
                'c' => Some((Some(Actor::Client), "the client timed out")),
                'S' => Some((Some(Actor::Server), "the server aborted or refused")),
                's' => Some((Some(Actor::Server), "the server timed out")),
                'D' => Some((Some(Actor::Server), "the server was down")),
                'P' | 'R' | 'I' | 'K' | 'U' => Some((Some(Actor::Proxy), "the proxy stopped it")),
                '-' | 'L' => Some((None, "a normal end")),
                _ => None,
            };
            if let Some((actor, words)) = who {
                return Some((actor, format!("{said}: {words}")));
            }
        }
        let status = self.status?;
        let (actor, words) = match status {
            499 => (Some(Actor::Client), "the client closed the connection"),
            502 => (Some(Actor::Server), "bad gateway"),
            504 => (Some(Actor::Server), "gateway timeout"),
            503 if !back_connected => (Some(Actor::Proxy), "no server available"),
            500..=599 => (Some(Actor::Server), "a server error"),
            _ => (None, "not an error"),
        };
        Some((actor, format!("{said}: {words}")))
    }
}

/// The cause of one request's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub kind: Kind,
    pub actor: Option<Actor>,
    /// When it began, ns since the epoch.
    pub t_ns: Option<u64>,
    /// `Some(true)`: a fault of `actor`; `Some(false)`: nothing failed; `None`: unknown.
    pub fault: Option<bool>,
    /// One sentence; its times are from the client's request (see [`judge`]).
    pub text: String,
    /// Whether the proxy's log agrees, when it was given and says something.
    pub log_agrees: Option<bool>,
}

impl Cause {
    /// The side at fault: `front`, `back`, `proxy`; `neither` when nothing failed, `unknown`.
    pub fn failed_first(&self) -> &'static str {
        match (self.fault, self.actor) {
            (Some(true), Some(a)) => a.side(),
            (Some(false), _) => "neither",
            _ => "unknown",
        }
    }
}

/// One connection, as the rules see it.
struct Facts {
    start: u64,
    end: u64,
    /// The SYN got a SYN-ACK (or the record began mid-stream).
    answered: bool,
    /// The SYN got an RST.
    refused: bool,
    syns: u32,
    request: Option<u64>,
    response: Option<u64>,
    response_bytes: u64,
    /// First FIN and RST per direction ([`Dir::index`]).
    fin: [Option<u64>; 2],
    rst: [Option<u64>; 2],
    /// The first response byte's latency and the threshold it went over, in ns.
    slow: Option<(u64, u64)>,
    ttfb: Option<u64>,
    /// The first irregular point other than a reset, a threshold or a truncation: its time
    /// and its words with the sender's name filled in by [`Facts::irregular_text`].
    irregular: Option<(u64, Dir, String)>,
}

impl Facts {
    fn of(rec: &Record<'_>) -> Facts {
        let at = |t: u64| rec.start_ns.saturating_add(t);
        let mut f = Facts {
            start: rec.start_ns,
            end: rec.end_ns,
            answered: rec.midstream,
            refused: rec.conn_state == ConnState::REJ,
            syns: 1,
            request: None,
            response: None,
            response_bytes: rec.s2c.payload,
            fin: [None; 2],
            rst: [None; 2],
            slow: None,
            ttfb: rec.latency.ttfb_ns,
            irregular: None,
        };
        let mut previous: Option<&flowtable::point::Point> = None;
        for p in rec.points.iter() {
            let d = p.dir.index();
            match p.kind {
                PointKind::SynAck => f.answered = true,
                PointKind::SynRetransmission => f.syns = f.syns.max(p.arg),
                PointKind::FirstData if p.dir == Dir::C2s => {
                    f.request = f.request.or(Some(at(p.t_ns)))
                }
                PointKind::FirstData => f.response = f.response.or(Some(at(p.t_ns))),
                PointKind::Fin => {
                    if let Some(slot) = f.fin.get_mut(d) {
                        *slot = slot.or(Some(at(p.t_ns)));
                    }
                }
                PointKind::Rst => {
                    if let Some(slot) = f.rst.get_mut(d) {
                        *slot = slot.or(Some(at(p.t_ns)));
                    }
                }
                PointKind::Threshold => {
                    if let (Some(m), Some(ttfb)) = (previous, f.ttfb) {
                        if m.kind == PointKind::FirstData && m.dir == Dir::S2c {
                            f.slow = Some((ttfb, u64::from(p.arg) * 1_000));
                        }
                    }
                }
                PointKind::Truncated => {}
                _ if p.severity >= Severity::Warn && f.irregular.is_none() => {
                    f.irregular = Some((at(p.t_ns), p.dir, point_label(p, rec.ip_version)));
                }
                _ => {}
            }
            previous = Some(p);
        }
        // A trail that lost its points still says how the connection ended.
        match rec.close_reason {
            CloseReason::TcpRstClient if f.rst[0].is_none() => f.rst[0] = Some(rec.end_ns),
            CloseReason::TcpRstServer if f.rst[1].is_none() => f.rst[1] = Some(rec.end_ns),
            _ => {}
        }
        if rec.history.contains(b'h') || rec.s2c.payload > 0 {
            f.answered = true;
        }
        if f.response.is_none() && rec.s2c.payload > 0 {
            f.response = Some(rec.end_ns);
        }
        if f.request.is_none() && rec.c2s.payload > 0 {
            f.request = Some(rec.start_ns);
        }
        f
    }

    /// The first close of direction `dir`: (time, `true` for an RST).
    fn end_of(&self, dir: Dir) -> Option<(u64, bool)> {
        let i = dir.index();
        let fin = self.fin.get(i).copied().flatten();
        let rst = self.rst.get(i).copied().flatten();
        match (fin, rst) {
            (Some(f), Some(r)) if f < r => Some((f, false)),
            (_, Some(r)) => Some((r, true)),
            (Some(f), None) => Some((f, false)),
            (None, None) => None,
        }
    }
}

fn closed(rst: bool) -> &'static str {
    if rst {
        "reset"
    } else {
        "closed (FIN)"
    }
}

/// Decides the cause of one request. `front`, `back`: its two records, when recorded.
/// `back_opened`: whether the proxy opened a back-end connection at all (`false` when the
/// conntrace message names none); `None` when unknown (pairing by time). Times in the
/// sentence are given from `origin`, the client's request.
pub fn judge(
    front: Option<&Record<'_>>,
    back: Option<&Record<'_>>,
    back_opened: Option<bool>,
    evidence: &Evidence,
    origin: u64,
) -> Cause {
    let f = front.map(Facts::of);
    let b = back.map(Facts::of);
    let cause = from_packets(f.as_ref(), b.as_ref(), back_opened, origin);
    weigh(cause, evidence, back.is_some() || back_opened == Some(true))
}

/// `+1.250 ms` from `origin`.
fn rel(t: u64, origin: u64) -> String {
    let sign = if t >= origin { "+" } else { "-" };
    format!("{sign}{}", duration_text(t.abs_diff(origin)))
}

fn cause(
    kind: Kind,
    actor: Option<Actor>,
    t_ns: Option<u64>,
    fault: Option<bool>,
    text: String,
) -> Cause {
    Cause {
        kind,
        actor,
        t_ns,
        fault,
        text,
        log_agrees: None,
    }
}

/// When and how (`true`: RST) the client gave up before any response reached it.
fn client_abort(f: &Facts) -> Option<(u64, bool)> {
    let (t, rst) = f.end_of(Dir::C2s)?;
    f.response.is_none_or(|r| t < r).then_some((t, rst))
}

fn from_packets(
    f: Option<&Facts>,
    b: Option<&Facts>,
    back_opened: Option<bool>,
    origin: u64,
) -> Cause {
    let abort = f.and_then(client_abort);
    if let Some(b) = b {
        if b.refused {
            let t = b.rst[1].unwrap_or(b.start);
            return cause(
                Kind::ServerRefused,
                Some(Actor::Server),
                Some(t),
                Some(true),
                format!(
                    "the server refused the proxy's connection: it answered the SYN with RST at {}",
                    rel(t, origin)
                ),
            );
        }
        if !b.answered {
            let tries = if b.syns > 1 {
                format!(" (sent {} times)", b.syns)
            } else {
                String::new()
            };
            return cause(
                Kind::ServerUnanswered,
                Some(Actor::Server),
                Some(b.start),
                Some(true),
                format!(
                    "the server never answered the proxy's SYN of {}{tries}; the proxy gave up {} later",
                    rel(b.start, origin),
                    duration_text(b.end.saturating_sub(b.start))
                ),
            );
        }
        let server_end = b.end_of(Dir::S2c);
        let proxy_end = b.end_of(Dir::C2s);
        if let Some(forwarded) = b.request {
            // The server's own end, before the answer or instead of it, and before the
            // proxy closed (a server that closes in reply to the proxy's FIN did not break).
            let server_broke = server_end.filter(|&(t, rst)| {
                (rst || b.response.is_none_or(|r| t < r)) && proxy_end.is_none_or(|(p, _)| t < p)
            });
            match (abort, server_broke) {
                (Some((ta, how)), server)
                    if server.is_none_or(|(ts, _)| ta < ts)
                        && (proxy_end.is_none_or(|(tp, _)| ta <= tp) || b.response.is_some()) =>
                {
                    let waited = match b.response {
                        Some(r) if r < ta => "after the server had begun to answer".to_string(),
                        _ => format!(
                            "{} after the request was forwarded, before the server answered",
                            duration_text(ta.saturating_sub(forwarded))
                        ),
                    };
                    return cause(
                        Kind::ClientAbort,
                        Some(Actor::Client),
                        Some(ta),
                        Some(true),
                        format!(
                            "the client gave up: it {} its connection at {}, {waited}",
                            closed(how),
                            rel(ta, origin)
                        ),
                    );
                }
                (_, Some((ts, true))) => {
                    let when = match b.response {
                        Some(_) => format!("after {} bytes of its answer", b.response_bytes),
                        None => "without answering".to_string(),
                    };
                    return cause(
                        Kind::ServerReset,
                        Some(Actor::Server),
                        Some(ts),
                        Some(true),
                        format!(
                            "the server reset the back-end connection at {}, {} after the request was forwarded, {when}",
                            rel(ts, origin),
                            duration_text(ts.saturating_sub(forwarded))
                        ),
                    );
                }
                (_, Some((ts, false))) => {
                    return cause(
                        Kind::ServerClosedEarly,
                        Some(Actor::Server),
                        Some(ts),
                        Some(true),
                        format!(
                            "the server closed the back-end connection at {}, {} after the request was forwarded, without answering",
                            rel(ts, origin),
                            duration_text(ts.saturating_sub(forwarded))
                        ),
                    );
                }
                _ => {}
            }
            if b.response.is_none() {
                let then = match proxy_end {
                    Some((tp, rst)) => format!(
                        "the proxy gave up {} later and {} the back-end connection",
                        duration_text(tp.saturating_sub(forwarded)),
                        closed(rst)
                    ),
                    None => format!(
                        "it was still silent when the record ended {} later",
                        duration_text(b.end.saturating_sub(forwarded))
                    ),
                };
                return cause(
                    Kind::ServerSilent,
                    Some(Actor::Server),
                    Some(forwarded),
                    Some(true),
                    format!(
                        "the server accepted the request forwarded at {} and never answered; {then}",
                        rel(forwarded, origin)
                    ),
                );
            }
        }
    }
    let Some(f) = f else {
        return match b {
            Some(b) => completed(None, b, origin),
            None => cause(
                Kind::Unknown,
                None,
                None,
                None,
                "neither connection was recorded".to_string(),
            ),
        };
    };
    if let Some((ta, how)) = abort {
        let what = if f.request.is_none() {
            Kind::ClientNoRequest
        } else {
            Kind::ClientAbort
        };
        let words = match f.request {
            None => format!(
                "the client {} its connection at {} without sending a request",
                closed(how),
                rel(ta, origin)
            ),
            Some(q) => format!(
                "the client gave up: it {} its connection at {}, {} after its request, before any answer",
                closed(how),
                rel(ta, origin),
                duration_text(ta.saturating_sub(q))
            ),
        };
        return cause(what, Some(Actor::Client), Some(ta), Some(true), words);
    }
    if f.request.is_none() {
        let words = match f.end_of(Dir::S2c) {
            Some((t, rst)) => format!(
                "the client sent no request; the proxy {} the connection at {}",
                closed(rst),
                rel(t, origin)
            ),
            None => "the client sent no request".to_string(),
        };
        return cause(
            Kind::ClientNoRequest,
            Some(Actor::Client),
            Some(f.start),
            Some(true),
            words,
        );
    }
    if let Some((ttfb, threshold)) = f.slow.or(b.and_then(|b| b.slow)) {
        let back_ttfb = b.and_then(|b| b.ttfb);
        let server_slow = b.is_some_and(|b| b.slow.is_some())
            || back_ttfb.is_some_and(|bt| bt.saturating_mul(2) >= ttfb);
        let (kind, actor, t) = if server_slow {
            (
                Kind::SlowServer,
                Actor::Server,
                b.and_then(|b| b.request).or(f.request),
            )
        } else {
            (Kind::SlowProxy, Actor::Proxy, f.request)
        };
        let server = back_ttfb.map_or_else(String::new, |bt| {
            format!(" (the server took {})", duration_text(bt))
        });
        return cause(
            kind,
            Some(actor),
            t,
            Some(true),
            format!(
                "the answer was slow: the client waited {} for its first byte, over the {} threshold{server}",
                duration_text(ttfb),
                duration_text(threshold)
            ),
        );
    }
    if f.response.is_some() {
        if let Some(t) = f.rst.first().copied().flatten() {
            return cause(
                Kind::ClientReset,
                Some(Actor::Client),
                Some(t),
                Some(true),
                format!(
                    "the client reset its connection at {}, after the answer",
                    rel(t, origin)
                ),
            );
        }
    }
    if let Some(t) = f.rst.get(1).copied().flatten() {
        return cause(
            Kind::ProxyReset,
            Some(Actor::Proxy),
            Some(t),
            Some(true),
            format!(
                "the proxy reset the client's connection at {}",
                rel(t, origin)
            ),
        );
    }
    match b {
        Some(b) => completed(Some(f), b, origin),
        None if f.response.is_some() && back_opened == Some(false) => cause(
            Kind::ProxyAnswered,
            Some(Actor::Proxy),
            f.response,
            Some(false),
            "the proxy answered the request itself, without a back-end connection".to_string(),
        ),
        None => match &f.irregular {
            Some((t, dir, words)) => cause(
                Kind::CompletedIrregular,
                Some(front_sender(*dir)),
                Some(*t),
                Some(false),
                format!(
                    "the client got its answer; the back end was not recorded; {} {words} at {}",
                    front_sender(*dir).as_str(),
                    rel(*t, origin)
                ),
            ),
            None => cause(
                Kind::Unknown,
                None,
                None,
                None,
                "the front end shows nothing irregular and the back end was not recorded"
                    .to_string(),
            ),
        },
    }
}

/// Who sends in direction `dir` on the front end (client -> proxy).
pub fn front_sender(dir: Dir) -> Actor {
    match dir {
        Dir::C2s => Actor::Client,
        Dir::S2c => Actor::Proxy,
    }
}

/// Who sends in direction `dir` on the back end (proxy -> server).
pub fn back_sender(dir: Dir) -> Actor {
    match dir {
        Dir::C2s => Actor::Proxy,
        Dir::S2c => Actor::Server,
    }
}

/// The back end answered: a completed request, perhaps with a routine reset.
fn completed(f: Option<&Facts>, b: &Facts, origin: u64) -> Cause {
    if let Some((t, true)) = b.end_of(Dir::C2s) {
        if b.response.is_some_and(|r| r <= t) && b.rst[1].is_none_or(|s| s > t) {
            return cause(
                Kind::CompletedProxyRst,
                Some(Actor::Proxy),
                Some(t),
                Some(false),
                format!(
                    "the request completed; the proxy closed the back-end connection with RST after the full response, at {}",
                    rel(t, origin)
                ),
            );
        }
    }
    let irregular = [
        f.and_then(|f| {
            f.irregular
                .as_ref()
                .map(|(t, d, w)| (*t, front_sender(*d), w))
        }),
        b.irregular
            .as_ref()
            .map(|(t, d, w)| (*t, back_sender(*d), w)),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(t, _, _)| *t);
    match irregular {
        Some((t, actor, words)) => cause(
            Kind::CompletedIrregular,
            Some(actor),
            Some(t),
            Some(false),
            format!(
                "the request completed; {} {words} at {}",
                actor.as_str(),
                rel(t, origin)
            ),
        ),
        None if b.response.is_some() => cause(
            Kind::Completed,
            None,
            None,
            Some(false),
            "the request completed".to_string(),
        ),
        None => cause(
            Kind::Unknown,
            None,
            None,
            None,
            "the back end sent no answer and the front end was not recorded".to_string(),
        ),
    }
}

/// Weighs what the proxy logged against the packets' cause (see the module documentation).
fn weigh(mut c: Cause, evidence: &Evidence, back_connected: bool) -> Cause {
    let Some((actor, words)) = evidence.verdict(back_connected) else {
        return c;
    };
    let packets_say = match c.fault {
        Some(true) => c.actor,
        _ => None,
    };
    let settles = c.fault.is_none() || (c.fault == Some(false) && actor.is_some());
    if settles {
        return Cause {
            kind: Kind::Logged,
            actor,
            t_ns: c.t_ns,
            fault: Some(actor.is_some()),
            text: format!("{words} ({})", c.text),
            log_agrees: Some(true),
        };
    }
    let agrees = packets_say == actor;
    c.log_agrees = Some(agrees);
    c.text = if agrees {
        format!("{} ({words})", c.text)
    } else {
        format!("{} (but {words})", c.text)
    };
    c
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::{IpAddr, Ipv4Addr};

    use flowtable::point::Point;
    use flowtable::record::{Addr, DirStats, Endpoint, Flags, History, Latency, Proto};

    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    /// A TCP connection's record, built point by point (times in ms from `T0`).
    struct Conn(Record<'static>);

    fn conn(start_ms: f64) -> Conn {
        let ep = |last, port| Endpoint {
            ip: Addr::from_ip(IpAddr::V4(Ipv4Addr::new(198, 18, 1, last))),
            port,
        };
        let start_ns = T0 + (start_ms * MS as f64) as u64;
        Conn(Record {
            id: 1,
            worker: 0,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 4,
            client: ep(2, 40_000),
            server: ep(1, 80),
            midstream: false,
            vlans: Cow::Owned(Vec::new()),
            start_ns,
            end_ns: start_ns,
            c2s: DirStats::default(),
            s2c: DirStats::default(),
            close_reason: CloseReason::Shutdown,
            conn_state: ConnState::S0,
            history: History::default(),
            flags: Flags::ALL,
            irregular_point: None,
            latency: Latency::default(),
            points: Cow::Owned(vec![Point {
                t_ns: 0,
                kind: PointKind::Syn,
                dir: Dir::C2s,
                severity: Severity::Info,
                arg: 0,
            }]),
            points_dropped: 0,
            icmp_type_code: 0,
        })
    }

    impl Conn {
        fn at(&self, ms: f64) -> u64 {
            T0 + (ms * MS as f64) as u64
        }

        fn point(
            mut self,
            ms: f64,
            kind: PointKind,
            dir: Dir,
            severity: Severity,
            arg: u32,
        ) -> Self {
            let t = self.at(ms);
            let r = &mut self.0;
            r.end_ns = r.end_ns.max(t);
            r.points.to_mut().push(Point {
                t_ns: t - r.start_ns,
                kind,
                dir,
                severity,
                arg,
            });
            self
        }

        /// The SYN answered 0.1 ms later, the handshake done 0.1 ms after that.
        fn open(self) -> Self {
            let start = (self.0.start_ns - T0) as f64 / MS as f64;
            let mut c = self
                .point(start + 0.1, PointKind::SynAck, Dir::S2c, Severity::Info, 0)
                .point(
                    start + 0.2,
                    PointKind::HandshakeDone,
                    Dir::C2s,
                    Severity::Info,
                    0,
                );
            c.0.conn_state = ConnState::S1;
            c
        }

        fn request(mut self, ms: f64) -> Self {
            self.0.c2s.payload += 300;
            self.point(ms, PointKind::FirstData, Dir::C2s, Severity::Info, 0)
        }

        fn response(mut self, ms: f64, bytes: u64) -> Self {
            self.0.s2c.payload += bytes;
            let start = self.0.start_ns;
            self.0.latency.ttfb_ns = Some(self.at(ms) - start);
            self.point(ms, PointKind::FirstData, Dir::S2c, Severity::Info, 0)
        }

        /// The response byte before is over a `threshold_ms` first-byte threshold.
        fn slow(self, ms: f64, threshold_ms: u32) -> Self {
            self.point(
                ms,
                PointKind::Threshold,
                Dir::S2c,
                Severity::Warn,
                threshold_ms * 1_000,
            )
        }

        fn fin(mut self, ms: f64, dir: Dir) -> Self {
            let other = self
                .0
                .points
                .iter()
                .any(|p| p.kind == PointKind::Fin && p.dir != dir);
            if other && self.0.close_reason == CloseReason::Shutdown {
                self.0.close_reason = CloseReason::TcpFin;
                self.0.conn_state = ConnState::SF;
            }
            self.point(ms, PointKind::Fin, dir, Severity::Info, 0)
        }

        fn rst(mut self, ms: f64, dir: Dir) -> Self {
            if matches!(
                self.0.close_reason,
                CloseReason::Shutdown | CloseReason::TcpFin
            ) {
                self.0.close_reason = match dir {
                    Dir::C2s => CloseReason::TcpRstClient,
                    Dir::S2c => CloseReason::TcpRstServer,
                };
            }
            self.point(ms, PointKind::Rst, dir, Severity::Warn, 0)
        }
    }

    fn judged(front: Option<&Conn>, back: Option<&Conn>, evidence: &Evidence) -> Cause {
        judge(
            front.map(|c| &c.0),
            back.map(|c| &c.0),
            Some(back.is_some()),
            evidence,
            T0,
        )
    }

    /// A request that completed: the client's FIN after the answer, the proxy's in reply.
    fn good_front(answer_ms: f64) -> Conn {
        conn(-1.0)
            .open()
            .request(0.0)
            .response(answer_ms, 1_500)
            .fin(answer_ms + 2.0, Dir::C2s)
            .fin(answer_ms + 2.1, Dir::S2c)
    }

    fn forwarded() -> Conn {
        conn(0.1).open().request(0.3)
    }

    fn check(c: &Cause, kind: Kind, actor: Option<Actor>, failed_first: &str) {
        assert_eq!(
            (c.kind, c.actor, c.failed_first()),
            (kind, actor, failed_first),
            "{c:?}"
        );
    }

    #[test]
    fn a_refused_back_end_connection_is_the_servers_fault() {
        let mut back = conn(0.1).rst(0.2, Dir::S2c);
        back.0.conn_state = ConnState::REJ;
        let c = judged(Some(&good_front(0.5)), Some(&back), &Evidence::default());
        check(&c, Kind::ServerRefused, Some(Actor::Server), "back");
        assert_eq!(c.t_ns, Some(back.at(0.2)));
        assert!(
            c.text.contains("answered the SYN with RST at +200.0 us"),
            "{}",
            c.text
        );
    }

    #[test]
    fn an_unanswered_syn_is_the_servers_fault_from_the_first_syn() {
        let back = conn(0.1).point(
            1_000.1,
            PointKind::SynRetransmission,
            Dir::C2s,
            Severity::Warn,
            2,
        );
        let front = conn(-1.0).open().request(0.0).response(1_000.2, 200);
        let c = judged(Some(&front), Some(&back), &Evidence::default());
        check(&c, Kind::ServerUnanswered, Some(Actor::Server), "back");
        assert_eq!(c.t_ns, Some(back.at(0.1)));
        assert!(c.text.contains("(sent 2 times)"), "{}", c.text);
    }

    #[test]
    fn silence_after_a_forwarded_request_is_the_servers_fault_though_the_front_threshold_trips_first(
    ) {
        // The proxy's 1 s server timeout: the 504 reaches the client a few microseconds
        // before the proxy's RST reaches the server, and the front end's first byte trips
        // the 1 s threshold.
        let front = conn(-1.0)
            .open()
            .request(0.0)
            .response(1_000.3, 200)
            .slow(1_000.3, 1_000)
            .fin(1_000.31, Dir::S2c)
            .fin(1_002.0, Dir::C2s);
        let back = forwarded().rst(1_000.32, Dir::C2s);
        let c = judged(Some(&front), Some(&back), &Evidence::default());
        check(&c, Kind::ServerSilent, Some(Actor::Server), "back");
        assert_eq!(
            c.t_ns,
            Some(back.at(0.3)),
            "from the moment it was forwarded"
        );
        assert!(
            c.text.contains("forwarded at +300.0 us and never answered")
                && c.text.contains("the proxy gave up 1.000 s later and reset"),
            "{}",
            c.text
        );
        // nginx gives up with FIN, and the server closes in reply: still the server's
        // silence, not an early close.
        let back = forwarded().fin(1_000.32, Dir::C2s).fin(1_000.4, Dir::S2c);
        let c = judged(Some(&front), Some(&back), &Evidence::default());
        check(&c, Kind::ServerSilent, Some(Actor::Server), "back");
        assert!(
            c.text
                .contains("the proxy gave up 1.000 s later and closed (FIN)"),
            "{}",
            c.text
        );
        // A record that ended with no word from either side says so.
        let c = judged(Some(&front), Some(&forwarded()), &Evidence::default());
        check(&c, Kind::ServerSilent, Some(Actor::Server), "back");
        assert!(
            c.text.contains("still silent when the record ended"),
            "{}",
            c.text
        );
    }

    #[test]
    fn a_reset_by_the_proxy_after_the_full_response_is_routine() {
        let back = forwarded().response(2.0, 1_400).rst(2.2, Dir::C2s);
        let c = judged(Some(&good_front(2.1)), Some(&back), &Evidence::default());
        check(&c, Kind::CompletedProxyRst, Some(Actor::Proxy), "neither");
        assert_eq!(c.fault, Some(false));
        assert!(
            c.text.contains(
                "the proxy closed the back-end connection with RST after the full response"
            ),
            "{}",
            c.text
        );
        // The same with FIN is simply complete.
        let back = forwarded()
            .response(2.0, 1_400)
            .fin(2.2, Dir::C2s)
            .fin(2.3, Dir::S2c);
        let c = judged(Some(&good_front(2.1)), Some(&back), &Evidence::default());
        check(&c, Kind::Completed, None, "neither");
    }

    #[test]
    fn a_client_that_gives_up_before_the_answer_is_the_front_ends_fault() {
        for rst in [true, false] {
            let front = conn(-1.0).open().request(0.0);
            let front = if rst {
                front.rst(200.0, Dir::C2s)
            } else {
                front.fin(200.0, Dir::C2s).fin(200.1, Dir::S2c)
            };
            // The proxy drops the back end after the client went.
            let back = forwarded().rst(200.2, Dir::C2s);
            let c = judged(Some(&front), Some(&back), &Evidence::default());
            check(&c, Kind::ClientAbort, Some(Actor::Client), "front");
            assert_eq!(c.t_ns, Some(front.at(200.0)));
            let how = if rst { "reset" } else { "closed (FIN)" };
            assert!(
                c.text
                    .contains(&format!("it {how} its connection at +200.000 ms"))
                    && c.text.contains("before the server answered"),
                "{}",
                c.text
            );
        }
        // Without a back end (the proxy had not opened one yet).
        let front = conn(-1.0).open().request(0.0).rst(0.5, Dir::C2s);
        let c = judge(Some(&front.0), None, None, &Evidence::default(), T0);
        check(&c, Kind::ClientAbort, Some(Actor::Client), "front");
    }

    #[test]
    fn a_server_reset_or_close_before_the_client_gave_up_is_the_back_ends() {
        // The server resets at +10 ms; the client, given a 502, resets at +20 ms.
        let back = forwarded().rst(10.0, Dir::S2c);
        let front = conn(-1.0).open().request(0.0).rst(20.0, Dir::C2s);
        let c = judged(Some(&front), Some(&back), &Evidence::default());
        check(&c, Kind::ServerReset, Some(Actor::Server), "back");
        assert_eq!(c.t_ns, Some(back.at(10.0)));
        assert!(c.text.contains("without answering"), "{}", c.text);
        // A reset in the middle of the answer.
        let back = forwarded().response(1.0, 2_896).rst(1.5, Dir::S2c);
        let c = judged(Some(&good_front(1.2)), Some(&back), &Evidence::default());
        check(&c, Kind::ServerReset, Some(Actor::Server), "back");
        assert!(
            c.text.contains("after 2896 bytes of its answer"),
            "{}",
            c.text
        );
        // A FIN instead of an answer.
        let back = forwarded().fin(0.8, Dir::S2c).fin(0.9, Dir::C2s);
        let front = conn(-1.0)
            .open()
            .request(0.0)
            .response(1.0, 200)
            .fin(1.1, Dir::S2c);
        let c = judged(Some(&front), Some(&back), &Evidence::default());
        check(&c, Kind::ServerClosedEarly, Some(Actor::Server), "back");
        assert!(c.text.contains("without answering"), "{}", c.text);
    }

    #[test]
    fn a_slow_answer_is_the_servers_when_the_server_took_the_time_else_the_proxys() {
        let front = |ms| {
            conn(-1.0)
                .open()
                .request(0.0)
                .response(ms, 900)
                .slow(ms, 1_000)
                .fin(ms + 2.0, Dir::C2s)
                .fin(ms + 2.1, Dir::S2c)
        };
        let back = forwarded()
            .response(1_500.0, 800)
            .fin(1_500.5, Dir::C2s)
            .fin(1_500.6, Dir::S2c);
        let c = judged(Some(&front(1_500.2)), Some(&back), &Evidence::default());
        check(&c, Kind::SlowServer, Some(Actor::Server), "back");
        assert_eq!(c.t_ns, Some(back.at(0.3)));
        assert!(c.text.contains("over the 1.000 s threshold"), "{}", c.text);
        // The server answered in 2 ms; the proxy sat on it.
        let back = forwarded()
            .response(2.3, 800)
            .fin(2.5, Dir::C2s)
            .fin(2.6, Dir::S2c);
        let c = judged(Some(&front(1_500.2)), Some(&back), &Evidence::default());
        check(&c, Kind::SlowProxy, Some(Actor::Proxy), "proxy");
    }

    #[test]
    fn the_front_ends_own_ends() {
        let back = || {
            forwarded()
                .response(2.0, 900)
                .fin(2.2, Dir::C2s)
                .fin(2.3, Dir::S2c)
        };
        // A client reset after the answer.
        let front = conn(-1.0)
            .open()
            .request(0.0)
            .response(2.1, 900)
            .rst(5.0, Dir::C2s);
        let c = judged(Some(&front), Some(&back()), &Evidence::default());
        check(&c, Kind::ClientReset, Some(Actor::Client), "front");
        // A client that never asked; the proxy closes on it.
        let front = conn(-1.0).open().fin(5_000.0, Dir::S2c);
        let c = judge(Some(&front.0), None, Some(false), &Evidence::default(), T0);
        check(&c, Kind::ClientNoRequest, Some(Actor::Client), "front");
        // The proxy resets the client's connection.
        let front = conn(-1.0)
            .open()
            .request(0.0)
            .response(2.1, 900)
            .rst(2.5, Dir::S2c);
        let c = judged(Some(&front), Some(&back()), &Evidence::default());
        check(&c, Kind::ProxyReset, Some(Actor::Proxy), "proxy");
        // The proxy answered alone, with no back end.
        let front = conn(-1.0)
            .open()
            .request(0.0)
            .response(0.1, 300)
            .fin(0.2, Dir::S2c);
        let c = judge(Some(&front.0), None, Some(false), &Evidence::default(), T0);
        check(&c, Kind::ProxyAnswered, Some(Actor::Proxy), "neither");
    }

    #[test]
    fn other_irregular_points_of_a_completed_request_are_named_but_not_blamed() {
        let back = forwarded()
            .point(1.0, PointKind::Retransmission, Dir::S2c, Severity::Warn, 0)
            .response(2.0, 900)
            .fin(2.2, Dir::C2s)
            .fin(2.3, Dir::S2c);
        let c = judged(Some(&good_front(2.1)), Some(&back), &Evidence::default());
        check(&c, Kind::CompletedIrregular, Some(Actor::Server), "neither");
        assert!(c.text.contains("server retransmission"), "{}", c.text);
    }

    #[test]
    fn the_proxys_log_settles_what_the_packets_cannot_and_is_checked_against_them() {
        let logged = |status: Option<i64>, termination: Option<&str>| Evidence {
            status,
            termination: termination.map(str::to_string),
        };
        // The back end not recorded, the front end unremarkable.
        let front = good_front(1.0);
        let c = judge(Some(&front.0), None, None, &Evidence::default(), T0);
        check(&c, Kind::Unknown, None, "unknown");
        let c = judge(Some(&front.0), None, None, &logged(Some(503), None), T0);
        check(&c, Kind::Logged, Some(Actor::Proxy), "proxy");
        // Complete at the TCP level, but the server answered 500.
        let back = forwarded()
            .response(0.8, 400)
            .fin(0.9, Dir::S2c)
            .fin(1.0, Dir::C2s);
        let c = judged(Some(&front), Some(&back), &logged(Some(500), Some("----")));
        check(&c, Kind::Completed, None, "neither");
        let c = judged(Some(&front), Some(&back), &logged(Some(500), None));
        check(&c, Kind::Logged, Some(Actor::Server), "back");
        assert!(
            c.text.starts_with("the proxy logged 500: a server error"),
            "{}",
            c.text
        );
        // The packets decide and the log agrees, or not.
        let back = forwarded().rst(1_000.32, Dir::C2s);
        let front = conn(-1.0)
            .open()
            .request(0.0)
            .response(1_000.3, 200)
            .fin(1_000.31, Dir::S2c);
        let c = judged(Some(&front), Some(&back), &logged(Some(504), Some("sH--")));
        check(&c, Kind::ServerSilent, Some(Actor::Server), "back");
        assert_eq!(c.log_agrees, Some(true));
        assert!(
            c.text
                .ends_with("(the proxy logged 504, termination sH--: the server timed out)"),
            "{}",
            c.text
        );
        let c = judged(Some(&front), Some(&back), &logged(Some(200), Some("CD--")));
        check(&c, Kind::ServerSilent, Some(Actor::Server), "back");
        assert_eq!(c.log_agrees, Some(false));
        assert!(
            c.text
                .contains("(but the proxy logged 200, termination CD--: the client aborted)"),
            "{}",
            c.text
        );
    }

    #[test]
    fn what_a_log_line_says() {
        let said = |status: Option<i64>, termination: Option<&str>, back: bool| {
            Evidence {
                status,
                termination: termination.map(str::to_string),
            }
            .verdict(back)
            .map(|(a, _)| a)
        };
        assert_eq!(said(None, None, true), None);
        assert_eq!(
            said(Some(504), Some("sH--"), true),
            Some(Some(Actor::Server))
        );
        assert_eq!(
            said(Some(502), Some("SH--"), true),
            Some(Some(Actor::Server))
        );
        assert_eq!(
            said(Some(-1), Some("CH--"), true),
            Some(Some(Actor::Client))
        );
        assert_eq!(
            said(Some(408), Some("cR--"), false),
            Some(Some(Actor::Client))
        );
        assert_eq!(
            said(Some(503), Some("SC--"), true),
            Some(Some(Actor::Server))
        );
        assert_eq!(said(Some(200), Some("----"), true), Some(None));
        assert_eq!(said(Some(200), Some("LR--"), false), Some(None));
        assert_eq!(
            said(Some(403), Some("PR--"), false),
            Some(Some(Actor::Proxy))
        );
        // nginx: the status alone.
        assert_eq!(said(Some(499), None, true), Some(Some(Actor::Client)));
        assert_eq!(said(Some(504), None, true), Some(Some(Actor::Server)));
        assert_eq!(said(Some(503), None, false), Some(Some(Actor::Proxy)));
        assert_eq!(said(Some(503), None, true), Some(Some(Actor::Server)));
        assert_eq!(said(Some(404), None, true), Some(None));
    }
}
