//! Reading a log back, segment by segment, reporting damage and resynchronising after it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{
    FileHeader, FrameHeader, FrameProblem, HeaderProblem, FRAME_HEADER_LEN, MAX_HEADER_LEN, SYNC,
};
use crate::segments::{numbered_segments, segment_path};
use crate::RecorderError;

/// Bytes read from a segment file at a time.
const WINDOW_BYTES: usize = 64 * 1024;

/// One intact frame of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    /// The payload (one encoded record).
    pub payload: Vec<u8>,
    /// The segment file it was read from.
    pub segment: Arc<Path>,
    /// Index of that segment (0 for the base file).
    pub segment_index: u32,
    /// Byte offset of the frame's sync marker in the segment file.
    pub offset: u64,
}

/// A place where the log is not what the writer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: Arc<Path>,
    /// Byte offset where the damage starts (the frame or header that is wrong).
    pub offset: u64,
    /// What is wrong there.
    pub kind: DamageKind,
    /// Offset of the next intact frame in the same segment, when there is one; everything
    /// between `offset` and it is lost. `None`: nothing more is read from this segment.
    pub resumed_at: Option<u64>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: byte {}: {}",
            self.segment.display(),
            self.offset,
            self.kind
        )?;
        match self.resumed_at {
            Some(at) => write!(f, " (resumed at byte {at})"),
            None => write!(f, " (rest of the segment skipped)"),
        }
    }
}

impl std::error::Error for Damage {}

/// What kind of damage a [`Damage`] is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DamageKind {
    /// The segment's file header is unreadable. Frames are still looked for after it, except
    /// for an unsupported version (whose frames this build cannot read).
    #[error("{0}")]
    BadHeader(HeaderProblem),
    /// The file ends inside a frame.
    #[error("truncated frame: needs {needed} bytes, {available} left in the file")]
    Truncated {
        /// Bytes the frame needs (header, and payload when the header was readable).
        needed: u64,
        /// Bytes left in the file from the frame's start.
        available: u64,
    },
    /// The payload does not match its CRC.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// CRC from the frame header.
        stored: u32,
        /// CRC of the bytes found.
        computed: u32,
    },
    /// The length field is above [`MAX_PAYLOAD`](crate::format::MAX_PAYLOAD).
    #[error("bad payload length {0}")]
    BadLength(u32),
    /// No sync marker where a frame should start.
    #[error("no sync marker where a frame should start")]
    BadSync,
    /// Numbered segments are missing before this one (`count` of them, starting at the
    /// segment named in the damage).
    #[error("{count} segment(s) missing")]
    MissingSegment {
        /// How many consecutive segments are missing.
        count: u32,
    },
    /// The OS failed to read the file.
    #[error("read error: {0}")]
    Io(std::io::ErrorKind),
}

/// What a [`LogReader`] yields.
pub type Item = Result<LogFrame, Damage>;

/// Reads the base file of a log and then its numbered segments in order, yielding every
/// intact frame and a [`Damage`] for everything else. Streaming: it holds one segment file
/// open, a 64 KiB window of it and at most one payload (at most 16 MiB) at a time.
///
/// After damage it looks forward in the same segment for the next sync marker that starts a
/// frame with a valid length and CRC, and resumes there, so one corrupt frame loses only
/// itself. A truncated last frame ends its segment. It never panics on any file contents.
#[derive(Debug)]
pub struct LogReader {
    base: PathBuf,
    /// Segments still to open, with their indices, in order.
    queue: std::vec::IntoIter<(u32, PathBuf)>,
    /// The index the next segment should have (for gap detection).
    expected: u32,
    current: Option<SegmentReader>,
    /// Damage to report before going on (a segment that could not be opened after a gap).
    pending: Option<Damage>,
}

