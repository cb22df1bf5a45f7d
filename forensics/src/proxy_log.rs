//! Proxy logs of requests (Airlock Gateway conntrace messages, with an optional status and
//! termination from an access log): which front-end connection (client -> proxy) and which
//! back-end connection (proxy -> server) carried one request, as an Airlock Gateway logs it
//! in its `WR-SG-CONNTRACE` messages. `conntrail correlate` reads them with [`read_file`].
//!
//! # Accepted input
//!
//! A file is one of:
//! - JSON Lines: one JSON value per line (blank lines are ignored);
//! - a JSON array of messages (pretty-printed or not);
//! - an Elasticsearch search response, `{"took":..,"hits":{"total":..,"hits":[...]}}`, whose
//!   `hits.hits[]` are documents; several responses may follow one another (a scroll dump),
//!   and one per line is JSON Lines.
//!
//! A message is an object in its flat form or an Elasticsearch document whose `_source` is
//! that object (`{"_index":..,"_id":..,"_source":{...}}`). Its fields:
//!
//! | field | |
//! |---|---|
//! | `front_src_ip`, `front_src_port` | the client, as the proxy saw it |
//! | `front_dst_ip`, `front_dst_port` | the proxy's listening address |
//! | `back_src_ip`, `back_src_port` | the proxy's address towards the server |
//! | `back_dst_ip`, `back_dst_port` | the back-end server |
//! | `req_id`, `sess_id` | request and session identifiers (strings or numbers; optional) |
//! | `@timestamp` (or `timestamp`) | RFC 3339 (`2024-01-01T00:00:01.234Z`, an offset or none for UTC), or a number of milliseconds since the Unix epoch (Elasticsearch's `epoch_millis`); optional |
//! | `log_id`, `message_id` or `msg_id` | the message type, `WR-SG-CONNTRACE` |
//! | `status` | the HTTP status the proxy logged for the request (a number or a string of digits; optional; `-1`, `null`, `""` and `"-"` are none) |
//! | `termination` | the proxy's termination code, such as HAProxy's `sH--` (a string; optional) |
//!
//! Addresses are IPv4 or IPv6 (`[..]` brackets and a `%zone` are accepted); ports are numbers
//! or strings of digits. Every message that has any `front_`/`back_` address field is read as
//! a conntrace message whatever its type field says; others (access logs, ...) are skipped and
//! counted, except that a message whose type names `CONNTRACE` must have the fields. The four
//! `back_` fields may all be absent, `null`, `""` or `"-"` (no back-end connection was opened:
//! a request answered or refused by the proxy itself); the four `front_` ones are required.
//!
//! # Errors
//!
//! The input is untrusted: nothing here panics on it (a property test feeds arbitrary
//! bytes). A message with a bad field is reported as [`ConntraceError::Field`] with the file,
//! its place (`line 12`, or `record 40 (line 977)` for the 40th element of an array or of an
//! Elasticsearch response, counted from 1, at the line where it ends) and the field, and
//! reading goes on. A JSON syntax error loses one line of a JSON Lines file and the rest of
//! any other file ([`ConntraceError::Syntax`]). Only I/O errors stop [`read_file`].
//!
//! Memory: one message at a time. An array or an Elasticsearch response is read element by
//! element, never as a whole; a JSON Lines line is held whole (at most [`MAX_LINE_BYTES`]).
//!
//! ```no_run
//! use forensics::proxy_log::{read_file, Event};
//!
//! let summary = read_file("conntrace.jsonl".as_ref(), |event| match event {
//!     Event::Message(m) => println!("{:?}: {} -> {}", m.req_id, m.front.client, m.front.server),
//!     Event::Invalid(e) => eprintln!("{e}"),
//! })?;
//! println!("{} messages, {} other messages skipped", summary.messages, summary.skipped);
//! # Ok::<(), forensics::proxy_log::ConntraceError>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::rc::Rc;

