//! Replay source: pcap and pcapng files, read in chunks and walked in place.
//!
//! A capture is read with plain `read` calls into a few reused chunks ([`Chunk`]) and its
//! frames are handed out as places in them: no byte of a frame is copied again on its way
//! to a worker. Reading into reused memory costs the kernel one copy per byte; mapping the
//! file instead costs it a page fault, a page-table entry and an unmap per 4 KiB page,
//! measured at about 1.6 times as much for a 750 MB capture in the page cache
//! (benches/RESULTS.md). Blocks are decoded with the `pcap-parser` crate's slice parsers.
//!
//! A damaged length field does not end the read where the format lets us find our feet
//! again. Each record or block header is checked before it is parsed (a legacy record's
//! captured length against the snapshot length; a pcapng block's type, its total length at
//! both ends); past a bad one the walk scans forward for the next plausible record (two
//! in a row whose lengths and timestamps make sense) or block (a known type whose lengths
//! agree at both ends). Every skipped stretch is a [`Damage`]: byte offset, bytes skipped
//! and why, in our own words and of bounded length.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowtable::packet::LinkType;
use pcap_parser::parse_pcap_header;
use pcap_parser::pcapng::{parse_block_be, parse_block_le, Block};
use pcap_parser::traits::PcapNGPacketBlock;

use crate::worker::SourceFrame;

/// Reading a capture failed before any packet could be delivered.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("opening capture {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a pcap or pcapng file ({what})")]
    Format { path: PathBuf, what: String },
}

/// What reading one capture file found besides its packets.
#[derive(Clone, Debug, Default)]
pub struct CaptureStats {
    pub frames: u64,
    /// Frames of link types we do not decode.
    pub unsupported_link: u64,
    /// The damaged places, in file order (the first [`MAX_DAMAGE_REPORTS`]).
    pub damage: Vec<Damage>,
    /// Damaged places past the first [`MAX_DAMAGE_REPORTS`], counted only.
    pub damage_unlisted: u64,
}

impl CaptureStats {
    fn damaged(&mut self, d: Damage) {
        if self.damage.len() < MAX_DAMAGE_REPORTS {
            self.damage.push(d);
        } else {
            self.damage_unlisted += 1;
        }
    }

    /// Whether any place of the capture was damaged.
    pub fn is_damaged(&self) -> bool {
        !self.damage.is_empty()
    }
}

/// Damaged places of one capture listed one by one; the rest are counted.
pub const MAX_DAMAGE_REPORTS: usize = 100;

/// A damaged place of a capture: where it starts, how many bytes were skipped (to the next
/// plausible record or block, or to the end of the file when none was found) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset in the file of the damaged record or block.
    pub offset: u64,
    /// Bytes not read from there on.
    pub skipped: u64,
    /// Whether the walk found a plausible record or block after the damage and went on.
    pub resumed: bool,
    /// What was wrong, in a few words.
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.what)?;
        if self.resumed {
            write!(
                f,
                "; skipped {} bytes to the next plausible one",
                self.skipped
            )
        } else if self.what == CUT_SHORT {
            Ok(())
        } else {
            write!(f, "; the last {} bytes were not read", self.skipped)
        }
    }
}

/// Why the walk stopped at a record running past the end of the file.
const CUT_SHORT: &str = "the last block is cut short";

/// A stretch of a capture read into memory, shared by the batches whose frames lie in it.
/// The walk takes a chunk again once nobody else holds it.
pub struct Chunk {
    buf: Box<[u8]>,
    len: usize,
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl Chunk {
    /// The whole buffer, read or not: for a frame already handed out, which lies in the
    /// part read, one step less than [`Chunk::deref`] (a worker takes this per frame).
    #[inline]
    pub(crate) fn buffer(&self) -> &[u8] {
        &self.buf
    }
}

/// Bytes a chunk holds (more for a block that does not fit). Small enough that what one
/// `read` copied is still in the reader's cache when the walk gets there.
const CHUNK_BYTES: usize = 256 << 10;

/// Largest block read whole: a length field claiming more is taken as damage (and skipped)
/// rather than reading the rest of a pipe into memory.
const MAX_BLOCK_BYTES: usize = 256 << 20;

/// The chunks of one walk. A chunk is free again when its only holder is this pool, that
/// is once every batch that held it was recycled; the pool grows only while every chunk
/// is held (its size follows the batches in flight, and stays put after the first ones).
struct Chunks {
    pool: Vec<Arc<Chunk>>,
    size: usize,
}

impl Chunks {
    fn new(size: usize) -> Chunks {
        Chunks {
            pool: Vec::new(),
            size,
        }
    }

