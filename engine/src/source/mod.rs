//! Packet sources. A source hands frames to workers in [`Batch`]es; batches are recycled, so
//! steady-state delivery allocates nothing, and a replayed frame is never copied.

pub mod xdp;

use std::sync::Arc;

use capture::{Chunk, FrameRef};

use crate::pipeline::worker::SourceFrame;

/// A batch of frames: where each lies in the chunks of capture the batch holds (shared,
/// never copied) and what the capture says about it.
pub struct Batch {
    chunks: Vec<Arc<Chunk>>,
    frames: Vec<Held>,
}

/// A frame of a batch and which of the batch's chunks holds its bytes.
#[derive(Clone, Copy)]
struct Held {
    frame: FrameRef,
    chunk: u8,
}

impl Batch {
    /// Frames per batch. Every batch a parked thread waits for costs a wake-up (a futex call
    /// and a context switch on each side); 1 024 frames make those rare enough to vanish
    /// (256: ~930 voluntary switches per million frames and 12 % less throughput).
    pub const FRAMES: usize = 1024;

    /// Chunks a batch may hold: a full batch of 1 024 frames of 750 bytes spans four.
    pub const CHUNKS: usize = 8;

    pub fn new() -> Batch {
        Batch {
            chunks: Vec::with_capacity(Batch::CHUNKS),
            frames: Vec::with_capacity(Batch::FRAMES),
        }
    }

    /// Adds `frame`, whose bytes are in `chunk`, if there is room for it: false when the
    /// batch is full, or holds as many chunks as it may and not this one.
    pub fn push(&mut self, frame: FrameRef, chunk: &Arc<Chunk>) -> bool {
        if self.frames.len() >= Batch::FRAMES {
            return false;
        }
        if !self.chunks.last().is_some_and(|c| Arc::ptr_eq(c, chunk)) {
            if self.chunks.len() >= Batch::CHUNKS {
                return false;
            }
            self.chunks.push(Arc::clone(chunk));
        }
        let chunk = (self.chunks.len() - 1) as u8;
        self.frames.push(Held { frame, chunk });
        true
    }

    /// Empties the batch and lets go of its chunks.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.chunks.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// SourceFrame `i` of the batch, as a worker takes it (no frame, empty, past the end).
    #[inline]
    pub fn frame(&self, i: usize) -> SourceFrame<'_> {
        match self.frames.get(i) {
            Some(h) => SourceFrame::of(
                &h.frame,
                self.chunks
                    .get(usize::from(h.chunk))
                    .map_or(&[], |c| c.buffer()),
            ),
            None => SourceFrame::of(&FrameRef::EMPTY, &[]),
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}
