//! The record expression language of `conntrail query` (and, later, of runtime watches):
//! parsed once into an [`Expr`] tree, then tested against each [`Record`] with
//! [`Expr::matches`], which allocates nothing.
//!
//! This module knows records and text, nothing of the command line, files or output.
//!
//! ```
//! use forensics::expr::Expr;
//! let e = Expr::parse("reason=tcp-rst-server and port 443 and latency.syn_synack>100ms")
//!     .expect("parses");
//! assert_eq!(
//!     e.to_string(),
//!     "reason=tcp-rst-server and port 443 and latency.syn_synack>100ms"
//! );
//! # fn check(e: &Expr, rec: &flowtable::record::Record<'_>) -> bool {
//! e.matches(rec)
//! # }
//! ```
//!
//! # Grammar
//!
//! ```text
//! expr       = and { ("or" | "||") and }
//! and        = unary { ("and" | "&&") unary }
//! unary      = ("not" | "!") unary | "(" expr ")" | primitive | comparison
//! primitive  = [side] "host" IP | [side] "net" CIDR | [side] "port" N
//!            | side (IP | CIDR)                       -- `client 10.0.0.1`
//!            | "proto" ("tcp" | "udp" | "icmp") | "tcp" | "udp" | "icmp"
//!            | "ip" | "ip4" | "ip6" | "vlan" [N] | "midstream"
//!            | "flag" FLAG | "point" POINT-KIND
//! side       = "client" | "src" | "server" | "dst"
//! comparison = FIELD OP VALUE
//! OP         = "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
//! ```
//!
//! `not` binds tightest, then `and`, then `or`. Keywords and field names are
//! case-insensitive; `and` must be written (two primitives side by side are an error, not
//! an implicit `and` as in BPF). `src`/`dst` are the record's client and server (the
//! connection's initiator and responder), not the sender of one packet.
//!
//! # Fields
//!
//! | field | values | operators |
//! |---|---|---|
//! | `reason` (`close_reason`) | a close reason (`tcp-rst-server`...), or a comma list: *one of* | `=` `!=` |
//! | `state` (`conn_state`) | a Zeek state (`REJ`, `S0`...; `none` for UDP/ICMP), or a comma list: *one of* | `=` `!=` |
//! | `flags` | a flag (`error`, `latency`, `protocol`, `resource`, `path`, `user`, `all`) or a comma list: *has all of them* (`flag error` is `flags=error`) | `=` `!=` |
//! | `history` | Zeek history letters: *every letter appears* (case matters: upper client, lower server) | `=` `!=` |
//! | `proto` | `tcp`, `udp`, `icmp` | `=` `!=` |
//! | `host`, `client`, `server` (`src`, `dst`) | an address, or a CIDR network | `=` `!=` |
//! | `net` | a CIDR network | `=` `!=` |
//! | `port`, `vlan` | a number; `port` is either end's port, `vlan` any tag of the stack | `=` `!=` |
//! | `point` | a tracking point kind (`tls-alert`, `zero-window`...): the trail has one | `=` `!=` |
//! | `midstream` | `true` or `false` | `=` `!=` |
//! | `duration`, `latency.syn_synack`, `latency.synack_ack`, `latency.ttfb`, `latency.max_stall` | a duration with a unit: `ns`, `us`, `ms`, `s`, `m`, `h` (`1.5s`; a bare `0` is allowed) | all |
//! | `start`, `end` | an RFC 3339 time: `2024-01-01T10:00:00Z`, `...T10:00:00.5+02:00`; without an offset UTC; a bare date is its midnight UTC | all |
//! | `time` | as `start`: the connection *overlaps*: `time=T` active at T, `time>=T` ended at or after T, `time<T` began before T | all |
//! | `pkts`, `bytes`, `payload`, `retrans`, `out_of_order`, `dup_ack`, `zero_window`; with `c2s.` or `s2c.` one direction, without both added | a number | all |
//! | `client.port`, `server.port`, `id`, `worker`, `context` | a number | all |
//!
//! For the one-of-a-set fields, `!=` is exactly `not ... =`. A latency the connection never
//! measured (no SYN-ACK, no response) makes every comparison on it false, `!=` included:
//! `latency.ttfb>=0` selects the connections that have one.
//!
//! # Examples
//!
//! ```text
//! reason=tcp-rst-server and port 445
//! state=REJ,S0 and server net 10.0.0.0/8
//! flags=latency and latency.ttfb>500ms and not client 192.0.2.7
//! history=t and s2c.retrans>=3 and time>=2024-05-01T09:00:00Z and time<2024-05-01T10:00:00Z
//! point tls-alert or (udp and duration>30s)
//! ```
//!
//! A syntax or value error names the offending token and its column:
//! ``expected a value after `>` at column 23``.
//!
//! [`Expr`] implements `Display` in a canonical form that parses back to the same tree.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::units::days_from_civil;
use flowtable::config::Net;
use flowtable::point::PointKind;
use flowtable::record::{Addr, CloseReason, ConnState, Endpoint, Flags, History, Proto, Record};

/// How deep parentheses and `not` may nest; deeper input is an error, not a stack overflow.
pub const MAX_DEPTH: usize = 64;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Every operand holds. The parser makes at least two operands, none of them an `And`.
    And(Vec<Expr>),
    /// Some operand holds. The parser makes at least two operands, none of them an `Or`.
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Test(Test),
}

/// One test of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// The address of an end.
    Host(Side, Addr),
    /// The address of an end is in the network.
    Net(Side, Net),
    /// The port of an end (0 for ICMP).
    Port(Side, u16),
    Proto(Proto),
    /// 4 or 6.
    IpVersion(u8),
    /// `None`: tagged at all; `Some(id)`: a tag of the stack is `id`.
    Vlan(Option<u16>),
    /// Picked up mid-stream.
    Midstream,
    /// The close reason is one of the set.
    Reason(ReasonSet),
    /// The conn_state is one of the set.
    State(StateSet),
    /// Every one of these flags is set.
    Flags(Flags),
    /// Every one of these letters is in the history.
    History(History),
    /// The trail has a point of this kind.
    Point(PointKind),
    /// A numeric field compared with a value (ns for durations and times). False when the
    /// record has no value for the field (a latency never measured).
    Compare(Field, Op, u64),
    /// The connection's span `[start, end]` against an instant (ns since the epoch).
    Time(Op, u64),
}

/// Which end of the connection a primitive looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Either,
    Client,
    Server,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A set of close reasons (bit i: `CloseReason::ALL[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReasonSet(pub u8);

/// A set of conn_states (bit i: `ConnState::ALL[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StateSet(pub u16);

/// A numeric field of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Duration,
    Start,
    End,
    Id,
    Worker,
    /// The record's context number (0: default).
    Context,
    ClientPort,
    ServerPort,
    Latency(Latency),
    Counter(Scope, Counter),
}

/// One of the measured latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    SynSynack,
    SynackAck,
    Ttfb,
    MaxStall,
}

/// Which direction's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    C2s,
    S2c,
    /// Both directions added.
    Total,
}

/// A per-direction counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Pkts,
    Bytes,
    Payload,
    Retrans,
    OutOfOrder,
    DupAck,
    ZeroWindow,
}

/// What the value of a field is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Duration,
    Time,
    Count,
}

/// An expression that does not parse: what is wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at column {column}")]
pub struct ExprError {
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    pub kind: ExprErrorKind,
}