use crate::units::{days_from_civil, days_in_month};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The longest JSON Lines line read; a longer one is reported and skipped.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// The fields that make a message a conntrace message.
const LEG_FIELDS: [&str; 8] = [
    "front_src_ip",
    "front_src_port",
    "front_dst_ip",
    "front_dst_port",
    "back_src_ip",
    "back_src_port",
    "back_dst_ip",
    "back_dst_port",
];

/// Fields that may name the message type.
const TYPE_FIELDS: [&str; 3] = ["log_id", "message_id", "msg_id"];

/// One connection of a request: `client` opened it to `server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leg {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One conntrace message: the connections that carried one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub req_id: Option<String>,
    pub sess_id: Option<String>,
    /// `@timestamp`, ns since the Unix epoch.
    pub timestamp_ns: Option<u64>,
    /// Client -> proxy.
    pub front: Leg,
    /// Proxy -> server; `None` when the proxy opened no back-end connection.
    pub back: Option<Leg>,
    /// The HTTP status the proxy logged, when the message carries one.
    pub status: Option<i64>,
    /// The proxy's termination code (HAProxy's `sH--`), when the message carries one.
    pub termination: Option<String>,
    /// Where the message is: `FILE line 12` or `FILE record 40 (line 977)`.
    pub at: Place,
}

/// A place in a conntrace file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    /// The line (from 1) where the message ends.
    pub line: u64,
    /// For elements of an array or hits of an Elasticsearch response: which one, from 1.
    pub record: Option<u64>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(r) => write!(f, "{} record {r} (line {})", self.file, self.line),
            None => write!(f, "{} line {}", self.file, self.line),
        }
    }
}

/// What went wrong reading conntrace messages.
#[derive(Debug, thiserror::Error)]
pub enum ConntraceError {
    /// The file cannot be opened or read.
    #[error("{file}: {error}")]
    Io {
        file: String,
        /// What the OS said (in the message, so not a `source`).
        error: io::Error,
    },
    /// Not JSON at this place (and, in a file that is not JSON Lines, nothing after it read).
    #[error("{at}: not JSON: {problem}")]
    Syntax { at: Place, problem: String },
    /// A message with a missing or malformed field; the message is skipped.
    #[error("{at}: field `{field}`: {problem}")]
    Field {
        at: Place,
        field: String,
        problem: String,
    },
}

/// One thing found in a conntrace file, in file order.
#[derive(Debug)]
pub enum Event {
    Message(Message),
    /// A message or a part of the file that could not be read; reading goes on after it.
    Invalid(ConntraceError),
}

/// What [`read_file`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// Conntrace messages delivered.
    pub messages: u64,
    /// Values that are not conntrace messages (other message types, non-objects).
    pub skipped: u64,
    /// Invalid messages and syntax errors reported.
    pub invalid: u64,
}

/// Reads the conntrace messages of a file in order, handing each to `each`.
///
/// Errors: only when the file cannot be opened or read; everything wrong inside it is an
/// [`Event::Invalid`].
pub fn read_file(path: &Path, each: impl FnMut(Event)) -> Result<ReadSummary, ConntraceError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|error| ConntraceError::Io {
        file: name.clone(),
        error,
    })?;
    read_from(BufReader::with_capacity(1 << 16, file), &name, each)
}

/// [`read_file`] over any reader; `name` is the file name errors carry.
pub fn read_from(
    reader: impl BufRead,
    name: &str,
    mut each: impl FnMut(Event),
) -> Result<ReadSummary, ConntraceError> {
    let mut summary = ReadSummary::default();
    let mut deliver = |found: Found| match found {
        Found::Value(v, at) => match message_of(&v, &at) {
            Ok(Some(m)) => {
                summary.messages += 1;
                each(Event::Message(m));
            }
            Ok(None) => summary.skipped += 1,
            Err(e) => {
                summary.invalid += 1;
                each(Event::Invalid(e));
            }
        },
        Found::Syntax(e) => {
            summary.invalid += 1;
            each(Event::Invalid(e));
        }
    };
    let io_err = |error| ConntraceError::Io {
        file: name.to_string(),
        error,
    };
    let mut input = Counted::new(reader, 0);
    input.skip_bom().map_err(io_err)?;
    match input.peek_non_ws().map_err(io_err)? {
        None => {}
        Some(b'{') => {
            // JSON Lines, unless the first object goes on over the next lines.
            let first_no = input.line() + 1;
            let mut line = Vec::new();
            read_line(&mut input, &mut line).map_err(io_err)?;
            let complete = !matches!(
                serde_json::from_slice::<IgnoredAny>(line.trim_ascii()),
                Err(e) if e.is_eof()
            );
            if complete {
                lines(input, first_no, line, name, &mut deliver).map_err(io_err)?;
            } else {
                let rest = Cursor::new(line).chain(input.inner);
                document(Counted::new(rest, first_no - 1), name, &mut deliver).map_err(io_err)?;
            }
        }
        Some(_) => document(input, name, &mut deliver).map_err(io_err)?,
    }
    Ok(summary)
}

