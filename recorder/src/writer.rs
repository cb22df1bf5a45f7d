//! Appending frames to a log, with rotation into numbered segments by size or age, and
//! retention: a cap on the log's total size and a floor on the file system's free space,
//! the oldest segments deleted first.
//!
//! One writer at a time: a writer holds an exclusive lock on the log's lock file `LOG.lock`
//! for its whole life, and a second one (in this process or another) is refused with
//! [`RecorderError::Locked`], naming the holder's pid, before it touches any segment. The
//! files it creates are the owner's only (mode 0600) and are never opened through a
//! symbolic link.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::format::{FileHeader, FrameHeader, FRAME_HEADER_LEN, HEADER_LEN, MAX_PAYLOAD};
use crate::segments::{lock_path, numbered_segments, segment_path};
use crate::RecorderError;

/// Size of the in-memory buffer in front of the current segment file.
const BUFFER_BYTES: usize = 256 * 1024;
/// Mode of the files the writer creates (segments and the lock file): connection records
/// are for the owner only.
const FILE_MODE: u32 = 0o600;
/// Bytes of a lock file read for the holder's pid (a u32 in decimal and a newline).
const PID_TEXT_MAX: u64 = 16;

/// When the writer starts a new segment and what it deletes to bound the log's disk use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Close a segment when the next frame would take it past this size (header included).
    pub rotate_bytes: u64,
    /// Close a segment at the first append after it has been open this long.
    pub rotate_age: Option<Duration>,
    /// Delete the oldest closed segments so that they and a full current segment stay under
    /// this many bytes.
    pub max_total_bytes: Option<u64>,
    /// Keep at least this much space free on the log's file system: the oldest closed
    /// segments are deleted to make room, and records that would eat into it are dropped
    /// (counted in [`WriterStats::frames_lost`]).
    pub min_free_bytes: u64,
}

impl Retention {
    /// Rotation by size only; nothing is ever deleted.
    pub fn rotate_at(rotate_bytes: u64) -> Retention {
        Retention {
            rotate_bytes,
            rotate_age: None,
            max_total_bytes: None,
            min_free_bytes: 0,
        }
    }
}

/// Counters of a [`LogWriter`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Frames handed to the OS.
    pub frames: u64,
    /// Payload bytes of those frames.
    pub payload_bytes: u64,
    /// Bytes in all segment files written: headers, frame headers and payloads.
    pub file_bytes: u64,
    /// Segment files written (the base file counts as one).
    pub segments: u32,
    /// Frames dropped because the file system was full (ENOSPC, a quota, a file size limit)
    /// or its free space was below [`Retention::min_free_bytes`].
    pub frames_lost: u64,
    /// Times a write failed for lack of space.
    pub no_space_errors: u64,
    /// Old segments deleted by retention, and their bytes.
    pub segments_deleted: u32,
    /// Bytes of the segments deleted by retention.
    pub bytes_deleted: u64,
}

/// Writes a log: the base file `LOG`, then `LOG.1`, `LOG.2`, ... as each reaches the rotation
/// size or age. Files are never renamed, so a reader finds the segments in order by name;
/// retention deletes the oldest ones first.
///
/// Appends are buffered; [`flush`](Self::flush) hands them to the OS. Dropping the writer
/// flushes too, but ignores errors. A full file system is not an error: the frames that do
/// not fit are dropped and counted, the segment is cut back to its last whole frame, and
/// writing goes on when there is room again.
#[derive(Debug)]
pub struct LogWriter {
    base: PathBuf,
    retention: Retention,
    file: File,
    /// Bytes of the current segment handed to the OS (whole frames only).
    file_len: u64,
    /// Encoded frames (and, for a new segment, its header) not yet written.
    buf: Vec<u8>,
    /// Frames and payload bytes in `buf`.
    buf_frames: u64,
    buf_payload: u64,
    /// The current segment's header, written again if a full disk lost it.
    header: [u8; HEADER_LEN as usize],
    segment: u32,
    segment_path: PathBuf,
    segment_frames: u64,
    segment_opened: Instant,
    /// Closed segments still on disk, oldest first, with their sizes.
    closed: VecDeque<(PathBuf, u64)>,
    /// Set while writes fail for lack of space (reported once per episode).
    out_of_space: bool,
    /// The lock file, locked for as long as the writer lives.
    _lock: File,
    /// A pause after every append (see [`set_append_delay`](Self::set_append_delay)).
    append_delay: Option<Duration>,
    stats: WriterStats,
}

impl LogWriter {
    /// Starts a new log at `path` with size-based rotation only; see
    /// [`create_with`](Self::create_with).
    pub fn create(path: &Path, rotate_bytes: u64) -> Result<LogWriter, RecorderError> {
        LogWriter::create_with(path, Retention::rotate_at(rotate_bytes))
    }