/// What is wrong with an expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExprErrorKind {
    #[error("empty expression")]
    Empty,
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        /// The token found, quoted, or "the end".
        found: String,
    },
    #[error("expected a value after `{after}`")]
    MissingValue { after: String },
    #[error("expected an operator (= != < <= > >=) after `{field}`")]
    MissingOperator { field: String },
    #[error("unknown field or primitive `{word}`{hint}")]
    UnknownWord {
        word: String,
        /// Empty, or starts with "; ".
        hint: String,
    },
    #[error("`{field}`: `{value}` is not {expected}")]
    BadValue {
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error("`{op}` does not apply to `{field}`; use {allowed}")]
    BadOperator {
        op: &'static str,
        field: &'static str,
        allowed: &'static str,
    },
    #[error("`(` is never closed")]
    Unclosed,
    #[error("`)` without a matching `(`")]
    Unopened,
    #[error("nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("unexpected `{0}`; write `and`/`&&` or `or`/`||`")]
    StrayChar(char),
}

impl Expr {
    /// Parses an expression (see the module documentation for the language).
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let tokens = lex(text)?;
        let end_column = text.chars().count() + 1;
        let mut p = Parser {
            tokens,
            pos: 0,
            depth: 0,
            end_column,
        };
        if p.tokens.is_empty() {
            return Err(ExprError {
                column: 1,
                kind: ExprErrorKind::Empty,
            });
        }
        let e = p.or()?;
        match p.peek() {
            None => Ok(e),
            Some(t) if t.kind == Tok::RParen => Err(t.error(ExprErrorKind::Unopened)),
            Some(t) => Err(t.error(ExprErrorKind::Expected {
                expected: "`and` or `or`",
                found: t.quoted(),
            })),
        }
    }

    /// Whether the record satisfies the expression. Allocates nothing.
    pub fn matches(&self, rec: &Record<'_>) -> bool {
        match self {
            Expr::And(all) => all.iter().all(|e| e.matches(rec)),
            Expr::Or(any) => any.iter().any(|e| e.matches(rec)),
            Expr::Not(e) => !e.matches(rec),
            Expr::Test(t) => t.matches(rec),
        }
    }
}

impl FromStr for Expr {
    type Err = ExprError;

    fn from_str(s: &str) -> Result<Expr, ExprError> {
        Expr::parse(s)
    }
}

impl Test {
    /// Whether the record passes this one test. Allocates nothing.
    pub fn matches(&self, rec: &Record<'_>) -> bool {
        match *self {
            Test::Host(side, addr) => side.any(rec, |e| e.ip == addr),
            Test::Net(side, net) => side.any(rec, |e| net.contains(&e.ip.0)),
            Test::Port(side, port) => side.any(rec, |e| e.port == port),
            Test::Proto(p) => rec.proto == p,
            Test::IpVersion(v) => rec.ip_version == v,
            Test::Vlan(None) => !rec.vlans.is_empty(),
            Test::Vlan(Some(id)) => rec.vlans.contains(&id),
            Test::Midstream => rec.midstream,
            Test::Reason(set) => set.contains(rec.close_reason),
            Test::State(set) => set.contains(rec.conn_state),
            Test::Flags(f) => rec.flags.contains(f),
            Test::History(h) => {
                let have = rec.history.as_str().as_bytes();
                h.as_str().bytes().all(|l| have.contains(&l))
            }
            Test::Point(kind) => rec.points.iter().any(|p| p.kind == kind),
            Test::Compare(field, op, value) => field.value(rec).is_some_and(|v| op.holds(v, value)),
            Test::Time(op, t) => match op {
                Op::Eq => rec.start_ns <= t && t <= rec.end_ns,
                Op::Ne => !(rec.start_ns <= t && t <= rec.end_ns),
                Op::Lt => rec.start_ns < t,
                Op::Le => rec.start_ns <= t,
                Op::Gt => rec.end_ns > t,
                Op::Ge => rec.end_ns >= t,
            },
        }
    }
}

impl Side {
    fn any(self, rec: &Record<'_>, f: impl Fn(&Endpoint) -> bool) -> bool {
        match self {
            Side::Either => f(&rec.client) || f(&rec.server),
            Side::Client => f(&rec.client),
            Side::Server => f(&rec.server),
        }
    }

    /// The word before `host`/`net`/`port` in the canonical form.
    fn prefix(self) -> &'static str {
        match self {
            Side::Either => "",
            Side::Client => "client ",
            Side::Server => "server ",
        }
    }
}

impl Op {
    pub fn holds(self, left: u64, right: u64) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

impl ReasonSet {
    fn bit(r: CloseReason) -> u8 {
        let i = CloseReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        1 << i
    }

    pub fn contains(self, r: CloseReason) -> bool {
        self.0 & ReasonSet::bit(r) != 0
    }

    pub fn insert(&mut self, r: CloseReason) {
        self.0 |= ReasonSet::bit(r);
    }
}

impl StateSet {
    fn bit(s: ConnState) -> u16 {
        let i = ConnState::ALL.iter().position(|x| *x == s).unwrap_or(0);
        1 << i
    }

    pub fn contains(self, s: ConnState) -> bool {
        self.0 & StateSet::bit(s) != 0
    }

    pub fn insert(&mut self, s: ConnState) {
        self.0 |= StateSet::bit(s);
    }
}

/// The single flags, in their fixed order.
fn single_flags() -> impl Iterator<Item = (Flags, &'static str)> {
    (0..8).filter_map(|i| {
        let f = Flags(1 << i);
        f.names().next().map(|n| (f, n))
    })
}

/// The numeric fields under their canonical names.
const FIELDS: [(&str, Field); 33] = [
    ("duration", Field::Duration),
    ("start", Field::Start),
    ("end", Field::End),
    ("id", Field::Id),
    ("worker", Field::Worker),
    ("context", Field::Context),
    ("client.port", Field::ClientPort),
    ("server.port", Field::ServerPort),
    ("latency.syn_synack", Field::Latency(Latency::SynSynack)),
    ("latency.synack_ack", Field::Latency(Latency::SynackAck)),
    ("latency.ttfb", Field::Latency(Latency::Ttfb)),
    ("latency.max_stall", Field::Latency(Latency::MaxStall)),
    ("pkts", Field::Counter(Scope::Total, Counter::Pkts)),
    ("bytes", Field::Counter(Scope::Total, Counter::Bytes)),
    ("payload", Field::Counter(Scope::Total, Counter::Payload)),
    ("retrans", Field::Counter(Scope::Total, Counter::Retrans)),
    (
        "out_of_order",
        Field::Counter(Scope::Total, Counter::OutOfOrder),
    ),
    ("dup_ack", Field::Counter(Scope::Total, Counter::DupAck)),
    (
        "zero_window",
        Field::Counter(Scope::Total, Counter::ZeroWindow),
    ),
    ("c2s.pkts", Field::Counter(Scope::C2s, Counter::Pkts)),
    ("c2s.bytes", Field::Counter(Scope::C2s, Counter::Bytes)),
    ("c2s.payload", Field::Counter(Scope::C2s, Counter::Payload)),
    ("c2s.retrans", Field::Counter(Scope::C2s, Counter::Retrans)),
    (
        "c2s.out_of_order",
        Field::Counter(Scope::C2s, Counter::OutOfOrder),
    ),
    ("c2s.dup_ack", Field::Counter(Scope::C2s, Counter::DupAck)),
    (
        "c2s.zero_window",
        Field::Counter(Scope::C2s, Counter::ZeroWindow),
    ),
    ("s2c.pkts", Field::Counter(Scope::S2c, Counter::Pkts)),
    ("s2c.bytes", Field::Counter(Scope::S2c, Counter::Bytes)),
    ("s2c.payload", Field::Counter(Scope::S2c, Counter::Payload)),
    ("s2c.retrans", Field::Counter(Scope::S2c, Counter::Retrans)),
    (
        "s2c.out_of_order",
        Field::Counter(Scope::S2c, Counter::OutOfOrder),
    ),
    ("s2c.dup_ack", Field::Counter(Scope::S2c, Counter::DupAck)),
    (
        "s2c.zero_window",
        Field::Counter(Scope::S2c, Counter::ZeroWindow),
    ),
];

/// Words of the language that are not numeric fields (for suggestions).
const WORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "host",
    "net",
    "port",
    "client",
    "server",
    "src",
    "dst",
    "proto",
    "tcp",
    "udp",
    "icmp",
    "ip",
    "ip4",
    "ip6",
    "vlan",
    "midstream",
    "flag",
    "flags",
    "point",
    "reason",
    "close_reason",
    "state",
    "conn_state",
    "history",
    "time",
];

