//! The on-disk layout of a log segment: the file header and the frame header.
//! `recorder/FORMAT.md` is the normative description; this module is its only implementation.
//!
//! All integers are little-endian.
//!
//! ```text
//! file header, version 1 (40 bytes)
//!   0   8  magic            b"CONNTRL\0"
//!   8   2  version          1: the frame layout below
//!  10   2  header length    40 in version 1; later minor additions grow it (max 4096)
//!  12   4  flags            0; reserved, ignored by version-1 readers
//!  16   8  created_ns       segment creation time, ns since the Unix epoch
//!  24   4  segment index    0 for the base file, n for `LOG.n`
//!  28   8  reserved         0
//!  36   4  header crc32     crc32 of bytes [0, header length - 4)
//!
//! frame (12-byte header + payload), repeated until the end of the file
//!   0   4  sync marker      bytes D5 C1 3B 9E (u32 0x9E3BC1D5)
//!   4   4  payload length   at most MAX_PAYLOAD
//!   8   4  payload crc32    crc32 (IEEE, as crc32fast) of the payload
//!  12   n  payload          one MessagePack-encoded record, opaque here
//! ```

/// First bytes of every log segment.
pub const MAGIC: [u8; 8] = *b"CONNTRL\0";
/// Format version written by this build; the only one it reads.
pub const VERSION: u16 = 1;
/// Length of the file header written by this build.
pub const HEADER_LEN: u16 = 40;
/// Largest header length a reader accepts (bounds what it reads before the first frame).
pub const MAX_HEADER_LEN: u16 = 4096;
/// Marker that starts every frame; the reader resynchronises on it after damage.
pub const SYNC: [u8; 4] = 0x9E3B_C1D5u32.to_le_bytes();
/// Bytes before the payload in a frame.
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest payload a frame may carry (16 MiB); a larger length field is damage.
pub const MAX_PAYLOAD: u32 = 16 << 20;

/// Bytes of the header the fixed fields of version 1 need (everything but the trailing CRC).
const FIXED_LEN: usize = 36;

/// A decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Format version.
    pub version: u16,
    /// Total header length: where the first frame starts.
    pub header_len: u16,
    /// Segment creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// 0 for the base file, `n` for `LOG.n`.
    pub segment: u32,
}

/// Why a segment's file header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// Fewer bytes than the header needs.
    #[error("file header truncated ({len} bytes)")]
    TooShort {
        /// Bytes available.
        len: u64,
    },
    /// Not a conntrail log.
    #[error("bad magic: not a conntrail log")]
    BadMagic,
    /// Written by a format version this build cannot read.
    #[error("unsupported format version {0} (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    /// The header length field is outside `HEADER_LEN..=MAX_HEADER_LEN`.
    #[error("bad header length {0}")]
    BadHeaderLen(u16),
    /// The header CRC does not match.
    #[error("file header checksum mismatch")]
    BadChecksum,
    /// The header names another segment than the file's name does.
    #[error("header says segment {found}, file name says {expected}")]
    SegmentMismatch {
        /// From the file name.
        expected: u32,
        /// From the header.
        found: u32,
    },
}

impl FileHeader {
    /// A version-1 header for a new segment.
    pub fn new(created_ns: u64, segment: u32) -> FileHeader {
        FileHeader {
            version: VERSION,
            header_len: HEADER_LEN,
            created_ns,
            segment,
        }
    }

    /// The 40 bytes of a version-1 header.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&HEADER_LEN.to_le_bytes());
        // 12..16 flags and 28..36 reserved stay zero.
        out[16..24].copy_from_slice(&self.created_ns.to_le_bytes());
        out[24..28].copy_from_slice(&self.segment.to_le_bytes());
        let crc = crc32fast::hash(&out[..FIXED_LEN]);
        out[FIXED_LEN..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `bytes` (the first bytes of a segment, at least
    /// `header_len` of them when the file is that long). Fields after the version-1 ones, up
    /// to `header_len - 4`, are covered by the CRC and otherwise ignored.
    ///
    /// The CRC is checked before the version: a damaged version field is a damaged header
    /// (whose frames may well be intact), and only a header that is intact and names another
    /// version is [`HeaderProblem::UnsupportedVersion`].
    pub fn decode(bytes: &[u8]) -> Result<FileHeader, HeaderProblem> {
        let too_short = HeaderProblem::TooShort {
            len: bytes.len() as u64,
        };
        let field = |at: usize, len: usize| bytes.get(at..at + len).ok_or(too_short);
        if field(0, 8)? != MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        let version = u16::from_le_bytes(array(field(8, 2)?));
        let header_len = u16::from_le_bytes(array(field(10, 2)?));
        if !(HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) {
            return Err(HeaderProblem::BadHeaderLen(header_len));
        }
        let header = field(0, header_len as usize)?;
        let (covered, crc) = header.split_at(header.len() - 4);
        if crc32fast::hash(covered).to_le_bytes() != crc {
            return Err(HeaderProblem::BadChecksum);
        }
        if version != VERSION {
            return Err(HeaderProblem::UnsupportedVersion(version));
        }
        Ok(FileHeader {
            version,
            header_len,
            created_ns: u64::from_le_bytes(array(field(16, 8)?)),
            segment: u32::from_le_bytes(array(field(24, 4)?)),
        })
    }
}

/// Copies a slice whose length the caller already checked into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// The header of one frame, as stored before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// CRC32 of the payload.
    pub crc: u32,
}

/// Why a frame header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameProblem {
    /// The first four bytes are not [`SYNC`].
    BadSync,
    /// The length is above [`MAX_PAYLOAD`].
    BadLength(u32),
}