impl LogReader {
    /// Opens the log whose base file is `path`. Fails only when neither the base file nor a
    /// numbered segment can be opened, or the directory cannot be listed; everything about
    /// the contents is reported as [`Damage`] while iterating.
    ///
    /// When retention has deleted the oldest segments (the base file first), reading starts
    /// at the oldest segment left; only gaps after it are damage.
    pub fn open(path: &Path) -> Result<LogReader, RecorderError> {
        let numbered = numbered_segments(path)
            .map_err(|source| RecorderError::io("listing segments of", path, source))?;
        let (current, expected) = match File::open(path) {
            Ok(base_file) => (Some(SegmentReader::new(Arc::from(path), 0, base_file)), 1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !numbered.is_empty() => {
                (None, numbered.first().map_or(1, |(index, _)| *index))
            }
            Err(source) => return Err(RecorderError::io("opening", path, source)),
        };
        Ok(LogReader {
            base: path.to_path_buf(),
            queue: numbered.into_iter(),
            expected,
            current,
            pending: None,
        })
    }

    /// The base path of the log.
    pub fn path(&self) -> &Path {
        &self.base
    }
}

impl Iterator for LogReader {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(damage) = self.pending.take() {
                return Some(Err(damage));
            }
            if let Some(segment) = &mut self.current {
                if let Some(item) = segment.next_item() {
                    return Some(item);
                }
                self.current = None;
            }
            let (index, path) = self.queue.next()?;
            let missing = index.saturating_sub(self.expected);
            let gap = (missing > 0).then(|| Damage {
                segment: Arc::from(segment_path(&self.base, self.expected)),
                offset: 0,
                kind: DamageKind::MissingSegment { count: missing },
                resumed_at: None,
            });
            self.expected = index.saturating_add(1);
            let segment: Arc<Path> = Arc::from(path.as_path());
            match File::open(&path) {
                Ok(file) => self.current = Some(SegmentReader::new(segment, index, file)),
                Err(e) => {
                    self.pending = Some(Damage {
                        segment,
                        offset: 0,
                        kind: DamageKind::Io(e.kind()),
                        resumed_at: None,
                    })
                }
            }
            if let Some(gap) = gap {
                return Some(Err(gap));
            }
        }
    }
}

/// Whether `base` names a log: its base file exists, or (the base file deleted by retention)
/// one of its numbered segments does.
pub fn log_exists(base: &Path) -> bool {
    base.is_file() || numbered_segments(base).is_ok_and(|found| !found.is_empty())
}

/// Where the intact part of segment `file` (at `path`, index `index`) ends, and how many
/// frames it holds: the end of its last intact frame, or of its header when it has no frame.
/// `None` when its header is not a valid header of this version (the file cannot be
/// continued). Bytes after that point are a torn or damaged tail. A read error is an error:
/// what could not be read is not known to be a tail.
pub(crate) fn intact_end(
    file: File,
    path: &Path,
    index: u32,
) -> std::io::Result<Option<(u64, u64)>> {
    let mut segment = SegmentReader::new(Arc::from(path), index, file);
    segment.header_checked = true;
    match segment.check_header() {
        Some(Damage {
            kind: DamageKind::Io(kind),
            ..
        }) => return Err(kind.into()),
        Some(_) => return Ok(None),
        None => {}
    }
    let mut end = segment.position;
    let mut frames = 0u64;
    while let Some(item) = segment.next_item() {
        match item {
            Ok(frame) => {
                end = frame.offset + (FRAME_HEADER_LEN + frame.payload.len()) as u64;
                frames += 1;
            }
            Err(Damage {
                kind: DamageKind::Io(kind),
                ..
            }) => return Err(kind.into()),
            Err(_) => {}
        }
    }
    Ok(Some((end, frames)))
}

/// Reads one segment file.
#[derive(Debug)]
struct SegmentReader {
    path: Arc<Path>,
    index: u32,
    file: WindowedFile,
    /// Offset of the next frame.
    position: u64,
    header_checked: bool,
    /// A frame found by resynchronisation, yielded right after its damage.
    resumed: Option<LogFrame>,
    done: bool,
}

impl SegmentReader {
    fn new(path: Arc<Path>, index: u32, file: File) -> SegmentReader {
        SegmentReader {
            path,
            index,
            file: WindowedFile::new(file),
            position: 0,
            header_checked: false,
            resumed: None,
            done: false,
        }
    }

    fn damage(&self, offset: u64, kind: DamageKind, resumed_at: Option<u64>) -> Damage {
        Damage {
            segment: Arc::clone(&self.path),
            offset,
            kind,
            resumed_at,
        }
    }

