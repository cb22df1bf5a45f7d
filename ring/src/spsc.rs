//! The single-producer single-consumer byte-frame ring and its shared-memory file.
//!
//! # File layout (version 2, little-endian / native atomics)
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"CTRLRING"
//!      8     4  version (2)
//!     12     4  header length (512): where the data area starts
//!     16     8  capacity of the data area in bytes (power of two, 64 ..= 2 GiB)
//!     24     8  creation time, ns since the Unix epoch (tells incarnations apart)
//!    128     8  head: AtomicU64, bytes ever published by the producer   (own cache lines)
//!    256     8  tail: AtomicU64, bytes ever released by the consumer   (own cache lines)
//!    384     8  producer attached: AtomicU64, 1 from `create` until the producer is dropped
//!    512  cap   data area
//! ```
//!
//! `head` and `tail` only grow; `position & (capacity - 1)` is the index in the data area.
//! Both are multiples of 8, `tail <= head <= tail + capacity`. Version 1 (frames without a
//! CRC) is refused by [`open`].
//!
//! # Frames in the data area
//!
//! Every record starts at an 8-byte aligned index:
//!
//! ```text
//! offset   size  field
//!      0      4  len: payload bytes
//!      4      4  check: len ^ CHECK_KEY (the framing: a bad length is never followed)
//!      8    len  payload
//!  8+len      4  crc: CRC-32 (IEEE, as crc32fast) of the 4 len bytes, then the payload
//! 12+len  0..=7  padding up to the next multiple of 8
//! ```
//!
//! A record never wraps: when it does not fit between its index and the end of the data
//! area, the producer writes a padding header (`len = u32::MAX`, with its check word) there
//! and puts the record at index 0. Hence the consumer always hands out one contiguous slice,
//! and [`Producer::max_frame`] is `capacity / 2 - 12` (the largest frame that fits in an
//! empty ring wherever its head stands).
//!
//! A record whose header fails its check word stops the consumer ([`Corruption`]): past a
//! bad length nothing says where the next record starts. A record whose header is sound but
//! whose CRC does not match is skipped: it is never handed out, the consumer counts it
//! ([`ChecksumFailures`]) and goes on with the next record.
//!
//! # Memory ordering
//!
//! The producer writes the record bytes, then stores `head` with `Release`. The consumer loads
//! `head` with `Acquire`, reads the records, then stores `tail` with `Release`; the producer
//! loads `tail` with `Acquire` before reusing that space. Each side caches the other's
//! position and reloads it only when it seems to have run out of frames or space.
//!
//! # Untrusted file contents
//!
//! After a crash the file is read by another process ([`open`]). The header is validated
//! there (and the file must be a regular file of this user, writable by no one else), every
//! frame header is validated before its bytes are read, and every payload is checked against
//! its CRC before it is handed out. An inconsistent position or frame header turns the
//! consumer into a [`Corruption`] state where it reports empty; a payload that fails its CRC
//! is skipped and counted.

#[cfg(not(loom))]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// First 8 bytes of a ring file.
pub const MAGIC: [u8; 8] = *b"CTRLRING";
/// Layout version written by [`create`] and the only one [`open`] accepts (2: frames carry a
/// CRC).
pub const VERSION: u32 = 2;
/// Bytes before the data area.
pub const HEADER_LEN: usize = 512;
/// Smallest data area; smaller requests are rounded up to it.
pub const MIN_CAPACITY: usize = 64;
/// Largest data area (2 GiB), so every length fits a `u32` with room for the padding marker.
pub const MAX_CAPACITY: usize = 1 << 31;

#[cfg(not(loom))]
const OFF_MAGIC: usize = 0;
#[cfg(not(loom))]
const OFF_VERSION: usize = 8;
#[cfg(not(loom))]
const OFF_HEADER_LEN: usize = 12;
#[cfg(not(loom))]
const OFF_CAPACITY: usize = 16;
#[cfg(not(loom))]
const OFF_CREATED_NS: usize = 24;
#[cfg(not(loom))]
const OFF_HEAD: usize = 128;
#[cfg(not(loom))]
const OFF_TAIL: usize = 256;
#[cfg(not(loom))]
const OFF_PRODUCER: usize = 384;

/// Size of the per-frame header in the data area.
const FRAME_HEADER: usize = 8;
/// Size of the CRC after each frame's payload.
const FRAME_CRC: usize = 4;
/// Frame length value of a padding record (skip to index 0).
const PAD: u32 = u32::MAX;
/// XORed into a frame length to form its check word, so zeroed or stray bytes never pass.
const CHECK_KEY: u32 = 0xC7A1_5EED;

/// The frame did not go into the ring: it is larger than [`Producer::max_frame`] or there is
/// not enough free space right now. The ring is unchanged; the caller counts the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring full: frame dropped")]
pub struct Full;

/// Errors of [`create`] and [`open`].
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The ring file could not be created, sized, opened or mapped.
    #[error("ring file {}: {error}", path.display())]
    Io {
        /// The ring file.
        path: PathBuf,
        /// What the OS said (in the message, so not a `source`).
        error: std::io::Error,
    },
    /// The requested capacity is 0 or larger than [`MAX_CAPACITY`].
    #[error("ring capacity {requested} bytes is outside 1..={MAX_CAPACITY}")]
    Capacity {
        /// What the caller asked for.
        requested: usize,
    },
    /// [`create`] found a file (or a symbolic link) at the path: it never replaces one.
    #[error("ring file {} already exists; a ring is only ever created as a new file", path.display())]
    Exists {
        /// The ring file.
        path: PathBuf,
    },
    /// The file system of the ring file has not enough free space for the whole ring.
    #[error(
        "ring file {}: not enough space: the ring needs {needed} bytes, its file system has {available} bytes free",
        path.display()
    )]
    NoSpace {
        /// The ring file (removed again).
        path: PathBuf,
        /// Bytes of the whole file, header and data area.
        needed: u64,
        /// Bytes free for this user on its file system.
        available: u64,
    },
    /// [`open`] will not read this file: its frames could have been put there by someone else.
    #[error("ring file {} refused: {why}", path.display())]
    Refused {
        /// The ring file.
        path: PathBuf,
        /// Why.
        why: Refusal,
    },
    /// The file is not a ring this version can read, or its positions are inconsistent.
    #[error("ring file {}: {problem}", path.display())]
    Corrupt {
        /// The ring file.
        path: PathBuf,
        /// What is wrong with it.
        problem: Corruption,
    },
}

/// Why [`open`] refuses a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A symbolic link, directory, FIFO, ...
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Owned by another user.
    #[error("it is owned by uid {owner}, not by this process's uid {euid}")]
    Owner {
        /// The file's owner.
        owner: u32,
        /// The effective uid of this process.
        euid: u32,
    },
    /// Group or others may write it.
    #[error("its mode {mode:04o} lets group or others write it")]
    Writable {
        /// Permission bits.
        mode: u32,
    },
}