impl FrameHeader {
    /// The header for `payload`; `None` when it is longer than [`MAX_PAYLOAD`].
    pub fn for_payload(payload: &[u8]) -> Option<FrameHeader> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len <= MAX_PAYLOAD)?;
        Some(FrameHeader {
            len,
            crc: crc32fast::hash(payload),
        })
    }

    /// The 12 bytes that precede the payload.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..4].copy_from_slice(&SYNC);
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..12].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Parses and checks sync marker and length (the CRC is checked against the payload).
    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FrameProblem> {
        let [s0, s1, s2, s3, l0, l1, l2, l3, c0, c1, c2, c3] = *bytes;
        if [s0, s1, s2, s3] != SYNC {
            return Err(FrameProblem::BadSync);
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len > MAX_PAYLOAD {
            return Err(FrameProblem::BadLength(len));
        }
        Ok(FrameHeader {
            len,
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = FileHeader::new(1_700_000_000_123_456_789, 7);
        assert_eq!(FileHeader::decode(&header.encode()), Ok(header));
    }

    #[test]
    fn header_from_a_later_minor_revision_is_accepted() {
        // A header grown by 8 bytes of new fields before the CRC.
        let mut bytes = FileHeader::new(5, 1).encode()[..FIXED_LEN].to_vec();
        bytes[10..12].copy_from_slice(&48u16.to_le_bytes());
        bytes.extend_from_slice(&[0xAB; 8]);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&SYNC); // the first frame follows
        let header = FileHeader::decode(&bytes).unwrap();
        assert_eq!(header.header_len, 48);
        assert_eq!((header.created_ns, header.segment), (5, 1));
    }

    #[test]
    fn header_problems_are_named() {
        let good = FileHeader::new(1, 0).encode();
        assert_eq!(
            FileHeader::decode(&good[..20]),
            Err(HeaderProblem::TooShort { len: 20 })
        );
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(FileHeader::decode(&bad), Err(HeaderProblem::BadMagic));
        let mut bad = good;
        bad[8] = 2;
        assert_eq!(FileHeader::decode(&bad), Err(HeaderProblem::BadChecksum));
        let crc = crc32fast::hash(&bad[..FIXED_LEN]);
        bad[FIXED_LEN..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            FileHeader::decode(&bad),
            Err(HeaderProblem::UnsupportedVersion(2))
        );
        let mut bad = good;
        bad[10] = 8;
        assert_eq!(
            FileHeader::decode(&bad),
            Err(HeaderProblem::BadHeaderLen(8))
        );
        let mut bad = good;
        bad[20] ^= 1;
        assert_eq!(FileHeader::decode(&bad), Err(HeaderProblem::BadChecksum));
    }

    #[test]
    fn frame_header_round_trips_and_checks() {
        let header = FrameHeader::for_payload(b"record").unwrap();
        let bytes = header.encode();
        assert_eq!(&bytes[..4], &[0xD5, 0xC1, 0x3B, 0x9E]);
        assert_eq!(FrameHeader::decode(&bytes), Ok(header));
        let mut bad = bytes;
        bad[1] = 0;
        assert_eq!(FrameHeader::decode(&bad), Err(FrameProblem::BadSync));
        let mut bad = bytes;
        bad[4..8].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            FrameHeader::decode(&bad),
            Err(FrameProblem::BadLength(MAX_PAYLOAD + 1))
        );
        assert!(FrameHeader::for_payload(&vec![0; MAX_PAYLOAD as usize + 1]).is_none());
    }
}
