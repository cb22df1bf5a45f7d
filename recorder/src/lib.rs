//! The conntrail log: where anomalous connection records end up, and how they are read back.
//!
//! **Owns**: the on-disk format (`recorder/FORMAT.md`, implemented in [`mod@format`]): a versioned
//! file header, then frames of a sync marker, a length, a CRC32 and a payload; size-based
//! rotation into `LOG`, `LOG.1`, `LOG.2`, ... by size or age, with retention by total size
//! and free space, one writer at a time under the log's lock file, segments created 0600
//! and never through a symbolic link ([`LogWriter`], [`Retention`]); a streaming reader
//! that reports damage and resynchronises after it ([`LogReader`]); the recorder thread
//! that drains the workers' rings into the log ([`thread::spawn`]); and recovery of the
//! records a crashed engine left in its rings, written exactly once ([`recover::recover`]).
//!
//! **Never does**: decode payloads (they are opaque MessagePack records, see `flowtable::record::codec`);
//! rename or rewrite a segment once written; trust a byte it reads (every length is bounded
//! by [`format::MAX_PAYLOAD`] and checked against the file, a damaged log yields
//! [`Damage`], never a panic or an unbounded allocation); run on a worker's hot path.
//!
//! ```
//! # fn main() -> Result<(), recorder::RecorderError> {
//! # let dir = std::env::temp_dir().join(format!("conntrail-recorder-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("tracker.log");
//! let mut writer = recorder::LogWriter::create(&path, 64 << 20)?;
//! writer.append(b"\x93\x01\x02\x03")?; // a MessagePack record
//! writer.flush()?;
//!
//! for item in recorder::LogReader::open(&path)? {
//!     match item {
//!         Ok(frame) => assert_eq!(frame.payload, b"\x93\x01\x02\x03"),
//!         Err(damage) => eprintln!("{damage}"),
//!     }
//! }
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

pub mod format;
pub mod reader;
pub mod recover;
pub mod segments;
pub mod thread;
pub mod writer;

pub use reader::{Damage, DamageKind, LogFrame, LogReader};
pub use thread::RecorderStats;
pub use writer::{LogWriter, Retention, WriterStats};

/// Errors of the writer, of opening a reader, and of the recorder thread.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// A file operation failed.
    ///
    /// The message holds what the OS said, so the error has no `source`: a chain printed
    /// with `{:#}` says it once.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What was being done: "creating", "writing", "opening", ...
        action: &'static str,
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A payload longer than the format allows; nothing was written.
    #[error("payload of {len} bytes exceeds the log's maximum of {max}")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// [`format::MAX_PAYLOAD`].
        max: u32,
    },
    /// Another writer, in this process or another, has the log (it holds the lock file,
    /// [`segments::lock_path`]); nothing was touched.
    #[error(
        "log {} is being written by {}",
        path.display(),
        match holder {
            Some(pid) => format!("process {pid}"),
            None => "another process".to_string(),
        }
    )]
    Locked {
        /// The base path of the log.
        path: PathBuf,
        /// The pid the holder wrote in the lock file, when it could be read.
        holder: Option<u32>,
    },
    /// The log already has `u32::MAX` segments.
    #[error("log {}: no segment index left to rotate to", path.display())]
    SegmentLimit {
        /// The base path of the log.
        path: PathBuf,
    },
}

impl RecorderError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> RecorderError {
        RecorderError::Io {
            action,
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// A scratch directory for tests, removed when dropped.
#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(name: &str) -> TestDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "conntrail-recorder-test-{}-{name}-{n}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
