//! Flow tracking for conntrail: everything a worker needs to turn packets into connection
//! records, and nothing else.
//!
//! This crate owns packet parsing ([`packet`]), IP fragment accounting ([`frag`]), flow keys
//! ([`key`]) and the index that finds a flow by them ([`index`]), tracking points and their
//! arena ([`point`]), the TCP state machine ([`tcp`]), the timer wheel ([`wheel`]), the flow
//! table itself ([`table`]), the thresholds and anomaly rules ([`config`], [`rules`]) and the
//! record that leaves a worker ([`record`]). Cache prefetch hints are in [`prefetch`].
//!
//! It must never touch sockets, files, threads or clocks: time is whatever the caller says a
//! packet's timestamp is, so replayed captures and live traffic run the very same code. After
//! [`table::FlowTable::new`] returns, nothing here allocates per packet.
//!
//! ```
//! use flowtable::config::Config;
//! use flowtable::packet::{parse, LinkType};
//! use flowtable::table::{FlowTable, RecordMode};
//!
//! let cfg = Config::default();
//! let mut table = FlowTable::new(&cfg, 0);
//! table.set_mode(RecordMode::All); // keep every connection, not only anomalous ones
//! let mut closed = Vec::new();
//! // An IPv4/UDP datagram on raw-IP link type: 10.0.0.1:5000 -> 10.0.0.2:53, 4 payload bytes.
//! let frame = [
//!     0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
//!     0x13, 0x88, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4,
//! ];
//! let pkt = parse(LinkType::RawIp, &frame).expect("well-formed");
//! table.process(&pkt, 1_000_000_000, frame.len() as u32, &mut |r| closed.push(r.id));
//! table.shutdown(&mut |r| closed.push(r.id));
//! assert_eq!(closed.len(), 1);
//! ```

pub mod config;
pub mod frag;
pub mod index;
pub mod key;
pub mod packet;
pub mod point;
pub mod prefetch;
pub mod record;
pub mod rules;
pub mod table;
pub mod tcp;
pub mod tls;
pub mod wheel;
