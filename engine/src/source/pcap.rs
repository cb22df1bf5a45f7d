//! Replay source: pcap and pcapng files, memory-mapped and walked in place.
//!
//! A capture is mapped once ([`Capture::open`]) and its frames are handed out as slices of
//! the mapping: no byte of a frame is copied on its way to a worker, which reads it straight
//! from the page cache. Blocks are decoded with the `pcap-parser` crate's slice parsers.
//! Files that cannot be mapped (pipes, say) are read into memory whole instead.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use flowtable::packet::LinkType;
use memmap2::{Mmap, UncheckedAdvice};
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

/// The bytes of a capture file: a read-only mapping of it, or (for what cannot be mapped)
/// a copy read into memory.
pub enum CaptureBytes {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl Deref for CaptureBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            CaptureBytes::Mapped(m) => m,
            CaptureBytes::Read(v) => v,
        }
    }
}

impl CaptureBytes {
    /// Tells the kernel this process is done with `range` for now, so its pages leave the
    /// resident set (they stay in the page cache). Nothing changes for a reader: a page
    /// touched again is mapped again from the file. The range is shrunk to whole pages.
    pub fn release(&self, range: std::ops::Range<usize>) {
        if let CaptureBytes::Mapped(m) = self {
            let start = range.start.next_multiple_of(RELEASE_ALIGN);
            let end = range.end.min(m.len()) & !(RELEASE_ALIGN - 1);
            if start < end {
                // SAFETY: the mapping is read-only and backed by the file (MAP_SHARED, never
                // written), so MADV_DONTNEED only drops page-table entries: later reads of
                // the range fault the same file bytes in again, and no reference into the
                // mapping sees different data. A failure only leaves the pages resident.
                let _ = unsafe {
                    m.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }
}

/// Granularity of [`CaptureBytes::release`]: the page size of common platforms (where pages
/// are larger, the range is widened backwards to a page boundary, which is still released).
const RELEASE_ALIGN: usize = 4096;

/// One capture file, mapped.
pub struct Capture {
    path: PathBuf,
    bytes: std::sync::Arc<CaptureBytes>,
}

/// One frame of a capture: where its captured bytes are and what the capture says of it.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef {
    pub link: LinkType,
    pub ts_ns: u64,
    /// Length of the frame on the wire (may exceed the captured bytes).
    pub wire_len: u32,
    /// Offset of the captured bytes in the file.
    pub offset: usize,
    /// Captured bytes.
    pub caplen: u32,
    /// The interface it was captured on, as the caller of [`Capture::frames`] numbered it.
    pub interface: u16,
}

impl FrameRef {
    /// This frame as a worker takes it, its bytes in `bytes` (the capture it came from).
    #[inline]
    pub fn frame<'a>(&self, bytes: &'a [u8]) -> Frame<'a> {
        Frame {
            link: self.link,
            ts_ns: self.ts_ns,
            wire_len: self.wire_len,
            interface: self.interface,
            bytes: self.bytes(bytes),
        }
    }

    /// The captured bytes of this frame in `bytes` (the capture it came from).
    #[inline]
    pub fn bytes<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        bytes
            .get(self.offset..self.offset + self.caplen as usize)
            .unwrap_or(&[])
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

/// How far ahead of the frame at hand the walk asks for the file's cache lines.
const READ_AHEAD_BYTES: usize = 8 << 10;
/// How far ahead of the frame at hand the walk has the file's pages mapped, and in what
/// steps (the kernel maps 64 KiB of cached file around a fault by default). A prefetch of
/// a page not mapped yet is dropped: without this, the first lines of every newly mapped
/// stretch would be read the slow way.
const MAP_AHEAD_BYTES: usize = 128 << 10;
const MAP_STEP_BYTES: usize = 64 << 10;

/// Bytes walked between calls of the progress callback.
const PROGRESS_BYTES: u64 = 1 << 20;

impl Capture {
    /// Maps `path` (or reads it whole when it cannot be mapped) and checks that it starts
    /// like a pcap or pcapng file.
    ///
    /// The mapping assumes the file is not truncated while it is replayed (a finished
    /// capture): reading a page past a new end would stop the process with SIGBUS.
    pub fn open(path: &Path) -> Result<Capture, CaptureError> {
        let open_err = |source| CaptureError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let mapped = if meta.is_file() && meta.len() > 0 {
            // SAFETY: the file is opened read-only and the mapping is only ever read; other
            // processes changing the file under us is excluded by the documented contract
            // (replay reads finished captures).
            unsafe { Mmap::map(&file) }.ok()
        } else {
            None
        };
        let bytes = match mapped {
            Some(m) => {
                let _ = m.advise(memmap2::Advice::Sequential);
                CaptureBytes::Mapped(m)
            }
            None => {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut v).map_err(open_err)?;
                CaptureBytes::Read(v)
            }
        };
        let capture = Capture {
            path: path.to_path_buf(),
            bytes: std::sync::Arc::new(bytes),
        };
        capture.format()?;
        Ok(capture)
    }

