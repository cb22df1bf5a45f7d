//! Replay source: pcap and pcapng files, read in chunks and walked in place.
//!
//! A capture is read with plain `read` calls into a few reused chunks ([`Chunk`]) and its
//! frames are handed out as places in them: no byte of a frame is copied again on its way
//! to a worker. Reading into reused memory costs the kernel one copy per byte; mapping the
//! file instead costs it a page fault, a page-table entry and an unmap per 4 KiB page,
//! measured at about 1.6 times as much for a 750 MB capture in the page cache
//! (benches/RESULTS.md). Blocks are decoded with the `pcap-parser` crate's slice parsers.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowtable::packet::LinkType;
use pcap_parser::pcapng::{parse_block_be, parse_block_le, Block};
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{
    parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified, parse_pcap_header,
    LegacyPcapBlock, PcapError,
};

use crate::worker::Frame;

/// Reading a capture failed before any packet could be delivered.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
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
    /// The file ended in the middle of a block, or a block was damaged: where and why.
    pub damage: Option<String>,
}

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

/// Largest block read whole: a damaged length field claiming more ends the walk there
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
    pub fn frame<'a>(&self, chunk: &'a [u8]) -> Frame<'a> {
        Frame {
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
    /// Opens `path` (a file, or anything `read` works on: a pipe, say) and checks that it
    /// starts like a pcap or pcapng file.
    pub fn open(path: &Path) -> Result<Capture, CaptureError> {
        let open_err = |source| CaptureError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
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
                }),
                Err(e) => Err(format_err(format!("{e:?}"))),
            },
            None => Err(format_err("shorter than a file header".into())),
        }
    }

    /// Walks every frame in file order and calls `frame` with it and the chunk its bytes
    /// are in; `progress(bytes_walked)` is called now and then. Frames say which interface
    /// they were captured on by the number `interface_id` gives its name (pcapng `if_name`;
    /// `None` for a pcap file or an unnamed interface). A damaged or cut-short file ends
    /// the walk at the damage, which the stats describe.
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
                stats.damage = Some(e.to_string());
                return stats;
            }
        };
        let mut chunks = Chunks::new(chunk_bytes);
        let mut eof = false;
        let mut chunk = match chunks.next(&self.head, 0, &mut self.file, &mut eof) {
            Ok(c) => c,
            Err(e) => {
                stats.damage = Some(format!("at byte 0: {e}"));
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
        if let Format::Legacy { header_len, .. } = format {
            pos = header_len.min(chunk.len());
        }
        loop {
            let rest = chunk.get(pos..).unwrap_or(&[]);
            if rest.is_empty() && eof {
                break;
            }
            let at = base + pos as u64;
            let offset_of = |s: &[u8]| (s.as_ptr() as usize - chunk.as_ptr() as usize) as u32;
            let next = match format {
                Format::Legacy {
                    link,
                    nanos,
                    big_endian,
                    modified,
                    ..
                } => {
                    let parsed = if modified {
                        parse_pcap_frame_modified(rest)
                    } else if big_endian {
                        parse_pcap_frame_be(rest)
                    } else {
                        parse_pcap_frame(rest)
                    };
                    parsed.map(|(next, b)| {
                        stats.frames += 1;
                        match link {
                            Some(link) => frame(
                                FrameRef {
                                    interface: unnamed,
                                    ..legacy_frame(link, nanos, &b, offset_of)
                                },
                                &chunk,
                            ),
                            None => stats.unsupported_link += 1,
                        }
                        next
                    })
                }
                Format::PcapNg => {
                    let parsed = if ng_big_endian {
                        parse_block_be(rest)
                    } else {
                        parse_block_le(rest)
                    };
                    parsed.map(|(next, block)| {
                        match block {
                            Block::SectionHeader(shb) => {
                                ng_big_endian = shb.big_endian();
                                interfaces.clear();
                            }
                            Block::InterfaceDescription(idb) => interfaces.push(Interface {
                                link: LinkType::from_linktype(idb.linktype.0),
                                id: interface_id(idb.if_name().and_then(Result::ok)),
                                resolution: idb.ts_resolution().unwrap_or(1_000_000),
                                offset_s: idb.ts_offset(),
                            }),
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
                        next
                    })
                }
            };
            match next {
                Ok(next) => {
                    let step = rest.len() - next.len();
                    pos += step;
                    since_progress += step as u64;
                    if since_progress > PROGRESS_BYTES {
                        progress(base + pos as u64);
                        since_progress = 0;
                    }
                }
                Err(pcap_parser::nom::Err::Incomplete(needed)) if !eof => {
                    // The block goes on past the chunk: carried over to the start of the
                    // next one, which holds it whole (growing if it must).
                    let more = match needed {
                        pcap_parser::nom::Needed::Size(n) => n.get(),
                        pcap_parser::nom::Needed::Unknown => 1,
                    };
                    let need = rest.len().saturating_add(more);
                    if need > MAX_BLOCK_BYTES {
                        stats.damage = Some(format!(
                            "at byte {at}: a block of more than {MAX_BLOCK_BYTES} bytes"
                        ));
                        break;
                    }
                    match chunks.next(rest, need, &mut self.file, &mut eof) {
                        Ok(next) => {
                            base = at;
                            pos = 0;
                            chunk = next;
                        }
                        Err(e) => {
                            stats.damage = Some(format!("at byte {at}: {e}"));
                            break;
                        }
                    }
                }
                Err(pcap_parser::nom::Err::Incomplete(_)) => {
                    stats.damage = Some(format!("at byte {at}: the last block is cut short"));
                    break;
                }
                Err(pcap_parser::nom::Err::Error(e) | pcap_parser::nom::Err::Failure(e)) => {
                    let e: PcapError<&[u8]> = e;
                    stats.damage = Some(format!("at byte {at}: {:?}", e.to_owned_vec()));
                    break;
                }
            }
        }
        progress(base + pos as u64);
        stats
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
    },
    PcapNg,
}

#[inline]
fn legacy_frame(
    link: LinkType,
    nanos: bool,
    b: &LegacyPcapBlock<'_>,
    offset_of: impl Fn(&[u8]) -> u32,
) -> FrameRef {
    let frac = if nanos {
        u64::from(b.ts_usec)
    } else {
        u64::from(b.ts_usec) * 1000
    };
    let data = b.data.get(..b.caplen as usize).unwrap_or(b.data);
    FrameRef {
        link,
        ts_ns: u64::from(b.ts_sec) * 1_000_000_000 + frac,
        wire_len: b.origlen,
        offset: offset_of(data),
        caplen: data.len() as u32,
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
        assert!(stats.damage.is_none());
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
        assert_eq!(
            stats.damage.as_deref(),
            Some(format!("at byte {second_at}: the last block is cut short").as_str())
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
        (seen, stats.frames, stats.damage)
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
