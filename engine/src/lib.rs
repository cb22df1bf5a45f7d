//! The conntrail engine: packet sources, pinned workers, the replay pipeline and the
//! forensic CLI behind the `conntrail` binary.
//!
//! A source (a capture file today, AF_XDP sockets for live traffic) delivers batches of
//! frames to workers; each worker owns one [`flowtable::table::FlowTable`] and one
//! shared-memory ring; one recorder thread drains the rings into the log. This crate wires
//! those parts together and must never put work on the per-packet path that the flow table
//! does not need: no allocation, lock or syscall per packet in a worker.
//!
//! ```no_run
//! use engine::pipeline::replay::{replay, ReplayOptions};
//! use flowtable::config::Config;
//! use flowtable::table::RecordMode;
//!
//! let opts = ReplayOptions {
//!     workers: 1,
//!     mode: RecordMode::Anomalous,
//!     log: "tracker.log".into(),
//!     captures: vec!["capture.pcap".into()],
//!     progress: false,
//!     interface: None,
//!     log_target: forensics::evidence::LogTarget::New,
//! };
//! let summary = replay(&Config::default(), &opts).expect("replay");
//! println!("{} packets, {} records", summary.packets(), summary.records());
//! ```

pub mod contexts;
pub mod control;
pub mod crash;
pub mod nats;
pub mod observe;
pub mod pipeline;
pub mod preflight;
pub mod privilege;
pub mod ringdir;
pub mod serve;
pub mod source;