    /// A free chunk holding `carry` and then what `file` has next, up to the chunk's size
    /// (at least `need` bytes in all); `eof` is set when the file ended.
    fn next(
        &mut self,
        carry: &[u8],
        need: usize,
        file: &mut impl Read,
        eof: &mut bool,
    ) -> std::io::Result<Arc<Chunk>> {
        let at = match self.pool.iter_mut().position(|c| Arc::get_mut(c).is_some()) {
            Some(at) => at,
            None => {
                self.pool.push(Arc::new(Chunk {
                    buf: Box::default(),
                    len: 0,
                }));
                self.pool.len() - 1
            }
        };
        let slot = &mut self.pool[at];
        if let Some(c) = Arc::get_mut(slot) {
            let size = self.size.max(need).max(carry.len());
            if c.buf.len() < size {
                c.buf = vec![0; size].into_boxed_slice();
            }
            c.buf[..carry.len()].copy_from_slice(carry);
            c.len = carry.len();
            while c.len < c.buf.len() && !*eof {
                match file.read(&mut c.buf[c.len..]) {
                    Ok(0) => *eof = true,
                    Ok(n) => c.len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Arc::clone(slot))
    }
}

/// One capture file, opened and checked to start like a pcap or pcapng file.
pub struct Capture {
    path: PathBuf,
    file: File,
    /// The file's first bytes, read to tell its format; the walk starts with them.
    head: Vec<u8>,
}

/// One frame of a capture: where its captured bytes are and what the capture says of it.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef {
    pub link: LinkType,
    pub ts_ns: u64,
    /// Length of the frame on the wire (may exceed the captured bytes).
    pub wire_len: u32,
    /// Offset of the captured bytes in their chunk.
    pub offset: u32,
    /// Captured bytes.
    pub caplen: u32,
    /// The interface it was captured on, as the caller of [`Capture::frames`] numbered it.
    pub interface: u16,
}

impl FrameRef {
    /// No frame: no bytes.
    pub const EMPTY: FrameRef = FrameRef {
        link: LinkType::Ethernet,
        ts_ns: 0,
        wire_len: 0,
        offset: 0,
        caplen: 0,
        interface: 0,
    };

    /// This frame as a worker takes it, its bytes in `chunk` (the chunk it came with).
    #[inline]
    pub fn frame<'a>(&self, chunk: &'a [u8]) -> SourceFrame<'a> {
        SourceFrame {
            link: self.link,
            ts_ns: self.ts_ns,
            wire_len: self.wire_len,
            interface: self.interface,
            bytes: self.bytes(chunk),
        }
    }

    /// The captured bytes of this frame in `chunk` (the chunk it came with).
    #[inline]
    pub fn bytes<'a>(&self, chunk: &'a [u8]) -> &'a [u8] {
        let at = self.offset as usize;
        chunk.get(at..at + self.caplen as usize).unwrap_or(&[])
    }
}

struct Interface {
    link: Option<LinkType>,
    /// Its number from the caller's `interface_id`.
    id: u16,
    /// Timestamp units per second.
    resolution: u64,
    offset_s: i64,
}

/// Bytes walked between calls of the progress callback.
const PROGRESS_BYTES: u64 = 1 << 20;

/// Bytes read at open to tell the format: a legacy pcap file header.
const HEAD_BYTES: usize = 24;

impl Capture {
    /// Opens `path` (a file, or anything `read` works on: a pipe, say; `-` is standard
    /// input, named `<stdin>` in messages) and checks that it starts like a pcap or pcapng
    /// file. The capture is read as a stream, front to back, never sought in: a pipe is
    /// read like a file.
    pub fn open(path: &Path) -> Result<Capture, CaptureError> {
        let stdin = path.as_os_str() == forensics::evidence::STDIN;
        let path = if stdin {
            Path::new(forensics::evidence::STDIN_NAME)
        } else {
            path
        };
        let open_err = |source| CaptureError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = if stdin {
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(open_err)?
        } else {
            File::open(path).map_err(open_err)?
        };
        let mut head = Vec::with_capacity(HEAD_BYTES);
        (&file)
            .take(HEAD_BYTES as u64)
            .read_to_end(&mut head)
            .map_err(open_err)?;
        let capture = Capture {
            path: path.to_path_buf(),
            file,
            head,
        };
        capture.format()?;
        Ok(capture)
    }