    /// Starts a new log at `path`, replacing any log there: the base file and its old
    /// numbered segments (`path.N`) are removed, so they cannot be mistaken for part of the
    /// new log, and a new base file is created (mode 0600; a symbolic link at the path is
    /// removed, never followed).
    ///
    /// A segment is closed when the next frame would take it past `rotate_bytes` (header
    /// included) or, with a rotation age, at the first append after that age; a segment
    /// always holds at least one frame, so a frame larger than `rotate_bytes` gets a segment
    /// of its own.
    ///
    /// Fails with [`RecorderError::Locked`], touching nothing, while another writer has the
    /// log.
    pub fn create_with(path: &Path, retention: Retention) -> Result<LogWriter, RecorderError> {
        let lock = lock_log(path)?;
        LogWriter::create_locked(path, retention, lock)
    }

    fn create_locked(
        path: &Path,
        retention: Retention,
        lock: File,
    ) -> Result<LogWriter, RecorderError> {
        let stale = numbered_segments(path)
            .map_err(|source| RecorderError::io("listing old segments of", path, source))?;
        for (_, stale_path) in stale {
            std::fs::remove_file(&stale_path)
                .map_err(|source| RecorderError::io("removing old segment", &stale_path, source))?;
        }
        let file = new_segment(path)?;
        let mut writer = LogWriter::on_segment(path, retention, 0, file, lock);
        writer.start_header(0);
        writer.stats.segments = 1;
        Ok(writer)
    }

    /// Continues the log at `path` (or starts it when there is none): appends go to its
    /// newest segment, after its last intact frame. A torn tail (a frame cut short by a
    /// crash) is cut off first. A newest segment without a valid header is left as it is
    /// (the reader still finds the frames after a damaged header) and the log goes on in a
    /// new segment after it; one too short to hold a frame is started again.
    ///
    /// The newest segment is never opened through a symbolic link. Fails with
    /// [`RecorderError::Locked`], touching nothing, while another writer has the log.
    pub fn resume(path: &Path, retention: Retention) -> Result<LogWriter, RecorderError> {
        let lock = lock_log(path)?;
        let numbered = numbered_segments(path)
            .map_err(|source| RecorderError::io("listing segments of", path, source))?;
        let mut segments: Vec<(u32, PathBuf)> = Vec::new();
        if path.symlink_metadata().is_ok() {
            segments.push((0, path.to_path_buf()));
        }
        segments.extend(numbered);
        let Some((index, newest)) = segments.pop() else {
            return LogWriter::create_locked(path, retention, lock);
        };
        let file = write_options()
            .read(true)
            .open(&newest)
            .map_err(|source| RecorderError::io("opening", &newest, source))?;
        let scanned = file
            .try_clone()
            .and_then(|copy| crate::reader::intact_end(copy, &newest, index))
            .map_err(|source| RecorderError::io("reading", &newest, source))?;
        let mut writer = match scanned {
            Some((end, frames)) => {
                file.set_len(end)
                    .map_err(|source| RecorderError::io("truncating", &newest, source))?;
                let mut writer = LogWriter::on_segment(path, retention, index, file, lock);
                writer.file_len = end;
                writer.segment_frames = frames;
                writer.header = FileHeader::new(now_ns(), index).encode();
                writer
            }
            None if too_short_for_a_frame(&file) => {
                drop(file);
                let mut writer =
                    LogWriter::on_segment(path, retention, index, new_segment(&newest)?, lock);
                writer.start_header(index);
                writer
            }
            None => {
                let len = file.metadata().map_or(0, |m| m.len());
                segments.push((index, newest));
                let next = index
                    .checked_add(1)
                    .ok_or_else(|| RecorderError::SegmentLimit {
                        path: path.to_path_buf(),
                    })?;
                let next_path = segment_path(path, next);
                let mut writer =
                    LogWriter::on_segment(path, retention, next, new_segment(&next_path)?, lock);
                log::warn!(
                    "log {}: the header of {} is damaged ({len} bytes kept); continuing in {}",
                    path.display(),
                    segment_path(path, index).display(),
                    next_path.display()
                );
                writer.start_header(next);
                writer
            }
        };
        for (_, older) in segments {
            let len = std::fs::symlink_metadata(&older).map_or(0, |m| m.len());
            writer.closed.push_back((older, len));
        }
        writer.stats.segments = 1;
        Ok(writer)
    }

    fn on_segment(
        base: &Path,
        retention: Retention,
        index: u32,
        file: File,
        lock: File,
    ) -> LogWriter {
        LogWriter {
            base: base.to_path_buf(),
            retention,
            file,
            file_len: 0,
            buf: Vec::with_capacity(BUFFER_BYTES),
            buf_frames: 0,
            buf_payload: 0,
            header: [0; HEADER_LEN as usize],
            segment: index,
            segment_path: segment_path(base, index),
            segment_frames: 0,
            segment_opened: Instant::now(),
            closed: VecDeque::new(),
            out_of_space: false,
            _lock: lock,
            append_delay: None,
            stats: WriterStats::default(),
        }
    }

