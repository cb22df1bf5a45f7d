//! What goes over the control socket: one [`Request`] as a line of JSON, one [`Reply`], and
//! [`ask`], which sends the one and reads the other.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::watch::WatchCost;

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Add a watch (an expression of [`crate::control::watch`]), for a while or until deleted.
    WatchAdd {
        expr: String,
        for_ns: Option<u64>,
    },
    WatchList,
    WatchDel {
        id: u32,
    },
    /// The open connections, those matching `expr` if given; the first `limit` of them
    /// by id (none: all).
    Sessions {
        expr: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// One open connection with its tracking points so far.
    Session {
        id: u64,
    },
    /// Re-read the configuration file.
    Reload,
}

/// A watch as `watch list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchRow {
    pub id: u32,
    pub expr: String,
    pub added_ns: u64,
    pub until_ns: Option<u64>,
    /// What it cost each worker that answered (worker index, counts).
    pub costs: Vec<(usize, WatchCost)>,
}

/// An open connection as `sessions` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: u64,
    pub worker: u16,
    pub proto: String,
    pub client: String,
    pub server: String,
    pub state: String,
    pub history: String,
    /// Since its first packet, and since its latest one.
    pub age_ns: u64,
    pub idle_ns: u64,
    pub c2s_pkts: u64,
    pub c2s_bytes: u64,
    pub s2c_pkts: u64,
    pub s2c_bytes: u64,
    /// A watch matched at its start.
    pub user: bool,
    /// Its context's name.
    #[serde(default)]
    pub context: String,
}

/// The reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The request was refused or failed; nothing changed.
    Error {
        message: String,
    },
    /// The watches after the request, and what happened.
    Watches {
        message: String,
        watches: Vec<WatchRow>,
        workers: usize,
        answered: usize,
    },
    Sessions {
        sessions: Vec<SessionRow>,
        /// How many open connections matched (more than `sessions` holds past the limit).
        matching: usize,
        workers: usize,
        answered: usize,
    },
    /// One connection: `show`'s text block and JSON object of it as it is now.
    Session {
        text: String,
        json: Value,
    },
    Reloaded {
        message: String,
    },
}

/// Sends one request to the control socket at `path` and reads the reply.
pub fn ask(path: &Path, request: &Request) -> Result<Reply> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the control socket {} (is `conntrail run` running with this log?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut text = String::new();
    stream
        .take(MAX_REPLY)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the reply of {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} sent a reply that is not understood", path.display()))
}

/// Longest request accepted (bytes).
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// Longest reply read (bytes): a million sessions.
const MAX_REPLY: u64 = 1 << 30;
