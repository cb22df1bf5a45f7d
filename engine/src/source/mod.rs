//! Packet sources. A source hands frames to workers in [`Batch`]es; batches are recycled, so
//! steady-state delivery allocates nothing.

pub mod pcap;
pub mod xdp;

use flowtable::packet::LinkType;

/// Where one frame of a batch lives and what the capture says about it.
#[derive(Clone, Copy, Debug)]
pub struct FrameMeta {
    pub ts_ns: u64,
    /// Length of the frame on the wire (may exceed the captured bytes).
    pub wire_len: u32,
    pub offset: u32,
    pub caplen: u32,
    pub link: LinkType,
}

/// A batch of frames, copied back to back into one buffer.
pub struct Batch {
    pub bytes: Vec<u8>,
    pub frames: Vec<FrameMeta>,
}

impl Batch {
    /// Frames per batch and buffer bytes per batch.
    pub const FRAMES: usize = 256;
    pub const BYTES: usize = 512 * 1024;

    pub fn new() -> Batch {
        Batch {
            bytes: Vec::with_capacity(Batch::BYTES),
            frames: Vec::with_capacity(Batch::FRAMES),
        }
    }

    /// Would a frame of `len` bytes still fit without growing?
    pub fn fits(&self, len: usize) -> bool {
        self.frames.len() < Batch::FRAMES && self.bytes.len() + len <= Batch::BYTES
    }

    pub fn push(&mut self, link: LinkType, ts_ns: u64, wire_len: u32, frame: &[u8]) {
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(frame);
        self.frames.push(FrameMeta {
            ts_ns,
            wire_len,
            offset,
            caplen: frame.len() as u32,
            link,
        });
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames of this batch with their bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&FrameMeta, &[u8])> {
        self.frames.iter().map(move |m| {
            let start = m.offset as usize;
            let frame = self
                .bytes
                .get(start..start + m.caplen as usize)
                .unwrap_or(&[]);
            (m, frame)
        })
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}