    /// Puts a fresh header for segment `index` at the start of the (empty) buffer.
    fn start_header(&mut self, index: u32) {
        self.header = FileHeader::new(now_ns(), index).encode();
        self.buf.extend_from_slice(&self.header);
    }

    /// Pauses for `delay` after every append. The recorder then falls behind the workers and
    /// records pile up in the rings: crash-recovery tests use it to kill the engine while
    /// records are in flight. Never set in normal operation.
    pub fn set_append_delay(&mut self, delay: Option<Duration>) {
        self.append_delay = delay;
    }

    /// Appends one frame holding `payload`, rotating first if the current segment would
    /// exceed the rotation size or is older than the rotation age. Fails with
    /// [`RecorderError::PayloadTooLarge`] (writing nothing) above [`MAX_PAYLOAD`].
    pub fn append(&mut self, payload: &[u8]) -> Result<(), RecorderError> {
        let header = FrameHeader::for_payload(payload).ok_or(RecorderError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD,
        })?;
        let frame_bytes = (FRAME_HEADER_LEN + payload.len()) as u64;
        if self.segment_frames > 0
            && (self.segment_bytes().saturating_add(frame_bytes) > self.retention.rotate_bytes
                || self
                    .retention
                    .rotate_age
                    .is_some_and(|age| self.segment_opened.elapsed() >= age))
        {
            self.rotate()?;
        }
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(payload);
        self.buf_frames += 1;
        self.buf_payload += payload.len() as u64;
        self.segment_frames += 1;
        if self.buf.len() >= BUFFER_BYTES {
            self.write_out()?;
        }
        if let Some(delay) = self.append_delay {
            std::thread::sleep(delay);
        }
        Ok(())
    }

    /// Hands everything appended so far to the OS (it survives a crash of this process).
    /// Frames that do not fit on the file system are dropped and counted, not an error.
    pub fn flush(&mut self) -> Result<(), RecorderError> {
        self.write_out()
    }

    /// Counters since [`create`](Self::create).
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// The base path of the log.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// The segment file being written now.
    pub fn segment_path(&self) -> &Path {
        &self.segment_path
    }

    fn segment_bytes(&self) -> u64 {
        self.file_len + self.buf.len() as u64
    }

    /// Writes the buffer at the end of the segment. On a full file system it makes room by
    /// deleting the oldest closed segments and tries again; what still does not fit is
    /// dropped and counted, and the file is cut back to its last whole frame.
    fn write_out(&mut self) -> Result<(), RecorderError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let needed = self.buf.len() as u64;
        let mut outcome = if self.has_room_for(needed) {
            self.file.write_all_at(&self.buf, self.file_len)
        } else {
            Err(self.below_the_floor())
        };
        while matches!(&outcome, Err(e) if is_no_space(e)) && self.delete_oldest() {
            outcome = if self.has_room_for(needed) {
                self.file.write_all_at(&self.buf, self.file_len)
            } else {
                Err(self.below_the_floor())
            };
        }
        match outcome {
            Ok(()) => {
                self.file_len += needed;
                self.stats.frames += self.buf_frames;
                self.stats.payload_bytes += self.buf_payload;
                self.stats.file_bytes += needed;
                if self.out_of_space {
                    self.out_of_space = false;
                    log::warn!("log {}: writing again", self.segment_path.display());
                }
            }
            Err(e) if is_no_space(&e) => {
                // Whatever part of the buffer reached the file goes: the segment ends with
                // its last whole frame. Cutting a file back needs no space.
                let _ = self.file.set_len(self.file_len);
                if self.file_len == 0 {
                    self.write_header_alone();
                }
                self.stats.no_space_errors += 1;
                self.stats.frames_lost += self.buf_frames;
                self.segment_frames -= self.buf_frames;
                if !self.out_of_space {
                    self.out_of_space = true;
                    log::error!(
                        "log {}: no space left ({e}); records are dropped and counted until \
                         there is room",
                        self.segment_path.display()
                    );
                }
                self.buf.clear();
                if self.file_len == 0 {
                    self.buf.extend_from_slice(&self.header);
                }
                self.buf_frames = 0;
                self.buf_payload = 0;
                return Ok(());
            }
            Err(source) => return Err(RecorderError::io("writing", &self.segment_path, source)),
        }
        self.buf.clear();
        self.buf_frames = 0;
        self.buf_payload = 0;
        Ok(())
    }

    /// Writes the segment's header on its own, below the free-space floor too (it is
    /// tiny): a segment always starts with its header, so a reader opens it as a log with
    /// no frames rather than as damage, even when every record was dropped. When even that
    /// does not fit, the header stays in the buffer in front of the next frames.
    fn write_header_alone(&mut self) {
        if self.file.write_all_at(&self.header, 0).is_ok() {
            self.file_len = self.header.len() as u64;
            self.stats.file_bytes += self.file_len;
        } else {
            let _ = self.file.set_len(0);
        }
    }

    /// The error of a write refused by the free-space floor (rare: once per refused write).
    fn below_the_floor(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "free space on the file system is below the floor of {} bytes (min_free_bytes)",
                self.retention.min_free_bytes
            ),
        )
    }

    /// Whether `bytes` more leave [`Retention::min_free_bytes`] free on the file system.
    fn has_room_for(&self, bytes: u64) -> bool {
        if self.retention.min_free_bytes == 0 {
            return true;
        }
        match rustix::fs::fstatvfs(&self.file) {
            Ok(vfs) => {
                let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
                free >= self.retention.min_free_bytes.saturating_add(bytes)
            }
            // Not knowing the free space is no reason to stop writing.
            Err(_) => true,
        }
    }

    /// Deletes the oldest closed segment; false when there is none.
    fn delete_oldest(&mut self) -> bool {
        let Some((path, len)) = self.closed.pop_front() else {
            return false;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.stats.segments_deleted += 1;
                self.stats.bytes_deleted += len;
                log::info!("log retention: deleted {} ({len} bytes)", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("log retention: cannot delete {}: {e}", path.display()),
        }
        true
    }

    fn rotate(&mut self) -> Result<(), RecorderError> {
        self.write_out()?;
        let next = self
            .segment
            .checked_add(1)
            .ok_or_else(|| RecorderError::SegmentLimit {
                path: self.base.clone(),
            })?;
        let path = segment_path(&self.base, next);
        let mut created = replace_with_new_file(&path);
        while matches!(&created, Err(e) if is_no_space(e)) && self.delete_oldest() {
            created = replace_with_new_file(&path);
        }
        let file = match created {
            Ok(file) => file,
            Err(e) if is_no_space(&e) => {
                // No room even for a new file: stay on this segment; writes to it are
                // counted as lost until there is room, and rotation is tried again.
                log::error!(
                    "log {}: cannot start {}: {e}",
                    self.base.display(),
                    path.display()
                );
                self.stats.no_space_errors += 1;
                return Ok(());
            }
            Err(source) => return Err(RecorderError::io("creating", &path, source)),
        };
        // The old file was written out above; replacing it closes it.
        self.file = file;
        let old_path = std::mem::replace(&mut self.segment_path, path);
        self.closed.push_back((old_path, self.file_len));
        self.file_len = 0;
        self.segment = next;
        self.segment_frames = 0;
        self.segment_opened = Instant::now();
        self.start_header(next);
        self.stats.segments += 1;
        if let Some(max) = self.retention.max_total_bytes {
            while self.closed.iter().map(|(_, len)| len).sum::<u64>() + self.retention.rotate_bytes
                > max
                && self.delete_oldest()
            {}
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}

/// ENOSPC, EDQUOT and EFBIG: the file system or a limit has no room for the write.
fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge
    )
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Options that open a file for writing, creating it with [`FILE_MODE`], and never through
/// a symbolic link at its path.
fn write_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW);
    options
}

