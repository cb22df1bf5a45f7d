//! The pcap and pcapng reader: files read in chunks and walked in place.
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

use std::ops::ControlFlow;

use flowtable::packet::LinkType;
use pcap_parser::parse_pcap_header;
use pcap_parser::pcapng::{parse_block_be, parse_block_le, Block};
use pcap_parser::traits::PcapNGPacketBlock;
use recorder::format::MAGIC;

use crate::{STDIN, STDIN_NAME};

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
    #[error(
        "{path}: not a pcap or pcapng file (it is a conntrail log: read it with `conntrail show`)"
    )]
    Log { path: PathBuf },
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
    /// Bytes of the file walked: read, or skipped as damaged.
    pub walked: u64,
    /// The caller stopped the walk before the end of the file.
    pub stopped: bool,
}

impl CaptureStats {
    /// The stats of a capture that could not be read at all, for this reason.
    fn unreadable(what: String) -> CaptureStats {
        let mut stats = CaptureStats::default();
        stats.damaged(Damage {
            offset: 0,
            skipped: 0,
            resumed: false,
            what,
        });
        stats
    }

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
    pub fn buffer(&self) -> &[u8] {
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

    /// The captured bytes of this frame in `chunk` (the chunk it came with).
    #[inline]
    pub fn bytes<'a>(&self, chunk: &'a [u8]) -> &'a [u8] {
        let at = self.offset as usize;
        chunk.get(at..at + self.caplen as usize).unwrap_or(&[])
    }
}

/// An interface as the walk keeps it: what a frame of it needs.
struct Known {
    link: Option<LinkType>,
    /// Its number from the caller's `interface` callback.
    id: u16,
    /// Timestamp units per second.
    resolution: u64,
    offset_s: i64,
}

/// An interface frames were captured on, as the file describes it: a pcapng interface
/// description block, or for a pcap file its file header. The walk tells the caller of each
/// one before any frame of it.
#[derive(Clone, Copy, Debug)]
pub struct InterfaceInfo<'a> {
    /// Its link type number (`LINKTYPE_*`), decoded by conntrail or not.
    pub linktype: u32,
    /// The link type, when conntrail decodes it.
    pub link: Option<LinkType>,
    /// The largest captured length it allows (0: not said).
    pub snaplen: u32,
    /// Its timestamp resolution as the file codes it (`if_tsresol`: 6 is microseconds, 9
    /// nanoseconds).
    pub tsresol: u8,
    /// Timestamp units per second.
    pub resolution: u64,
    /// Seconds added to its timestamps (`if_tsoffset`).
    pub offset_s: i64,
    /// Its name (`if_name`), if it has one.
    pub name: Option<&'a str>,
}

/// A frame's timestamp as the capture stores it, for a writer that copies it unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// A pcap record: seconds and the fraction in its file's unit (micro- or nanoseconds).
    Pcap { secs: u32, frac: u32 },
    /// A pcapng enhanced packet: units of its interface's resolution, offset not applied.
    PcapNg { units: u64 },
    /// A pcapng simple packet block, which has no timestamp.
    None,
}