impl Field {
    /// The field's value in the record; `None` when it was never measured.
    pub fn value(self, rec: &Record<'_>) -> Option<u64> {
        Some(match self {
            Field::Duration => rec.duration_ns(),
            Field::Start => rec.start_ns,
            Field::End => rec.end_ns,
            Field::Id => rec.id,
            Field::Worker => u64::from(rec.worker),
            Field::Context => u64::from(rec.context),
            Field::ClientPort => u64::from(rec.client.port),
            Field::ServerPort => u64::from(rec.server.port),
            Field::Latency(l) => {
                return match l {
                    Latency::SynSynack => rec.latency.syn_synack_ns,
                    Latency::SynackAck => rec.latency.synack_ack_ns,
                    Latency::Ttfb => rec.latency.ttfb_ns,
                    Latency::MaxStall => rec.latency.max_stall_ns,
                }
            }
            Field::Counter(scope, counter) => {
                let of = |d: &flowtable::record::DirStats| match counter {
                    Counter::Pkts => d.pkts,
                    Counter::Bytes => d.bytes,
                    Counter::Payload => d.payload,
                    Counter::Retrans => u64::from(d.retrans),
                    Counter::OutOfOrder => u64::from(d.out_of_order),
                    Counter::DupAck => u64::from(d.dup_ack),
                    Counter::ZeroWindow => u64::from(d.zero_window),
                };
                match scope {
                    Scope::C2s => of(&rec.c2s),
                    Scope::S2c => of(&rec.s2c),
                    Scope::Total => of(&rec.c2s).saturating_add(of(&rec.s2c)),
                }
            }
        })
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    fn unit(self) -> Unit {
        match self {
            Field::Duration | Field::Latency(_) => Unit::Duration,
            Field::Start | Field::End => Unit::Time,
            _ => Unit::Count,
        }
    }

    fn by_name(word: &str) -> Option<Field> {
        FIELDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(word))
            .map(|(_, f)| *f)
    }
}

// ---------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Word,
    LParen,
    RParen,
    Op(Op),
    And,
    Or,
    Not,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    kind: Tok,
    text: &'a str,
    /// 1-based character column.
    column: usize,
}

impl Token<'_> {
    fn error(&self, kind: ExprErrorKind) -> ExprError {
        ExprError {
            column: self.column,
            kind,
        }
    }

    fn quoted(&self) -> String {
        format!("`{}`", self.text)
    }
}

/// Characters that end a word.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '=' | '!' | '<' | '>' | '&' | '|')
}

fn lex(text: &str) -> Result<Vec<Token<'_>>, ExprError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&(_, c)) = chars.get(i) {
        let next = chars.get(i + 1).map(|&(_, n)| n);
        let (kind, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('=', Some('=')) => (Tok::Op(Op::Eq), 2),
            ('=', _) => (Tok::Op(Op::Eq), 1),
            ('!', Some('=')) => (Tok::Op(Op::Ne), 2),
            ('!', _) => (Tok::Not, 1),
            ('<', Some('=')) => (Tok::Op(Op::Le), 2),
            ('<', _) => (Tok::Op(Op::Lt), 1),
            ('>', Some('=')) => (Tok::Op(Op::Ge), 2),
            ('>', _) => (Tok::Op(Op::Gt), 1),
            ('&', Some('&')) => (Tok::And, 2),
            ('|', Some('|')) => (Tok::Or, 2),
            ('&' | '|', _) => {
                return Err(ExprError {
                    column: i + 1,
                    kind: ExprErrorKind::StrayChar(c),
                })
            }
            _ => {
                let len = chars
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|&&(_, c)| !is_special(c))
                    .count();
                (Tok::Word, len)
            }
        };
        let word = text.get(byte_at(i)..byte_at(i + len)).unwrap_or_default();
        let kind = match kind {
            Tok::Word if word.eq_ignore_ascii_case("and") => Tok::And,
            Tok::Word if word.eq_ignore_ascii_case("or") => Tok::Or,
            Tok::Word if word.eq_ignore_ascii_case("not") => Tok::Not,
            k => k,
        };
        tokens.push(Token {
            kind,
            text: word,
            column: i + 1,
        });
        i += len;
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    depth: usize,
    end_column: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.pos).copied()
    }

    fn peek_kind(&self) -> Option<Tok> {
        self.peek().map(|t| t.kind)
    }

    fn advance(&mut self) -> Option<Token<'a>> {
        let t = self.peek();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    /// "Expected X" at the next token, or at the end.
    fn expected(&self, expected: &'static str) -> ExprError {
        match self.peek() {
            Some(t) => t.error(ExprErrorKind::Expected {
                expected,
                found: t.quoted(),
            }),
            None => ExprError {
                column: self.end_column,
                kind: ExprErrorKind::Expected {
                    expected,
                    found: "the end".to_string(),
                },
            },
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let first = self.and()?;
        if self.peek_kind() != Some(Tok::Or) {
            return Ok(first);
        }
        let mut any = Vec::new();
        splice_or(&mut any, first);
        while self.peek_kind() == Some(Tok::Or) {
            self.advance();
            let e = self.and()?;
            splice_or(&mut any, e);
        }
        Ok(Expr::Or(any))
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let first = self.unary()?;
        if self.peek_kind() != Some(Tok::And) {
            return Ok(first);
        }
        let mut all = Vec::new();
        splice_and(&mut all, first);
        while self.peek_kind() == Some(Tok::And) {
            self.advance();
            let e = self.unary()?;
            splice_and(&mut all, e);
        }
        Ok(Expr::And(all))
    }

    fn enter(&mut self, at: &Token<'_>) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(at.error(ExprErrorKind::TooDeep));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let Some(t) = self.peek() else {
            return Err(self.expected("an expression"));
        };
        match t.kind {
            Tok::Not => {
                self.advance();
                self.enter(&t)?;
                let e = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(e)))
            }
            Tok::LParen => {
                self.advance();
                self.enter(&t)?;
                if self.peek_kind() == Some(Tok::RParen) {
                    return Err(self.expected("an expression"));
                }
                let e = self.or()?;
                match self.peek_kind() {
                    Some(Tok::RParen) => {
                        self.advance();
                    }
                    None => return Err(t.error(ExprErrorKind::Unclosed)),
                    Some(_) => return Err(self.expected("`)`, `and` or `or`")),
                }
                self.depth -= 1;
                Ok(e)
            }
            Tok::Word => {
                self.advance();
                self.word(t)
            }
            Tok::RParen | Tok::Op(_) | Tok::And | Tok::Or => Err(self.expected("an expression")),
        }
    }

    /// The value token after `after` (a keyword or an operator).
    fn value(&mut self, after: &Token<'_>) -> Result<Token<'a>, ExprError> {
        match self.peek() {
            Some(t) if t.kind == Tok::Word => {
                self.advance();
                Ok(t)
            }
            _ => Err(after.error(ExprErrorKind::MissingValue {
                after: after.text.to_string(),
            })),
        }
    }

    /// A primitive or a comparison that starts with `w`.
    fn word(&mut self, w: Token<'a>) -> Result<Expr, ExprError> {
        if let Some(Tok::Op(op)) = self.peek_kind() {
            let op_token = self.advance().unwrap_or(w);
            let value = self.value(&op_token)?;
            return comparison(&w, op, &op_token, &value);
        }
        let test = |t: Test| Ok(Expr::Test(t));
        let word = w.text.to_ascii_lowercase();
        match word.as_str() {
            "host" | "net" | "port" => {
                let v = self.value(&w)?;
                test(endpoint_test(&word, Side::Either, &v)?)
            }
            "client" | "src" | "server" | "dst" => {
                let side = if matches!(word.as_str(), "client" | "src") {
                    Side::Client
                } else {
                    Side::Server
                };
                let next = self.value(&w)?;
                let kind = next.text.to_ascii_lowercase();
                if matches!(kind.as_str(), "host" | "net" | "port") {
                    let v = self.value(&next)?;
                    test(endpoint_test(&kind, side, &v)?)
                } else {
                    let name = if side == Side::Client {
                        "client"
                    } else {
                        "server"
                    };
                    test(address_test(side, &next, name)?)
                }
            }
            "proto" => {
                let v = self.value(&w)?;
                test(Test::Proto(parse_proto(&v)?))
            }
            "tcp" => test(Test::Proto(Proto::Tcp)),
            "udp" => test(Test::Proto(Proto::Udp)),
            "icmp" => test(Test::Proto(Proto::Icmp)),
            "ip" | "ip4" => test(Test::IpVersion(4)),
            "ip6" => test(Test::IpVersion(6)),
            "vlan" => match self.peek() {
                Some(v) if v.kind == Tok::Word => {
                    self.advance();
                    test(Test::Vlan(Some(parse_vlan(&v)?)))
                }
                _ => test(Test::Vlan(None)),
            },
            "midstream" => test(Test::Midstream),
            "flag" => {
                let v = self.value(&w)?;
                test(Test::Flags(parse_flags(&v)?))
            }
            "point" => {
                let v = self.value(&w)?;
                test(Test::Point(parse_point(&v)?))
            }
            _ if is_comparison_field(&word) => Err(w.error(ExprErrorKind::MissingOperator {
                field: w.text.to_string(),
            })),
            _ => Err(w.error(unknown_word(w.text))),
        }
    }
}

