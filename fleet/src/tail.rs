//! Following a log while the recorder writes it.
//!
//! [`recorder::LogReader`] reads a finished log from its start and takes each segment's
//! length once; the exporter needs to start at a saved position and see frames as they are
//! appended. A [`LogTail`] reads frame by frame from a (segment, offset) with positioned
//! reads and looks at the file's length again each time it runs out: a frame is returned
//! once all its bytes are in the file and its CRC matches. It moves to segment `N + 1` only
//! once that file exists: the writer flushes a segment before it creates the next one, so
//! the older segment is complete by then.
//!
//! Damage (a bad sync marker, length or CRC, a truncated frame in a finished segment, a
//! missing segment) is reported once as [`TailItem::Damage`] and skipped the way the reader
//! does it (`recorder/FORMAT.md`, *Resynchronisation*): reading resumes at the next intact
//! frame.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use recorder::format::{
    FileHeader, FrameHeader, FrameProblem, HeaderProblem, FRAME_HEADER_LEN, HEADER_LEN,
    MAX_HEADER_LEN, SYNC,
};
use recorder::segments::segment_path;

/// Bytes read at a time while looking for the next sync marker after damage.
const SCAN_BYTES: usize = 64 * 1024;

/// One intact frame read by a [`LogTail`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailFrame {
    /// The payload (one encoded record).
    pub payload: Vec<u8>,
    /// CRC32 of the payload (from the frame header, checked).
    pub crc: u32,
    /// Segment and byte offset of the frame.
    pub segment: u32,
    pub offset: u64,
    /// Segment and byte offset just after the frame: where reading goes on.
    pub next: (u32, u64),
}

/// What a [`LogTail`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailItem {
    /// An intact frame.
    Frame(TailFrame),
    /// A damaged place, described with its file and byte offset; it is skipped.
    Damage(String),
}

/// Reads a log's frames from a position on, including frames appended later.
#[derive(Debug)]
pub struct LogTail {
    base: PathBuf,
    segment: u32,
    /// Offset of the next frame; 0 before the segment's header has been read.
    offset: u64,
    file: Option<File>,
}

/// The creation time (ns since the epoch) in the header of the log's base file: what tells
/// this log from an earlier one at the same path. `None` while the file is missing or its
/// header is not readable.
pub fn log_created_ns(base: &Path) -> Option<u64> {
    let file = File::open(base).ok()?;
    let mut bytes = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut bytes, 0).ok()?;
    FileHeader::decode(&bytes).ok().map(|h| h.created_ns)
}

impl LogTail {
    /// A tail of the log whose base file is `base`, starting at the frame at `offset` of
    /// `segment` (offset 0: the segment's first frame).
    pub fn new(base: &Path, segment: u32, offset: u64) -> LogTail {
        LogTail {
            base: base.to_path_buf(),
            segment,
            offset,
            file: None,
        }
    }

    /// Where the next frame is looked for: (segment, offset).
    pub fn position(&self) -> (u32, u64) {
        (self.segment, self.offset)
    }

    /// Goes back (or forward) to `offset` of `segment`.
    pub fn seek(&mut self, segment: u32, offset: u64) {
        if segment != self.segment {
            self.file = None;
        }
        self.segment = segment;
        self.offset = offset;
    }

    fn segment_file(&self, index: u32) -> PathBuf {
        segment_path(&self.base, index)
    }

    fn advance(&mut self) {
        self.segment = self.segment.saturating_add(1);
        self.offset = 0;
        self.file = None;
    }

    fn damage(&self, offset: u64, what: impl std::fmt::Display) -> String {
        format!(
            "{}: byte {offset}: {what}",
            self.segment_file(self.segment).display()
        )
    }

