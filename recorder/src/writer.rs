//! Appending frames to a log, with size-based rotation into numbered segments.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::format::{FileHeader, FrameHeader, FRAME_HEADER_LEN, MAX_PAYLOAD};
use crate::RecorderError;

/// Size of the in-memory buffer in front of the current segment file.
const BUFFER_BYTES: usize = 256 * 1024;

/// The path of segment `index` of the log at `base`: `base` itself for 0, `base.N` for N.
pub fn segment_path(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_path_buf();
    }
    let mut name = OsString::from(base.as_os_str());
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The numbered segments (`base.N`, N >= 1) that exist beside `base`, sorted by N.
/// Only canonical names count (`LOG.2`, not `LOG.02` or `LOG.2.tmp`).
pub(crate) fn numbered_segments(base: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let Some(file_name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match base.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(suffix) = name
            .to_str()
            .and_then(|n| n.strip_prefix(file_name))
            .and_then(|n| n.strip_prefix('.'))
        else {
            continue;
        };
        if let Ok(index) = suffix.parse::<u32>() {
            if index >= 1 && suffix == index.to_string() {
                found.push((index, segment_path(base, index)));
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Counters of a [`LogWriter`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Frames appended.
    pub frames: u64,
    /// Payload bytes appended.
    pub payload_bytes: u64,
    /// Bytes in all segment files: headers, frame headers and payloads.
    pub file_bytes: u64,
    /// Segment files written (the base file counts as one).
    pub segments: u32,
}

/// Writes a log: the base file `LOG`, then `LOG.1`, `LOG.2`, ... as each reaches the rotation
/// size. Files are never renamed, so a reader finds the segments in order by name.
///
/// Appends are buffered; [`flush`](Self::flush) hands them to the OS. Dropping the writer
/// flushes too, but ignores errors.
#[derive(Debug)]
pub struct LogWriter {
    base: PathBuf,
    rotate_bytes: u64,
    out: BufWriter<File>,
    segment: u32,
    segment_path: PathBuf,
    segment_bytes: u64,
    segment_frames: u64,
    stats: WriterStats,
}

impl LogWriter {
    /// Starts a new log at `path`, replacing any log there: the base file is truncated and
    /// its old numbered segments (`path.N`) are removed, so they cannot be mistaken for part
    /// of the new log.
    ///
    /// A segment is closed when the next frame would take it past `rotate_bytes` (header
    /// included); a segment always holds at least one frame, so a frame larger than
    /// `rotate_bytes` gets a segment of its own.
    pub fn create(path: &Path, rotate_bytes: u64) -> Result<LogWriter, RecorderError> {
        let stale = numbered_segments(path)
            .map_err(|source| RecorderError::io("listing old segments of", path, source))?;
        for (_, stale_path) in stale {
            std::fs::remove_file(&stale_path)
                .map_err(|source| RecorderError::io("removing old segment", &stale_path, source))?;
        }
        let (out, header_len) = start_segment(path, 0)?;
        Ok(LogWriter {
            base: path.to_path_buf(),
            rotate_bytes,
            out,
            segment: 0,
            segment_path: path.to_path_buf(),
            segment_bytes: header_len,
            segment_frames: 0,
            stats: WriterStats {
                file_bytes: header_len,
                segments: 1,
                ..WriterStats::default()
            },
        })
    }

    /// Appends one frame holding `payload`, rotating first if the current segment would
    /// exceed the rotation size. Fails with [`RecorderError::PayloadTooLarge`] (writing
    /// nothing) above [`MAX_PAYLOAD`].
    pub fn append(&mut self, payload: &[u8]) -> Result<(), RecorderError> {
        let header = FrameHeader::for_payload(payload).ok_or(RecorderError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD,
        })?;
        let frame_bytes = (FRAME_HEADER_LEN + payload.len()) as u64;
        if self.segment_frames > 0
            && self.segment_bytes.saturating_add(frame_bytes) > self.rotate_bytes
        {
            self.rotate()?;
        }
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            out.write_all(&header.encode())?;
            out.write_all(payload)
        };
        write(&mut self.out)
            .map_err(|source| RecorderError::io("writing", &self.segment_path, source))?;
        self.segment_bytes += frame_bytes;
        self.segment_frames += 1;
        self.stats.frames += 1;
        self.stats.payload_bytes += payload.len() as u64;
        self.stats.file_bytes += frame_bytes;
        Ok(())
    }

    /// Hands everything appended so far to the OS (it survives a crash of this process).
    pub fn flush(&mut self) -> Result<(), RecorderError> {
        self.out
            .flush()
            .map_err(|source| RecorderError::io("writing", &self.segment_path, source))
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

    fn rotate(&mut self) -> Result<(), RecorderError> {
        self.flush()?;
        let next = self
            .segment
            .checked_add(1)
            .ok_or_else(|| RecorderError::SegmentLimit {
                path: self.base.clone(),
            })?;
        let path = segment_path(&self.base, next);
        let (out, header_len) = start_segment(&path, next)?;
        // The old writer was flushed above; dropping it closes the file.
        self.out = out;
        self.segment = next;
        self.segment_path = path;
        self.segment_bytes = header_len;
        self.segment_frames = 0;
        self.stats.segments += 1;
        self.stats.file_bytes += header_len;
        Ok(())
    }
}

/// Creates (truncating) a segment file and writes its header into the buffer.
fn start_segment(path: &Path, index: u32) -> Result<(BufWriter<File>, u64), RecorderError> {
    let file = File::create(path).map_err(|source| RecorderError::io("creating", path, source))?;
    let created_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let header = FileHeader::new(created_ns, index).encode();
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, file);
    out.write_all(&header)
        .map_err(|source| RecorderError::io("writing", path, source))?;
    Ok((out, header.len() as u64))
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

    #[test]
    fn errors_name_the_file() {
        let dir = TestDir::new("err");
        let path = dir.path().join("missing-dir").join("LOG");
        let err = LogWriter::create(&path, 1000).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