    /// The capture's name in messages: its path, or `<stdin>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file system says of the capture's file (of a pipe, for standard input).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    fn format(&self) -> Result<Format, CaptureError> {
        let format_err = |what: String| CaptureError::Format {
            path: self.path.clone(),
            what,
        };
        let b: &[u8] = &self.head;
        match b.get(..4) {
            Some([0x0a, 0x0d, 0x0d, 0x0a]) => Ok(Format::PcapNg),
            Some(_) => match parse_pcap_header(b) {
                Ok((_, hdr)) => Ok(Format::Legacy {
                    link: LinkType::from_linktype(hdr.network.0),
                    nanos: hdr.is_nanosecond_precision(),
                    big_endian: hdr.is_bigendian(),
                    modified: hdr.is_modified_format(),
                    header_len: 24,
                    snaplen: hdr.snaplen,
                }),
                Err(_) if forensics::evidence::is_log_head(b) => Err(format_err(
                    "it is a conntrail log: read it with `conntrail show`".into(),
                )),
                Err(_) => Err(format_err(format!(
                    "it starts with {:02x?} rather than a pcap or pcapng magic number",
                    b.get(..4).unwrap_or(b)
                ))),
            },
            None => Err(format_err("shorter than a file header".into())),
        }
    }

    /// Walks every frame in file order and calls `frame` with it and the chunk its bytes
    /// are in; `progress(bytes_walked)` is called now and then. Frames say which interface
    /// they were captured on by the number `interface_id` gives its name (pcapng `if_name`;
    /// `None` for a pcap file or an unnamed interface). The walk goes on past a damaged
    /// record or block where it finds a plausible one after it; the stats list each damaged
    /// place.
    pub fn frames(
        self,
        interface_id: impl Fn(Option<&str>) -> u16,
        frame: impl FnMut(FrameRef, &Arc<Chunk>),
        progress: impl FnMut(u64),
    ) -> CaptureStats {
        self.walk(CHUNK_BYTES, interface_id, frame, progress)
    }

    /// [`Capture::frames`] with chunks of `chunk_bytes`.
    fn walk(
        mut self,
        chunk_bytes: usize,
        interface_id: impl Fn(Option<&str>) -> u16,
        mut frame: impl FnMut(FrameRef, &Arc<Chunk>),
        mut progress: impl FnMut(u64),
    ) -> CaptureStats {
        let mut stats = CaptureStats::default();
        let format = match self.format() {
            Ok(f) => f,
            Err(e) => {
                let what = match e {
                    CaptureError::Format { what, .. } => what,
                    CaptureError::Open { source, .. } => source.to_string(),
                };
                stats.damaged(Damage {
                    offset: 0,
                    skipped: 0,
                    resumed: false,
                    what,
                });
                return stats;
            }
        };
        let mut chunks = Chunks::new(chunk_bytes);
        let mut eof = false;
        let mut chunk = match chunks.next(&self.head, 0, &mut self.file, &mut eof) {
            Ok(c) => c,
            Err(e) => {
                stats.damaged(Damage {
                    offset: 0,
                    skipped: 0,
                    resumed: false,
                    what: e.to_string(),
                });
                return stats;
            }
        };
        // File offset of the chunk's first byte, and where the walk is in the chunk.
        let mut base: u64 = 0;
        let mut pos = 0usize;
        let mut since_progress: u64 = 0;
        let mut interfaces: Vec<Interface> = Vec::new();
        let unnamed = interface_id(None);
        let mut ng_big_endian = false;
        // The damaged place being skipped over, and the seconds of the last good record.
        let mut pending: Option<Damage> = None;
        let mut last_s: Option<u32> = None;
        // Read once: the record header's length, the largest captured length, time units.
        let limits = legacy_limits(&format);
        if let Format::Legacy { header_len, .. } = format {
            pos = header_len.min(chunk.len());
        }
        loop {
            let rest = chunk.get(pos..).unwrap_or(&[]);
            let at = base + pos as u64;
            if rest.is_empty() && eof {
                if let Some(mut d) = pending.take() {
                    d.skipped = at - d.offset;
                    stats.damaged(d);
                }
                break;
            }
            let step = if let Some(d) = pending.as_mut() {
                let found = match format {
                    Format::Legacy { .. } => scan_legacy(&format, rest, eof, last_s),
                    Format::PcapNg => scan_ng(rest, eof, ng_big_endian),
                };
                match found {
                    Scan::Found(i) => {
                        d.skipped = at + i as u64 - d.offset;
                        d.resumed = true;
                        if d.what == CUT_SHORT {
                            d.what = "a record runs past the end of the file".into();
                        }
                        if let Some(d) = pending.take() {
                            stats.damaged(d);
                        }
                        Step::Skip(i)
                    }
                    Scan::More { from, need } if !eof => Step::Refill { from, need },
                    Scan::More { .. } | Scan::None => {
                        d.skipped = base + chunk.len() as u64 - d.offset;
                        if let Some(d) = pending.take() {
                            stats.damaged(d);
                        }
                        break;
                    }
                }
            } else {
                match format {
                    Format::Legacy { link, nanos, .. } => {
                        match check_legacy(&format, limits, rest, eof) {
                            // The header is checked and the record is whole in the chunk: the
                            // frame is taken from what the check read, without parsing again.
                            Check::Good(h) => {
                                stats.frames += 1;
                                last_s = Some(h.secs);
                                let (header_len, _, _) = limits;
                                let start = rest.as_ptr() as usize - chunk.as_ptr() as usize;
                                match link {
                                    Some(link) => frame(
                                        FrameRef {
                                            interface: unnamed,
                                            ..legacy_frame(
                                                link,
                                                nanos,
                                                &h,
                                                (start + header_len) as u32,
                                            )
                                        },
                                        &chunk,
                                    ),
                                    None => stats.unsupported_link += 1,
                                }
                                Step::Skip(header_len + h.caplen as usize)
                            }
                            Check::More(need) => Step::Refill { from: 0, need },
                            Check::Bad(what) => Step::Damaged(1, what),
                        }
                    }
                    Format::PcapNg => match check_ng(rest, eof, ng_big_endian) {
                        Check::Good(()) => {
                            let parsed = if ng_big_endian {
                                parse_block_be(rest)
                            } else {
                                parse_block_le(rest)
                            };
                            match parsed {
                                Ok((next, block)) => {
                                    let offset_of = |s: &[u8]| {
                                        (s.as_ptr() as usize - chunk.as_ptr() as usize) as u32
                                    };
                                    match block {
                                        Block::SectionHeader(shb) => {
                                            ng_big_endian = shb.big_endian();
                                            interfaces.clear();
                                        }
                                        Block::InterfaceDescription(idb) => {
                                            interfaces.push(Interface {
                                                link: LinkType::from_linktype(idb.linktype.0),
                                                id: interface_id(
                                                    idb.if_name().and_then(Result::ok),
                                                ),
                                                resolution: idb
                                                    .ts_resolution()
                                                    .unwrap_or(1_000_000),
                                                offset_s: idb.ts_offset(),
                                            })
                                        }
                                        Block::EnhancedPacket(epb) => {
                                            stats.frames += 1;
                                            match interfaces.get(epb.if_id as usize) {
                                                Some(Interface {
                                                    link: Some(link),
                                                    id,
                                                    resolution,
                                                    offset_s,
                                                }) => {
                                                    let data = epb.packet_data();
                                                    frame(
                                                        FrameRef {
                                                            link: *link,
                                                            ts_ns: ng_ts_ns(
                                                                epb.ts_high,
                                                                epb.ts_low,
                                                                *resolution,
                                                                *offset_s,
                                                            ),
                                                            wire_len: epb.origlen,
                                                            offset: offset_of(data),
                                                            caplen: data.len() as u32,
                                                            interface: *id,
                                                        },
                                                        &chunk,
                                                    );
                                                }
                                                _ => stats.unsupported_link += 1,
                                            }
                                        }
                                        Block::SimplePacket(spb) => {
                                            stats.frames += 1;
                                            match interfaces.first() {
                                                Some(Interface {
                                                    link: Some(link),
                                                    id,
                                                    ..
                                                }) => {
                                                    let data = spb.packet_data();
                                                    frame(
                                                        FrameRef {
                                                            link: *link,
                                                            ts_ns: 0,
                                                            wire_len: spb.origlen,
                                                            offset: offset_of(data),
                                                            caplen: data.len() as u32,
                                                            interface: *id,
                                                        },
                                                        &chunk,
                                                    );
                                                }
                                                _ => stats.unsupported_link += 1,
                                            }
                                        }
                                        _ => {}
                                    }
                                    Step::Skip(rest.len() - next.len())
                                }
                                Err(_) => {
                                    // Both ends agree on its length: only this block is lost.
                                    let len = ng_header(rest, ng_big_endian).map_or(4, |h| h.1);
                                    stats.damaged(Damage {
                                        offset: at,
                                        skipped: len as u64,
                                        resumed: true,
                                        what: format!(
                                            "block of type {:#x} ({len} bytes) is malformed",
                                            ng_header(rest, ng_big_endian).map_or(0, |h| h.0)
                                        ),
                                    });
                                    Step::Skip(len)
                                }
                            }
                        }
                        Check::More(need) => Step::Refill { from: 0, need },
                        Check::Bad(what) => Step::Damaged(4, what),
                    },
                }
            };
            match step {
                Step::Skip(n) => {
                    pos += n;
                    since_progress += n as u64;
                    if since_progress > PROGRESS_BYTES {
                        progress(base + pos as u64);
                        since_progress = 0;
                    }
                }
                Step::Damaged(n, what) => {
                    pending = Some(Damage {
                        offset: at,
                        skipped: 0,
                        resumed: false,
                        what,
                    });
                    pos += n.min(rest.len());
                }
                Step::Refill { from, need } => {
                    // What is left from `from` is carried over to the start of the next chunk,
                    // which holds `need` bytes from there (growing if it must).
                    let keep = rest.get(from..).unwrap_or(&[]);
                    let need = need.max(keep.len() + 1);
                    let from_at = at + from as u64;
                    match chunks.next(keep, need, &mut self.file, &mut eof) {
                        Ok(next) => {
                            base = from_at;
                            pos = 0;
                            chunk = next;
                        }
                        Err(e) => {
                            stats.damaged(Damage {
                                offset: from_at,
                                skipped: 0,
                                resumed: false,
                                what: format!("reading stopped: {e}"),
                            });
                            break;
                        }
                    }
                }
            }
        }
        progress(base + pos as u64);
        stats
    }
}

