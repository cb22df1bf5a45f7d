//! Reading records back: every forensic command goes through here. A log is its base file
//! and all rotated segments; damaged frames and undecodable records are reported (with
//! file and byte offset) and skipped, never fatal.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use flowtable::record::Record;
use recorder::reader::LogReader;

/// One item of a log: a record, or a place where the log is damaged (described).
pub type Item = std::result::Result<Record<'static>, String>;

/// The records of several logs in order: each log's segments in order, logs one after the
/// other. Streaming: one record in memory at a time.
pub struct Records {
    /// Logs still to read, the next one last.
    pending: Vec<PathBuf>,
    current: Option<LogReader>,
}

impl Records {
    /// Opens the first log now (so a missing file is an error here) and the others in turn.
    pub fn open(logs: &[PathBuf]) -> Result<Records> {
        let mut pending: Vec<PathBuf> = logs.iter().rev().cloned().collect();
        let current = match pending.pop() {
            Some(p) => Some(open_log(&p)?),
            None => bail!("no log given"),
        };
        Ok(Records { pending, current })
    }
}

fn open_log(path: &Path) -> Result<LogReader> {
    LogReader::open(path).with_context(|| format!("opening log {}", path.display()))
}

impl Iterator for Records {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            let reader = self.current.as_mut()?;
            match reader.next() {
                Some(Ok(frame)) => {
                    return Some(ring::codec::decode(&frame.payload).map_err(|e| {
                        format!(
                            "{}: byte {}: undecodable record: {e}",
                            frame.segment.display(),
                            frame.offset
                        )
                    }))
                }
                Some(Err(damage)) => return Some(Err(damage.to_string())),
                None => {
                    self.current = match self.pending.pop() {
                        Some(p) => match open_log(&p) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                self.current = None;
                                return Some(Err(format!("{e:#}")));
                            }
                        },
                        None => None,
                    };
                }
            }
        }
    }
}

/// A record named on the command line as `LOG:ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    pub log: PathBuf,
    pub id: u64,
}

impl FromStr for RecordRef {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<RecordRef, String> {
        let (log, id) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}`: expected LOG:ID"))?;
        let id = id
            .parse()
            .map_err(|_| format!("`{s}`: `{id}` is not a record id"))?;
        if log.is_empty() {
            return Err(format!("`{s}`: the log is missing"));
        }
        Ok(RecordRef {
            log: PathBuf::from(log),
            id,
        })
    }
}

impl RecordRef {
    /// Finds the record, reporting damage met on the way to `damage`.
    pub fn load(&self, mut damage: impl FnMut(&str)) -> Result<Record<'static>> {
        for item in Records::open(std::slice::from_ref(&self.log))? {
            match item {
                Ok(rec) if rec.id == self.id => return Ok(rec),
                Ok(_) => {}
                Err(d) => damage(&d),
            }
        }
        bail!("{}: no record with id {}", self.log.display(), self.id)
    }
}

/// Writes a command's output to stdout (a reader that went away, as `head` does, is not an
/// error) and gives its exit status: 1 when damage was reported on the way, else 0.
pub fn print_and_exit(text: &str, damaged: bool) -> Result<ExitCode> {
    if let Err(e) = io::stdout().lock().write_all(text.as_bytes()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(if damaged {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_refs() {
        let r: RecordRef = "/var/log/t.log:42".parse().expect("parses");
        assert_eq!(r.log, PathBuf::from("/var/log/t.log"));
        assert_eq!(r.id, 42);
        assert!("t.log".parse::<RecordRef>().is_err());
        assert!("t.log:x".parse::<RecordRef>().is_err());
        assert!(":5".parse::<RecordRef>().is_err());
    }
}
