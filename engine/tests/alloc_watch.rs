//! Runtime watches add no heap allocation per packet: the steady state of `alloc.rs`, with
//! the worker attached to a control board on which two watches are active (so every new
//! connection is tested against them, and some are marked `user`), and the worker polling
//! the board after every frame as the live loop does after every batch.

use std::sync::atomic::Ordering;

use engine::control;
use engine::control::watch::{self, Watch};
use engine::pipeline::worker::Worker;
use flowtable::config::Config;
use flowtable::table::RecordMode;
use synth::SynthOptions;

#[path = "common/counting.rs"]
mod counting;
use counting::{feed, frames, ALLOCS, COUNTING};

#[test]
fn watches_add_no_allocation_per_packet() {
    let dir = std::env::temp_dir().join(format!("conntrail-alloc-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("alloc.pcap");
    let opts = SynthOptions {
        flows: 4000,
        packets: 60_000,
        seed: 11,
        anomaly_share: 0.3,
        duration_s: 30.0,
    };
    synth::write(&opts, &pcap, &dir.join("alloc.truth.jsonl")).expect("synth");
    let frames = frames(&pcap);
    assert!(frames.len() > 50_000);

    let mut cfg = Config::default();
    cfg.table.capacity = 8192;
    cfg.timeouts.tcp_closed_s = 1.0;
    let (producer, mut consumer) = ring::create(&dir.join("alloc.ring"), 1 << 20).expect("ring");
    let mut worker = Worker::new(&cfg, 0, RecordMode::Anomalous, producer);
    let (mut ends, workers) = control::channels(1);
    worker.attach_control(ends.remove(0));
    let watch = |id, text| Watch {
        id,
        expr: watch::compile(text).expect("a watch"),
        added_ns: 0,
        until_ns: None,
    };
    workers.set_watches(vec![
        watch(1, "server port 443 and not net 10.99.0.0/16"),
        watch(2, "udp or (tcp and client.port>=50000)"),
    ]);
    let half = frames.len() / 2;
    let mut user = 0u64;
    let mut measured = 0u64;
    // Frames go in as a live socket hands them over: in batches of the RX ring's size.
    for (i, chunk) in frames.chunks(64).enumerate() {
        let steady = i * 64 >= half;
        COUNTING.with(|c| c.set(steady));
        feed(&mut worker, chunk);
        worker.poll_control();
        COUNTING.with(|c| c.set(false));
        if steady {
            measured += chunk.len() as u64;
        }
        while consumer.pop(|bytes| {
            let rec = flowtable::record::codec::decode(bytes).expect("a record");
            user += u64::from(rec.flags.contains(flowtable::record::Flags::USER));
        }) {}
    }
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let stats = worker.finish();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        stats.table.flows_created > 3000,
        "flows were created in steady state"
    );
    assert!(user > 100, "watches marked connections `user` ({user})");
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations over {measured} packets in steady state with watches"
    );
}