/// Creates a segment file at `path`, replacing whatever is there; see
/// [`replace_with_new_file`].
fn new_segment(path: &Path) -> Result<File, RecorderError> {
    replace_with_new_file(path).map_err(|source| RecorderError::io("creating", path, source))
}

/// Removes what is at `path` (a symbolic link is removed, not followed; nothing is ever
/// written through a link or into another name of the same file) and creates a new, empty
/// file there, mode [`FILE_MODE`]. Fails if something appears at the path in between.
fn replace_with_new_file(path: &Path) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_options().create_new(true).open(path)
}

/// Whether a segment file is too short to hold a header and a frame (nothing in it can be
/// read back).
fn too_short_for_a_frame(file: &File) -> bool {
    file.metadata()
        .is_ok_and(|m| m.len() < u64::from(HEADER_LEN) + FRAME_HEADER_LEN as u64)
}

/// Takes the exclusive lock of the log at `base` (see [`lock_path`]): creates the lock file
/// if needed (mode 0600, never through a symbolic link), locks it without waiting and writes
/// this process's pid in it. The lock lasts as long as the returned file is open; the file
/// stays in place afterwards.
fn lock_log(base: &Path) -> Result<File, RecorderError> {
    let path = lock_path(base);
    let file = write_options()
        .read(true)
        .create(true)
        .open(&path)
        .map_err(|source| RecorderError::io("opening lock file", &path, source))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(RecorderError::Locked {
                path: base.to_path_buf(),
                holder: lock_holder(&file),
            })
        }
        Err(e) => return Err(RecorderError::io("locking", &path, e.into())),
    }
    // The pid only names the holder in another writer's error: failing to write it (a full
    // file system) leaves the lock in force.
    let pid = format!("{}\n", std::process::id());
    if file.set_len(0).is_ok() {
        let _ = file.write_all_at(pid.as_bytes(), 0);
    }
    Ok(file)
}

