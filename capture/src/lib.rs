//! Capture files: one pcap/pcapng reader and one writer.
//!
//! [`mod@read`] walks a capture in chunks and hands out its frames in place, with their
//! timestamps both as nanoseconds and as stored, and every damaged place with its byte
//! offset: replay feeds workers from it, `extract` copies from it. [`mod@write`] writes pcap
//! and pcapng files: `extract`'s output and the generators' captures.
//!
//! This crate reads and writes files and knows the link types the flow table decodes; it
//! never parses a packet.

#![forbid(unsafe_code)]

pub mod read;
pub mod write;

pub use read::{
    read_capture, Capture, CaptureError, CaptureStats, Chunk, Damage, FileKind, FrameRef,
    InterfaceInfo, Stamp,
};
pub use write::{NgInterface, PcapNgWriter, PcapWriter};

/// The path that means standard input.
pub const STDIN: &str = "-";

/// How standard input is named in messages.
pub const STDIN_NAME: &str = "<stdin>";