/// What the parsing layer hands to [`read_from`]: a value with its place, or a syntax error.
enum Found {
    Value(Value, Place),
    Syntax(ConntraceError),
}

/// JSON Lines from the current position; `first` is the first line, already read, whose
/// number is `first_no`.
fn lines<R: BufRead>(
    mut input: Counted<R>,
    first_no: u64,
    first: Vec<u8>,
    name: &str,
    deliver: &mut dyn FnMut(Found),
) -> io::Result<()> {
    let mut line = first;
    let mut line_no = first_no;
    loop {
        let text = line.trim_ascii();
        if line.len() > MAX_LINE_BYTES {
            deliver(Found::Syntax(ConntraceError::Syntax {
                at: place(name, line_no, None),
                problem: format!("line longer than {MAX_LINE_BYTES} bytes; skipped"),
            }));
        } else if !text.is_empty() {
            let mut de = serde_json::Deserializer::from_slice(text);
            let mut sink = Sink::new(name, Rc::new(Cell::new(line_no - 1)), deliver);
            let read = TopSeed { sink: &mut sink }
                .deserialize(&mut de)
                .and_then(|()| de.end());
            if let Err(e) = read {
                deliver(Found::Syntax(ConntraceError::Syntax {
                    at: place(name, line_no, None),
                    problem: format!("{} at column {}", bare(&e), e.column()),
                }));
            }
        }
        line_no = input.line() + 1;
        if read_line(&mut input, &mut line)? == 0 {
            return Ok(());
        }
    }
}

/// A JSON document (one or more top-level values one after the other), streamed.
fn document<R: BufRead>(
    mut input: Counted<R>,
    name: &str,
    deliver: &mut dyn FnMut(Found),
) -> io::Result<()> {
    let newlines = input.newlines.clone();
    let mut sink = Sink::new(name, newlines, deliver);
    while input.peek_non_ws()?.is_some() {
        let start_line = input.line() + 1;
        let mut de = serde_json::Deserializer::from_reader(&mut input);
        if let Err(e) = (TopSeed { sink: &mut sink }).deserialize(&mut de) {
            if e.is_io() {
                return Err(io::Error::other(e.to_string()));
            }
            let line = start_line + (e.line() as u64).saturating_sub(1);
            (sink.deliver)(Found::Syntax(ConntraceError::Syntax {
                at: place(name, line, None),
                problem: format!("{}; the rest of the file is not read", bare(&e)),
            }));
            return Ok(());
        }
    }
    Ok(())
}

/// A JSON error's message without serde_json's `at line L column C`.
fn bare(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rsplit_once(" at line ") {
        Some((msg, _)) => msg.to_string(),
        None => s,
    }
}

fn place(name: &str, line: u64, record: Option<u64>) -> Place {
    Place {
        file: name.to_string(),
        line,
        record,
    }
}