    fn next_item(&mut self) -> Option<Item> {
        if let Some(frame) = self.resumed.take() {
            return Some(Ok(frame));
        }
        if self.done {
            return None;
        }
        if !self.header_checked {
            self.header_checked = true;
            if let Some(damage) = self.check_header() {
                return Some(Err(damage));
            }
        }
        if self.position >= self.file.len {
            self.done = true;
            return None;
        }
        let offset = self.position;
        match self.read_frame(offset) {
            Ok(frame) => Some(Ok(frame)),
            Err(kind) => Some(Err(self.resync(offset, kind))),
        }
    }

    /// Reads the file header; on a problem returns its damage (after arranging where to go on).
    fn check_header(&mut self) -> Option<Damage> {
        let len = self.file.len.min(u64::from(MAX_HEADER_LEN)) as usize;
        let mut bytes = vec![0u8; len];
        if let Err(e) = self.file.read_exact_at(0, &mut bytes) {
            self.done = true;
            return Some(self.damage(0, DamageKind::Io(e.kind()), None));
        }
        match FileHeader::decode(&bytes) {
            Ok(header) => {
                self.position = u64::from(header.header_len);
                if header.segment != self.index {
                    let problem = HeaderProblem::SegmentMismatch {
                        expected: self.index,
                        found: header.segment,
                    };
                    return Some(self.damage(
                        0,
                        DamageKind::BadHeader(problem),
                        Some(self.position).filter(|&p| p < self.file.len),
                    ));
                }
                None
            }
            Err(problem @ HeaderProblem::UnsupportedVersion(_)) => {
                self.done = true;
                Some(self.damage(0, DamageKind::BadHeader(problem), None))
            }
            // The frames may be intact: look for them (the frame found, if any, is parked in
            // `resumed` and yielded after this damage).
            Err(problem) => Some(self.resync(0, DamageKind::BadHeader(problem))),
        }
    }

    /// Reads and checks the frame at `offset`; on success moves past it.
    fn read_frame(&mut self, offset: u64) -> Result<LogFrame, DamageKind> {
        let available = self.file.len.saturating_sub(offset);
        if available < FRAME_HEADER_LEN as u64 {
            return Err(DamageKind::Truncated {
                needed: FRAME_HEADER_LEN as u64,
                available,
            });
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.file
            .read_exact_at(offset, &mut header)
            .map_err(|e| DamageKind::Io(e.kind()))?;
        let header = FrameHeader::decode(&header).map_err(|problem| match problem {
            FrameProblem::BadSync => DamageKind::BadSync,
            FrameProblem::BadLength(len) => DamageKind::BadLength(len),
        })?;
        let needed = FRAME_HEADER_LEN as u64 + u64::from(header.len);
        if needed > available {
            return Err(DamageKind::Truncated { needed, available });
        }
        // Bounded: len <= MAX_PAYLOAD and the bytes are in the file.
        let mut payload = vec![0u8; header.len as usize];
        self.file
            .read_exact_at(offset + FRAME_HEADER_LEN as u64, &mut payload)
            .map_err(|e| DamageKind::Io(e.kind()))?;
        let computed = crc32fast::hash(&payload);
        if computed != header.crc {
            return Err(DamageKind::BadChecksum {
                stored: header.crc,
                computed,
            });
        }
        self.position = offset + needed;
        Ok(LogFrame {
            payload,
            segment: Arc::clone(&self.path),
            segment_index: self.index,
            offset,
        })
    }

    /// Reports `kind` at `offset` and looks for the next intact frame after `offset`. When it
    /// finds one, it is parked in `resumed` and reading continues after it; otherwise the
    /// segment is done.
    fn resync(&mut self, offset: u64, kind: DamageKind) -> Damage {
        let give_up = match kind {
            DamageKind::Io(_) => true,
            // Not even a frame header fits: nothing can follow.
            DamageKind::Truncated { needed, .. } => needed == FRAME_HEADER_LEN as u64,
            _ => false,
        };
        let resumed_at = if give_up { None } else { self.scan(offset + 1) };
        if resumed_at.is_none() {
            self.done = true;
        }
        self.damage(offset, kind, resumed_at)
    }

    /// Finds the first intact frame at or after `from`, parks it in `resumed` and returns its
    /// offset. A read error while scanning ends the search.
    fn scan(&mut self, mut from: u64) -> Option<u64> {
        loop {
            let candidate = self.file.find(&SYNC, from).ok()??;
            match self.read_frame(candidate) {
                Ok(frame) => {
                    self.resumed = Some(frame);
                    return Some(candidate);
                }
                Err(DamageKind::Io(_)) => return None,
                Err(_) => from = candidate + 1,
            }
        }
    }
}

/// A file read through a window of [`WINDOW_BYTES`], at absolute offsets. Its length is taken
/// once, when it is opened; bytes appended later are not seen.
#[derive(Debug)]
struct WindowedFile {
    file: File,
    len: u64,
    window: Vec<u8>,
    window_start: u64,
    window_len: usize,
    /// The first read error; the length is unknown (0) then and every read fails.
    broken: Option<std::io::ErrorKind>,
}

impl WindowedFile {
    fn new(file: File) -> WindowedFile {
        let (len, broken) = match file.metadata() {
            Ok(meta) => (meta.len(), None),
            Err(e) => (0, Some(e.kind())),
        };
        WindowedFile {
            file,
            len,
            window: vec![0; WINDOW_BYTES],
            window_start: 0,
            window_len: 0,
            broken,
        }
    }

