//! What a run shows of itself while it runs: the stats file once a second ([`stats`], also
//! `conntrail stats`) and the Prometheus endpoint ([`metrics`]). Both read counters the
//! workers publish once a second and the recorder's progress; neither touches a worker.

pub mod metrics;
pub mod stats;