/// Reads one line (its `\n` included) into `out`, up to [`MAX_LINE_BYTES`] + 1 bytes; the
/// rest of a longer line is consumed and dropped. Returns the bytes consumed.
fn read_line<R: BufRead>(input: &mut Counted<R>, out: &mut Vec<u8>) -> io::Result<usize> {
    out.clear();
    let limit = MAX_LINE_BYTES as u64 + 1;
    let mut n = (&mut input.inner).take(limit).read_until(b'\n', out)?;
    if out.last() == Some(&b'\n') {
        input.count_newline();
    } else if out.len() as u64 == limit {
        // Drop the rest of the line.
        loop {
            let buf = input.inner.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    input.inner.consume(i + 1);
                    n += i + 1;
                    input.count_newline();
                    break;
                }
                None => {
                    let len = buf.len();
                    input.inner.consume(len);
                    n += len;
                }
            }
        }
    }
    Ok(n)
}

/// A reader that counts the newlines it has handed out (shared with the [`Sink`], which
/// reads the count while the JSON parser owns the reader).
struct Counted<R> {
    inner: R,
    newlines: Rc<Cell<u64>>,
}

impl<R: BufRead> Counted<R> {
    fn new(inner: R, newlines: u64) -> Counted<R> {
        Counted {
            inner,
            newlines: Rc::new(Cell::new(newlines)),
        }
    }

    /// Newlines consumed so far (the current line is this plus one).
    fn line(&self) -> u64 {
        self.newlines.get()
    }

    fn count_newline(&self) {
        self.newlines.set(self.newlines.get() + 1);
    }

    /// Skips a UTF-8 byte-order mark at the start.
    fn skip_bom(&mut self) -> io::Result<()> {
        const BOM: &[u8] = b"\xef\xbb\xbf";
        if self.inner.fill_buf()?.starts_with(BOM) {
            self.inner.consume(BOM.len());
        }
        Ok(())
    }

    /// Skips whitespace; the next byte, left unread, or `None` at the end.
    fn peek_non_ws(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let ws = buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(buf.len());
            let nl = buf
                .get(..ws)
                .map_or(0, |s| s.iter().filter(|&&b| b == b'\n').count());
            let next = buf.get(ws).copied();
            self.inner.consume(ws);
            self.newlines.set(self.newlines.get() + nl as u64);
            if next.is_some() {
                return Ok(next);
            }
        }
    }
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let nl = buf
            .get(..n)
            .map_or(0, |s| s.iter().filter(|&&b| b == b'\n').count());
        self.newlines.set(self.newlines.get() + nl as u64);
        Ok(n)
    }
}

/// Where parsed values go, with their place.
struct Sink<'a> {
    file: &'a str,
    newlines: Rc<Cell<u64>>,
    records: u64,
    deliver: &'a mut dyn FnMut(Found),
}

impl<'a> Sink<'a> {
    fn new(file: &'a str, newlines: Rc<Cell<u64>>, deliver: &'a mut dyn FnMut(Found)) -> Sink<'a> {
        Sink {
            file,
            newlines,
            records: 0,
            deliver,
        }
    }

    fn here(&self, record: Option<u64>) -> Place {
        place(self.file, self.newlines.get() + 1, record)
    }

    /// A value that stands alone (a line, a top-level object).
    fn top(&mut self, v: Value) {
        let at = self.here(None);
        (self.deliver)(Found::Value(v, at));
    }

    /// An element of an array or of an Elasticsearch response's hits.
    fn element(&mut self, v: Value) {
        self.records += 1;
        let at = self.here(Some(self.records));
        (self.deliver)(Found::Value(v, at));
    }
}