/// Something in a ring file that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The file is shorter than the ring header.
    #[error("file is {len} bytes, shorter than the {HEADER_LEN}-byte ring header")]
    TooShort {
        /// File length.
        len: u64,
    },
    /// The magic bytes are not [`MAGIC`].
    #[error("not a conntrail ring file (bad magic)")]
    BadMagic,
    /// A layout version this build does not read (1: an older conntrail's ring, whose frames
    /// carry no CRC).
    #[error("ring format version {0}, this build reads only version {VERSION}")]
    Version(u32),
    /// The header length field is not [`HEADER_LEN`].
    #[error("bad header length {0}")]
    HeaderLen(u32),
    /// The capacity is not a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
    #[error("bad capacity {0}")]
    Capacity(u64),
    /// The file length does not match header length plus capacity.
    #[error("file is {actual} bytes, the header implies {expected}")]
    FileSize {
        /// Header length plus capacity.
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// `head` and `tail` cannot both be right.
    #[error("inconsistent positions: head {head}, tail {tail}")]
    Positions {
        /// Producer position.
        head: u64,
        /// Consumer position.
        tail: u64,
    },
    /// A frame header in the data area is invalid.
    #[error("bad frame at ring position {position}: {what}")]
    Frame {
        /// Ring position (not index) of the frame header.
        position: u64,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// Bytes a frame of `len` payload bytes occupies in the data area (header, CRC and padding).
#[inline]
const fn record_len(len: usize) -> usize {
    (FRAME_HEADER + len + FRAME_CRC + 7) & !7
}

/// The CRC of a frame: over its 4 length bytes, then its payload.
#[inline]
fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

#[inline]
fn frame_header(len: u32) -> [u8; FRAME_HEADER] {
    let mut header = [0u8; FRAME_HEADER];
    let (len_bytes, check_bytes) = header.split_at_mut(4);
    len_bytes.copy_from_slice(&len.to_le_bytes());
    check_bytes.copy_from_slice(&(len ^ CHECK_KEY).to_le_bytes());
    header
}

/// Returns the frame length, or `None` when the check word does not match.
#[inline]
fn parse_frame_header(header: [u8; FRAME_HEADER]) -> Option<u32> {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let check = u32::from_le_bytes([c0, c1, c2, c3]);
    (check == len ^ CHECK_KEY).then_some(len)
}

#[inline]
fn max_frame_for(capacity: usize) -> usize {
    capacity / 2 - FRAME_HEADER - FRAME_CRC
}

// ---------------------------------------------------------------------------------------------
// The memory both sides share: a mapped file, or (under loom) a heap model of it.
// ---------------------------------------------------------------------------------------------

#[cfg(not(loom))]
struct Region {
    map: memmap2::MmapRaw,
    capacity: usize,
}

#[cfg(not(loom))]
impl Region {
    /// Maps `file`, whose length the caller checked to be at least [`HEADER_LEN`].
    fn map(file: &std::fs::File, capacity: usize) -> std::io::Result<Region> {
        let map = memmap2::MmapRaw::map_raw(file)?;
        if map.len() < HEADER_LEN + capacity {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "mapping shorter than the ring",
            ));
        }
        Ok(Region { map, capacity })
    }

    fn atomic(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset % 8 == 0 && offset + 8 <= HEADER_LEN);
        // SAFETY: `offset` is one of the OFF_* header constants: 8-aligned and within the
        // first HEADER_LEN bytes of a page-aligned mapping at least that long (checked in
        // `map`), which lives as long as `self`. AtomicU64 has the layout of u64, and every
        // access to these 8 bytes, in every process, goes through atomics (or happens before
        // the ring is shared, in `create`).
        unsafe { &*(self.map.as_mut_ptr().add(offset) as *const AtomicU64) }
    }

    /// Copies `N` bytes out of the header.
    fn header_bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        assert!(offset + N <= HEADER_LEN);
        let mut out = [0u8; N];
        // SAFETY: the range is inside the header (asserted) and the mapping is at least
        // HEADER_LEN long. Non-atomic header fields are written only in `create`, before the
        // ring is handed out, so nothing writes them concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), out.as_mut_ptr(), N)
        };
        out
    }

    /// Writes into the header. Only called by `create` before the ring is handed out.
    fn write_header(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= HEADER_LEN);
        // SAFETY: the range is inside the header (asserted) of a mapping at least HEADER_LEN
        // long; `create` made the file exclusively and has not handed it out yet, so no one
        // else reads or writes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    /// Copies `src` into the data area at `index`.
    ///
    /// # Safety
    /// `index + src.len() <= capacity`, and the bytes are in the part of the ring the
    /// producer owns (between head and tail + capacity), so the consumer does not read them.
    #[inline]
    unsafe fn write(&self, index: usize, src: &[u8]) {
        debug_assert!(index + src.len() <= self.capacity);
        // SAFETY: the caller's contract: the destination lies inside the mapping's data area
        // and no one else touches it; `src` is a distinct slice of ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.map.as_mut_ptr().add(HEADER_LEN + index),
                src.len(),
            );
        }
    }

    /// Hands `len` bytes of the data area at `index` to `f`.
    ///
    /// # Safety
    /// `index + len <= capacity`, and the bytes are published and not yet released (between
    /// tail and head), so the producer does not write them while `f` runs.
    #[inline]
    unsafe fn with_slice<R>(&self, index: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        debug_assert!(index + len <= self.capacity);
        // SAFETY: the caller's contract: the bytes lie inside the mapping's data area and the
        // producer does not write them while the slice lives (only during `f`).
        let bytes =
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(HEADER_LEN + index), len) };
        f(bytes)
    }

    fn head(&self) -> &AtomicU64 {
        self.atomic(OFF_HEAD)
    }

    fn tail(&self) -> &AtomicU64 {
        self.atomic(OFF_TAIL)
    }

    fn producer_attached(&self) -> &AtomicU64 {
        self.atomic(OFF_PRODUCER)
    }
}

/// Heap model of the shared region for loom: loom atomics for the positions and loom cells for
/// every data byte, so loom sees each access and can report races.
#[cfg(loom)]
struct Region {
    head: AtomicU64,
    tail: AtomicU64,
    producer: AtomicU64,
    bytes: Box<[loom::cell::UnsafeCell<u8>]>,
    capacity: usize,
}

// SAFETY: the data cells are accessed under the SPSC protocol only (the producer writes the free
// part, the consumer reads the published part), which is exactly what the loom model checks.
#[cfg(loom)]
unsafe impl Sync for Region {}
// SAFETY: as above; the region owns its cells.
#[cfg(loom)]
unsafe impl Send for Region {}

#[cfg(loom)]
impl Region {
    unsafe fn write(&self, index: usize, src: &[u8]) {
        for (cell, byte) in self.bytes[index..index + src.len()].iter().zip(src) {
            cell.with_mut(|p| *p = *byte);
        }
    }

    unsafe fn with_slice<R>(&self, index: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let copy: Vec<u8> = self.bytes[index..index + len]
            .iter()
            .map(|cell| cell.with(|p| *p))
            .collect();
        f(&copy)
    }

    fn head(&self) -> &AtomicU64 {
        &self.head
    }

    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }

    fn producer_attached(&self) -> &AtomicU64 {
        &self.producer
    }
}

// ---------------------------------------------------------------------------------------------
// Producer
// ---------------------------------------------------------------------------------------------

/// The writing end of a ring, owned by one worker. `push` never blocks, allocates, locks or
/// makes a system call; it computes the frame's CRC (once per record handed over).
pub struct Producer {
    region: Arc<Region>,
    capacity: u64,
    mask: u64,
    max_frame: usize,
    /// Our own position; the shared `head` is a published copy of it.
    head: u64,
    /// Last `tail` loaded from the consumer.
    tail_cache: u64,
}