/// What the walk does next.
enum Step {
    /// Past a record or block of this many bytes.
    Skip(usize),
    /// A damaged record or block: scan for the next plausible one from this many bytes on.
    Damaged(usize, String),
    /// Read on, keeping the chunk's bytes from `from`: `need` bytes from there.
    Refill { from: usize, need: usize },
}

/// A record or block header at the walk's place, checked before it is parsed.
enum Check<T = ()> {
    /// It is whole and sound; what the check read of it.
    Good(T),
    /// Its header or body goes on past the chunk: this many bytes from its start.
    More(usize),
    Bad(String),
}

/// Where a scan past damage found its feet.
enum Scan {
    /// A plausible record or block starts this many bytes on.
    Found(usize),
    /// The candidate at `from` needs `need` bytes from there to be judged.
    More { from: usize, need: usize },
    /// Nothing plausible up to the end of the file.
    None,
}

/// Largest captured length when a pcap file header says 0 (tcpdump's largest snapshot).
const MAX_SNAPLEN: u32 = 262_144;

/// Seconds within which the record after a damaged place must be stamped, from the last good
/// one, to be taken as the place to go on from.
const RESYNC_WINDOW_S: u32 = 86_400;

/// A legacy record header: seconds, fraction, captured and original length.
#[derive(Clone, Copy)]
struct RecordHeader {
    secs: u32,
    frac: u32,
    caplen: u32,
    origlen: u32,
}