/// Streams one top-level JSON value: an array's elements and an Elasticsearch response's
/// hits one by one, any other value whole.
struct TopSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a conntrace message, an array of them or an Elasticsearch response")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            self.sink.element(v);
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut fields = Map::new();
        let mut response = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "hits" && !response {
                if map.next_value_seed(HitsSeed { sink: self.sink })? {
                    response = true;
                }
            } else {
                let v = map.next_value::<Value>()?;
                if !response {
                    fields.insert(key, v);
                }
            }
        }
        if !response {
            self.sink.top(Value::Object(fields));
        }
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.sink.top(Value::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.sink.top(Value::from(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.sink.top(Value::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.sink.top(Value::from(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.sink.top(Value::from(v));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.sink.top(Value::Null);
        Ok(())
    }
}

/// The value of a top-level `hits` key: true when it was an Elasticsearch `hits` object
/// with a `hits` array, whose elements went to the sink.
struct HitsSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for HitsSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HitsSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Elasticsearch hits")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "hits" && !found {
                found = map.next_value_seed(HitListSeed {
                    sink: &mut *self.sink,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// `hits.hits`: true when it was an array, whose elements went to the sink.
struct HitListSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for HitListSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HitListSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of Elasticsearch hits")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            self.sink.element(v);
        }
        Ok(true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// The conntrace message in a value: `Ok(None)` for a value that is not one.
fn message_of(v: &Value, at: &Place) -> Result<Option<Message>, ConntraceError> {
    let field_err = |field: &str, problem: String| ConntraceError::Field {
        at: at.clone(),
        field: field.to_string(),
        problem,
    };
    let Some(obj) = v.as_object() else {
        return Ok(None);
    };
    let obj = match obj.get("_source") {
        Some(Value::Object(source)) => source,
        Some(other) => {
            return Err(field_err(
                "_source",
                format!("{} is not an object", short(other)),
            ))
        }
        None => obj,
    };
    let is_conntrace_type = TYPE_FIELDS.iter().any(|f| {
        obj.get(*f)
            .and_then(Value::as_str)
            .is_some_and(|t| t.to_ascii_uppercase().contains("CONNTRACE"))
    });
    if !is_conntrace_type && !LEG_FIELDS.iter().any(|f| obj.contains_key(*f)) {
        return Ok(None);
    }
    let front = leg(obj, "front")
        .map_err(|(f, p)| field_err(&f, p))?
        .ok_or_else(|| field_err("front_src_ip", "missing".to_string()))?;
    let back = leg(obj, "back").map_err(|(f, p)| field_err(&f, p))?;
    let req_id = id_field(obj, "req_id").map_err(|p| field_err("req_id", p))?;
    let sess_id = id_field(obj, "sess_id").map_err(|p| field_err("sess_id", p))?;
    let (ts_field, ts) = match (obj.get("@timestamp"), obj.get("timestamp")) {
        (Some(t), _) => ("@timestamp", Some(t)),
        (None, Some(t)) => ("timestamp", Some(t)),
        (None, None) => ("@timestamp", None),
    };
    let timestamp_ns = match ts {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_rfc3339(s).ok_or_else(|| {
            field_err(
                ts_field,
                format!(
                    "{} is not an RFC 3339 time",
                    short(&Value::from(s.as_str()))
                ),
            )
        })?),
        Some(Value::Number(n)) => Some(
            n.as_f64()
                .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1.8e13)
                .map(|ms| (ms * 1e6) as u64)
                .ok_or_else(|| {
                    field_err(
                        ts_field,
                        format!("{n} is not a time in milliseconds since the epoch"),
                    )
                })?,
        ),
        Some(other) => {
            return Err(field_err(
                ts_field,
                format!("{} is not a time", short(other)),
            ))
        }
    };
    let status = match obj.get("status").filter(|v| !is_blank(v)) {
        None => None,
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            };
            match n {
                Some(-1) => None,
                Some(n) if (100..=999).contains(&n) => Some(n),
                _ => {
                    return Err(field_err(
                        "status",
                        format!("{} is not an HTTP status", short(v)),
                    ))
                }
            }
        }
    };
    let termination = match obj.get("termination").filter(|v| !is_blank(v)) {
        None => None,
        Some(Value::String(t)) if t.len() <= 16 => Some(t.trim().to_string()),
        Some(v) => {
            return Err(field_err(
                "termination",
                format!("{} is not a termination code", short(v)),
            ))
        }
    };
    Ok(Some(Message {
        req_id,
        sess_id,
        timestamp_ns,
        front,
        back,
        status,
        termination,
        at: at.clone(),
    }))
}

/// The leg `prefix` (`front` or `back`): `Ok(None)` when all four fields are blank (absent,
/// `null`, `""` or `"-"`); `Err((field, problem))` when some are and others not, or one is
/// malformed.
fn leg(obj: &Map<String, Value>, prefix: &str) -> Result<Option<Leg>, (String, String)> {
    let names = ["src_ip", "src_port", "dst_ip", "dst_port"].map(|f| format!("{prefix}_{f}"));
    let values = names.clone().map(|n| obj.get(&n).filter(|v| !is_blank(v)));
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    if let Some(i) = values.iter().position(Option::is_none) {
        let name = names.get(i).cloned().unwrap_or_default();
        return Err((name, "missing".to_string()));
    }
    let [src_ip, src_port, dst_ip, dst_port] = values;
    let [n_src_ip, n_src_port, n_dst_ip, n_dst_port] = names;
    let src_ip = ip_of(src_ip).map_err(|p| (n_src_ip, p))?;
    let src_port = port_of(src_port).map_err(|p| (n_src_port, p))?;
    let dst_ip = ip_of(dst_ip).map_err(|p| (n_dst_ip, p))?;
    let dst_port = port_of(dst_port).map_err(|p| (n_dst_port, p))?;
    Ok(Some(Leg {
        client: SocketAddr::new(src_ip, src_port),
        server: SocketAddr::new(dst_ip, dst_port),
    }))
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => matches!(s.trim(), "" | "-"),
        _ => false,
    }
}

fn ip_of(v: Option<&Value>) -> Result<IpAddr, String> {
    let Some(v) = v else {
        return Err("missing".to_string());
    };
    let Some(s) = v.as_str() else {
        return Err(format!("{} is not an IP address", short(v)));
    };
    let t = s.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t);
    let t = t.split_once('%').map_or(t, |(a, _zone)| a);
    t.parse::<IpAddr>()
        .map_err(|_| format!("{} is not an IP address", short(v)))
}