impl Producer {
    /// Appends one frame. Returns `Err(Full)` (and changes nothing) when the frame is larger
    /// than [`max_frame`](Self::max_frame) or does not fit in the free space now.
    #[inline]
    pub fn push(&mut self, frame: &[u8]) -> Result<(), Full> {
        if frame.len() > self.max_frame {
            return Err(Full);
        }
        let need = record_len(frame.len()) as u64;
        let index = self.head & self.mask;
        let to_end = self.capacity - index;
        let pad = if need > to_end { to_end } else { 0 };
        let total = pad + need;
        if !self.fits(total) {
            self.tail_cache = self.region.tail().load(Ordering::Acquire);
            if !self.fits(total) {
                return Err(Full);
            }
        }
        let mut index = index as usize;
        if pad > 0 {
            // SAFETY: index is 8-aligned (positions move by multiples of 8, capacity is a
            // multiple of 8), so index + 8 <= capacity; `fits` showed [head, head + total) is
            // free, i.e. owned by the producer.
            unsafe { self.region.write(index, &frame_header(PAD)) };
            index = 0;
        }
        // `frame.len() <= max_frame < u32::MAX`, so the cast is lossless.
        let len = frame.len() as u32;
        let crc = frame_crc(len, frame);
        // SAFETY: index + need <= capacity (either need <= to_end, or index is 0 and need <=
        // capacity / 2), need covers header, payload and CRC, and the range is free (checked
        // by `fits` above).
        unsafe {
            self.region.write(index, &frame_header(len));
            self.region.write(index + FRAME_HEADER, frame);
            self.region
                .write(index + FRAME_HEADER + frame.len(), &crc.to_le_bytes());
        }
        self.head += total;
        self.region.head().store(self.head, Ordering::Release);
        Ok(())
    }

    /// Whether `total` more bytes fit, judged with the cached tail. A tail that is not behind
    /// head (impossible unless the file was tampered with) counts as no space.
    #[inline]
    fn fits(&self, total: u64) -> bool {
        let used = self.head.wrapping_sub(self.tail_cache);
        used <= self.capacity && total <= self.capacity - used
    }

    /// The largest frame that can ever be pushed: `capacity / 2 - 12`.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Size of the data area in bytes (a power of two).
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.region.producer_attached().store(0, Ordering::Release);
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------------------------

/// Frames a consumer skipped because their payload did not match their CRC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChecksumFailures {
    /// How many frames failed.
    pub frames: u64,
    /// Byte offset in the ring file of the first one's frame header.
    pub first_offset: u64,
}

/// The reading end of a ring, owned by the recorder thread.
pub struct Consumer {
    region: Arc<Region>,
    /// The ring file (empty for a heap ring).
    path: PathBuf,
    capacity: u64,
    mask: u64,
    max_frame: usize,
    /// Position of the next frame to read; frames before it and after `released` have been
    /// read but their space is not yet handed back.
    read: u64,
    /// Last value stored into the shared `tail`.
    released: u64,
    /// Last `head` loaded from the producer.
    head_cache: u64,
    corruption: Option<Corruption>,
    checksum_failures: ChecksumFailures,
}

/// Where a frame with a sound header lies in the data area.
struct Located {
    /// Index of its frame header.
    index: usize,
    /// Payload length.
    len: usize,
    /// Ring position after it.
    next: u64,
}

impl Consumer {
    fn new(region: Arc<Region>, path: PathBuf, tail: u64, head: u64) -> Consumer {
        let capacity = region.capacity as u64;
        Consumer {
            max_frame: max_frame_for(region.capacity),
            region,
            path,
            capacity,
            mask: capacity - 1,
            read: tail,
            released: tail,
            head_cache: head,
            corruption: None,
            checksum_failures: ChecksumFailures::default(),
        }
    }

    /// Takes the oldest intact frame, hands its bytes to `f` and frees its space (and that of
    /// the frames skipped before it for a bad CRC). Returns `false` (without calling `f`) when
    /// the ring is empty or corrupt (see [`corruption`](Self::corruption)).
    #[inline]
    pub fn pop(&mut self, f: impl FnOnce(&[u8])) -> bool {
        let popped = self.pop_unreleased(f);
        if popped {
            self.release();
        }
        popped
    }

    /// Like [`pop`](Self::pop) but keeps the frame's space (and the frame, for a later
    /// [`open`]) until [`release`](Self::release). The recorder uses this to free ring space
    /// only once the frames are in the log file, so a crash in between loses nothing (frames
    /// read but not released are delivered again after [`open`]: at least once).
    ///
    /// A frame whose payload fails its CRC is not handed out: it is counted in
    /// [`checksum_failures`](Self::checksum_failures), the next frame is taken instead, and
    /// its space goes back with the next [`release`](Self::release).
    #[inline]
    pub fn pop_unreleased(&mut self, f: impl FnOnce(&[u8])) -> bool {
        let mut f = Some(f);
        loop {
            if self.corruption.is_some() {
                return false;
            }
            if self.read == self.head_cache {
                self.head_cache = self.region.head().load(Ordering::Acquire);
                if self.read == self.head_cache {
                    return false;
                }
            }
            let frame = match self.locate_next() {
                Ok(frame) => frame,
                Err(corruption) => {
                    self.corruption = Some(corruption);
                    return false;
                }
            };
            // SAFETY: `locate_next` checked index + record_len(len) <= capacity, which covers
            // header, payload and CRC, and that the frame lies between the read position and
            // the published head, which the producer does not write before we release it.
            let intact = unsafe {
                self.region.with_slice(
                    frame.index,
                    FRAME_HEADER + frame.len + FRAME_CRC,
                    |record| deliver_if_intact(record, frame.len, &mut f),
                )
            };
            self.read = frame.next;
            if intact {
                return true;
            }
            if self.checksum_failures.frames == 0 {
                self.checksum_failures.first_offset = (HEADER_LEN + frame.index) as u64;
            }
            self.checksum_failures.frames += 1;
        }
    }

    /// Hands the space of every frame read so far back to the producer.
    #[inline]
    pub fn release(&mut self) {
        if self.read != self.released {
            self.region.tail().store(self.read, Ordering::Release);
            self.released = self.read;
        }
    }

    /// Finds the frame at the read position. Validates everything read from the shared
    /// memory except the payload's CRC.
    fn locate_next(&self) -> Result<Located, Corruption> {
        let bad = |position: u64, what: &'static str| Corruption::Frame { position, what };
        let mut position = self.read;
        let mut available = self.head_cache.wrapping_sub(position);
        if available > self.capacity || available % 8 != 0 {
            return Err(Corruption::Positions {
                head: self.head_cache,
                tail: position,
            });
        }
        let mut index = (position & self.mask) as usize;
        let mut len = self.frame_len_at(position, index)?;
        if len == PAD {
            let to_end = self.capacity - index as u64;
            if index == 0 {
                return Err(bad(position, "padding at the start of the data area"));
            }
            if to_end >= available {
                return Err(bad(position, "padding not followed by a frame"));
            }
            position += to_end;
            available -= to_end;
            index = 0;
            len = self.frame_len_at(position, index)?;
            if len == PAD {
                return Err(bad(position, "padding at the start of the data area"));
            }
        }
        let len = len as usize;
        if len > self.max_frame {
            return Err(bad(position, "frame length above the ring's maximum"));
        }
        let need = record_len(len);
        if need as u64 > available {
            return Err(bad(position, "frame extends past the published head"));
        }
        if index + need > self.capacity as usize {
            return Err(bad(position, "frame crosses the end of the data area"));
        }
        Ok(Located {
            index,
            len,
            next: position + need as u64,
        })
    }