    /// The next frame or damage; `Ok(None)` when there is nothing more for now (the end of
    /// what the recorder has written so far). An error is the OS failing to read; calling
    /// again retries.
    pub fn next_item(&mut self) -> io::Result<Option<TailItem>> {
        loop {
            // Looked at before the current segment's length: when the next segment exists,
            // the length read after this is final.
            let next_exists = self.segment_file(self.segment.saturating_add(1)).exists();
            if self.file.is_none() {
                match File::open(self.segment_file(self.segment)) {
                    Ok(f) => self.file = Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Removed before it was exported (retention), or not created yet.
                        let Some(later) = first_segment_after(&self.base, self.segment)? else {
                            return Ok(None);
                        };
                        let what = self.damage(
                            0,
                            format!(
                                "segment missing (next: {later}), its records are not exported"
                            ),
                        );
                        self.seek(later, 0);
                        return Ok(Some(TailItem::Damage(what)));
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(file) = &self.file else {
                return Ok(None);
            };
            let len = file.metadata()?.len();
            if self.offset == 0 {
                let avail = len.min(u64::from(MAX_HEADER_LEN)) as usize;
                if avail < usize::from(HEADER_LEN) {
                    if !next_exists {
                        return Ok(None);
                    }
                    let what = self.damage(
                        0,
                        format!("{}", HeaderProblem::TooShort { len: avail as u64 }),
                    );
                    self.advance();
                    return Ok(Some(TailItem::Damage(what)));
                }
                let mut bytes = vec![0u8; avail];
                file.read_exact_at(&mut bytes, 0)?;
                match FileHeader::decode(&bytes) {
                    Ok(header) => {
                        self.offset = u64::from(header.header_len);
                        if header.segment != self.segment {
                            let what = self.damage(
                                0,
                                HeaderProblem::SegmentMismatch {
                                    expected: self.segment,
                                    found: header.segment,
                                },
                            );
                            return Ok(Some(TailItem::Damage(what)));
                        }
                    }
                    Err(problem @ HeaderProblem::UnsupportedVersion(_)) => {
                        if !next_exists {
                            return Ok(None);
                        }
                        let what = self.damage(0, format!("{problem} (segment skipped)"));
                        self.advance();
                        return Ok(Some(TailItem::Damage(what)));
                    }
                    Err(problem) => return self.resync(len, next_exists, 0, problem.to_string()),
                }
            }
            let offset = self.offset;
            let left = len.saturating_sub(offset);
            if left < FRAME_HEADER_LEN as u64 {
                if !next_exists {
                    return Ok(None);
                }
                let truncated = left > 0;
                let what = self.damage(offset, "truncated frame at the end of the segment");
                self.advance();
                if truncated {
                    return Ok(Some(TailItem::Damage(what)));
                }
                continue;
            }
            match read_frame(file, offset, len)? {
                FrameAt::Intact { payload, crc } => {
                    let end = offset + (FRAME_HEADER_LEN + payload.len()) as u64;
                    self.offset = end;
                    return Ok(Some(TailItem::Frame(TailFrame {
                        payload,
                        crc,
                        segment: self.segment,
                        offset,
                        next: (self.segment, end),
                    })));
                }
                FrameAt::Incomplete if !next_exists => return Ok(None),
                FrameAt::Incomplete => {
                    let what = self.damage(offset, "truncated frame at the end of the segment");
                    self.advance();
                    return Ok(Some(TailItem::Damage(what)));
                }
                FrameAt::Bad(what) => return self.resync(len, next_exists, offset, what),
            }
        }
    }

    /// Damage at `at`: finds the next intact frame after it and goes on from there. In a
    /// segment still being written with no intact frame after the damage yet, it reports
    /// nothing now and looks again at the next call.
    fn resync(
        &mut self,
        len: u64,
        next_exists: bool,
        at: u64,
        what: String,
    ) -> io::Result<Option<TailItem>> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        match scan(file, at + 1, len)? {
            Some(found) => {
                let text = self.damage(at, format!("{what} (resumed at byte {found})"));
                self.offset = found;
                Ok(Some(TailItem::Damage(text)))
            }
            None if next_exists => {
                let text = self.damage(at, format!("{what} (rest of the segment skipped)"));
                self.advance();
                Ok(Some(TailItem::Damage(text)))
            }
            None => Ok(None),
        }
    }
}

/// The lowest index above `index` of a segment of the log at `base` that exists.
fn first_segment_after(base: &Path, index: u32) -> io::Result<Option<u32>> {
    let (Some(dir), Some(name)) = (base.parent(), base.file_name().and_then(|n| n.to_str())) else {
        return Ok(None);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found: Option<u32> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(n) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
            .filter(|f| !f.starts_with('0'))
            .and_then(|f| f.parse::<u32>().ok())
        else {
            continue;
        };
        if n > index && found.is_none_or(|f| n < f) {
            found = Some(n);
        }
    }
    Ok(found)
}

/// What is at a frame offset.
enum FrameAt {
    Intact {
        payload: Vec<u8>,
        crc: u32,
    },
    /// Its bytes are not all in the file (yet).
    Incomplete,
    /// Not a frame: what is wrong.
    Bad(String),
}

fn read_frame(file: &File, offset: u64, len: u64) -> io::Result<FrameAt> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    if len.saturating_sub(offset) < FRAME_HEADER_LEN as u64 {
        return Ok(FrameAt::Incomplete);
    }
    file.read_exact_at(&mut header, offset)?;
    let header = match FrameHeader::decode(&header) {
        Ok(h) => h,
        Err(FrameProblem::BadSync) => return Ok(FrameAt::Bad("bad sync marker".into())),
        Err(FrameProblem::BadLength(n)) => {
            return Ok(FrameAt::Bad(format!("bad frame length {n}")))
        }
    };
    let end = offset + FRAME_HEADER_LEN as u64 + u64::from(header.len);
    if end > len {
        return Ok(FrameAt::Incomplete);
    }
    // Bounded: the length is at most MAX_PAYLOAD and the bytes are in the file.
    let mut payload = vec![0u8; header.len as usize];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER_LEN as u64)?;
    let computed = crc32fast::hash(&payload);
    if computed != header.crc {
        return Ok(FrameAt::Bad(format!(
            "bad checksum: stored {:08x}, computed {computed:08x}",
            header.crc
        )));
    }
    Ok(FrameAt::Intact {
        payload,
        crc: header.crc,
    })
}

