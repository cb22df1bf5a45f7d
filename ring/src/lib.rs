//! The hand-over between conntrail's workers and its recorder: one single-producer
//! single-consumer ring of byte frames per worker, living in a shared-memory file.
//!
//! **Owns**: the ring file layout (header with magic, version, capacity and the head/tail
//! positions; length-prefixed, CRC-checked frames in the data area), the lock-free
//! producer/consumer protocol, and recovery of frames left in a ring file by a crashed process
//! ([`open`]).
//!
//! **Never does**: block, allocate, lock or make a system call in [`Producer::push`]; leave a
//! ring file sparse ([`create`] reserves every block, so a full file system is a
//! [`RingError::NoSpace`] at creation, never a fault later); create over, or follow, an
//! existing path, or make a ring file anyone but its owner can read (mode 0600); open a file
//! that is not a regular file of this user writable by no one else ([`RingError::Refused`]);
//! trust anything read from a ring file (every length is validated, a corrupt ring reports
//! [`Corruption`] and looks empty, a frame failing its CRC is skipped and counted in
//! [`ChecksumFailures`], it never panics and never hands out changed bytes); interpret frame
//! bytes (they are opaque encoded records); retry or wait when full (the worker counts
//! [`Full`] and moves on).
//!
//! The layout, the wrap-around rule (a padding marker, never a split frame) and the memory
//! ordering are described in the [`spsc`] module.
//!
//! The protocol is model-checked with loom (a heap-backed ring replaces the file there):
//! `RUSTFLAGS="--cfg loom" cargo test -p conntrail-ring --release --lib loom`.
//!
//! ```
//! # fn main() -> Result<(), ring::RingError> {
//! let path = std::env::temp_dir().join(format!("conntrail-doc-{}.ring", std::process::id()));
//! let (mut producer, mut consumer) = ring::create(&path, 64 * 1024)?;
//! assert!(producer.push(b"an encoded record").is_ok());
//!
//! // Worker crashes here; a later process recovers what was handed over.
//! drop((producer, consumer));
//! let mut recovered = ring::open(&path)?;
//! assert!(recovered.pop(|frame| assert_eq!(frame, b"an encoded record")));
//! assert!(!recovered.pop(|_| unreachable!()));
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```

pub mod spsc;

#[cfg(loom)]
pub use spsc::heap;
#[cfg(not(loom))]
pub use spsc::{create, open, open_owned_by};
pub use spsc::{ChecksumFailures, Consumer, Corruption, Full, Producer, Refusal, RingError};