    /// Reads and checks the frame header at `index` (8-aligned, at least 8 bytes published).
    fn frame_len_at(&self, position: u64, index: usize) -> Result<u32, Corruption> {
        let mut header = [0u8; FRAME_HEADER];
        // SAFETY: index is 8-aligned (position is a multiple of 8, checked by the caller via
        // `available % 8` and at open) and capacity is a multiple of 8, so index + 8 <=
        // capacity; the caller checked at least 8 published bytes follow.
        unsafe {
            self.region
                .with_slice(index, FRAME_HEADER, |b| header.copy_from_slice(b))
        };
        parse_frame_header(header).ok_or(Corruption::Frame {
            position,
            what: "frame header check word mismatch",
        })
    }

    /// Whether there is nothing to read now. A corrupt ring is empty.
    pub fn is_empty(&self) -> bool {
        self.corruption.is_some() || self.read == self.region.head().load(Ordering::Acquire)
    }

    /// What made this ring stop delivering frames, if anything did.
    pub fn corruption(&self) -> Option<&Corruption> {
        self.corruption.as_ref()
    }

    /// The frames skipped so far because they failed their CRC (`frames` is 0 when none did).
    pub fn checksum_failures(&self) -> ChecksumFailures {
        self.checksum_failures
    }

    /// The ring file this consumer reads (empty for a ring made by `heap`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether a producer is attached. `false` once the producer was dropped; `true` in a ring
    /// found by [`open`] means its producer died without detaching (a crash).
    pub fn producer_attached(&self) -> bool {
        self.region.producer_attached().load(Ordering::Acquire) != 0
    }

    /// The largest frame the ring can hold.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Size of the data area in bytes (a power of two).
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

/// Hands the payload of `record` (frame header, `len` payload bytes, CRC) to `f` when it
/// matches its CRC; returns whether it did.
#[inline]
fn deliver_if_intact(record: &[u8], len: usize, f: &mut Option<impl FnOnce(&[u8])>) -> bool {
    let (Some(payload), Some(crc)) = (
        record.get(FRAME_HEADER..FRAME_HEADER + len),
        record.get(FRAME_HEADER + len..FRAME_HEADER + len + FRAME_CRC),
    ) else {
        return false;
    };
    // The caller checked `len <= max_frame < u32::MAX`: the cast is lossless.
    if frame_crc(len as u32, payload).to_le_bytes() != crc {
        return false;
    }
    if let Some(f) = f.take() {
        f(payload);
    }
    true
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity)
            .field("read", &self.read)
            .field("released", &self.released)
            .field("corruption", &self.corruption)
            .field("checksum_failures", &self.checksum_failures)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Creating and opening ring files
// ---------------------------------------------------------------------------------------------

/// Rounds a requested capacity up to the power of two the ring will use.
fn round_capacity(requested: usize) -> Result<usize, RingError> {
    if requested == 0 || requested > MAX_CAPACITY {
        return Err(RingError::Capacity { requested });
    }
    Ok(requested.max(MIN_CAPACITY).next_power_of_two())
}

/// Creates a ring file at `path` with a data area of `capacity_bytes` rounded up to a power of
/// two (at least [`MIN_CAPACITY`]) and returns its two ends.
///
/// The file is made new, mode 0600: an existing file or symbolic link at `path` is refused
/// ([`RingError::Exists`]), never replaced or followed. Its blocks are reserved at once, so a
/// full file system is a [`RingError::NoSpace`] here and never a fault on a later write into
/// the mapping; a file that could not be made whole is removed again.
#[cfg(not(loom))]
pub fn create(path: &Path, capacity_bytes: usize) -> Result<(Producer, Consumer), RingError> {
    use rustix::fs::{Mode, OFlags};
    let capacity = round_capacity(capacity_bytes)?;
    let io = |error| RingError::Io {
        path: path.to_path_buf(),
        error,
    };
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(|e| match e {
        rustix::io::Errno::EXIST => RingError::Exists {
            path: path.to_path_buf(),
        },
        e => io(e.into()),
    })?;
    let file = std::fs::File::from(fd);
    let made = reserve(&file, path, (HEADER_LEN + capacity) as u64)
        .and_then(|()| Region::map(&file, capacity).map_err(io));
    let region = match made {
        Ok(region) => region,
        Err(e) => {
            // Ours (O_EXCL): nothing half made is left behind.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };

    let created_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    region.write_header(OFF_VERSION, &VERSION.to_le_bytes());
    region.write_header(OFF_HEADER_LEN, &(HEADER_LEN as u32).to_le_bytes());
    region.write_header(OFF_CAPACITY, &(capacity as u64).to_le_bytes());
    region.write_header(OFF_CREATED_NS, &created_ns.to_le_bytes());
    region.head().store(0, Ordering::Relaxed);
    region.tail().store(0, Ordering::Relaxed);
    region.producer_attached().store(1, Ordering::Relaxed);
    // The magic goes last: a file left by a crash during `create` is rejected by `open`.
    region.write_header(OFF_MAGIC, &MAGIC);

    Ok(pair(Arc::new(region), path.to_path_buf()))
}

/// Gives the new, empty `file` a length of `len` bytes, all of them allocated.
#[cfg(not(loom))]
fn reserve(file: &std::fs::File, path: &Path, len: u64) -> Result<(), RingError> {
    use rustix::io::Errno;
    let io = |error| RingError::Io {
        path: path.to_path_buf(),
        error,
    };
    let no_space = || RingError::NoSpace {
        path: path.to_path_buf(),
        needed: len,
        available: rustix::fs::fstatvfs(file).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize)),
    };
    loop {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::NOSPC) | Err(Errno::DQUOT) => return Err(no_space()),
            Err(Errno::OPNOTSUPP) => break,
            Err(e) => return Err(io(e.into())),
        }
    }
    // A file system without fallocate: writing zeros allocates the blocks just as well.
    use std::os::unix::fs::FileExt;
    let zeros = [0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset).map_err(|e| {
            if e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) {
                no_space()
            } else {
                io(e)
            }
        })?;
        offset += n as u64;
    }
    Ok(())
}

fn pair(region: Arc<Region>, path: PathBuf) -> (Producer, Consumer) {
    let capacity = region.capacity as u64;
    let producer = Producer {
        region: Arc::clone(&region),
        capacity,
        mask: capacity - 1,
        max_frame: max_frame_for(region.capacity),
        head: 0,
        tail_cache: 0,
    };
    (producer, Consumer::new(region, path, 0, 0))
}