/// The record header at the start of `b`, if it holds one.
fn record_header(format: &Format, b: &[u8]) -> Option<RecordHeader> {
    let Format::Legacy { big_endian, .. } = *format else {
        return None;
    };
    let word = |i: usize| {
        let w: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    };
    Some(RecordHeader {
        secs: word(0)?,
        frac: word(4)?,
        caplen: word(8)?,
        origlen: word(12)?,
    })
}

/// Bytes of a legacy record header, the largest captured length and fraction units.
fn legacy_limits(format: &Format) -> (usize, u32, u32) {
    match *format {
        Format::Legacy {
            nanos,
            modified,
            snaplen,
            ..
        } => (
            if modified { 24 } else { 16 },
            if snaplen == 0 { MAX_SNAPLEN } else { snaplen },
            if nanos { 1_000_000_000 } else { 1_000_000 },
        ),
        Format::PcapNg => (16, MAX_SNAPLEN, 1_000_000),
    }
}

/// Checks the legacy record at the start of `rest` before it is parsed.
#[inline]
fn check_legacy(
    format: &Format,
    (header_len, max_caplen, units): (usize, u32, u32),
    rest: &[u8],
    eof: bool,
) -> Check<RecordHeader> {
    let Some(h) = record_header(format, rest).filter(|_| rest.len() >= header_len) else {
        return if eof {
            Check::Bad(CUT_SHORT.into())
        } else {
            Check::More(header_len)
        };
    };
    if h.caplen > max_caplen {
        return Check::Bad(format!(
            "record length {} is over the snapshot length {max_caplen}",
            h.caplen
        ));
    }
    if h.frac >= units {
        return Check::Bad(format!(
            "record time fraction {} is not below {units}",
            h.frac
        ));
    }
    let len = header_len + h.caplen as usize;
    if rest.len() < len {
        return if eof {
            Check::Bad(CUT_SHORT.into())
        } else {
            Check::More(len)
        };
    }
    Check::Good(h)
}

/// Whether `h` could be a record header stamped near `near_s`.
fn plausible_record(h: &RecordHeader, max_caplen: u32, units: u32, near_s: Option<u32>) -> bool {
    h.caplen <= max_caplen
        && h.caplen <= h.origlen
        && h.origlen <= MAX_SNAPLEN.max(max_caplen)
        && h.frac < units
        && near_s.is_none_or(|s| h.secs.abs_diff(s) <= RESYNC_WINDOW_S)
}

/// The first place in `rest` where a plausible legacy record starts that is followed by
/// another plausible one (or by the end of the file).
fn scan_legacy(format: &Format, rest: &[u8], eof: bool, last_s: Option<u32>) -> Scan {
    let (header_len, max_caplen, units) = legacy_limits(format);
    for i in 0..rest.len() {
        let here = rest.get(i..).unwrap_or(&[]);
        let Some(h) = record_header(format, here).filter(|_| here.len() >= header_len) else {
            return if eof {
                Scan::None
            } else {
                Scan::More {
                    from: i,
                    need: header_len,
                }
            };
        };
        if !plausible_record(&h, max_caplen, units, last_s) {
            continue;
        }
        let end = header_len + h.caplen as usize;
        if here.len() == end && eof {
            return Scan::Found(i);
        }
        let next = here.get(end..).unwrap_or(&[]);
        match record_header(format, next).filter(|_| next.len() >= header_len) {
            Some(n) if plausible_record(&n, max_caplen, units, Some(h.secs)) => {
                return Scan::Found(i)
            }
            Some(_) => {}
            None if eof => {}
            None => {
                return Scan::More {
                    from: i,
                    need: end + header_len,
                }
            }
        }
    }
    if eof {
        Scan::None
    } else {
        Scan::More {
            from: rest.len(),
            need: header_len,
        }
    }
}

/// Block types of pcapng we know (section, interface, packets, names, statistics, journal,
/// secrets, custom).
const NG_BLOCK_TYPES: [u32; 11] = [
    0x0A0D_0D0A,
    1,
    2,
    3,
    4,
    5,
    6,
    9,
    10,
    0x0000_0BAD,
    0x4000_0BAD,
];

/// Largest block taken as the place to go on from after damage.
const MAX_RESYNC_BLOCK: usize = 1 << 20;

/// The type and total length of the pcapng block at the start of `b` (a section header
/// says its own byte order), if `b` holds its first 12 bytes.
fn ng_header(b: &[u8], big_endian: bool) -> Option<(u32, usize, bool)> {
    let word = |i: usize, be: bool| {
        let w: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
        Some(if be {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    };
    let kind = word(0, big_endian)?;
    let be = if kind == 0x0A0D_0D0A {
        match word(8, false)? {
            0x1A2B_3C4D => false,
            0x4D3C_2B1A => true,
            _ => return None,
        }
    } else {
        big_endian
    };
    Some((kind, word(4, be)? as usize, be))
}

/// The total length at the end of the block of `len` bytes at the start of `b`.
fn ng_trailer(b: &[u8], len: usize, big_endian: bool) -> Option<usize> {
    let w: [u8; 4] = b.get(len.checked_sub(4)?..len)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(w)
    } else {
        u32::from_le_bytes(w)
    } as usize)
}

