//! The read side of conntrail: everything that reads logs and never runs on the packet path.
//!
//! **Owns**: reading logs and the NATS stream into records, with damage typed and reported
//! ([`logs`], [`stream`]); the query language ([`expr`]); how records are written for people
//! and tools ([`units`], [`show`], [`timeline`], [`html`], [`ecs`]); the commands `show`,
//! `query`, `diff`, `filter` and `correlate` (with the proxy logs it reads, [`proxy_log`],
//! and its reasoning, [`cause`]); which files may be read or written ([`evidence`]); and the
//! exit codes every command shares ([`exit`]).
//!
//! **Never does**: capture packets, track flows or write a log. The engine (the running
//! tracker and the `conntrail` binary) depends on this crate; this crate depends on no part
//! of the engine.
#![forbid(unsafe_code)]

pub mod cause;
pub mod correlate;
pub mod diff;
pub mod ecs;
pub mod evidence;
pub mod exit;
pub mod expr;
pub mod extract;
pub mod filter;
pub mod html;
pub mod logs;
pub mod order;
pub mod proxy_log;
pub mod query;
pub mod show;
pub mod stream;
pub mod timeline;
pub mod units;