    /// The file's bytes, shared with whoever reads its frames.
    pub fn bytes(&self) -> &std::sync::Arc<CaptureBytes> {
        &self.bytes
    }

    fn format(&self) -> Result<Format, CaptureError> {
        let format_err = |what: String| CaptureError::Format {
            path: self.path.clone(),
            what,
        };
        let b: &[u8] = &self.bytes;
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

    /// Walks every frame in file order and calls `frame` with it; `progress(bytes_walked)`
    /// is called now and then. Frames say which interface they were captured on by the
    /// number `interface_id` gives its name (pcapng `if_name`; `None` for a pcap file or an
    /// unnamed interface). A damaged or cut-short file ends the walk at the damage,
    /// which the stats describe.
    pub fn frames(
        &self,
        interface_id: impl Fn(Option<&str>) -> u16,
        mut frame: impl FnMut(FrameRef),
        mut progress: impl FnMut(u64),
    ) -> CaptureStats {
        let mut stats = CaptureStats::default();
        let base: &[u8] = &self.bytes;
        let offset_of = |s: &[u8]| s.as_ptr() as usize - base.as_ptr() as usize;
        let mut walked: u64 = 0;
        let mut since_progress: u64 = 0;
        let format = match self.format() {
            Ok(f) => f,
            Err(e) => {
                stats.damage = Some(e.to_string());
                return stats;
            }
        };
        let mut rest = base;
        let mut interfaces: Vec<Interface> = Vec::new();
        let unnamed = interface_id(None);
        let mut ng_big_endian = false;
        if let Format::Legacy { header_len, .. } = format {
            rest = base.get(header_len..).unwrap_or(&[]);
        }
        let mut ahead = 0usize;
        let mut mapped = 0usize;
        while !rest.is_empty() {
            let at = base.len() - rest.len();
            if at + MAP_AHEAD_BYTES >= mapped {
                // One read per step: the fault it takes maps the stretch.
                if let Some(b) = base.get(mapped) {
                    std::hint::black_box(*b);
                }
                mapped += MAP_STEP_BYTES;
            }
            let want = (at + READ_AHEAD_BYTES).min(base.len());
            while ahead < want {
                flowtable::prefetch::line(base.as_ptr().wrapping_add(ahead));
                ahead += 64;
            }
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
                            Some(link) => frame(FrameRef {
                                interface: unnamed,
                                ..legacy_frame(link, nanos, &b, offset_of)
                            }),
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
                                        frame(FrameRef {
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
                                        });
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
                                        frame(FrameRef {
                                            link: *link,
                                            ts_ns: 0,
                                            wire_len: spb.origlen,
                                            offset: offset_of(data),
                                            caplen: data.len() as u32,
                                            interface: *id,
                                        });
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
                    let step = (rest.len() - next.len()) as u64;
                    rest = next;
                    walked += step;
                    since_progress += step;
                    if since_progress > PROGRESS_BYTES {
                        progress(walked);
                        since_progress = 0;
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
        progress(base.len() as u64 - rest.len() as u64);
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
    offset_of: impl Fn(&[u8]) -> usize,
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
    let bytes: &[u8] = capture.bytes();
    Ok(capture.frames(
        |_| 0,
        |f| frame(f.link, f.ts_ns, f.wire_len, f.bytes(bytes)),
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
