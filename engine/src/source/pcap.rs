//! Replay source: pcap and pcapng files, read with the `pcap-parser` crate in a streaming
//! buffer (constant memory whatever the file size).

use std::fs::File;
use std::path::{Path, PathBuf};

use flowtable::packet::LinkType;
use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{create_reader, PcapBlockOwned, PcapError};

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

const BUFFER_BYTES: usize = 1 << 22;

struct Interface {
    link: Option<LinkType>,
    /// Timestamp units per second.
    resolution: u64,
    offset_s: i64,
}

/// Reads every frame of `path` in file order and calls `frame(link, ts_ns, wire_len, bytes)`;
/// `progress(bytes_consumed)` is called now and then.
pub fn read_capture(
    path: &Path,
    mut frame: impl FnMut(LinkType, u64, u32, &[u8]),
    mut progress: impl FnMut(u64),
) -> Result<CaptureStats, CaptureError> {
    let file = File::open(path).map_err(|source| CaptureError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = create_reader(BUFFER_BYTES, file).map_err(|e| CaptureError::Format {
        path: path.to_path_buf(),
        what: format!("{e:?}"),
    })?;
    let mut stats = CaptureStats::default();
    let mut legacy_link: Option<LinkType> = None;
    let mut legacy_nanos = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut consumed: u64 = 0;
    let mut since_progress: u64 = 0;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(hdr) => {
                        legacy_link = LinkType::from_linktype(hdr.network.0);
                        legacy_nanos = hdr.is_nanosecond_precision();
                    }
                    PcapBlockOwned::Legacy(b) => {
                        stats.frames += 1;
                        let frac = if legacy_nanos {
                            u64::from(b.ts_usec)
                        } else {
                            u64::from(b.ts_usec) * 1000
                        };
                        let ts = u64::from(b.ts_sec) * 1_000_000_000 + frac;
                        let data = b.data.get(..b.caplen as usize).unwrap_or(b.data);
                        match legacy_link {
                            Some(link) => frame(link, ts, b.origlen, data),
                            None => stats.unsupported_link += 1,
                        }
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            link: LinkType::from_linktype(idb.linktype.0),
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset_s: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        stats.frames += 1;
                        match interfaces.get(epb.if_id as usize) {
                            Some(Interface {
                                link: Some(link),
                                resolution,
                                offset_s,
                            }) => {
                                let ts = ng_ts_ns(epb.ts_high, epb.ts_low, *resolution, *offset_s);
                                frame(*link, ts, epb.origlen, epb.packet_data());
                            }
                            _ => stats.unsupported_link += 1,
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        stats.frames += 1;
                        match interfaces.first() {
                            Some(Interface {
                                link: Some(link), ..
                            }) => frame(*link, 0, spb.origlen, spb.packet_data()),
                            _ => stats.unsupported_link += 1,
                        }
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
                consumed += offset as u64;
                since_progress += offset as u64;
                if since_progress > (1 << 20) {
                    progress(consumed);
                    since_progress = 0;
                }
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                // Once the file is exhausted the reader answers UnexpectedEof instead.
                if let Err(e) = reader.refill() {
                    stats.damage = Some(format!("at byte {consumed}: {e:?}"));
                    break;
                }
            }
            Err(PcapError::UnexpectedEof) => {
                stats.damage = Some(format!("at byte {consumed}: the last block is cut short"));
                break;
            }
            Err(e) => {
                stats.damage = Some(format!("at byte {consumed}: {e:?}"));
                break;
            }
        }
    }
    progress(consumed);
    Ok(stats)
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