    /// Fills `out` from `offset`; the caller checked `offset + out.len() <= len`.
    fn read_exact_at(&mut self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        if let Some(kind) = self.broken {
            return Err(kind.into());
        }
        let end = offset + out.len() as u64;
        if offset < self.window_start || end > self.window_start + self.window_len as u64 {
            if out.len() >= WINDOW_BYTES {
                self.file.seek(SeekFrom::Start(offset))?;
                return self.file.read_exact(out);
            }
            self.fill(offset)?;
            if end > self.window_start + self.window_len as u64 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let at = (offset - self.window_start) as usize;
        let bytes = self
            .window
            .get(at..at + out.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    /// Loads the window with the bytes from `offset` (up to the window size or the end).
    fn fill(&mut self, offset: u64) -> std::io::Result<()> {
        let want = self.len.saturating_sub(offset).min(WINDOW_BYTES as u64) as usize;
        self.window_start = offset;
        self.window_len = 0;
        self.file.seek(SeekFrom::Start(offset))?;
        let buffer = &mut self.window[..want];
        let mut got = 0;
        while got < want {
            match self.file.read(&mut buffer[got..]) {
                Ok(0) => break, // the file shrank: report what is there
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.window_len = got;
        Ok(())
    }

    /// Offset of the first occurrence of `pattern` at or after `from`.
    fn find(&mut self, pattern: &[u8; 4], from: u64) -> std::io::Result<Option<u64>> {
        if let Some(kind) = self.broken {
            return Err(kind.into());
        }
        let mut at = from;
        while at.saturating_add(4) <= self.len {
            self.fill(at)?;
            let window = &self.window[..self.window_len];
            if let Some(i) = window.windows(4).position(|w| w == pattern) {
                return Ok(Some(at + i as u64));
            }
            if self.window_len < 4 {
                break;
            }
            // Overlap by 3 bytes so a marker across two windows is seen.
            at += (self.window_len - 3) as u64;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{HEADER_LEN, MAX_PAYLOAD};
    use crate::segments::segment_path;
    use crate::test_dir::TestDir;
    use crate::writer::LogWriter;
    use proptest::prelude::*;

    fn payload(i: u64) -> Vec<u8> {
        let len = (i * 37 % 200) as usize;
        let mut p = i.to_le_bytes().to_vec();
        p.extend((0..len).map(|j| (i as usize * 7 + j) as u8));
        p
    }

    fn write_log(path: &Path, frames: u64, rotate_bytes: u64) -> Vec<Vec<u8>> {
        let mut writer = LogWriter::create(path, rotate_bytes).unwrap();
        let payloads: Vec<_> = (0..frames).map(payload).collect();
        for p in &payloads {
            writer.append(p).unwrap();
        }
        writer.flush().unwrap();
        payloads
    }

    fn read_all(path: &Path) -> Vec<Item> {
        LogReader::open(path).unwrap().collect()
    }

    fn frames(items: &[Item]) -> Vec<Vec<u8>> {
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|f| f.payload.clone())
            .collect()
    }

    fn damages(items: &[Item]) -> Vec<Damage> {
        items.iter().filter_map(|i| i.clone().err()).collect()
    }

    /// Offsets of the frames in a single-segment log.
    fn frame_offsets(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|f| f.offset)
            .collect()
    }

    #[test]
    fn many_frames_round_trip_across_segments() {
        let dir = TestDir::new("roundtrip");
        let path = dir.path().join("tracker.log");
        let written = write_log(&path, 5000, 64 * 1024);
        let items = read_all(&path);
        assert!(damages(&items).is_empty(), "{:?}", damages(&items));
        assert_eq!(frames(&items), written);
        let segments: Vec<u32> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|f| f.segment_index)
            .collect();
        let last = *segments.last().unwrap();
        assert!(last >= 5, "only {} segments", last + 1);
        assert!(segments.windows(2).all(|w| w[0] <= w[1]));
        let first = items[0].as_ref().unwrap();
        assert_eq!((first.offset, &*first.segment), (40, path.as_path()));
        let in_last = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .find(|f| f.segment_index == last)
            .unwrap();
        assert_eq!(&*in_last.segment, segment_path(&path, last));
        assert_eq!(in_last.offset, 40);
    }

    #[test]
    fn empty_log_has_no_items() {
        let dir = TestDir::new("empty");
        let path = dir.path().join("LOG");
        write_log(&path, 0, 1000);
        assert!(read_all(&path).is_empty());
    }

    #[test]
    fn missing_base_file_is_an_error_naming_it() {
        let dir = TestDir::new("nobase");
        let path = dir.path().join("absent.log");
        let err = LogReader::open(&path).unwrap_err();
        assert!(err.to_string().contains("absent.log"), "{err}");
    }

    #[test]
    fn truncation_at_every_byte_of_the_last_frame() {
        let dir = TestDir::new("truncate");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 6, u64::MAX);
        let full = std::fs::read(&path).unwrap();
        let offsets = frame_offsets(&read_all(&path));
        let last = *offsets.last().unwrap();
        for cut in last..full.len() as u64 {
            std::fs::write(&path, &full[..cut as usize]).unwrap();
            let items = read_all(&path);
            assert_eq!(frames(&items), written[..5], "cut at {cut}");
            let damage = damages(&items);
            if cut == last {
                assert!(damage.is_empty(), "a cut between frames is not damage");
                continue;
            }
            assert_eq!(damage.len(), 1, "cut at {cut}: {damage:?}");
            assert_eq!(damage[0].offset, last);
            assert!(
                matches!(damage[0].kind, DamageKind::Truncated { available, .. } if available == cut - last),
                "cut at {cut}: {:?}",
                damage[0]
            );
            assert_eq!(damage[0].resumed_at, None);
            assert!(items.last().unwrap().is_err(), "damage comes last");
        }
    }

    #[test]
    fn corrupt_middle_frame_loses_only_itself() {
        let dir = TestDir::new("crc");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 9, u64::MAX);
        let offsets = frame_offsets(&read_all(&path));
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = offsets[4];
        bytes[middle as usize + FRAME_HEADER_LEN + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let items = read_all(&path);
        let mut expected = written.clone();
        expected.remove(4);
        assert_eq!(frames(&items), expected);
        let damage = damages(&items);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].offset, middle);
        assert!(matches!(damage[0].kind, DamageKind::BadChecksum { .. }));
        assert_eq!(damage[0].resumed_at, Some(offsets[5]));
        assert!(items[4].is_err(), "damage is reported in its place");
    }

    #[test]
    fn bad_sync_and_bad_length_resynchronise() {
        let dir = TestDir::new("sync");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 6, u64::MAX);
        let offsets = frame_offsets(&read_all(&path));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[1] as usize] = 0;
        let len_at = offsets[3] as usize + 4;
        bytes[len_at..len_at + 4].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let items = read_all(&path);
        let expected = [0, 2, 4, 5].map(|i| written[i].clone());
        assert_eq!(frames(&items), expected);
        let damage = damages(&items);
        assert_eq!(damage.len(), 2);
        assert_eq!(
            (damage[0].offset, &damage[0].kind, damage[0].resumed_at),
            (offsets[1], &DamageKind::BadSync, Some(offsets[2]))
        );
        assert_eq!(
            (damage[1].offset, &damage[1].kind, damage[1].resumed_at),
            (
                offsets[3],
                &DamageKind::BadLength(MAX_PAYLOAD + 1),
                Some(offsets[4])
            )
        );
    }