fn splice_and(all: &mut Vec<Expr>, e: Expr) {
    match e {
        Expr::And(inner) => all.extend(inner),
        e => all.push(e),
    }
}

fn splice_or(any: &mut Vec<Expr>, e: Expr) {
    match e {
        Expr::Or(inner) => any.extend(inner),
        e => any.push(e),
    }
}

fn is_comparison_field(word: &str) -> bool {
    Field::by_name(word).is_some()
        || matches!(
            word,
            "reason" | "close_reason" | "state" | "conn_state" | "flags" | "history" | "time"
        )
}

fn unknown_word(word: &str) -> ExprErrorKind {
    let lower = word.to_ascii_lowercase();
    let hint = if word.parse::<IpAddr>().is_ok() {
        format!("; an address needs `host` before it (`host {word}`)")
    } else if word.contains('/') && Net::parse(word).is_some() {
        format!("; a network needs `net` before it (`net {word}`)")
    } else if CloseReason::ALL.iter().any(|r| r.as_str() == lower) {
        format!("; a close reason needs `reason=` before it (`reason={lower}`)")
    } else if ConnState::ALL
        .iter()
        .any(|s| s.as_str().eq_ignore_ascii_case(word))
    {
        format!("; a conn_state needs `state=` before it (`state={word}`)")
    } else if single_flags().any(|(_, n)| n == lower) {
        format!("; a flag needs `flag` before it (`flag {lower}`)")
    } else if PointKind::ALL.iter().any(|k| k.as_str() == lower) {
        format!("; a point kind needs `point` before it (`point {lower}`)")
    } else if lower.parse::<u64>().is_ok() {
        "; a number needs a field or `port` before it".to_string()
    } else {
        let candidates = WORDS.iter().copied().chain(FIELDS.iter().map(|(n, _)| *n));
        let best = candidates
            .map(|c| (edit_distance(&lower, c), c))
            .min_by_key(|(d, _)| *d);
        match best {
            Some((d, c)) if d <= 2 && d < lower.chars().count() => format!("; did you mean `{c}`?"),
            _ => String::new(),
        }
    };
    ExprErrorKind::UnknownWord {
        word: word.to_string(),
        hint,
    }
}

/// Levenshtein distance (for suggestions on short words).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// `FIELD OP VALUE`.
fn comparison(
    field: &Token<'_>,
    op: Op,
    op_token: &Token<'_>,
    v: &Token<'_>,
) -> Result<Expr, ExprError> {
    let word = field.text.to_ascii_lowercase();
    // The one-of-a-set fields take `=` (the test) and `!=` (its negation) only.
    let only_eq = |name: &'static str| -> Result<(), ExprError> {
        match op {
            Op::Eq | Op::Ne => Ok(()),
            _ => Err(op_token.error(ExprErrorKind::BadOperator {
                op: op.as_str(),
                field: name,
                allowed: "= or !=",
            })),
        }
    };
    let set_test = |t: Test| -> Result<Expr, ExprError> {
        Ok(match op {
            Op::Ne => Expr::Not(Box::new(Expr::Test(t))),
            _ => Expr::Test(t),
        })
    };
    match word.as_str() {
        "reason" | "close_reason" => {
            only_eq("reason")?;
            set_test(Test::Reason(parse_reasons(v)?))
        }
        "state" | "conn_state" => {
            only_eq("state")?;
            set_test(Test::State(parse_states(v)?))
        }
        "flags" | "flag" => {
            only_eq("flags")?;
            set_test(Test::Flags(parse_flags(v)?))
        }
        "history" => {
            only_eq("history")?;
            set_test(Test::History(parse_history(v)?))
        }
        "proto" => {
            only_eq("proto")?;
            set_test(Test::Proto(parse_proto(v)?))
        }
        "host" => {
            only_eq("host")?;
            set_test(address_test(Side::Either, v, "host")?)
        }
        "client" | "src" => {
            only_eq("client")?;
            set_test(address_test(Side::Client, v, "client")?)
        }
        "server" | "dst" => {
            only_eq("server")?;
            set_test(address_test(Side::Server, v, "server")?)
        }
        "net" => {
            only_eq("net")?;
            set_test(endpoint_test("net", Side::Either, v)?)
        }
        "port" => match op {
            Op::Eq | Op::Ne => set_test(endpoint_test("port", Side::Either, v)?),
            _ => Err(op_token.error(ExprErrorKind::BadOperator {
                op: op.as_str(),
                field: "port",
                allowed: "= or != (either end), or compare `client.port` or `server.port`",
            })),
        },
        "vlan" => {
            only_eq("vlan")?;
            set_test(Test::Vlan(Some(parse_vlan(v)?)))
        }
        "point" => {
            only_eq("point")?;
            set_test(Test::Point(parse_point(v)?))
        }
        "midstream" => {
            only_eq("midstream")?;
            let yes = match v.text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => return Err(bad_value("midstream", v, "`true` or `false`".to_string())),
            };
            let e = set_test(Test::Midstream)?;
            Ok(if yes { e } else { negate(e) })
        }
        "time" => Ok(Expr::Test(Test::Time(op, parse_time_value("time", v)?))),
        _ => match Field::by_name(&word) {
            Some(f) => {
                let value = match f.unit() {
                    Unit::Duration => parse_duration(v.text)
                        .map_err(|why| bad_value(f.name(), v, why.to_string()))?,
                    Unit::Time => parse_time_value(f.name(), v)?,
                    Unit::Count => v
                        .text
                        .parse::<u64>()
                        .map_err(|_| bad_value(f.name(), v, "a whole number".to_string()))?,
                };
                Ok(Expr::Test(Test::Compare(f, op, value)))
            }
            None => Err(field.error(unknown_word(field.text))),
        },
    }
}