fn port_of(v: Option<&Value>) -> Result<u16, String> {
    let Some(v) = v else {
        return Err("missing".to_string());
    };
    let parsed = match v {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.trim().parse::<u16>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{} is not a port", short(v)))
}

/// A request or session id: a string or a number; absent, `null`, `""` and `"-"` are none.
fn id_field(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) if is_blank(v) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!("{} is not an id", short(other))),
    }
}

/// A value for an error message: its JSON, cut to 40 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// An RFC 3339 time (`2024-01-01T00:00:01.234Z`, `...+02:00`; a space for the `T`; no zone
/// is UTC) in ns since the Unix epoch; `None` when malformed or before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut frac_ns = 0i64;
    if sep(at, b".,") {
        at += 1;
        let digits = b
            .get(at..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        for i in 0..9 {
            let d = if i < digits { num(at + i, 1)? } else { 0 };
            frac_ns = frac_ns * 10 + d;
        }
        at += digits;
    }
    let offset_s = match b.get(at..)? {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                2 => (num(at + 1, 2)?, 0),
                4 => (num(at + 1, 2)?, num(at + 3, 2)?),
                5 if rest.get(2) == Some(&b':') => (num(at + 1, 2)?, num(at + 4, 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let s = h * 3600 + m * 60;
            if *sign == b'+' {
                s
            } else {
                -s
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(frac_ns).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(text: &str) -> (ReadSummary, Vec<Message>, Vec<String>) {
        let mut messages = Vec::new();
        let mut errors = Vec::new();
        let summary = read_from(text.as_bytes(), "c.json", |e| match e {
            Event::Message(m) => messages.push(m),
            Event::Invalid(e) => errors.push(e.to_string()),
        })
        .expect("no I/O error");
        (summary, messages, errors)
    }

    const FLAT: &str = r#"{"@timestamp":"2024-01-01T00:00:01.250Z","log_id":"WR-SG-CONNTRACE","req_id":"r1","sess_id":"s1","front_src_ip":"10.1.0.7","front_src_port":40001,"front_dst_ip":"10.0.0.1","front_dst_port":"443","back_src_ip":"172.16.0.1","back_src_port":"50123","back_dst_ip":"172.16.1.3","back_dst_port":8080}"#;
    const DOC: &str = r#"{"_index":"airlock-2024.01.01","_id":"x","_source":{"@timestamp":"2024-01-01T01:00:01.5+01:00","message_id":"WR-SG-CONNTRACE","req_id":2,"front_src_ip":"fd00::10:7","front_src_port":"40002","front_dst_ip":"[fd00::1]","front_dst_port":443,"back_src_ip":"172.16.0.1","back_src_port":50124,"back_dst_ip":"172.16.1.4","back_dst_port":"8080"}}"#;
    const OTHER: &str = r#"{"log_id":"WR-SG-SUMMARY","req_id":"r1","status":200}"#;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn json_lines_of_both_forms() {
        let text = format!("{FLAT}\n\n{OTHER}\n{DOC}\n");
        let (summary, m, errors) = read(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            summary,
            ReadSummary {
                messages: 2,
                skipped: 1,
                invalid: 0
            }
        );
        assert_eq!(m[0].req_id.as_deref(), Some("r1"));
        assert_eq!(m[0].sess_id.as_deref(), Some("s1"));
        assert_eq!(m[0].front.client, sa("10.1.0.7:40001"));
        assert_eq!(m[0].front.server, sa("10.0.0.1:443"));
        let back = m[0].back.expect("back leg");
        assert_eq!(back.client, sa("172.16.0.1:50123"));
        assert_eq!(back.server, sa("172.16.1.3:8080"));
        assert_eq!(m[0].timestamp_ns, Some(1_704_067_201_250_000_000));
        assert_eq!(m[0].at.to_string(), "c.json line 1");
        // The document form, a numeric id, an IPv6 client, bracketed address, an offset.
        assert_eq!(m[1].req_id.as_deref(), Some("2"));
        assert_eq!(m[1].sess_id, None);
        assert_eq!(m[1].front.client, sa("[fd00::10:7]:40002"));
        assert_eq!(m[1].front.server, sa("[fd00::1]:443"));
        assert_eq!(m[1].timestamp_ns, Some(1_704_067_201_500_000_000));
        assert_eq!(m[1].at.to_string(), "c.json line 4");
    }

    #[test]
    fn arrays_and_elasticsearch_responses() {
        let array = format!("[\n  {FLAT},\n  {OTHER},\n  {DOC}\n]\n");
        let (summary, m, errors) = read(&array);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((summary.messages, summary.skipped), (2, 1));
        assert_eq!(m[0].at.to_string(), "c.json record 1 (line 2)");
        assert_eq!(m[1].at.to_string(), "c.json record 3 (line 4)");

        let response = format!(
            "{{\n \"took\": 3,\n \"timed_out\": false,\n \"hits\": {{\n  \"total\": {{\"value\": 2}},\n  \"hits\": [\n   {DOC},\n   {DOC}\n  ]\n }}\n}}\n"
        );
        let (summary, m, errors) = read(&response);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((summary.messages, summary.skipped), (2, 0));
        assert_eq!(m[1].at.to_string(), "c.json record 2 (line 8)");

        // One response per line (curl output), twice.
        let one_line = format!("{{\"took\":1,\"hits\":{{\"hits\":[{DOC}]}}}}");
        let (summary, _, errors) = read(&format!("{one_line}\n{one_line}\n"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(summary.messages, 2);
    }

    #[test]
    fn a_message_without_a_back_end() {
        let text = r#"{"req_id":"r9","front_src_ip":"10.1.0.9","front_src_port":1,"front_dst_ip":"10.0.0.1","front_dst_port":443,"back_src_ip":"-","back_src_port":"","back_dst_ip":null}"#;
        let (_, m, errors) = read(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(m[0].back, None);
        assert_eq!(m[0].timestamp_ns, None);
    }

    #[test]
    fn the_proxys_status_and_termination_are_read_when_given() {
        let with = |fields: &str| FLAT.replacen('{', &format!("{{{fields},"), 1);
        let text = [
            with(r#""status":504,"termination":"sH--""#),
            with(r#""status":"499""#),
            with(r#""status":-1,"termination":"CD--""#),
            with(r#""status":"-","termination":null"#),
            FLAT.to_string(),
            with(r#""status":"ok""#),
            with(r#""status":42"#),
            with(r#""termination":7"#),
        ]
        .join("\n");
        let (_, m, errors) = read(&text);
        let got: Vec<(Option<i64>, Option<&str>)> = m
            .iter()
            .map(|m| (m.status, m.termination.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(504), Some("sH--")),
                (Some(499), None),
                (None, Some("CD--")),
                (None, None),
                (None, None),
            ]
        );
        assert_eq!(
            errors,
            [
                "c.json line 6: field `status`: \"ok\" is not an HTTP status",
                "c.json line 7: field `status`: 42 is not an HTTP status",
                "c.json line 8: field `termination`: 7 is not a termination code",
            ]
        );
    }

    #[test]
    fn bad_fields_name_the_line_and_the_field() {
        let bad_port = FLAT.replace("\"443\"", "\"44x\"");
        let bad_ip = DOC.replace("172.16.1.4", "172.16.1.400");
        let missing = FLAT.replace("\"back_dst_port\":8080", "\"x\":1");
        let bad_time = FLAT.replace("2024-01-01T00:00:01.250Z", "yesterday");
        let typed = r#"{"log_id":"WR-SG-CONNTRACE","req_id":"r5"}"#;
        let text =
            format!("{bad_port}\n{bad_ip}\n{missing}\n{{\"a\":\n{bad_time}\n{typed}\n{FLAT}\n");
        let (summary, m, errors) = read(&text);
        assert_eq!(summary.messages, 1, "{errors:?}");
        assert_eq!(m[0].at.line, 7);
        assert_eq!(summary.invalid, 6);
        let expect = [
            "c.json line 1: field `front_dst_port`: \"44x\" is not a port",
            "c.json line 2: field `back_dst_ip`: \"172.16.1.400\" is not an IP address",
            "c.json line 3: field `back_dst_port`: missing",
            "c.json line 5: field `@timestamp`: \"yesterday\" is not an RFC 3339 time",
            "c.json line 6: field `front_src_ip`: missing",
        ];
        for e in expect {
            assert!(errors.iter().any(|x| x == e), "{e} not in {errors:?}");
        }
        assert!(
            errors
                .iter()
                .any(|x| x.starts_with("c.json line 4: not JSON")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_broken_array_reports_where_and_keeps_what_came_before() {
        let text = format!("[\n{FLAT},\n{FLAT},\n{{\"front_src_ip\": ]\n");
        let (summary, m, errors) = read(&text);
        assert_eq!(m.len(), 2);
        assert_eq!(summary.invalid, 1);
        assert!(
            errors[0].starts_with("c.json line 4: not JSON"),
            "{errors:?}"
        );
        let (summary, _, errors) = read("\u{feff}  ");
        assert_eq!(summary, ReadSummary::default());
        assert!(errors.is_empty());
        let (_, _, errors) = read("garbage");
        assert!(
            errors[0].starts_with("c.json line 1: not JSON"),
            "{errors:?}"
        );
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-01-01T00:00:00.000000001Z"),
            Some(1_704_067_200_000_000_001)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29 12:00:00.5-0130"),
            parse_rfc3339("2024-02-29T13:30:00.5Z")
        );
        assert_eq!(
            parse_rfc3339("2024-01-01T00:00:00"),
            Some(1_704_067_200_000_000_000)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00+1",
            "2024-1-01T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_from(&bytes[..], "fuzz", |_| {});
        }

        #[test]
        fn json_like_text_never_panics(text in "[\\[\\]{}:,\" \n0-9a-z_@.-]{0,300}") {
            let _ = read_from(text.as_bytes(), "fuzz", |_| {});
        }

        #[test]
        fn mangled_messages_never_panic(cut in 0usize..400, junk in "[\\[\\]{}:,\" \n0-9]{0,8}") {
            let text = format!("{FLAT}\n{DOC}");
            let at = cut.min(text.len());
            let mangled = format!("{}{junk}{}", &text[..at], &text[at..]);
            let _ = read_from(mangled.as_bytes(), "fuzz", |_| {});
        }
    }
}
