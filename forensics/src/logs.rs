//! Reading records back: every forensic command goes through here. A log is its base file
//! and all rotated segments; damaged frames and undecodable records are reported (with
//! file and byte offset) and skipped, never fatal.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Result};
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

/// Opens the log at `path`; a capture given where a log is wanted is refused with what to
/// do instead.
fn open_log(path: &Path) -> Result<LogReader> {
    if let Some(kind) = crate::evidence::capture_kind(path) {
        bail!(
            "{} is {kind}, not a conntrail log: replay it first (`conntrail replay --log {}.log \
             {}`), then read the log",
            path.display(),
            path.file_stem()
                .unwrap_or(path.as_os_str())
                .to_string_lossy(),
            path.display()
        );
    }
    Ok(LogReader::open(path)?)
}

impl Iterator for Records {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            let reader = self.current.as_mut()?;
            match reader.next() {
                Some(Ok(frame)) => {
                    return Some(
                        flowtable::record::codec::decode(&frame.payload).map_err(|e| {
                            format!(
                                "{}: byte {}: undecodable record: {e}",
                                frame.segment.display(),
                                frame.offset
                            )
                        }),
                    )
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

/// `LOG:ID` split into the log and the id, when `arg` is of that form and is not itself
/// the name of a file (a log may have a `:` in its name).
pub fn split_record_ref(arg: &Path) -> Option<(PathBuf, u64)> {
    if std::fs::symlink_metadata(arg).is_ok() {
        return None;
    }
    let text = arg.to_str()?;
    let (log, id) = text.rsplit_once(':')?;
    if log.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((PathBuf::from(log), id.parse().ok()?))
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
pub fn print_and_exit(text: &str, damaged: &crate::exit::Damaged) -> Result<ExitCode> {
    if let Err(e) = io::stdout().lock().write_all(text.as_bytes()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(damaged.status())
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

    #[test]
    fn a_log_argument_splits_as_log_id_only_when_it_is_no_file() {
        let dir = std::env::temp_dir().join(format!("conntrail-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let odd = dir.join("t.log:7");
        std::fs::write(&odd, b"").expect("file");
        let missing = dir.join("t.log:42");
        assert_eq!(split_record_ref(&missing), Some((dir.join("t.log"), 42)));
        assert_eq!(split_record_ref(&odd), None);
        assert_eq!(split_record_ref(Path::new("t.log:x")), None);
        assert_eq!(split_record_ref(Path::new(":3")), None);
        assert_eq!(split_record_ref(Path::new("t.log")), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