fn negate(e: Expr) -> Expr {
    match e {
        Expr::Not(inner) => *inner,
        e => Expr::Not(Box::new(e)),
    }
}

fn bad_value(field: &'static str, v: &Token<'_>, expected: String) -> ExprError {
    v.error(ExprErrorKind::BadValue {
        field,
        value: v.text.to_string(),
        expected,
    })
}

/// `host`/`net`/`port` with their value.
fn endpoint_test(kind: &str, side: Side, v: &Token<'_>) -> Result<Test, ExprError> {
    match kind {
        "host" => address_test(side, v, "host").and_then(|t| match t {
            Test::Host(..) => Ok(t),
            _ => Err(bad_value(
                "host",
                v,
                format!("an address (for a network write `net {}`)", v.text),
            )),
        }),
        "net" => Net::parse(v.text)
            .map(|n| Test::Net(side, n))
            .ok_or_else(|| {
                bad_value(
                    "net",
                    v,
                    "a network (`10.0.0.0/8`, `2001:db8::/32`)".to_string(),
                )
            }),
        _ => v
            .text
            .parse::<u16>()
            .map(|p| Test::Port(side, p))
            .map_err(|_| bad_value("port", v, "a port number (0-65535)".to_string())),
    }
}

/// An address (a host test) or a network with a `/` (a net test).
fn address_test(side: Side, v: &Token<'_>, field: &'static str) -> Result<Test, ExprError> {
    if let Ok(ip) = v.text.parse::<IpAddr>() {
        return Ok(Test::Host(side, Addr::from_ip(ip)));
    }
    if v.text.contains('/') {
        if let Some(n) = Net::parse(v.text) {
            return Ok(Test::Net(side, n));
        }
    }
    Err(bad_value(
        field,
        v,
        "an address or a network (`192.0.2.1`, `10.0.0.0/8`), or `host`, `net` or `port`"
            .to_string(),
    ))
}

fn parse_proto(v: &Token<'_>) -> Result<Proto, ExprError> {
    match v.text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "icmp" | "icmp6" | "icmpv6" => Ok(Proto::Icmp),
        _ => Err(bad_value("proto", v, "`tcp`, `udp` or `icmp`".to_string())),
    }
}

fn parse_vlan(v: &Token<'_>) -> Result<u16, ExprError> {
    v.text
        .parse::<u16>()
        .ok()
        .filter(|id| *id < 4096)
        .ok_or_else(|| bad_value("vlan", v, "a VLAN id (0-4095)".to_string()))
}

/// The pieces of a comma list; an empty piece is an error.
fn list_items<'t>(field: &'static str, v: &Token<'t>) -> Result<Vec<&'t str>, ExprError> {
    let items: Vec<&str> = v.text.split(',').collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(bad_value(
            field,
            v,
            "a comma list without empty items".to_string(),
        ));
    }
    Ok(items)
}

fn parse_reasons(v: &Token<'_>) -> Result<ReasonSet, ExprError> {
    let mut set = ReasonSet::default();
    for item in list_items("reason", v)? {
        let r = CloseReason::ALL
            .iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(item))
            .ok_or_else(|| {
                let names: Vec<&str> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
                bad_value(
                    "reason",
                    v,
                    format!("a close reason ({})", names.join(", ")),
                )
            })?;
        set.insert(*r);
    }
    Ok(set)
}

fn parse_states(v: &Token<'_>) -> Result<StateSet, ExprError> {
    let mut set = StateSet::default();
    for item in list_items("state", v)? {
        let s = ConnState::ALL
            .iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(item))
            .ok_or_else(|| {
                let names: Vec<&str> = ConnState::ALL.iter().map(|s| s.as_str()).collect();
                bad_value("state", v, format!("a conn_state ({})", names.join(", ")))
            })?;
        set.insert(*s);
    }
    Ok(set)
}

fn parse_flags(v: &Token<'_>) -> Result<Flags, ExprError> {
    let mut flags = Flags::default();
    for item in list_items("flags", v)? {
        let (f, _) = single_flags()
            .find(|(_, n)| n.eq_ignore_ascii_case(item))
            .ok_or_else(|| {
                let names: Vec<&str> = single_flags().map(|(_, n)| n).collect();
                bad_value("flags", v, format!("a flag ({})", names.join(", ")))
            })?;
        flags.insert(f);
    }
    Ok(flags)
}

fn parse_history(v: &Token<'_>) -> Result<History, ExprError> {
    let ok = !v.text.is_empty()
        && v.text.len() <= History::CAP
        && v.text.bytes().all(|b| b.is_ascii_alphabetic() || b == b'^');
    if !ok {
        return Err(bad_value(
            "history",
            v,
            format!(
                "history letters (Zeek's: `S`, `h`, `A`, `d`, `F`, `r`, `t`, `^`...; at most {})",
                History::CAP
            ),
        ));
    }
    let mut h = History::default();
    for b in v.text.bytes() {
        h.push(b);
    }
    Ok(h)
}

fn parse_point(v: &Token<'_>) -> Result<PointKind, ExprError> {
    PointKind::ALL
        .iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(v.text))
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = PointKind::ALL.iter().map(|k| k.as_str()).collect();
            bad_value("point", v, format!("a point kind ({})", names.join(", ")))
        })
}

fn parse_time_value(field: &'static str, v: &Token<'_>) -> Result<u64, ExprError> {
    parse_time(v.text).ok_or_else(|| {
        bad_value(
            field,
            v,
            "an RFC 3339 time after 1970 (`2024-01-01T10:00:00Z`, `2024-01-01T10:00:00.25+02:00`, `2024-01-01`)"
                .to_string(),
        )
    })
}

/// A duration with a unit (`250ms`, `1.5s`, `2m`), or a bare `0`, in ns. Fractions finer
/// than a nanosecond are dropped.
pub fn parse_duration(text: &str) -> Result<u64, &'static str> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err("a duration (`250ms`, `1.5s`; units ns, us, ms, s, m, h)");
    }
    let scale: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" if int.bytes().chain(frac.bytes()).all(|b| b == b'0') => 0,
        "" => return Err("a duration with a unit: ns, us, ms, s, m or h (`250ms`)"),
        _ => return Err("a duration with a unit: ns, us, ms, s, m or h"),
    };
    if int.len() > 30 || frac.len() > 30 {
        return Err("a duration that fits in 64 bits of nanoseconds");
    }
    let int_value: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| "a duration")?
    };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| "a duration")?
    };
    let frac_ns = frac_value
        .checked_mul(scale)
        .map(|x| x / 10u128.pow(frac.len() as u32));
    int_value
        .checked_mul(scale)
        .zip(frac_ns)
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|ns| u64::try_from(ns).ok())
        .ok_or("a duration that fits in 64 bits of nanoseconds (about 584 years)")
}