/// What a pcap or pcapng file is, from its file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A pcap file: one link type, a timestamp precision and a snapshot length.
    Pcap {
        linktype: u32,
        nanos: bool,
        snaplen: u32,
    },
    /// A pcapng file: its interfaces are described inside it.
    PcapNg,
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
        let stdin = path.as_os_str() == STDIN;
        let path = if stdin { Path::new(STDIN_NAME) } else { path };
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

    /// Whether it is a pcap file (with its link type, precision and snapshot length) or a
    /// pcapng file.
    pub fn kind(&self) -> FileKind {
        match self.format() {
            Ok(Format::Legacy {
                linktype,
                nanos,
                snaplen,
                ..
            }) => FileKind::Pcap {
                linktype,
                nanos,
                snaplen,
            },
            _ => FileKind::PcapNg,
        }
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
                    linktype: hdr.network.0 as u32,
                    link: LinkType::from_linktype(hdr.network.0),
                    nanos: hdr.is_nanosecond_precision(),
                    big_endian: hdr.is_bigendian(),
                    modified: hdr.is_modified_format(),
                    header_len: 24,
                    snaplen: hdr.snaplen,
                }),
                Err(_) if b.starts_with(&MAGIC[..b.len().min(MAGIC.len())]) => {
                    Err(CaptureError::Log {
                        path: self.path.clone(),
                    })
                }
                Err(_) => Err(format_err(format!(
                    "it starts with {:02x?} rather than a pcap or pcapng magic number",
                    b.get(..4).unwrap_or(b)
                ))),
            },
            None => Err(format_err("shorter than a file header".into())),
        }
    }

    /// Walks every frame in file order and calls `frame` with it, the chunk its bytes are in
    /// and its timestamp as stored; the walk stops early when `frame` breaks.
    /// `progress(bytes_walked)` is called now and then. Each interface is handed to
    /// `interface` before its first frame, and its frames carry the number that call gave
    /// back. The walk goes on past a damaged record or block where it finds a plausible one
    /// after it; the stats list each damaged place.
    pub fn frames(
        self,
        interface: impl FnMut(&InterfaceInfo<'_>) -> u16,
        frame: impl FnMut(FrameRef, &Arc<Chunk>, Stamp) -> ControlFlow<()>,
        progress: impl FnMut(u64),
    ) -> CaptureStats {
        self.walk(CHUNK_BYTES, interface, frame, progress)
    }

    /// [`Capture::frames`] with chunks of `chunk_bytes`.
    fn walk(
        mut self,
        chunk_bytes: usize,
        mut interface: impl FnMut(&InterfaceInfo<'_>) -> u16,
        mut frame: impl FnMut(FrameRef, &Arc<Chunk>, Stamp) -> ControlFlow<()>,
        mut progress: impl FnMut(u64),
    ) -> CaptureStats {
        let format = match self.format() {
            Ok(f) => f,
            Err(e) => return CaptureStats::unreadable(e.to_string()),
        };
        let mut chunks = Chunks::new(chunk_bytes);
        let mut eof = false;
        let mut chunk = match chunks.next(&self.head, 0, &mut self.file, &mut eof) {
            Ok(c) => c,
            Err(e) => return CaptureStats::unreadable(e.to_string()),
        };
        let mut walk = Walk::new(format);
        if let Some(info) = format.file_interface() {
            walk.file_interface = interface(&info);
        }
        if let Format::Legacy { header_len, .. } = format {
            walk.pos = header_len.min(chunk.len());
        }
        let mut since_progress: u64 = 0;
        loop {
            let rest = chunk.get(walk.pos..).unwrap_or(&[]);
            let at = walk.base + walk.pos as u64;
            if rest.is_empty() && eof {
                walk.end_of_file(at);
                break;
            }
            let step = if let Some(d) = walk.pending.take() {
                walk.resync(d, rest, at, eof, walk.base + chunk.len() as u64)
            } else {
                match format {
                    Format::Legacy { link, nanos, .. } => {
                        walk.legacy(link, nanos, &chunk, rest, eof, &mut frame)
                    }
                    Format::PcapNg => walk.ng(&chunk, rest, at, eof, &mut interface, &mut frame),
                }
            };
            match step {
                Step::Skip(n) | Step::Last(n) => {
                    walk.pos += n;
                    since_progress += n as u64;
                    if since_progress > PROGRESS_BYTES {
                        progress(walk.base + walk.pos as u64);
                        since_progress = 0;
                    }
                    if matches!(step, Step::Last(_)) {
                        walk.stats.stopped = true;
                        break;
                    }
                }
                Step::Damaged(n, what) => {
                    walk.pending = Some(Damage {
                        offset: at,
                        skipped: 0,
                        resumed: false,
                        what,
                    });
                    walk.pos += n.min(rest.len());
                }
                Step::Refill { from, need } => {
                    // What is left from `from` is carried over to the start of the next chunk,
                    // which holds `need` bytes from there (growing if it must).
                    let keep = rest.get(from..).unwrap_or(&[]);
                    let need = need.max(keep.len() + 1);
                    let from_at = at + from as u64;
                    match chunks.next(keep, need, &mut self.file, &mut eof) {
                        Ok(next) => {
                            walk.base = from_at;
                            walk.pos = 0;
                            chunk = next;
                        }
                        Err(e) => {
                            walk.stats.damaged(Damage {
                                offset: from_at,
                                skipped: 0,
                                resumed: false,
                                what: format!("reading stopped: {e}"),
                            });
                            break;
                        }
                    }
                }
                Step::End => break,
            }
        }
        let walked = walk.base + walk.pos as u64;
        progress(walked);
        walk.stats.walked = walked;
        walk.stats
    }
}

/// The state of one walk, apart from the chunk being walked and the file.
struct Walk {
    format: Format,
    /// Read once: the record header's length, the largest captured length, time units.
    limits: (usize, u32, u32),
    /// File offset of the chunk's first byte, and where the walk is in the chunk.
    base: u64,
    pos: usize,
    /// The number the caller gave a pcap file's one interface.
    file_interface: u16,
    /// The interfaces of the pcapng section being walked.
    interfaces: Vec<Known>,
    ng_big_endian: bool,
    /// The damaged place being skipped over, and the seconds of the last good record.
    pending: Option<Damage>,
    last_s: Option<u32>,
    stats: CaptureStats,
}

impl Walk {
    fn new(format: Format) -> Walk {
        Walk {
            format,
            limits: legacy_limits(&format),
            base: 0,
            pos: 0,
            file_interface: 0,
            interfaces: Vec::new(),
            ng_big_endian: false,
            pending: None,
            last_s: None,
            stats: CaptureStats::default(),
        }
    }

    /// The file ends at `at`: a damaged place being skipped over ends there too.
    fn end_of_file(&mut self, at: u64) {
        if let Some(mut d) = self.pending.take() {
            d.skipped = at - d.offset;
            self.stats.damaged(d);
        }
    }

    /// Past the damaged place `d`: looks in `rest` (at file offset `at`; the chunk ends at
    /// `chunk_end`) for the next plausible record or block.
    fn resync(&mut self, mut d: Damage, rest: &[u8], at: u64, eof: bool, chunk_end: u64) -> Step {
        let found = match self.format {
            Format::Legacy { .. } => scan_legacy(&self.format, rest, eof, self.last_s),
            Format::PcapNg => scan_ng(rest, eof, self.ng_big_endian),
        };
        match found {
            Scan::Found(i) => {
                d.skipped = at + i as u64 - d.offset;
                d.resumed = true;
                if d.what == CUT_SHORT {
                    d.what = "a record runs past the end of the file".into();
                }
                self.stats.damaged(d);
                Step::Skip(i)
            }
            Scan::More { from, need } if !eof => {
                self.pending = Some(d);
                Step::Refill { from, need }
            }
            Scan::More { .. } | Scan::None => {
                // Nothing to go on from: the rest of the file is skipped.
                d.skipped = chunk_end - d.offset;
                self.stats.damaged(d);
                self.pos = (chunk_end - self.base) as usize;
                Step::End
            }
        }
    }

    /// The legacy record at the start of `rest`, a part of `chunk`, in a file of `link`
    /// (when decoded) stamped in nanoseconds when `nanos`.
    #[inline]
    fn legacy(
        &mut self,
        link: Option<LinkType>,
        nanos: bool,
        chunk: &Arc<Chunk>,
        rest: &[u8],
        eof: bool,
        frame: &mut impl FnMut(FrameRef, &Arc<Chunk>, Stamp) -> ControlFlow<()>,
    ) -> Step {
        match check_legacy(&self.format, self.limits, rest, eof) {
            // The header is checked and the record is whole in the chunk: the frame is taken
            // from what the check read, without parsing again.
            Check::Good(h) => {
                self.stats.frames += 1;
                self.last_s = Some(h.secs);
                let (header_len, _, _) = self.limits;
                let len = header_len + h.caplen as usize;
                let start = rest.as_ptr() as usize - chunk.as_ptr() as usize;
                let Some(link) = link else {
                    self.stats.unsupported_link += 1;
                    return Step::Skip(len);
                };
                let found = FrameRef {
                    interface: self.file_interface,
                    ..legacy_frame(link, nanos, &h, (start + header_len) as u32)
                };
                let stamp = Stamp::Pcap {
                    secs: h.secs,
                    frac: h.frac,
                };
                match frame(found, chunk, stamp) {
                    ControlFlow::Continue(()) => Step::Skip(len),
                    ControlFlow::Break(()) => Step::Last(len),
                }
            }
            Check::More(need) => Step::Refill { from: 0, need },
            Check::Bad(what) => Step::Damaged(1, what),
        }
    }

    /// The pcapng block at the start of `rest` (at file offset `at`), a part of `chunk`.
    fn ng(
        &mut self,
        chunk: &Arc<Chunk>,
        rest: &[u8],
        at: u64,
        eof: bool,
        interface: &mut impl FnMut(&InterfaceInfo<'_>) -> u16,
        frame: &mut impl FnMut(FrameRef, &Arc<Chunk>, Stamp) -> ControlFlow<()>,
    ) -> Step {
        match check_ng(rest, eof, self.ng_big_endian) {
            Check::Good(()) => {}
            Check::More(need) => return Step::Refill { from: 0, need },
            Check::Bad(what) => return Step::Damaged(4, what),
        }
        let parsed = if self.ng_big_endian {
            parse_block_be(rest)
        } else {
            parse_block_le(rest)
        };
        let (next, block) = match parsed {
            Ok(parsed) => parsed,
            Err(_) => {
                // Both ends agree on its length: only this block is lost.
                let (kind, len) =
                    ng_header(rest, self.ng_big_endian).map_or((0, 4), |h| (h.0, h.1));
                self.stats.damaged(Damage {
                    offset: at,
                    skipped: len as u64,
                    resumed: true,
                    what: format!("block of type {kind:#x} ({len} bytes) is malformed"),
                });
                return Step::Skip(len);
            }
        };
        let len = rest.len() - next.len();
        let offset_of = |s: &[u8]| (s.as_ptr() as usize - chunk.as_ptr() as usize) as u32;
        let (found, stamp) = match block {
            Block::SectionHeader(shb) => {
                self.ng_big_endian = shb.big_endian();
                self.interfaces.clear();
                return Step::Skip(len);
            }
            Block::InterfaceDescription(idb) => {
                let info = InterfaceInfo {
                    linktype: idb.linktype.0 as u32,
                    link: LinkType::from_linktype(idb.linktype.0),
                    snaplen: idb.snaplen,
                    tsresol: idb.if_tsresol,
                    resolution: idb.ts_resolution().unwrap_or(1_000_000),
                    offset_s: idb.ts_offset(),
                    name: idb.if_name().and_then(Result::ok),
                };
                self.interfaces.push(Known {
                    link: info.link,
                    id: interface(&info),
                    resolution: info.resolution,
                    offset_s: info.offset_s,
                });
                return Step::Skip(len);
            }
            Block::EnhancedPacket(epb) => {
                self.stats.frames += 1;
                let Some(Known {
                    link: Some(link),
                    id,
                    resolution,
                    offset_s,
                }) = self.interfaces.get(epb.if_id as usize)
                else {
                    self.stats.unsupported_link += 1;
                    return Step::Skip(len);
                };
                let data = epb.packet_data();
                let found = FrameRef {
                    link: *link,
                    ts_ns: ng_ts_ns(epb.ts_high, epb.ts_low, *resolution, *offset_s),
                    wire_len: epb.origlen,
                    offset: offset_of(data),
                    caplen: data.len() as u32,
                    interface: *id,
                };
                let units = u64::from(epb.ts_high) << 32 | u64::from(epb.ts_low);
                (found, Stamp::PcapNg { units })
            }
            Block::SimplePacket(spb) => {
                self.stats.frames += 1;
                let Some(Known {
                    link: Some(link),
                    id,
                    ..
                }) = self.interfaces.first()
                else {
                    self.stats.unsupported_link += 1;
                    return Step::Skip(len);
                };
                let data = spb.packet_data();
                let found = FrameRef {
                    link: *link,
                    ts_ns: 0,
                    wire_len: spb.origlen,
                    offset: offset_of(data),
                    caplen: data.len() as u32,
                    interface: *id,
                };
                (found, Stamp::None)
            }
            _ => return Step::Skip(len),
        };
        match frame(found, chunk, stamp) {
            ControlFlow::Continue(()) => Step::Skip(len),
            ControlFlow::Break(()) => Step::Last(len),
        }
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
    /// Past a frame of this many bytes, after which the caller stopped the walk.
    Last(usize),
    /// Nothing more can be read.
    End,
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
        /// The file header's link type number, and the link type when we decode it.
        linktype: u32,
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

impl Format {
    /// The one interface of a pcap file, as its file header describes it.
    fn file_interface(&self) -> Option<InterfaceInfo<'static>> {
        let Format::Legacy {
            linktype,
            link,
            nanos,
            snaplen,
            ..
        } = *self
        else {
            return None;
        };
        Some(InterfaceInfo {
            linktype,
            link,
            snaplen,
            tsresol: if nanos { 9 } else { 6 },
            resolution: if nanos { 1_000_000_000 } else { 1_000_000 },
            offset_s: 0,
            name: None,
        })
    }
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
        |f, chunk, _| {
            frame(f.link, f.ts_ns, f.wire_len, f.bytes(chunk));
            ControlFlow::Continue(())
        },
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
            |f, chunk, _| {
                seen.push((f.link, f.ts_ns, f.wire_len, f.bytes(chunk).to_vec()));
                ControlFlow::Continue(())
            },
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
            |f, chunk, _| {
                seen.push(f.bytes(chunk).to_vec());
                ControlFlow::Continue(())
            },
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