/// Attaches to an existing ring file, typically one left behind by a crashed process, and
/// returns a consumer over the frames still in it (published and not released), oldest first.
///
/// Only a regular file owned by the effective uid of this process and writable by no one
/// else is opened, and a symbolic link is never followed ([`RingError::Refused`]): the frames
/// go into a log as they are. The header is validated; frames are validated as they are
/// popped. No producer may be attached to the file while it is opened this way (the ring is
/// single-consumer; nothing enforces that across processes).
#[cfg(not(loom))]
pub fn open(path: &Path) -> Result<Consumer, RingError> {
    open_owned_by(path, rustix::process::geteuid().as_raw())
}

/// [`open`], for a ring that must belong to `owner` instead of this process's effective uid
/// (root recovering the rings of an engine that became an unprivileged user).
#[cfg(not(loom))]
pub fn open_owned_by(path: &Path, owner: u32) -> Result<Consumer, RingError> {
    use rustix::fs::{FileType, Mode, OFlags};
    let io = |error| RingError::Io {
        path: path.to_path_buf(),
        error,
    };
    let corrupt = |problem| RingError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let refused = |why| RingError::Refused {
        path: path.to_path_buf(),
        why,
    };
    // NONBLOCK: a FIFO put in the ring's place must not hang the open.
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Say what is there when it is not a regular file (a symbolic link, a directory).
            return Err(match rustix::fs::lstat(path) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                    refused(Refusal::NotRegular(file_kind(st.st_mode)))
                }
                _ => io(e.into()),
            });
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refused(Refusal::NotRegular(file_kind(st.st_mode))));
    }
    if st.st_uid != owner {
        return Err(refused(Refusal::Owner {
            owner: st.st_uid,
            euid: owner,
        }));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refused(Refusal::Writable { mode }));
    }
    let file = std::fs::File::from(fd);
    let file_len = st.st_size as u64;
    if file_len < HEADER_LEN as u64 {
        return Err(corrupt(Corruption::TooShort { len: file_len }));
    }
    // Mapped with a data area of 0 until the capacity in the header is validated.
    let mut region = Region::map(&file, 0).map_err(io)?;
    if region.header_bytes::<8>(OFF_MAGIC) != MAGIC {
        return Err(corrupt(Corruption::BadMagic));
    }
    let version = u32::from_le_bytes(region.header_bytes(OFF_VERSION));
    if version != VERSION {
        return Err(corrupt(Corruption::Version(version)));
    }
    let header_len = u32::from_le_bytes(region.header_bytes(OFF_HEADER_LEN));
    if header_len as usize != HEADER_LEN {
        return Err(corrupt(Corruption::HeaderLen(header_len)));
    }
    let capacity = u64::from_le_bytes(region.header_bytes(OFF_CAPACITY));
    if !capacity.is_power_of_two()
        || capacity < MIN_CAPACITY as u64
        || capacity > MAX_CAPACITY as u64
    {
        return Err(corrupt(Corruption::Capacity(capacity)));
    }
    let expected = HEADER_LEN as u64 + capacity;
    // The mapping's length, not the earlier metadata, is what the data area will cover.
    let mapped = region.map.len() as u64;
    if file_len != expected || mapped != expected {
        return Err(corrupt(Corruption::FileSize {
            expected,
            actual: mapped,
        }));
    }
    region.capacity = capacity as usize;
    let head = region.head().load(Ordering::Acquire);
    let tail = region.tail().load(Ordering::Acquire);
    if tail > head || head - tail > capacity || head % 8 != 0 || tail % 8 != 0 {
        return Err(corrupt(Corruption::Positions { head, tail }));
    }
    Ok(Consumer::new(
        Arc::new(region),
        path.to_path_buf(),
        tail,
        head,
    ))
}

/// What kind of file `mode` describes, in words.
#[cfg(not(loom))]
fn file_kind(mode: u32) -> &'static str {
    use rustix::fs::FileType;
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

