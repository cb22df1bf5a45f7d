//! Zero heap allocations per packet in a worker's steady state, proven with a counting
//! global allocator: a synthetic capture of concurrent flows (with anomalies, so records are
//! encoded and pushed) is fed to a worker; after a warm-up half, the second half (flows
//! opening, closing and being recorded all the time) must not allocate at all.

use std::sync::atomic::Ordering;

use engine::pipeline::worker::Worker;
use flowtable::config::Config;
use flowtable::table::RecordMode;
use synth::SynthOptions;

#[path = "common/counting.rs"]
mod counting;
use counting::{feed, frames, ALLOCS, COUNTING};

#[test]
fn worker_steady_state_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("conntrail-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("alloc.pcap");
    let opts = SynthOptions {
        flows: 4000,
        packets: 60_000,
        seed: 7,
        anomaly_share: 0.3,
        duration_s: 30.0,
    };
    synth::write(&opts, &pcap, &dir.join("alloc.truth.jsonl")).expect("synth");
    let frames = frames(&pcap);
    assert!(frames.len() > 50_000);

    let mut cfg = Config::default();
    cfg.table.capacity = 8192;
    // Closed connections linger only a second, so records flow during the capture.
    cfg.timeouts.tcp_closed_s = 1.0;
    let (producer, mut consumer) = ring::create(&dir.join("alloc.ring"), 1 << 20).expect("ring");
    let mut worker = Worker::new(&cfg, 0, RecordMode::All, producer);
    let half = frames.len() / 2;
    let mut drained = 0u64;
    let mut measured = 0u64;
    // Frames go in as a live socket hands them over: in batches of the RX ring's size.
    for (i, chunk) in frames.chunks(64).enumerate() {
        let steady = i * 64 >= half;
        COUNTING.with(|c| c.set(steady));
        feed(&mut worker, chunk);
        COUNTING.with(|c| c.set(false));
        if steady {
            measured += chunk.len() as u64;
        }
        while consumer.pop(|_| drained += 1) {}
    }
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let stats = worker.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        drained > 1000,
        "records were encoded and pushed ({drained})"
    );
    assert!(
        stats.table.flows_created > 3000,
        "flows were created in steady state"
    );
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations over {measured} packets in steady state"
    );
}
