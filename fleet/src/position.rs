//! The export position: how far into a log the stream has acknowledged every record, kept in
//! `LOG.export.json` so an exporter started later (after an outage, a crash, or by
//! `conntrail export`) goes on from there.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the position file's layout.
pub const POSITION_VERSION: u32 = 1;

/// A place in a log: every frame before it has been acknowledged by the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Layout version ([`POSITION_VERSION`]).
    pub version: u32,
    /// Creation time of the log's base file: a position of an older log at the same path is
    /// not used.
    pub log_created_ns: u64,
    /// The host name the log is exported under (fixed by its first export, so the records of
    /// one log never end up under two names).
    pub host: String,
    /// Segment of the next frame to send (0 for the base file).
    pub segment: u32,
    /// Byte offset of the next frame in that segment; 0: the segment's first frame.
    pub offset: u64,
    /// Frames of this log acknowledged so far (sent from here or by earlier runs).
    pub records: u64,
    /// Id of the last record acknowledged, if any.
    pub last_record_id: Option<u64>,
}

impl Position {
    /// The start of the log created at `log_created_ns`, exported under `host`.
    pub fn start(log_created_ns: u64, host: &str) -> Position {
        Position {
            version: POSITION_VERSION,
            log_created_ns,
            host: host.to_string(),
            segment: 0,
            offset: 0,
            records: 0,
            last_record_id: None,
        }
    }

    /// The position saved for the log created at `log_created_ns`, if `path` holds one;
    /// a missing, unreadable or foreign file yields `None` (and a warning when it exists).
    pub fn load(path: &Path, log_created_ns: u64) -> Option<Position> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!(
                    "export position {}: {e}; exporting from the start",
                    path.display()
                );
                return None;
            }
        };
        match serde_json::from_slice::<Position>(&text) {
            Ok(p) if p.version == POSITION_VERSION && p.log_created_ns == log_created_ns => Some(p),
            Ok(_) => None,
            Err(e) => {
                log::warn!(
                    "export position {}: {e}; exporting from the start",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes the position to `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = OsString::from(path.as_os_str());
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut file, self)?;
        file.write_all(b"\n")?;
        drop(file);
        std::fs::rename(&tmp, path)
    }
}

/// `LOG.export.json` beside the log `LOG`.
pub fn position_path(log: &Path) -> PathBuf {
    let mut name = OsString::from(log.as_os_str());
    name.push(".export.json");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_position_is_found_only_for_its_log() {
        let dir = std::env::temp_dir().join(format!("conntrail-position-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = position_path(&dir.join("t.log"));
        assert!(path.ends_with("t.log.export.json"));
        assert_eq!(Position::load(&path, 5), None);
        let mut p = Position::start(5, "box1");
        p.segment = 2;
        p.offset = 4096;
        p.records = 10;
        p.last_record_id = Some(9);
        p.save(&path).expect("save");
        assert_eq!(Position::load(&path, 5), Some(p));
        assert_eq!(
            Position::load(&path, 6),
            None,
            "a newer log at the same path"
        );
        std::fs::write(&path, b"{not json").expect("write");
        assert_eq!(Position::load(&path, 5), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