/// The pid written in a lock file by the writer holding it (`None` while it has not
/// written it yet).
fn lock_holder(file: &File) -> Option<u32> {
    let mut text = String::new();
    file.take(PID_TEXT_MAX).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TestDir;

    #[test]
    fn segment_names_append_the_index() {
        let base = Path::new("/var/log/tracker.log");
        assert_eq!(segment_path(base, 0), base);
        assert_eq!(segment_path(base, 3), Path::new("/var/log/tracker.log.3"));
    }

    #[test]
    fn rotation_keeps_segments_under_the_limit() {
        let dir = TestDir::new("rotate-limit");
        let path = dir.path().join("LOG");
        let mut writer = LogWriter::create(&path, 1000).unwrap();
        for _ in 0..100 {
            writer.append(&[0x5A; 88]).unwrap(); // 100-byte frames
        }
        writer.flush().unwrap();
        let stats = writer.stats();
        // 40-byte header + 9 frames = 940 <= 1000; a 10th would make 1040.
        assert_eq!(stats.segments, 12);
        assert_eq!(stats.frames, 100);
        assert_eq!(stats.payload_bytes, 8800);
        assert_eq!(stats.file_bytes, 12 * 40 + 100 * 100);
        let mut total = 0;
        for index in 0..12 {
            let len = std::fs::metadata(segment_path(&path, index)).unwrap().len();
            assert!(len <= 1000, "segment {index} is {len} bytes");
            total += len;
        }
        assert_eq!(total, stats.file_bytes);
        assert!(!segment_path(&path, 12).exists());
    }

    #[test]
    fn a_frame_larger_than_the_limit_gets_its_own_segment() {
        let dir = TestDir::new("rotate-big");
        let path = dir.path().join("LOG");
        let mut writer = LogWriter::create(&path, 100).unwrap();
        writer.append(&[1; 500]).unwrap();
        writer.append(&[2; 500]).unwrap();
        writer.append(&[3; 10]).unwrap();
        assert_eq!(writer.stats().segments, 3);
        assert_eq!(writer.segment_path(), segment_path(&path, 2));
    }

    #[test]
    fn create_removes_the_old_logs_segments() {
        let dir = TestDir::new("stale");
        let path = dir.path().join("LOG");
        let mut writer = LogWriter::create(&path, 60).unwrap();
        for _ in 0..4 {
            writer.append(&[0; 10]).unwrap();
        }
        drop(writer);
        assert!(segment_path(&path, 3).exists());
        std::fs::write(dir.path().join("LOG.notes"), b"keep me").unwrap();
        std::fs::write(dir.path().join("LOG.07"), b"keep me").unwrap();
        let writer = LogWriter::create(&path, 60).unwrap();
        assert_eq!(writer.stats().segments, 1);
        assert!(!segment_path(&path, 1).exists());
        assert!(!segment_path(&path, 3).exists());
        assert!(dir.path().join("LOG.notes").exists());
        assert!(dir.path().join("LOG.07").exists());
    }

    #[test]
    fn oversized_payload_is_refused_and_nothing_is_written() {
        let dir = TestDir::new("too-large");
        let path = dir.path().join("LOG");
        let mut writer = LogWriter::create(&path, u64::MAX).unwrap();
        let err = writer
            .append(&vec![0; MAX_PAYLOAD as usize + 1])
            .unwrap_err();
        assert!(matches!(err, RecorderError::PayloadTooLarge { .. }));
        writer.flush().unwrap();
        assert_eq!(writer.stats().frames, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 40);
    }

    fn sequence_frames(log: &Path) -> Vec<u32> {
        crate::reader::LogReader::open(log)
            .unwrap()
            .map(|item| {
                let payload = item.expect("no damage").payload;
                u32::from_le_bytes(payload[..4].try_into().unwrap())
            })
            .collect()
    }

    fn numbered(n: u32, len: usize) -> Vec<u8> {
        let mut payload = n.to_le_bytes().to_vec();
        payload.resize(len, 0xA5);
        payload
    }

    #[test]
    fn a_segment_older_than_the_rotation_age_is_closed_at_the_next_append() {
        let dir = TestDir::new("rotate-age");
        let path = dir.path().join("LOG");
        let retention = Retention {
            rotate_age: Some(Duration::from_millis(50)),
            ..Retention::rotate_at(u64::MAX)
        };
        let mut writer = LogWriter::create_with(&path, retention).unwrap();
        writer.append(&numbered(0, 10)).unwrap();
        writer.append(&numbered(1, 10)).unwrap();
        assert_eq!(writer.stats().segments, 1);
        std::thread::sleep(Duration::from_millis(80));
        writer.append(&numbered(2, 10)).unwrap();
        writer.append(&numbered(3, 10)).unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.stats().segments, 2);
        assert_eq!(writer.segment_path(), segment_path(&path, 1));
        assert_eq!(sequence_frames(&path), vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_total_cap_deletes_the_oldest_segments_and_the_rest_reads_without_damage() {
        let dir = TestDir::new("cap");
        let path = dir.path().join("LOG");
        let retention = Retention {
            max_total_bytes: Some(3000),
            ..Retention::rotate_at(1000)
        };
        let mut writer = LogWriter::create_with(&path, retention).unwrap();
        for n in 0..100 {
            writer.append(&numbered(n, 88)).unwrap(); // 100-byte frames, 9 a segment
        }
        writer.flush().unwrap();
        let stats = writer.stats();
        assert_eq!(stats.segments, 12);
        // Two closed segments (940 bytes each) and a full current one fit in 3000 bytes.
        assert_eq!(stats.segments_deleted, 9);
        assert!(!path.exists(), "the base file is the oldest and goes first");
        let on_disk: u64 = (0..12)
            .map(|i| std::fs::metadata(segment_path(&path, i)).map_or(0, |m| m.len()))
            .sum();
        assert!(on_disk <= 3000, "{on_disk} bytes on disk");
        assert_eq!(on_disk, stats.file_bytes - stats.bytes_deleted);
        // Segments 9, 10 and 11 are left: frames 81..100, in order, no damage reported.
        assert_eq!(sequence_frames(&path), (81..100).collect::<Vec<_>>());
    }

    /// A tmpfs of `kib` KiB mounted for the test, unmounted when dropped; `None` (with a
    /// message) when the test does not run as root or cannot mount. It mounts with the
    /// system call, not the `mount` program: a child forked while another test holds a log
    /// lock would share that lock until it execs, and a test retaking the lock would fail.
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(name: &str, kib: u32) -> Option<(SmallDisk, TestDir)> {
            SmallDisk::mount_with(name, &format!("size={kib}k"))
        }

        fn mount_with(name: &str, options: &str) -> Option<(SmallDisk, TestDir)> {
            let dir = TestDir::new(name);
            let mount_point = dir.path().join("disk");
            std::fs::create_dir_all(&mount_point).unwrap();
            if let Err(e) = rustix::mount::mount(
                "tmpfs",
                &mount_point,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                std::ffi::CString::new(options).ok().as_deref(),
            ) {
                eprintln!("skipped: mounting a small tmpfs needs root ({e})");
                return None;
            }
            Some((SmallDisk(mount_point), dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }

    #[test]
    fn a_full_disk_drops_and_counts_frames_and_writing_resumes_when_there_is_room() {
        let Some((disk, _dir)) = SmallDisk::mount("enospc", 256) else {
            return;
        };
        let filler = disk.0.join("filler");
        std::fs::write(&filler, vec![0u8; 128 * 1024]).unwrap();
        let path = disk.0.join("LOG");
        let retention = Retention {
            min_free_bytes: 0,
            ..Retention::rotate_at(1 << 20)
        };
        let mut writer = LogWriter::create_with(&path, retention).unwrap();
        for n in 0..400 {
            writer.append(&numbered(n, 988)).unwrap(); // 1000-byte frames
            if n % 10 == 9 {
                writer.flush().unwrap();
            }
        }
        let full = writer.stats();
        assert!(full.no_space_errors > 0);
        assert!(full.frames_lost > 0);
        assert_eq!(full.frames + full.frames_lost, 400);
        // What is on disk is whole frames only, read back without damage.
        let kept = sequence_frames(&path);
        assert_eq!(kept.len() as u64, full.frames);
        assert_eq!(kept, (0..full.frames as u32).collect::<Vec<_>>());

        std::fs::remove_file(&filler).unwrap();
        for n in 400..450 {
            writer.append(&numbered(n, 988)).unwrap();
        }
        writer.flush().unwrap();
        let after = writer.stats();
        assert_eq!(after.frames, full.frames + 50);
        assert_eq!(after.frames_lost, full.frames_lost);
        let kept = sequence_frames(&path);
        assert_eq!(kept.len() as u64, after.frames);
        assert_eq!(kept.last(), Some(&449));
        drop(writer);
    }

    #[test]
    fn the_free_space_floor_deletes_old_segments_before_losing_records() {
        let Some((disk, _dir)) = SmallDisk::mount("min-free", 512) else {
            return;
        };
        let path = disk.0.join("LOG");
        let retention = Retention {
            min_free_bytes: 256 * 1024,
            ..Retention::rotate_at(32 * 1024)
        };
        let mut writer = LogWriter::create_with(&path, retention).unwrap();
        for n in 0..1000 {
            writer.append(&numbered(n, 988)).unwrap();
            if n % 10 == 9 {
                writer.flush().unwrap();
            }
        }
        let stats = writer.stats();
        assert_eq!(stats.frames_lost, 0);
        assert!(stats.segments_deleted > 0);
        let vfs = rustix::fs::statvfs(&disk.0).unwrap();
        assert!(vfs.f_bavail * vfs.f_frsize >= 256 * 1024 - 16 * 1024);
        let kept = sequence_frames(&path);
        assert_eq!(kept.last(), Some(&999));
        let first = kept[0];
        assert_eq!(kept, (first..1000).collect::<Vec<_>>());
        drop(writer);
    }

    #[test]
    fn no_room_for_a_new_segment_deletes_the_oldest_or_stays_on_the_current_one() {
        // Room for the directory, the lock file and one segment: the base file takes all
        // the frames.
        let Some((disk, _dir)) = SmallDisk::mount_with("one-inode", "size=1m,nr_inodes=3") else {
            return;
        };
        let path = disk.0.join("LOG");
        let mut writer = LogWriter::create_with(&path, Retention::rotate_at(4096)).unwrap();
        for n in 0..100 {
            writer.append(&numbered(n, 988)).unwrap();
        }
        writer.flush().unwrap();
        let stats = writer.stats();
        assert!(stats.no_space_errors > 0);
        assert_eq!((stats.frames, stats.segments), (100, 1));
        assert_eq!(sequence_frames(&path), (0..100).collect::<Vec<_>>());
        drop(writer);
        drop(disk);

        // Room for two segments: each new segment takes the place of the oldest.
        let Some((disk, _dir)) = SmallDisk::mount_with("two-inodes", "size=1m,nr_inodes=4") else {
            return;
        };
        let path = disk.0.join("LOG");
        let mut writer = LogWriter::create_with(&path, Retention::rotate_at(4096)).unwrap();
        for n in 0..100 {
            writer.append(&numbered(n, 988)).unwrap();
        }
        writer.flush().unwrap();
        let stats = writer.stats();
        assert_eq!((stats.frames, stats.frames_lost), (100, 0));
        assert_eq!(stats.segments_deleted, stats.segments - 2);
        let kept = sequence_frames(&path);
        assert_eq!(kept.last(), Some(&99));
        assert_eq!(kept, (kept[0]..100).collect::<Vec<_>>());
        drop(writer);
    }

    #[test]
    fn with_the_default_free_space_floor_a_tiny_disk_keeps_the_header_and_counts_every_loss() {
        let Some((disk, _dir)) = SmallDisk::mount("tiny", 1024) else {
            return;
        };
        let path = disk.0.join("LOG");
        let retention = Retention {
            min_free_bytes: flowtable::config::LogConfig::default().min_free_bytes,
            ..Retention::rotate_at(1 << 30)
        };
        assert!(
            retention.min_free_bytes > 1 << 20,
            "the default floor is above 1 MiB"
        );
        let mut writer = LogWriter::create_with(&path, retention).unwrap();
        for n in 0..300 {
            writer.append(&numbered(n, 988)).unwrap();
            if n % 10 == 9 {
                writer.flush().unwrap();
            }
        }
        writer.flush().unwrap();
        let stats = writer.stats();
        assert_eq!((stats.frames, stats.frames_lost), (0, 300));
        assert_eq!(stats.file_bytes, u64::from(HEADER_LEN));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            u64::from(HEADER_LEN)
        );
        let items: Vec<_> = crate::reader::LogReader::open(&path).unwrap().collect();
        assert!(items.is_empty(), "no record and no damage: {items:?}");
        drop(writer);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            u64::from(HEADER_LEN)
        );
    }

    /// Every byte of every file of the log at `base` (segments only), by name.
    fn log_files(base: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<(PathBuf, Vec<u8>)> = numbered_segments(base)
            .unwrap()
            .into_iter()
            .map(|(_, p)| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        files.insert(0, (base.to_path_buf(), std::fs::read(base).unwrap()));
        files
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_and_the_log_is_untouched() {
        let dir = TestDir::new("two-writers");
        let path = dir.path().join("LOG");
        let mut first = LogWriter::create(&path, 1000).unwrap();
        for n in 0..30 {
            first.append(&numbered(n, 88)).unwrap();
        }
        first.flush().unwrap();
        let before = log_files(&path);
        assert!(before.len() > 1, "the log has rotated segments");

        let pid = std::process::id();
        let refusals = [
            LogWriter::create(&path, 1000).unwrap_err(),
            LogWriter::resume(&path, Retention::rotate_at(1000)).unwrap_err(),
        ];
        for err in refusals {
            assert!(
                matches!(&err, RecorderError::Locked { holder, .. } if *holder == Some(pid)),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("log {} is being written by process {pid}", path.display())
            );
        }
        assert_eq!(
            log_files(&path),
            before,
            "the refused writers touched nothing"
        );

        for n in 30..60 {
            first.append(&numbered(n, 88)).unwrap();
        }
        first.flush().unwrap();
        assert_eq!(sequence_frames(&path), (0..60).collect::<Vec<_>>());
        drop(first);

        let mut next = LogWriter::resume(&path, Retention::rotate_at(1000)).unwrap();
        next.append(&numbered(60, 88)).unwrap();
        next.flush().unwrap();
        assert_eq!(sequence_frames(&path), (0..61).collect::<Vec<_>>());
        drop(next);
        let fresh = LogWriter::create(&path, 1000).unwrap();
        drop(fresh);
        assert!(sequence_frames(&path).is_empty());
    }

    #[test]
    fn a_symlink_at_the_lock_file_is_not_followed() {
        let dir = TestDir::new("lock-link");
        let path = dir.path().join("LOG");
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, lock_path(&path)).unwrap();
        let err = LogWriter::create(&path, 1000).unwrap_err();
        assert!(err.to_string().contains("LOG.lock"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert!(!path.exists(), "nothing was created");
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn segments_and_the_lock_file_are_the_owners_only() {
        let dir = TestDir::new("modes");
        let path = dir.path().join("LOG");
        // An old log readable by everyone is replaced, not reused.
        std::fs::write(&path, b"old log").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let mut writer = LogWriter::create(&path, 200).unwrap();
        for n in 0..10 {
            writer.append(&numbered(n, 88)).unwrap();
        }
        writer.flush().unwrap();
        assert!(segment_path(&path, 1).exists());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&segment_path(&path, 1)), 0o600);
        assert_eq!(mode(&lock_path(&path)), 0o600);
        assert_eq!(sequence_frames(&path), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_symlink_planted_at_a_segment_name_is_never_followed() {
        let dir = TestDir::new("links");
        let path = dir.path().join("LOG");
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();

        // At the base file of a new log.
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut writer = LogWriter::create(&path, 300).unwrap();
        writer.append(&numbered(0, 88)).unwrap();
        // At the name of the next segment.
        std::os::unix::fs::symlink(&target, segment_path(&path, 1)).unwrap();
        for n in 1..4 {
            writer.append(&numbered(n, 88)).unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.segment_path(), segment_path(&path, 1));
        drop(writer);
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        for index in 0..2 {
            let segment = segment_path(&path, index);
            assert!(std::fs::symlink_metadata(&segment).unwrap().is_file());
        }
        assert_eq!(sequence_frames(&path), (0..4).collect::<Vec<_>>());

        // At the newest segment of a log being continued: refused.
        std::fs::remove_file(segment_path(&path, 1)).unwrap();
        std::os::unix::fs::symlink(&target, segment_path(&path, 1)).unwrap();
        let err = LogWriter::resume(&path, Retention::rotate_at(300)).unwrap_err();
        assert!(err.to_string().contains("LOG.1"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn resume_keeps_a_segment_with_a_damaged_header_and_continues_after_it() {
        let dir = TestDir::new("resume-header");
        let path = dir.path().join("LOG");
        let mut writer = LogWriter::create(&path, 1 << 20).unwrap();
        for n in 0..20 {
            writer.append(&numbered(n, 88)).unwrap();
        }
        drop(writer);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] ^= 0x04; // the version field
        std::fs::write(&path, &bytes).unwrap();

        let mut writer = LogWriter::resume(&path, Retention::rotate_at(1 << 20)).unwrap();
        for n in 20..25 {
            writer.append(&numbered(n, 88)).unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.segment_path(), segment_path(&path, 1));
        drop(writer);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the damaged segment is kept"
        );
        let items: Vec<_> = crate::reader::LogReader::open(&path).unwrap().collect();
        let damage: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!((&*damage[0].segment, damage[0].offset), (path.as_path(), 0));
        let kept: Vec<u32> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|f| u32::from_le_bytes(f.payload[..4].try_into().unwrap()))
            .collect();
        assert_eq!(kept, (0..25).collect::<Vec<_>>());

        // A segment too short for a frame is started again in place.
        std::fs::write(segment_path(&path, 1), b"CONNTRL").unwrap();
        let mut writer = LogWriter::resume(&path, Retention::rotate_at(1 << 20)).unwrap();
        writer.append(&numbered(99, 88)).unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.segment_path(), segment_path(&path, 1));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = TestDir::new("err");
        let path = dir.path().join("missing-dir").join("LOG");
        let err = LogWriter::create(&path, 1000).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