/// Checks the pcapng block at the start of `rest` before it is parsed.
fn check_ng(rest: &[u8], eof: bool, big_endian: bool) -> Check {
    let Some((kind, len, be)) = ng_header(rest, big_endian) else {
        return if rest.len() >= 12 {
            Check::Bad("section header with an unknown byte-order magic".into())
        } else if eof {
            Check::Bad(format!(
                "the file ends inside a block header ({} bytes left)",
                rest.len()
            ))
        } else {
            Check::More(12)
        };
    };
    if len < 12 || len % 4 != 0 {
        return Check::Bad(format!(
            "block of type {kind:#x}: total length {len} is not a multiple of 4 of at least 12"
        ));
    }
    if len > MAX_BLOCK_BYTES {
        return Check::Bad(format!(
            "block of type {kind:#x}: total length {len} is over the largest block read \
             ({MAX_BLOCK_BYTES} bytes)"
        ));
    }
    if rest.len() < len {
        return if eof {
            Check::Bad(format!(
                "block of type {kind:#x}: total length {len} runs past the end of the file ({} \
                 bytes left)",
                rest.len()
            ))
        } else {
            Check::More(len)
        };
    }
    match ng_trailer(rest, len, be) {
        Some(end) if end == len => Check::Good(()),
        end => Check::Bad(format!(
            "block of type {kind:#x}: total length {len} at its start but {} at its end",
            end.unwrap_or(0)
        )),
    }
}

/// The first 4-byte aligned place in `rest` where a block of a known type starts whose
/// lengths agree at both ends.
fn scan_ng(rest: &[u8], eof: bool, big_endian: bool) -> Scan {
    for i in (0..rest.len()).step_by(4) {
        let here = rest.get(i..).unwrap_or(&[]);
        let Some((kind, len, be)) = ng_header(here, big_endian) else {
            if here.len() >= 12 {
                continue;
            }
            return if eof {
                Scan::None
            } else {
                Scan::More { from: i, need: 12 }
            };
        };
        if !NG_BLOCK_TYPES.contains(&kind) || len < 12 || len % 4 != 0 || len > MAX_RESYNC_BLOCK {
            continue;
        }
        if here.len() < len {
            if eof {
                continue;
            }
            return Scan::More { from: i, need: len };
        }
        if ng_trailer(here, len, be) == Some(len) {
            return Scan::Found(i);
        }
    }
    if eof {
        Scan::None
    } else {
        Scan::More {
            from: rest.len() - rest.len() % 4,
            need: 12,
        }
    }
}

#[derive(Clone, Copy)]
enum Format {
    Legacy {
        link: Option<LinkType>,
        nanos: bool,
        big_endian: bool,
        modified: bool,
        header_len: usize,
        /// The file header's snapshot length: the largest captured length (0: unknown).
        snaplen: u32,
    },
    PcapNg,
}

#[inline]
fn legacy_frame(link: LinkType, nanos: bool, h: &RecordHeader, offset: u32) -> FrameRef {
    let frac = if nanos {
        u64::from(h.frac)
    } else {
        u64::from(h.frac) * 1000
    };
    FrameRef {
        link,
        ts_ns: u64::from(h.secs) * 1_000_000_000 + frac,
        wire_len: h.origlen,
        offset,
        caplen: h.caplen,
        interface: 0,
    }
}

/// Reads every frame of `path` in file order and calls `frame(link, ts_ns, wire_len, bytes)`
/// with the frame's bytes in place; `progress(bytes_consumed)` is called now and then.
pub fn read_capture(
    path: &Path,
    mut frame: impl FnMut(LinkType, u64, u32, &[u8]),
    progress: impl FnMut(u64),
) -> Result<CaptureStats, CaptureError> {
    let capture = Capture::open(path)?;
    Ok(capture.frames(
        |_| 0,
        |f, chunk| frame(f.link, f.ts_ns, f.wire_len, f.bytes(chunk)),
        progress,
    ))
}