    #[test]
    fn length_pointing_past_the_end_in_the_middle_resynchronises() {
        let dir = TestDir::new("midtrunc");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 5, u64::MAX);
        let offsets = frame_offsets(&read_all(&path));
        let mut bytes = std::fs::read(&path).unwrap();
        let len_at = offsets[1] as usize + 4;
        bytes[len_at..len_at + 4].copy_from_slice(&100_000u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let items = read_all(&path);
        let expected = [0, 2, 3, 4].map(|i| written[i].clone());
        assert_eq!(frames(&items), expected);
        let damage = damages(&items);
        assert_eq!(damage.len(), 1);
        assert!(matches!(damage[0].kind, DamageKind::Truncated { .. }));
        assert_eq!(damage[0].resumed_at, Some(offsets[2]));
    }

    #[test]
    fn garbage_header_is_reported_and_frames_after_it_are_still_read() {
        let dir = TestDir::new("header");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 3, u64::MAX);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..HEADER_LEN as usize].copy_from_slice(&[0x42; HEADER_LEN as usize]);
        std::fs::write(&path, &bytes).unwrap();
        let items = read_all(&path);
        assert_eq!(frames(&items), written);
        let damage = damages(&items);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].offset, 0);
        assert_eq!(
            damage[0].kind,
            DamageKind::BadHeader(HeaderProblem::BadMagic)
        );
        assert_eq!(damage[0].resumed_at, Some(40));
        assert!(items[0].is_err());

        // A file that is garbage throughout: one damage, no frame, no panic.
        std::fs::write(&path, [0x42u8; 1000]).unwrap();
        let items = read_all(&path);
        assert_eq!(items.len(), 1);
        assert_eq!(damages(&items)[0].resumed_at, None);

        // An empty file.
        std::fs::write(&path, []).unwrap();
        assert_eq!(
            damages(&read_all(&path))[0].kind,
            DamageKind::BadHeader(HeaderProblem::TooShort { len: 0 })
        );
    }

    #[test]
    fn every_bit_flip_in_the_header_is_reported_and_every_frame_still_read() {
        let dir = TestDir::new("header-bits");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 50, u64::MAX);
        let good = std::fs::read(&path).unwrap();
        // Every field: magic, version, header length, flags, created_ns, segment index,
        // reserved bytes and the CRC itself.
        for bit in 0..HEADER_LEN as usize * 8 {
            let mut bytes = good.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bytes).unwrap();
            let items = read_all(&path);
            let damage = damages(&items);
            assert_eq!(damage.len(), 1, "bit {bit}: {damage:?}");
            assert!(
                matches!(damage[0].kind, DamageKind::BadHeader(_)),
                "bit {bit}: {:?}",
                damage[0]
            );
            assert_eq!(
                (&*damage[0].segment, damage[0].offset, damage[0].resumed_at),
                (path.as_path(), 0, Some(u64::from(HEADER_LEN))),
                "bit {bit}"
            );
            assert!(
                damage[0]
                    .to_string()
                    .starts_with(&format!("{}: byte 0: ", path.display())),
                "bit {bit}: {}",
                damage[0]
            );
            assert_eq!(frames(&items), written, "bit {bit}");
        }
    }

    #[test]
    fn unsupported_version_skips_the_segment() {
        let dir = TestDir::new("version");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 6, 200);
        let seg1 = segment_path(&path, 1);
        // An intact header of another version (its CRC matches).
        let mut bytes = std::fs::read(&seg1).unwrap();
        bytes[8] = 9;
        let crc = crc32fast::hash(&bytes[..HEADER_LEN as usize - 4]);
        bytes[HEADER_LEN as usize - 4..HEADER_LEN as usize].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&seg1, &bytes).unwrap();
        let items = read_all(&path);
        let damage = damages(&items);
        assert_eq!(damage.len(), 1);
        assert_eq!(
            damage[0].kind,
            DamageKind::BadHeader(HeaderProblem::UnsupportedVersion(9))
        );
        assert_eq!(&*damage[0].segment, seg1);
        let got = frames(&items);
        assert!(got.len() < written.len());
        assert_eq!(got[0], written[0]);
        assert_eq!(got.last(), written.last());
    }

    #[test]
    fn missing_segment_is_reported() {
        let dir = TestDir::new("gap");
        let path = dir.path().join("LOG");
        write_log(&path, 20, 200);
        assert!(segment_path(&path, 4).exists());
        std::fs::remove_file(segment_path(&path, 2)).unwrap();
        std::fs::remove_file(segment_path(&path, 3)).unwrap();
        let damage = damages(&read_all(&path));
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].kind, DamageKind::MissingSegment { count: 2 });
        assert_eq!(&*damage[0].segment, segment_path(&path, 2));
    }

    #[test]
    fn renamed_segment_is_reported_but_read() {
        let dir = TestDir::new("mismatch");
        let path = dir.path().join("LOG");
        let written = write_log(&path, 20, 200);
        std::fs::rename(segment_path(&path, 1), dir.path().join("saved")).unwrap();
        std::fs::copy(segment_path(&path, 2), segment_path(&path, 1)).unwrap();
        std::fs::rename(dir.path().join("saved"), segment_path(&path, 2)).unwrap();
        let items = read_all(&path);
        let damage = damages(&items);
        assert_eq!(damage.len(), 2);
        assert_eq!(
            damage[0].kind,
            DamageKind::BadHeader(HeaderProblem::SegmentMismatch {
                expected: 1,
                found: 2
            })
        );
        assert_eq!(frames(&items).len(), written.len());
    }

    #[test]
    fn a_frame_larger_than_the_window_reads_back() {
        let dir = TestDir::new("bigframe");
        let path = dir.path().join("LOG");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = LogWriter::create(&path, u64::MAX).unwrap();
        writer.append(b"small").unwrap();
        writer.append(&big).unwrap();
        writer.append(b"after").unwrap();
        writer.flush().unwrap();
        assert_eq!(
            frames(&read_all(&path)),
            vec![b"small".to_vec(), big, b"after".to_vec()]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn random_corruption_never_panics_and_keeps_intact_frames(
            frames_n in 1u64..30,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let dir = TestDir::new("fuzz");
            let path = dir.path().join("LOG");
            let written = write_log(&path, frames_n, u64::MAX);
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, value) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            std::fs::write(&path, &bytes).unwrap();
            let items = read_all(&path);
            // Every frame read back is one that was written, in order.
            let got = frames(&items);
            let mut rest = written.iter();
            for frame in &got {
                prop_assert!(rest.any(|w| w == frame), "unexpected or reordered frame");
            }
            // Without any damage to frame bytes, every frame is read.
            if flips.is_empty() && cut.is_none() {
                prop_assert_eq!(&got, &written);
            }
            // Each damage is followed by progress or the end.
            prop_assert!(items.len() <= 2 * written.len() + 2);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dir = TestDir::new("arbitrary");
            let path = dir.path().join("LOG");
            let mut file = FileHeader::new(0, 0).encode().to_vec();
            file.extend_from_slice(&bytes);
            std::fs::write(&path, &file).unwrap();
            let items = read_all(&path);
            // Every damage is followed by a frame (at least 12 bytes) or the end.
            prop_assert!(items.len() <= 2 * (bytes.len() / FRAME_HEADER_LEN) + 1);
            std::fs::write(&path, &bytes).unwrap();
            let _ = read_all(&path);
        }
    }
}