/// A ring in ordinary memory for loom model checking (loom cannot see a mapped file).
#[cfg(loom)]
pub fn heap(capacity_bytes: usize) -> Result<(Producer, Consumer), RingError> {
    let capacity = round_capacity(capacity_bytes)?;
    let region = Region {
        head: AtomicU64::new(0),
        tail: AtomicU64::new(0),
        producer: AtomicU64::new(1),
        bytes: (0..capacity)
            .map(|_| loom::cell::UnsafeCell::new(0))
            .collect(),
        capacity,
    };
    Ok(pair(Arc::new(region), PathBuf::new()))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A ring file path that is removed when the guard drops.
    struct TestFile(PathBuf);

    impl TestFile {
        fn new(name: &str) -> TestFile {
            use std::sync::atomic::AtomicUsize;
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = Path::new("/dev/shm");
            let dir = if dir.is_dir() {
                dir.to_path_buf()
            } else {
                std::env::temp_dir()
            };
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            TestFile(dir.join(format!(
                "conntrail-ring-test-{}-{name}-{n}",
                std::process::id()
            )))
        }
    }

    impl Drop for TestFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn pop_vec(consumer: &mut Consumer) -> Option<Vec<u8>> {
        let mut out = None;
        consumer.pop(|f| out = Some(f.to_vec()));
        out
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn producer_and_consumer_are_send() {
        fn send<T: Send>() {}
        send::<Producer>();
        send::<Consumer>();
    }

    #[test]
    fn capacity_is_rounded_up_to_a_power_of_two() {
        let file = TestFile::new("round");
        let (p, c) = create(&file.0, 1000).unwrap();
        assert_eq!(p.capacity(), 1024);
        assert_eq!(c.capacity(), 1024);
        assert_eq!(p.max_frame(), 512 - 12);
        let small = TestFile::new("round-small");
        let (p, _c) = create(&small.0, 1).unwrap();
        assert_eq!(p.capacity(), MIN_CAPACITY);
        assert!(matches!(
            create(&file.0, 0),
            Err(RingError::Capacity { requested: 0 })
        ));
        assert!(matches!(
            create(&file.0, MAX_CAPACITY + 1),
            Err(RingError::Capacity { .. })
        ));
    }

    #[test]
    fn frames_come_out_in_order_across_many_wrap_arounds() {
        let file = TestFile::new("wrap");
        let (mut p, mut c) = create(&file.0, 64).unwrap();
        assert!(c.is_empty());
        for i in 0..1000u64 {
            // Sizes 0..=20 make records of 16..=32 bytes that land at every index.
            let frame = pattern(i, (i % 21) as usize);
            p.push(&frame).unwrap();
            assert!(!c.is_empty());
            assert_eq!(pop_vec(&mut c), Some(frame));
            assert!(c.is_empty());
        }
        assert_eq!(pop_vec(&mut c), None);
    }

    #[test]
    fn padding_is_written_when_a_frame_does_not_fit_before_the_end() {
        let file = TestFile::new("pad");
        let (mut p, mut c) = create(&file.0, 64).unwrap();
        p.push(&[1; 12]).unwrap(); // 24 bytes: [0, 24)
        p.push(&[2; 12]).unwrap(); // [24, 48)
        assert_eq!(pop_vec(&mut c), Some(vec![1; 12]));
        // 24 bytes do not fit in [48, 64): pad 16, frame at [0, 24); head 88, tail 24.
        p.push(&[3; 12]).unwrap();
        assert_eq!(p.head, 88);
        // 40 bytes used of 64: a 24-byte record no longer fits.
        assert_eq!(p.push(&[4; 12]), Err(Full));
        assert_eq!(pop_vec(&mut c), Some(vec![2; 12]));
        assert_eq!(pop_vec(&mut c), Some(vec![3; 12]));
        assert_eq!(pop_vec(&mut c), None);
    }

    #[test]
    fn full_ring_rejects_and_recovers() {
        let file = TestFile::new("full");
        let (mut p, mut c) = create(&file.0, 1024).unwrap();
        // 52-byte frames make 64-byte records: exactly 16 fit.
        for i in 0..16u8 {
            p.push(&[i; 52]).unwrap();
        }
        assert_eq!(p.push(&[99; 52]), Err(Full));
        assert_eq!(p.push(&[]), Err(Full));
        assert_eq!(pop_vec(&mut c), Some(vec![0; 52]));
        p.push(&[16; 52]).unwrap();
        assert_eq!(p.push(&[]), Err(Full));
        for i in 1..=16u8 {
            assert_eq!(pop_vec(&mut c), Some(vec![i; 52]));
        }
        assert!(c.is_empty());
    }

    #[test]
    fn oversized_frame_is_rejected_even_when_empty() {
        let file = TestFile::new("oversize");
        let (mut p, mut c) = create(&file.0, 256).unwrap();
        assert_eq!(p.push(&vec![0; p.max_frame() + 1]), Err(Full));
        assert_eq!(p.push(&vec![0; 100_000]), Err(Full));
        assert!(c.is_empty());
        let max = vec![7; p.max_frame()];
        p.push(&max).unwrap();
        assert_eq!(pop_vec(&mut c), Some(max));
    }

    #[test]
    fn every_frame_size_fits_at_every_index_of_an_empty_ring() {
        let file = TestFile::new("sizes");
        let (mut p, mut c) = create(&file.0, 256).unwrap();
        let max = p.max_frame();
        // Moves the head of the empty ring to index `start`: 16-byte records (empty frames)
        // to index 0 of a lap (from an odd multiple of 8 one of them pads and lands at 16),
        // then one 24-byte record (a frame of 12) if `start` is an odd multiple of 8, then
        // 16-byte ones.
        fn move_to(p: &mut Producer, c: &mut Consumer, start: u64) {
            let mut step = |p: &mut Producer, len: usize| {
                p.push(&vec![5; len]).unwrap();
                assert_eq!(pop_vec(c), Some(vec![5; len]));
            };
            while p.head % 256 != 0 {
                step(p, 0);
            }
            if start % 16 == 8 {
                step(p, 12);
            }
            while p.head % 256 != start {
                step(p, 0);
            }
        }
        for start in (0..256).step_by(8) {
            if start == 8 {
                // No record starts there: records are 16 bytes or more and never wrap.
                continue;
            }
            for len in 0..=max + 1 {
                move_to(&mut p, &mut c, start as u64);
                let frame = pattern((start * 1000 + len) as u64, len);
                let pushed = p.push(&frame);
                if len > max {
                    assert_eq!(pushed, Err(Full), "len {len} at {start}");
                    continue;
                }
                assert_eq!(pushed, Ok(()), "len {len} at index {start}");
                assert_eq!(pop_vec(&mut c), Some(frame), "len {len} at {start}");
                assert!(c.is_empty());
            }
        }
    }

    #[test]
    fn reopen_after_crash_yields_the_rest_exactly_once_in_order() {
        let file = TestFile::new("crash");
        let frames: Vec<Vec<u8>> = (0..40).map(|i| pattern(i, (i * 7 % 90) as usize)).collect();
        {
            let (mut p, mut c) = create(&file.0, 4096).unwrap();
            for f in &frames {
                p.push(f).unwrap();
            }
            for f in &frames[..10] {
                assert_eq!(pop_vec(&mut c).as_ref(), Some(f));
            }
            // Two frames read but not released: they must come back after the crash.
            assert!(c.pop_unreleased(|_| {}));
            assert!(c.pop_unreleased(|_| {}));
            // "Crash": forget both ends without draining, producer still marked attached.
            std::mem::forget(p);
            drop(c);
        }
        let mut c = open(&file.0).unwrap();
        assert!(c.producer_attached(), "a crashed producer stays attached");
        for f in &frames[10..] {
            assert_eq!(pop_vec(&mut c).as_ref(), Some(f));
        }
        assert_eq!(pop_vec(&mut c), None);
        assert!(c.corruption().is_none());
        drop(c);
        let mut c = open(&file.0).unwrap();
        assert_eq!(pop_vec(&mut c), None, "frames are delivered once");
    }

    #[test]
    fn dropped_producer_detaches() {
        let file = TestFile::new("detach");
        let (p, c) = create(&file.0, 64).unwrap();
        assert!(c.producer_attached());
        drop(p);
        assert!(!c.producer_attached());
    }

    #[test]
    fn create_refuses_an_existing_file_and_leaves_it_alone() {
        let file = TestFile::new("exists");
        let (mut p, _c) = create(&file.0, 64).unwrap();
        p.push(b"old").unwrap();
        std::mem::forget(p);
        match create(&file.0, 64) {
            Err(e @ RingError::Exists { .. }) => {
                assert!(e.to_string().contains("already exists"), "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let mut reopened = open(&file.0).unwrap();
        assert_eq!(pop_vec(&mut reopened), Some(b"old".to_vec()));
    }

    #[test]
    fn create_refuses_a_symlink_and_does_not_follow_it() {
        let target = TestFile::new("link-target");
        let link = TestFile::new("link");
        std::os::unix::fs::symlink(&target.0, &link.0).unwrap();
        assert!(matches!(create(&link.0, 64), Err(RingError::Exists { .. })));
        assert!(!target.0.exists(), "the link's target was created");
        std::fs::write(&target.0, b"precious").unwrap();
        assert!(matches!(create(&link.0, 64), Err(RingError::Exists { .. })));
        assert_eq!(std::fs::read(&target.0).unwrap(), b"precious");
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_new_ring_file_is_readable_by_its_owner_only() {
        let file = TestFile::new("mode");
        let _ring = create(&file.0, 64).unwrap();
        assert_eq!(mode_of(&file.0), 0o600);
    }

    fn refusal(result: Result<Consumer, RingError>) -> Refusal {
        match result {
            Err(RingError::Refused { why, .. }) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn open_refuses_a_symlink_even_to_a_good_ring() {
        let ring_file = TestFile::new("good");
        let link = TestFile::new("symlink");
        let (mut p, _c) = create(&ring_file.0, 64).unwrap();
        p.push(b"x").unwrap();
        std::os::unix::fs::symlink(&ring_file.0, &link.0).unwrap();
        let e = open(&link.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "ring file {} refused: it is a symbolic link, not a regular file",
                link.0.display()
            )
        );
    }

    #[test]
    fn open_refuses_a_fifo_and_a_directory_without_hanging() {
        let fifo = TestFile::new("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo.0,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        assert_eq!(refusal(open(&fifo.0)), Refusal::NotRegular("a FIFO"));
        let dir = TestFile::new("dir");
        std::fs::create_dir(&dir.0).unwrap();
        let refused = refusal(open(&dir.0));
        std::fs::remove_dir(&dir.0).unwrap();
        assert_eq!(refused, Refusal::NotRegular("a directory"));
    }

    #[test]
    fn open_refuses_a_ring_others_may_write() {
        use std::os::unix::fs::PermissionsExt;
        let file = TestFile::new("writable");
        let (mut p, _c) = create(&file.0, 64).unwrap();
        p.push(b"x").unwrap();
        std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = open(&file.0).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("refused: its mode 0666 lets group or others write it"),
            "{e}"
        );
        std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert_eq!(refusal(open(&file.0)), Refusal::Writable { mode: 0o620 });
        std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pop_vec(&mut open(&file.0).unwrap()), Some(b"x".to_vec()));
    }

    #[test]
    fn open_refuses_a_ring_of_another_user() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let file = TestFile::new("owner");
        let (mut p, _c) = create(&file.0, 64).unwrap();
        p.push(b"x").unwrap();
        std::os::unix::fs::chown(&file.0, Some(65534), Some(65534)).unwrap();
        assert_eq!(
            refusal(open(&file.0)),
            Refusal::Owner {
                owner: 65534,
                euid: 0
            }
        );
    }

    /// A tmpfs of `size` mounted on a fresh directory (mode 0700), unmounted and removed on
    /// drop.
    struct SmallTmpfs(PathBuf);

    impl SmallTmpfs {
        /// `None` (with a message) when not root or the mount fails.
        fn mount(name: &str, size: &str) -> Option<SmallTmpfs> {
            if !rustix::process::geteuid().is_root() {
                eprintln!("skipped: mounting a tmpfs needs root");
                return None;
            }
            let dir = std::env::temp_dir().join(format!(
                "conntrail-ring-tmpfs-{}-{name}",
                std::process::id()
            ));
            std::fs::create_dir(&dir).ok()?;
            let mounted = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                let _ = std::fs::remove_dir(&dir);
                eprintln!("skipped: could not mount a tmpfs on {}", dir.display());
                return None;
            }
            Some(SmallTmpfs(dir))
        }
    }

    impl Drop for SmallTmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn create_on_a_full_file_system_fails_clearly_and_leaves_nothing() {
        let Some(tmpfs) = SmallTmpfs::mount("full", "1m") else {
            return;
        };
        let path = tmpfs.0.join("big.ring");
        let e = create(&path, 4 << 20).unwrap_err();
        match &e {
            RingError::NoSpace {
                needed, available, ..
            } => {
                assert_eq!(*needed, (HEADER_LEN + (4 << 20)) as u64);
                assert!(*available <= 1 << 20, "{available}");
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("needs 4194816 bytes"), "{message}");
        assert!(message.contains("bytes free"), "{message}");
        assert_eq!(
            std::fs::read_dir(&tmpfs.0).unwrap().count(),
            0,
            "a file was left"
        );
        // What fits is made, and every byte of it can be written without a fault.
        let (mut p, mut c) = create(&path, 256 << 10).unwrap();
        let frame = vec![0xA5; p.max_frame()];
        for _ in 0..8 {
            p.push(&frame).unwrap();
            assert_eq!(pop_vec(&mut c), Some(frame.clone()));
        }
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn problem(result: Result<Consumer, RingError>) -> Corruption {
        match result {
            Err(RingError::Corrupt { problem, .. }) => problem,
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn open_rejects_bad_headers() {
        let file = TestFile::new("badhdr");
        let fresh = |file: &TestFile| {
            let _ = std::fs::remove_file(&file.0);
            let (mut p, _c) = create(&file.0, 64).unwrap();
            p.push(b"x").unwrap();
            std::mem::forget(p);
        };
        assert!(matches!(open(&file.0), Err(RingError::Io { .. })));

        std::fs::write(&file.0, b"short").unwrap();
        assert_eq!(problem(open(&file.0)), Corruption::TooShort { len: 5 });

        fresh(&file);
        write_at(&file.0, 0, b"NOTARING");
        assert_eq!(problem(open(&file.0)), Corruption::BadMagic);

        fresh(&file);
        write_at(&file.0, 8, &7u32.to_le_bytes());
        assert_eq!(problem(open(&file.0)), Corruption::Version(7));

        fresh(&file);
        write_at(&file.0, 12, &8u32.to_le_bytes());
        assert_eq!(problem(open(&file.0)), Corruption::HeaderLen(8));

        fresh(&file);
        write_at(&file.0, 16, &100u64.to_le_bytes());
        assert_eq!(problem(open(&file.0)), Corruption::Capacity(100));

        fresh(&file);
        write_at(&file.0, 16, &128u64.to_le_bytes());
        assert_eq!(
            problem(open(&file.0)),
            Corruption::FileSize {
                expected: 640,
                actual: 576
            }
        );

        fresh(&file);
        write_at(&file.0, OFF_TAIL as u64, &24u64.to_le_bytes());
        assert_eq!(
            problem(open(&file.0)),
            Corruption::Positions { head: 16, tail: 24 }
        );
    }

    #[test]
    fn open_rejects_inconsistent_positions() {
        let file = TestFile::new("positions");
        let (mut p, _c) = create(&file.0, 64).unwrap();
        p.push(b"x").unwrap();
        std::mem::forget(p);
        for (head, tail) in [(8u64, 16u64), (200, 0), (12, 8), (16, 3)] {
            write_at(&file.0, OFF_HEAD as u64, &head.to_le_bytes());
            write_at(&file.0, OFF_TAIL as u64, &tail.to_le_bytes());
            assert_eq!(problem(open(&file.0)), Corruption::Positions { head, tail });
        }
    }

    #[test]
    fn corrupt_frame_header_stops_the_consumer_without_panicking() {
        let file = TestFile::new("badframe");
        let (mut p, _c) = create(&file.0, 64).unwrap();
        p.push(b"first").unwrap();
        p.push(b"second").unwrap();
        std::mem::forget(p);
        // Second frame starts at index 24: give it a huge length with a valid check word.
        write_at(&file.0, (HEADER_LEN + 24) as u64, &frame_header(1 << 30));
        let mut c = open(&file.0).unwrap();
        assert_eq!(pop_vec(&mut c), Some(b"first".to_vec()));
        assert_eq!(pop_vec(&mut c), None);
        assert!(c.is_empty());
        assert_eq!(
            c.corruption(),
            Some(&Corruption::Frame {
                position: 24,
                what: "frame length above the ring's maximum"
            })
        );
    }

    #[test]
    fn a_frame_failing_its_crc_is_skipped_counted_and_the_next_one_delivered() {
        let file = TestFile::new("crc");
        let frames: Vec<Vec<u8>> = (0..6).map(|i| pattern(i, 20)).collect();
        {
            let (mut p, _c) = create(&file.0, 1024).unwrap();
            for f in &frames {
                p.push(f).unwrap();
            }
            std::mem::forget(p);
        }
        // 20-byte frames make 32-byte records. One bit of frame 1's payload, one of frame
        // 3's CRC.
        let mut byte = [0u8];
        for offset in [HEADER_LEN + 32 + 8 + 5, HEADER_LEN + 3 * 32 + 8 + 20 + 2] {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&file.0).unwrap();
            f.read_exact_at(&mut byte, offset as u64).unwrap();
            write_at(&file.0, offset as u64, &[byte[0] ^ 0x10]);
        }
        let mut c = open(&file.0).unwrap();
        let mut got = Vec::new();
        while let Some(f) = pop_vec(&mut c) {
            got.push(f);
        }
        let intact: Vec<Vec<u8>> = [0, 2, 4, 5].iter().map(|&i| frames[i].clone()).collect();
        assert_eq!(got, intact);
        assert!(c.corruption().is_none());
        assert_eq!(
            c.checksum_failures(),
            ChecksumFailures {
                frames: 2,
                first_offset: (HEADER_LEN + 32) as u64
            }
        );
        assert!(c.is_empty());
        // The skipped frames' space was released with the rest.
        assert_eq!(pop_vec(&mut open(&file.0).unwrap()), None);
    }

    #[test]
    fn a_version_1_ring_is_refused_with_both_versions_named() {
        let file = TestFile::new("v1");
        let (mut p, _c) = create(&file.0, 64).unwrap();
        p.push(b"x").unwrap();
        std::mem::forget(p);
        write_at(&file.0, 8, &1u32.to_le_bytes());
        let e = open(&file.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "ring file {}: ring format version 1, this build reads only version 2",
                file.0.display()
            )
        );
    }

    #[test]
    fn two_threads_move_a_million_checksummed_frames() {
        const FRAMES: u64 = 1_000_000;
        fn checksum(bytes: &[u8]) -> u32 {
            bytes.iter().fold(0x811C_9DC5u32, |h, &b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            })
        }
        let file = TestFile::new("stress");
        let (mut p, mut c) = create(&file.0, 64 * 1024).unwrap();
        let producer = std::thread::spawn(move || {
            let mut frame = Vec::with_capacity(512);
            let mut full = 0u64;
            for seq in 0..FRAMES {
                frame.clear();
                frame.extend_from_slice(&seq.to_le_bytes());
                let len = (seq.wrapping_mul(2_654_435_761) % 300) as usize;
                frame.extend((0..len).map(|i| (seq as usize + i * 31) as u8));
                let sum = checksum(&frame);
                frame.extend_from_slice(&sum.to_le_bytes());
                while p.push(&frame).is_err() {
                    full += 1;
                    std::hint::spin_loop();
                    if full % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            }
            full
        });
        let mut expected = 0u64;
        while expected < FRAMES {
            let popped = c.pop(|frame| {
                let (body, sum) = frame.split_at(frame.len() - 4);
                assert_eq!(checksum(body).to_le_bytes(), sum, "frame {expected}");
                let seq = u64::from_le_bytes(body[..8].try_into().unwrap());
                assert_eq!(seq, expected);
            });
            if popped {
                expected += 1;
            } else {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(c.is_empty());
        assert!(c.corruption().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Pop,
        PopUnreleased,
        Release,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..130).prop_map(Op::Push),
            3 => Just(Op::Pop),
            1 => Just(Op::PopUnreleased),
            1 => Just(Op::Release),
            1 => Just(Op::Reopen),
        ]
    }

    /// The ring as documented: records of `align8(8 + len + 4)`, padding to the end when a record
    /// does not fit before it, space freed only on release.
    #[derive(Default)]
    struct Model {
        head: u64,
        tail: u64,
        /// Frames and the position after each, oldest first.
        frames: VecDeque<(Vec<u8>, u64)>,
        /// How many of the oldest frames were read but not released.
        read: usize,
    }

    impl Model {
        const CAPACITY: u64 = 256;

        fn push(&mut self, frame: Vec<u8>) -> Result<(), Full> {
            let max = Self::CAPACITY as usize / 2 - 12;
            if frame.len() > max {
                return Err(Full);
            }
            let need = record_len(frame.len()) as u64;
            let to_end = Self::CAPACITY - self.head % Self::CAPACITY;
            let total = if need > to_end { to_end + need } else { need };
            if self.head + total - self.tail > Self::CAPACITY {
                return Err(Full);
            }
            self.head += total;
            self.frames.push_back((frame, self.head));
            Ok(())
        }

        fn read(&mut self) -> Option<Vec<u8>> {
            let (frame, _) = self.frames.get(self.read)?;
            self.read += 1;
            Some(frame.clone())
        }

        fn release(&mut self) {
            for _ in 0..self.read {
                if let Some((_, end)) = self.frames.pop_front() {
                    self.tail = end;
                }
            }
            self.read = 0;
        }
    }

    proptest! {
        #[test]
        fn ring_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..400)) {
            let file = TestFile::new("model");
            let (mut p, mut c) = create(&file.0, Model::CAPACITY as usize).unwrap();
            let mut model = Model::default();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push(len) => {
                        let frame = pattern(i as u64, len);
                        prop_assert_eq!(p.push(&frame), model.push(frame));
                    }
                    Op::Pop => {
                        let mut got = None;
                        c.pop(|f| got = Some(f.to_vec()));
                        let want = model.read();
                        if want.is_some() {
                            model.release();
                        }
                        prop_assert_eq!(got, want);
                    }
                    Op::PopUnreleased => {
                        let mut got = None;
                        c.pop_unreleased(|f| got = Some(f.to_vec()));
                        prop_assert_eq!(got, model.read());
                    }
                    Op::Release => {
                        c.release();
                        model.release();
                    }
                    Op::Reopen => {
                        drop(c);
                        c = open(&file.0).unwrap();
                        model.read = 0;
                    }
                }
                prop_assert_eq!(c.is_empty(), model.read == model.frames.len());
                prop_assert!(c.corruption().is_none());
            }
        }

        #[test]
        fn corrupted_ring_files_never_panic(
            pushes in proptest::collection::vec(0usize..60, 0..12),
            pops in 0usize..12,
            damage in proptest::collection::vec((0usize..HEADER_LEN + 256, any::<u8>()), 1..8),
        ) {
            let file = TestFile::new("fuzz");
            {
                let (mut p, mut c) = create(&file.0, 256).unwrap();
                for (i, len) in pushes.iter().enumerate() {
                    let _ = p.push(&pattern(i as u64, *len));
                }
                for _ in 0..pops {
                    c.pop(|_| {});
                }
                std::mem::forget(p);
            }
            for (offset, byte) in damage {
                write_at(&file.0, offset as u64, &[byte]);
            }
            if let Ok(mut c) = open(&file.0) {
                // At most capacity / 8 frames can be in the ring.
                let mut popped = 0;
                while c.pop(|f| assert!(f.len() <= 116)) {
                    popped += 1;
                    prop_assert!(popped <= 256 / 8);
                }
                prop_assert!(c.is_empty());
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Three frames through a 64-byte ring (one of them wraps with padding), producer and
    /// consumer on two loom threads: every interleaving delivers them intact and in order, and
    /// loom finds no unsynchronised access to the data bytes.
    #[test]
    fn frames_cross_threads_intact_in_every_interleaving() {
        // Exhaustive (no preemption bound): about a second in release mode.
        loom::model(|| {
            let (mut p, mut c) = heap(64).unwrap();
            let frames: [&[u8]; 3] = [&[1; 20], &[2; 4], &[3; 20]];
            let producer = loom::thread::spawn(move || {
                for frame in frames {
                    while p.push(frame).is_err() {
                        loom::thread::yield_now();
                    }
                }
            });
            for frame in frames {
                loop {
                    let mut got = None;
                    if c.pop(|f| got = Some(f.to_vec())) {
                        assert_eq!(got.as_deref(), Some(frame));
                        break;
                    }
                    loom::thread::yield_now();
                }
            }
            producer.join().unwrap();
            assert!(c.is_empty());
        });
    }
}