/// An RFC 3339 time (`2024-01-01T10:00:00Z`, fractions and `+hh:mm` offsets allowed; UTC
/// without an offset), or a bare date (`2024-01-01`, midnight UTC), in ns since the epoch.
/// `None` for anything else, or a time before 1970.
pub fn parse_time(text: &str) -> Option<u64> {
    if !text.is_ascii() {
        return None;
    }
    let digits = |from: usize, len: usize| -> Option<i64> {
        let t = text.get(from..from + len)?;
        if t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let byte = |at: usize| text.as_bytes().get(at).copied();
    let year = digits(0, 4)?;
    (byte(4) == Some(b'-') && byte(7) == Some(b'-')).then_some(())?;
    let (month, day) = (digits(5, 2)?, digits(8, 2)?);
    let (mut hour, mut minute, mut second, mut frac_ns, mut offset_s) = (0, 0, 0, 0i64, 0i64);
    if text.len() > 10 {
        matches!(byte(10), Some(b'T' | b't')).then_some(())?;
        hour = digits(11, 2)?;
        (byte(13) == Some(b':')).then_some(())?;
        minute = digits(14, 2)?;
        let mut at = 16;
        if byte(at) == Some(b':') {
            second = digits(at + 1, 2)?;
            at += 3;
            if byte(at) == Some(b'.') {
                let len = text[at + 1..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .count();
                if len == 0 || len > 9 {
                    return None;
                }
                frac_ns = digits(at + 1, len)? * 10i64.pow(9 - len as u32);
                at += 1 + len;
            }
        }
        match byte(at) {
            None => {}
            Some(b'Z' | b'z') if at + 1 == text.len() => {}
            Some(sign @ (b'+' | b'-')) if at + 6 == text.len() && byte(at + 3) == Some(b':') => {
                let (oh, om) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                offset_s = (oh * 3600 + om * 60) * if sign == b'+' { 1 } else { -1 };
            }
            _ => return None,
        }
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = *month_days.get(usize::try_from(month - 1).ok()?)?;
    if day < 1 || day > max_day || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ns = u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?;
    ns.checked_add(u64::try_from(frac_ns).ok()?)
}

// ---------------------------------------------------------------------------------------
// Canonical text

/// A duration in the largest unit that shows it exactly (`1500ms`, `2m`, `0ns`).
pub fn duration_expr_text(ns: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    for (scale, unit) in UNITS {
        if ns != 0 && ns % scale == 0 {
            return format!("{}{unit}", ns / scale);
        }
    }
    format!("{ns}ns")
}

/// An instant as RFC 3339, without a fraction when it is whole seconds.
fn time_expr_text(ns: u64) -> String {
    let t = crate::units::rfc3339(ns);
    t.replace(".000000000Z", "Z")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join =
            |f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str, wrap: fn(&Expr) -> bool| {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    if wrap(e) {
                        write!(f, "({e})")?;
                    } else {
                        write!(f, "{e}")?;
                    }
                }
                Ok(())
            };
        match self {
            Expr::And(all) => join(f, all, " and ", |e| matches!(e, Expr::And(_) | Expr::Or(_))),
            Expr::Or(any) => join(f, any, " or ", |e| matches!(e, Expr::Or(_))),
            Expr::Not(e) => match **e {
                Expr::And(_) | Expr::Or(_) => write!(f, "not ({e})"),
                _ => write!(f, "not {e}"),
            },
            Expr::Test(t) => t.fmt(f),
        }
    }
}

/// A network in the form `Net::parse` reads back.
fn net_text(net: &Net) -> String {
    let v6 = std::net::Ipv6Addr::from(net.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if net.prefix >= 96 => format!("{v4}/{}", net.prefix - 96),
        _ => format!("{v6}/{}", net.prefix),
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Test::Host(side, addr) => write!(f, "{}host {addr}", side.prefix()),
            Test::Net(side, net) => write!(f, "{}net {}", side.prefix(), net_text(&net)),
            Test::Port(side, port) => write!(f, "{}port {port}", side.prefix()),
            Test::Proto(p) => f.write_str(p.as_str()),
            Test::IpVersion(v) => write!(f, "ip{v}"),
            Test::Vlan(None) => f.write_str("vlan"),
            Test::Vlan(Some(id)) => write!(f, "vlan {id}"),
            Test::Midstream => f.write_str("midstream"),
            Test::Reason(set) => {
                let names: Vec<&str> = CloseReason::ALL
                    .iter()
                    .filter(|r| set.contains(**r))
                    .map(|r| r.as_str())
                    .collect();
                write!(f, "reason={}", names.join(","))
            }
            Test::State(set) => {
                let names: Vec<&str> = ConnState::ALL
                    .iter()
                    .filter(|s| set.contains(**s))
                    .map(|s| s.as_str())
                    .collect();
                write!(f, "state={}", names.join(","))
            }
            Test::Flags(flags) => {
                let names: Vec<&str> = flags.names().collect();
                write!(f, "flags={}", names.join(","))
            }
            Test::History(h) => write!(f, "history={}", h.as_str()),
            Test::Point(kind) => write!(f, "point {}", kind.as_str()),
            Test::Compare(field, op, value) => {
                let v = match field.unit() {
                    Unit::Duration => duration_expr_text(value),
                    Unit::Time => time_expr_text(value),
                    Unit::Count => value.to_string(),
                };
                write!(f, "{}{}{v}", field.name(), op.as_str())
            }
            Test::Time(op, t) => write!(f, "time{}{}", op.as_str(), time_expr_text(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::point::{Dir, Point, Severity};
    use flowtable::record::{DirStats, Latency as Lat};
    use proptest::prelude::*;
    use std::borrow::Cow;

    const POINTS: [Point; 2] = [
        Point {
            t_ns: 0,
            kind: PointKind::Syn,
            dir: Dir::C2s,
            severity: Severity::Info,
            arg: 0,
        },
        Point {
            t_ns: 665_000,
            kind: PointKind::Rst,
            dir: Dir::S2c,
            severity: Severity::Error,
            arg: 0,
        },
    ];

    #[test]
    fn every_point_kind_state_and_close_reason_is_queryable() {
        for kind in PointKind::ALL {
            let e: Expr = format!("point={}", kind.as_str())
                .parse()
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let mut rec = rejected();
            rec.points = Cow::Owned(vec![Point { kind, ..POINTS[1] }]);
            assert!(e.matches(&rec), "{kind:?}");
            rec.points = Cow::Owned(Vec::new());
            assert!(!e.matches(&rec), "{kind:?}");
        }
        for state in ConnState::ALL {
            let e: Expr = format!("state={}", state.as_str())
                .parse()
                .unwrap_or_else(|e| panic!("{state:?}: {e}"));
            let rec = Record {
                conn_state: state,
                ..rejected()
            };
            assert!(e.matches(&rec), "{state:?}");
            let other = ConnState::ALL
                .into_iter()
                .find(|s| *s != state)
                .expect("another");
            assert!(
                !e.matches(&Record {
                    conn_state: other,
                    ..rejected()
                }),
                "{state:?}"
            );
        }
        for reason in CloseReason::ALL {
            let e: Expr = format!("reason={}", reason.as_str())
                .parse()
                .unwrap_or_else(|e| panic!("{reason:?}: {e}"));
            let rec = Record {
                close_reason: reason,
                ..rejected()
            };
            assert!(e.matches(&rec), "{reason:?}");
            let other = CloseReason::ALL
                .into_iter()
                .find(|r| *r != reason)
                .expect("another");
            assert!(
                !e.matches(&Record {
                    close_reason: other,
                    ..rejected()
                }),
                "{reason:?}"
            );
        }
    }

    /// A SYN to 192.0.2.1:445 answered by RST after 665 us, on VLAN 10.
    fn rejected() -> Record<'static> {
        let ip = |s: &str| Addr::from_ip(s.parse().expect("ip"));
        let mut history = History::default();
        history.push(b'S');
        history.push(b'r');
        Record {
            id: 7,
            worker: 1,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 4,
            client: Endpoint {
                ip: ip("10.1.2.3"),
                port: 50_000,
            },
            server: Endpoint {
                ip: ip("192.0.2.1"),
                port: 445,
            },
            midstream: false,
            vlans: Cow::Owned(vec![10]),
            start_ns: 1_704_067_200_000_000_000,
            end_ns: 1_704_067_200_000_665_000,
            c2s: DirStats {
                pkts: 1,
                bytes: 78,
                ..DirStats::default()
            },
            s2c: DirStats {
                pkts: 1,
                bytes: 60,
                retrans: 2,
                ..DirStats::default()
            },
            close_reason: CloseReason::TcpRstServer,
            conn_state: ConnState::REJ,
            history,
            flags: Flags(Flags::ERROR.0 | Flags::ALL.0),
            irregular_point: Some(1),
            latency: Lat {
                max_stall_ns: Some(665_000),
                ..Lat::default()
            },
            points: Cow::Borrowed(&POINTS),
            points_dropped: 0,
            icmp_type_code: 0,
        }
    }

    fn m(text: &str) -> bool {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .matches(&rejected())
    }

    fn err(text: &str) -> String {
        match Expr::parse(text) {
            Ok(e) => panic!("{text} parsed as {e:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn primitives_select_by_endpoint_protocol_and_vlan() {
        assert!(m("host 10.1.2.3") && m("host 192.0.2.1") && !m("host 10.1.2.4"));
        assert!(m("src host 10.1.2.3") && !m("dst host 10.1.2.3"));
        assert!(m("client 10.1.2.3") && m("server 192.0.2.1") && !m("server 10.1.2.3"));
        assert!(m("client=10.1.2.3") && m("server!=10.1.2.3") && m("host=192.0.2.1"));
        assert!(
            m("net 10.0.0.0/8") && m("server net 192.0.2.0/24") && !m("client net 192.0.2.0/24")
        );
        assert!(m("client 10.0.0.0/8") && m("net ::ffff:0:0/96") && !m("net 2001:db8::/32"));
        assert!(m("port 445") && m("port 50000") && m("server port 445") && !m("client port 445"));
        assert!(
            m("port=445") && !m("port!=445") && m("server.port<1024") && m("client.port>=49152")
        );
        assert!(m("tcp") && m("proto tcp") && m("proto=tcp") && !m("udp") && m("proto!=icmp"));
        assert!(m("ip") && m("ip4") && !m("ip6"));
        assert!(m("vlan") && m("vlan 10") && !m("vlan 11") && m("vlan=10"));
        assert!(!m("midstream") && m("midstream=false") && m("not midstream"));
    }

    #[test]
    fn fields_compare_with_their_units() {
        assert!(m("reason=tcp-rst-server") && !m("reason=tcp-rst-client"));
        assert!(m("reason=tcp-fin,tcp-rst-server") && m("reason!=tcp-fin,shutdown"));
        assert!(m("close_reason=TCP-RST-SERVER"));
        assert!(m("state=REJ") && m("conn_state=rej") && m("state=S0,REJ") && !m("state=none"));
        assert!(
            m("flags=error")
                && m("flag error")
                && m("flags=error,all")
                && !m("flags=error,latency")
        );
        assert!(m("flags!=latency") && !m("flags!=error"));
        assert!(m("history=S") && m("history=rS") && !m("history=s") && !m("history=Sh"));
        assert!(m("point rst") && m("point=syn") && !m("point tls-alert"));
        assert!(
            m("duration=665us") && m("duration>0.5ms") && m("duration<1ms") && !m("duration>=1s")
        );
        assert!(m("duration>0") && m("duration<=665000ns"));
        assert!(m("latency.max_stall>=665us") && m("latency.max_stall!=1s"));
        assert!(m("pkts=2") && m("c2s.pkts=1") && m("bytes=138") && m("s2c.bytes<61"));
        assert!(m("retrans=2") && m("s2c.retrans=2") && m("c2s.retrans=0") && m("zero_window=0"));
        assert!(m("id=7") && m("id>6") && m("worker=1"));
    }

    #[test]
    fn an_absent_latency_never_matches_a_comparison() {
        for text in [
            "latency.syn_synack>0",
            "latency.syn_synack>=0",
            "latency.syn_synack<1h",
            "latency.syn_synack=0",
            "latency.syn_synack!=0",
            "latency.ttfb!=5ms",
        ] {
            assert!(!m(text), "{text}");
        }
        assert!(m("not latency.syn_synack>=0"));
    }

    #[test]
    fn times_are_rfc3339_and_time_is_overlap() {
        // The record starts at 2024-01-01T00:00:00Z and lasts 665 us.
        assert!(m("start=2024-01-01T00:00:00Z") && m("start=2024-01-01"));
        assert!(m("start>=2024-01-01T01:00:00+01:00") && !m("start>2024-01-01T01:00:00+01:00"));
        assert!(m("start<2023-12-31T19:00:00.000001-05:00"));
        assert!(m("end>2024-01-01T00:00:00.000664Z") && !m("end>2024-01-01T00:00:00.000665Z"));
        assert!(m("time=2024-01-01T00:00:00.0005Z") && !m("time=2024-01-01T00:00:01Z"));
        assert!(m("time>=2024-01-01T00:00:00.000665Z") && !m("time>2024-01-01T00:00:00.000665Z"));
        assert!(m("time<2024-01-01T00:00:00.000001Z") && !m("time<2024-01-01T00:00:00Z"));
        assert!(m(
            "time>=2023-12-31T23:00:00Z and time<2024-01-01T01:00:00Z"
        ));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000_000)
        );
        assert_eq!(parse_time("2023-02-29"), None);
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_time("2024-01-01T24:00:00Z"), None);
        assert_eq!(parse_time("2024-01-01T10:00:00.1234567891Z"), None);
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration(".5us"), Ok(500));
        assert_eq!(parse_duration("2m"), Ok(120_000_000_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("100").is_err());
        assert!(parse_duration("5parsecs").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert_eq!(duration_expr_text(1_500_000_000), "1500ms");
        assert_eq!(duration_expr_text(0), "0ns");
    }

    #[test]
    fn not_binds_tighter_than_and_than_or() {
        assert!(m("udp or tcp and port 445"));
        assert!(!m("(udp or tcp) and port 80"));
        assert!(m("not udp and not port 80"));
        assert!(!m("not (tcp and port 445)"));
        assert!(m("! udp && (port 1 || port 445)"));
        assert_eq!(
            Expr::parse("a_b").map_err(|e| e.column),
            Err(1),
            "unknown words are errors"
        );
        let e = Expr::parse("tcp and (port 1 and (port 2 or port 3)) and udp").expect("parses");
        let Expr::And(all) = &e else { panic!("{e:?}") };
        assert_eq!(all.len(), 4, "nested ands are one level: {e:?}");
    }

    #[test]
    fn errors_point_at_the_token() {
        assert_eq!(
            err("reason=tcp-rst-server and latency.syn_synack>"),
            "expected a value after `>` at column 45"
        );
        assert_eq!(
            err("port 443 and duration > and tcp"),
            "expected a value after `>` at column 23"
        );
        assert_eq!(
            err("reason=tcp-rst"),
            "`reason`: `tcp-rst` is not a close reason (tcp-fin, tcp-rst-client, tcp-rst-server, \
             aged-out, icmp-error, resource-limit, tcp-reuse, shutdown) at column 8"
        );
        assert_eq!(
            err("tcp and resaon=shutdown"),
            "unknown field or primitive `resaon`; did you mean `reason`? at column 9"
        );
        assert_eq!(
            err("10.0.0.1"),
            "unknown field or primitive `10.0.0.1`; an address needs `host` before it (`host 10.0.0.1`) at column 1"
        );
        assert_eq!(err("(tcp and udp"), "`(` is never closed at column 1");
        assert_eq!(err("tcp)"), "`)` without a matching `(` at column 4");
        assert_eq!(
            err("tcp port 80"),
            "expected `and` or `or`, found `port` at column 5"
        );
        assert_eq!(
            err("tcp and"),
            "expected an expression, found the end at column 8"
        );
        assert_eq!(
            err("reason<shutdown"),
            "`<` does not apply to `reason`; use = or != at column 7"
        );
        assert_eq!(err("duration>100"), "`duration`: `100` is not a duration with a unit: ns, us, ms, s, m or h (`250ms`) at column 10");
        assert_eq!(
            err("tcp & udp"),
            "unexpected `&`; write `and`/`&&` or `or`/`||` at column 5"
        );
        assert_eq!(err("   "), "empty expression at column 1");
        assert_eq!(
            err("é and duration"),
            "unknown field or primitive `é` at column 1"
        );
        assert!(err("tcp and durat1on").ends_with("at column 9"));
        assert_eq!(
            err("tcp and duration"),
            "expected an operator (= != < <= > >=) after `duration` at column 9"
        );
        assert_eq!(
            err(&"(".repeat(100)),
            format!("nested more than {MAX_DEPTH} deep at column 65")
        );
    }

    #[test]
    fn canonical_text_parses_back() {
        for (text, canonical) in [
            ("src host 10.0.0.1", "client host 10.0.0.1"),
            ("dst 10.0.0.0/8", "server net 10.0.0.0/8"),
            ("port!=443", "not port 443"),
            ("proto udp || ICMP", "udp or icmp"),
            ("reason=shutdown,tcp-fin", "reason=tcp-fin,shutdown"),
            ("state=rej", "state=REJ"),
            (
                "flag error and not flags=latency",
                "flags=error and not flags=latency",
            ),
            ("duration>=1.5s", "duration>=1500ms"),
            ("duration>=90s", "duration>=90s"),
            ("duration>=120s", "duration>=2m"),
            ("start<2024-01-01", "start<2024-01-01T00:00:00Z"),
            (
                "time>=2024-01-01T00:00:00.25+01:00",
                "time>=2023-12-31T23:00:00.250000000Z",
            ),
            (
                "(tcp or udp) and (port 1 or port 2)",
                "(tcp or udp) and (port 1 or port 2)",
            ),
            ("not (tcp and port 1)", "not (tcp and port 1)"),
            ("tcp or (udp or icmp)", "tcp or udp or icmp"),
            ("midstream=false", "not midstream"),
            (
                "net 2001:db8::/32 and host ::1",
                "net 2001:db8::/32 and host ::1",
            ),
            ("vlan and vlan 4095", "vlan and vlan 4095"),
        ] {
            let e = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.to_string(), canonical, "{text}");
            assert_eq!(Expr::parse(canonical).as_ref(), Ok(&e), "{canonical}");
        }
    }

    /// Words and symbols of the language, valid and not, to build token soups from.
    const VOCABULARY: &[&str] = &[
        "(",
        ")",
        "and",
        "or",
        "not",
        "!",
        "&&",
        "||",
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "==",
        "host",
        "net",
        "port",
        "client",
        "server",
        "src",
        "dst",
        "proto",
        "tcp",
        "udp",
        "icmp",
        "ip6",
        "vlan",
        "midstream",
        "flag",
        "point",
        "reason",
        "state",
        "flags",
        "history",
        "duration",
        "latency.ttfb",
        "c2s.pkts",
        "bytes",
        "start",
        "time",
        "id",
        "10.0.0.1",
        "10.0.0.0/8",
        "::1",
        "443",
        "0",
        "tcp-rst-server",
        "REJ,S0",
        "error",
        "Sr",
        "100ms",
        "1.5s",
        "2024-01-01T00:00:00Z",
        "true",
        "zero-window",
        "&",
        "|",
        "",
        "é",
        "9999999999999999999999",
    ];

    /// Expressions that parse, built from the grammar.
    fn valid_expr() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "host 10.0.0.1",
            "client host ::1",
            "server net 10.0.0.0/8",
            "net 2001:db8::/32",
            "port 443",
            "client port 1",
            "server 192.0.2.1",
            "tcp",
            "udp",
            "proto icmp",
            "ip6",
            "vlan",
            "vlan 7",
            "midstream",
            "flag error",
            "point tls-alert",
            "reason=tcp-rst-server",
            "reason!=shutdown,aged-out",
            "state=REJ,S0",
            "state=none",
            "flags=error,latency",
            "history=Sr^",
            "duration>1.5s",
            "latency.syn_synack>=100ms",
            "latency.max_stall<2m",
            "c2s.pkts>10",
            "retrans!=0",
            "s2c.zero_window>=1",
            "start>=2024-01-01T00:00:00Z",
            "end<2024-01-01T00:00:00.5+02:00",
            "time=2024-05-01T10:00:00Z",
            "id<=5",
            "worker=0",
            "server.port<1024",
        ])
        .prop_map(str::to_string);
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
                inner.clone().prop_map(|a| format!("not {a}")),
                inner.prop_map(|a| format!("({a})")),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "(?s).{0,120}") {
            let _ = Expr::parse(&text);
        }

        #[test]
        fn never_panics_on_token_soup(words in prop::collection::vec(prop::sample::select(VOCABULARY), 0..16), spaces in prop::collection::vec(any::<bool>(), 16)) {
            let mut text = String::new();
            for (w, space) in words.iter().zip(&spaces) {
                text.push_str(w);
                if *space {
                    text.push(' ');
                }
            }
            if let Ok(e) = Expr::parse(&text) {
                let shown = e.to_string();
                prop_assert_eq!(Expr::parse(&shown), Ok(e.clone()), "{} -> {}", text, shown);
                let _ = e.matches(&rejected());
            }
        }

        #[test]
        fn canonical_text_round_trips(text in valid_expr()) {
            let e = Expr::parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
            let shown = e.to_string();
            prop_assert_eq!(Expr::parse(&shown), Ok(e.clone()), "{} -> {}", text, shown);
            prop_assert_eq!(Expr::parse(&shown).map(|e| e.to_string()), Ok(shown.clone()));
        }
    }
}