/// A pcapng timestamp (`high`/`low` units of `1/resolution` s, plus the interface's
/// `offset_s`) as ns since the epoch, exactly as replay computes it.
pub fn ng_ts_ns(high: u32, low: u32, resolution: u64, offset_s: i64) -> u64 {
    let units = u64::from(high) << 32 | u64::from(low);
    let resolution = resolution.max(1);
    let secs = units / resolution;
    let frac = units % resolution;
    let frac_ns = (u128::from(frac) * 1_000_000_000 / u128::from(resolution)) as u64;
    secs.saturating_add_signed(offset_s)
        .saturating_mul(1_000_000_000)
        .saturating_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A nanosecond legacy pcap (raw IP link type) holding `frames`, each stamped 1 s apart.
    fn legacy_pcap(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&101u32.to_le_bytes());
        for (i, f) in frames.iter().enumerate() {
            out.extend_from_slice(&(i as u32 + 1).to_le_bytes());
            out.extend_from_slice(&7u32.to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32 + 10).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn frames_come_in_place_and_a_cut_short_file_reports_where() {
        let dir = std::env::temp_dir().join(format!("conntrail-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("two.pcap");
        let bytes = legacy_pcap(&[&[0x45, 1, 2, 3], &[0x60, 4, 5, 6, 7]]);
        std::fs::write(&path, &bytes).expect("write");
        let mut seen = Vec::new();
        let stats = read_capture(
            &path,
            |link, ts, wire, frame| seen.push((link, ts, wire, frame.to_vec())),
            |_| {},
        )
        .expect("reads");
        assert_eq!(stats.frames, 2);
        assert!(stats.damage.is_empty());
        assert_eq!(
            seen,
            vec![
                (LinkType::RawIp, 1_000_000_007, 14, vec![0x45, 1, 2, 3]),
                (LinkType::RawIp, 2_000_000_007, 15, vec![0x60, 4, 5, 6, 7]),
            ]
        );

        // The second frame loses its last two bytes.
        std::fs::write(&path, &bytes[..bytes.len() - 2]).expect("write");
        let mut n = 0;
        let stats = read_capture(&path, |_, _, _, _| n += 1, |_| {}).expect("reads");
        assert_eq!((n, stats.frames), (1, 1));
        let second_at = 24 + 16 + 4;
        let damage: Vec<String> = stats.damage.iter().map(ToString::to_string).collect();
        assert_eq!(
            damage,
            vec![format!("at byte {second_at}: the last block is cut short")]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The frames of `path` (link, time, wire length, bytes) and what the stats say, walked
    /// with chunks of `chunk_bytes`.
    type Walked = (Vec<(LinkType, u64, u32, Vec<u8>)>, u64, Option<String>);
    fn walked(path: &Path, chunk_bytes: usize) -> Walked {
        let mut seen = Vec::new();
        let stats = Capture::open(path).expect("opens").walk(
            chunk_bytes,
            |_| 0,
            |f, chunk| seen.push((f.link, f.ts_ns, f.wire_len, f.bytes(chunk).to_vec())),
            |_| {},
        );
        let damage: Vec<String> = stats.damage.iter().map(ToString::to_string).collect();
        (
            seen,
            stats.frames,
            (!damage.is_empty()).then(|| damage.join(" / ")),
        )
    }

    /// The frames of `path` and its damaged places, walked with chunks of `chunk_bytes`.
    fn walked_damage(path: &Path, chunk_bytes: usize) -> (Vec<Vec<u8>>, Vec<Damage>) {
        let mut seen = Vec::new();
        let stats = Capture::open(path).expect("opens").walk(
            chunk_bytes,
            |_| 0,
            |f, chunk| seen.push(f.bytes(chunk).to_vec()),
            |_| {},
        );
        (seen, stats.damage)
    }

    /// A capture of the shared corpus: each record's offset and bytes (a little-endian
    /// microsecond pcap).
    fn corpus_records(name: &str) -> (Vec<u8>, Vec<(usize, Vec<u8>)>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/corpus/real")
            .join(name);
        let bytes = std::fs::read(&path).expect("corpus capture");
        assert_eq!(bytes[..4], 0xa1b2_c3d4u32.to_le_bytes());
        let mut records = Vec::new();
        let mut at = 24;
        while at < bytes.len() {
            let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
            records.push((at, bytes[at + 16..at + 16 + caplen].to_vec()));
            at += 16 + caplen;
        }
        (bytes, records)
    }

    #[test]
    fn a_bad_record_length_in_a_pcap_is_skipped_and_the_rest_is_read() {
        let dir = std::env::temp_dir().join(format!("conntrail-resync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("damaged.pcap");
        let (intact, records) = corpus_records("zeek_http_methods.pcap");
        let k = records.len() / 2;
        let (at, _) = records[k];
        for bad in [0xffff_fff0u32, 70_000, 1_000_000] {
            let mut bytes = intact.clone();
            bytes[at + 8..at + 12].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&path, &bytes).expect("write");
            for chunk_bytes in [1000, 4096, 1 << 20] {
                let (seen, damage) = walked_damage(&path, chunk_bytes);
                let mut expected: Vec<Vec<u8>> = records.iter().map(|r| r.1.clone()).collect();
                expected.remove(k);
                assert_eq!(
                    seen.len(),
                    expected.len(),
                    "length {bad}, chunks {chunk_bytes}"
                );
                assert!(seen == expected, "length {bad}, chunks {chunk_bytes}");
                let next = records[k + 1].0;
                assert_eq!(
                    damage,
                    vec![Damage {
                        offset: at as u64,
                        skipped: (next - at) as u64,
                        resumed: true,
                        what: format!("record length {bad} is over the snapshot length 65535"),
                    }],
                    "chunks {chunk_bytes}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_bad_block_length_in_a_pcapng_is_skipped_and_reported_briefly() {
        let dir = std::env::temp_dir().join(format!("conntrail-ngsync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("damaged.pcapng");
        let (_, records) = corpus_records("zeek_http_methods.pcap");
        let frames: Vec<Vec<u8>> = records.iter().map(|r| r.1.clone()).collect();
        let intact = pcapng(&frames);
        // Where each enhanced packet block starts: after the section and interface blocks.
        let mut starts = Vec::new();
        let mut at = 0;
        while at < intact.len() {
            starts.push(at);
            at += u32::from_le_bytes(intact[at + 4..at + 8].try_into().unwrap()) as usize;
        }
        let blocks = &starts[2..];
        assert_eq!(blocks.len(), frames.len());
        let k = frames.len() / 2;
        let at = blocks[k];
        let len = blocks[k + 1] - at;
        for (bad, what) in [
            (
                0xffff_fff0u32,
                "block of type 0x6: total length 4294967280 is over the largest block read"
                    .to_string(),
            ),
            (
                len as u32 + 8,
                format!(
                    "block of type 0x6: total length {} at its start but ",
                    len + 8
                ),
            ),
            (
                7,
                "block of type 0x6: total length 7 is not a multiple of 4 of at least 12".into(),
            ),
        ] {
            let mut bytes = intact.clone();
            bytes[at + 4..at + 8].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&path, &bytes).expect("write");
            for chunk_bytes in [1000, 1 << 20] {
                let (seen, damage) = walked_damage(&path, chunk_bytes);
                let mut expected = frames.clone();
                expected.remove(k);
                assert!(seen == expected, "length {bad}, chunks {chunk_bytes}");
                assert_eq!(damage.len(), 1, "{damage:?}");
                assert_eq!(damage[0].offset, at as u64);
                assert_eq!(damage[0].skipped, len as u64);
                assert!(damage[0].what.starts_with(&what), "{}", damage[0]);
            }
        }
        // A last block claiming more than the file holds: one short message, our words.
        let mut bytes = intact[..blocks[k + 1]].to_vec();
        bytes[at + 4..at + 8].copy_from_slice(&0x0100_0000u32.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let (seen, damage) = walked_damage(&path, 1 << 20);
        assert_eq!(seen, frames[..k]);
        let message = damage[0].to_string();
        assert_eq!(
            message,
            format!(
                "at byte {at}: block of type 0x6: total length 16777216 runs past the end of \
                 the file ({len} bytes left); the last {len} bytes were not read"
            )
        );
        assert!(
            message.len() < 300 && !message.contains("Error(") && !message.contains("Incomplete")
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `frames` as a pcapng file: a section, one interface (nanosecond stamps), one
    /// enhanced packet block per frame, stamped 1 s apart from 1 s.
    fn pcapng(frames: &[Vec<u8>]) -> Vec<u8> {
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::{
            InterfaceDescriptionBlock, InterfaceDescriptionOption,
        };
        use std::borrow::Cow;
        let mut writer = pcap_file::pcapng::PcapNgWriter::new(Vec::new()).expect("pcapng");
        writer
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: pcap_file::DataLink::RAW,
                snaplen: 65535,
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            })
            .expect("writes");
        for (i, f) in frames.iter().enumerate() {
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: std::time::Duration::from_secs(i as u64 + 1),
                    original_len: f.len() as u32 + 10,
                    data: Cow::Borrowed(f),
                    options: Vec::new(),
                })
                .expect("writes");
        }
        writer.into_inner()
    }

    #[test]
    fn chunk_boundaries_change_nothing() {
        let dir = std::env::temp_dir().join(format!("conntrail-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.pcap");
        // Frames from empty to larger than most of the chunk sizes below, each its own bytes.
        let frames: Vec<Vec<u8>> = [0usize, 1, 37, 74, 500, 3, 1500, 9000, 60, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let legacy = legacy_pcap(&refs);
        // Where each record starts in the legacy file, and where the file ends.
        let mut starts = vec![24usize];
        for f in &frames {
            starts.push(starts[starts.len() - 1] + 16 + f.len());
        }
        for file in [legacy.clone(), pcapng(&frames)] {
            std::fs::write(&path, &file).expect("write");
            let (seen, n, damage) = walked(&path, 1 << 20);
            assert_eq!((n, damage), (frames.len() as u64, None));
            for (i, (link, ts, wire, bytes)) in seen.iter().enumerate() {
                assert_eq!(*link, LinkType::RawIp);
                assert_eq!(*wire, frames[i].len() as u32 + 10);
                assert_eq!(bytes, &frames[i]);
                assert_eq!(*ts / 1_000_000_000, i as u64 + 1);
            }
            for chunk_bytes in [1, 2, 15, 16, 17, 64, 100, 1000, 4096] {
                assert_eq!(walked(&path, chunk_bytes), (seen.clone(), n, None));
            }
        }
        // Cut anywhere (every fifth byte, and either side of every record boundary), the
        // legacy file gives the whole records before the cut and says where the first cut
        // one starts, whatever the chunks.
        let mut cuts: Vec<usize> = (24..legacy.len()).step_by(5).collect();
        cuts.extend(starts.iter().flat_map(|&s| [s - 1, s, s + 1]));
        for cut in cuts
            .into_iter()
            .filter(|&c| (24..legacy.len()).contains(&c))
        {
            std::fs::write(&path, &legacy[..cut]).expect("write");
            let whole = starts.iter().skip(1).filter(|&&end| end <= cut).count();
            let damage = (starts[whole] < cut)
                .then(|| format!("at byte {}: the last block is cut short", starts[whole]));
            for chunk_bytes in [1, 16, 100, 4096, 1 << 20] {
                let (seen, n, got) = walked(&path, chunk_bytes);
                assert_eq!((seen.len(), n), (whole, whole as u64), "cut at {cut}");
                assert_eq!(got, damage, "cut at {cut}, chunks of {chunk_bytes}");
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pcapng_timestamps() {
        // microseconds
        assert_eq!(ng_ts_ns(0, 1_500_000, 1_000_000, 0), 1_500_000_000);
        // nanoseconds with an offset
        assert_eq!(
            ng_ts_ns(0, 2_000_000_001, 1_000_000_000, 10),
            12_000_000_001
        );
    }
}