/// The offset of the first intact frame at or after `from`, within the first `len` bytes.
fn scan(file: &File, mut from: u64, len: u64) -> io::Result<Option<u64>> {
    let mut chunk = vec![0u8; SCAN_BYTES];
    while from + SYNC.len() as u64 <= len {
        let n = (len - from).min(SCAN_BYTES as u64) as usize;
        file.read_exact_at(&mut chunk[..n], from)?;
        let window = &chunk[..n];
        let mut at = 0;
        while let Some(i) = window
            .get(at..)
            .and_then(|w| w.windows(SYNC.len()).position(|x| x == SYNC))
        {
            let candidate = from + (at + i) as u64;
            if let FrameAt::Intact { .. } = read_frame(file, candidate, len)? {
                return Ok(Some(candidate));
            }
            at += i + 1;
        }
        if n < SCAN_BYTES {
            break;
        }
        // Overlap so a marker across the chunk boundary is found.
        from += (n - (SYNC.len() - 1)) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use recorder::LogWriter;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("conntrail-tail-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn drain(tail: &mut LogTail) -> Vec<TailItem> {
        std::iter::from_fn(|| tail.next_item().expect("reads")).collect()
    }

    fn payloads(items: &[TailItem]) -> Vec<Vec<u8>> {
        items
            .iter()
            .filter_map(|i| match i {
                TailItem::Frame(f) => Some(f.payload.clone()),
                TailItem::Damage(_) => None,
            })
            .collect()
    }

    #[test]
    fn follows_appends_and_rotation_and_resumes_at_a_position() {
        let d = dir("follow");
        let log = d.join("LOG");
        let mut writer = LogWriter::create(&log, 200).expect("create");
        let mut tail = LogTail::new(&log, 0, 0);
        let frame = |i: u8| vec![i; 50];
        writer.append(&frame(0)).expect("append");
        assert!(drain(&mut tail).is_empty(), "nothing flushed yet");
        writer.flush().expect("flush");
        assert_eq!(payloads(&drain(&mut tail)), vec![frame(0)]);
        let mut positions = Vec::new();
        for i in 1..10 {
            writer.append(&frame(i)).expect("append");
            writer.flush().expect("flush");
            let items = drain(&mut tail);
            assert_eq!(payloads(&items), vec![frame(i)], "frame {i}");
            if let TailItem::Frame(f) = &items[0] {
                positions.push(f.next);
            }
        }
        assert!(tail.position().0 >= 3, "rotated segments were followed");
        assert_eq!(log_created_ns(&log).map(|t| t > 0), Some(true));
        // From a saved position: the frames after it, and only those.
        let (segment, offset) = positions[4];
        let mut again = LogTail::new(&log, segment, offset);
        assert_eq!(
            payloads(&drain(&mut again)),
            (6..10).map(frame).collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn damage_is_reported_once_and_skipped() {
        let d = dir("damage");
        let log = d.join("LOG");
        let mut writer = LogWriter::create(&log, 1 << 20).expect("create");
        for i in 0..5u8 {
            writer.append(&[i; 30]).expect("append");
        }
        writer.flush().expect("flush");
        drop(writer);
        // Corrupt the payload of the third frame (header 40, frames of 42 bytes).
        let mut bytes = std::fs::read(&log).expect("read");
        bytes[40 + 2 * 42 + 20] ^= 0xff;
        std::fs::write(&log, &bytes).expect("write");
        let items = drain(&mut LogTail::new(&log, 0, 0));
        assert_eq!(
            payloads(&items),
            vec![vec![0; 30], vec![1; 30], vec![3; 30], vec![4; 30]]
        );
        let damage: Vec<_> = items
            .iter()
            .filter(|i| matches!(i, TailItem::Damage(_)))
            .collect();
        assert_eq!(damage.len(), 1, "{items:?}");
        assert!(
            format!("{:?}", damage[0]).contains("byte 124"),
            "{damage:?}"
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_partly_written_frame_waits_and_a_missing_segment_is_reported() {
        let d = dir("partial");
        let log = d.join("LOG");
        let mut writer = LogWriter::create(&log, 1 << 20).expect("create");
        writer.append(&[7; 30]).expect("append");
        writer.flush().expect("flush");
        drop(writer);
        let full = std::fs::read(&log).expect("read");
        std::fs::write(&log, &full[..full.len() - 5]).expect("cut");
        let mut tail = LogTail::new(&log, 0, 0);
        assert!(
            drain(&mut tail).is_empty(),
            "an incomplete frame is not read yet"
        );
        std::fs::write(&log, &full).expect("complete");
        assert_eq!(payloads(&drain(&mut tail)), vec![vec![7; 30]]);
        // Segment 1 removed while segment 2 exists: reported, then segment 2 is read.
        let mut writer = LogWriter::create(&log, 100).expect("create");
        for i in 0..3u8 {
            writer.append(&[i; 40]).expect("append");
        }
        writer.flush().expect("flush");
        drop(writer);
        let first = drain(&mut LogTail::new(&log, 0, 0));
        assert_eq!(payloads(&first).len(), 3);
        let TailItem::Frame(f) = &first[0] else {
            panic!("a frame first: {first:?}");
        };
        let after_first = f.next;
        std::fs::remove_file(segment_path(&log, 0)).expect("remove");
        std::fs::remove_file(segment_path(&log, 1)).expect("remove");
        let items = drain(&mut LogTail::new(&log, after_first.0, after_first.1));
        assert_eq!(payloads(&items), vec![vec![2; 40]]);
        assert_eq!(items.len(), 2, "{items:?}");
        std::fs::remove_dir_all(&d).ok();
    }
}
