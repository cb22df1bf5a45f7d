//! Short ways that must change nothing, on every corpus capture and on a synthetic one with
//! a table small enough to evict:
//! - a worker works out each frame's flow key and hash `LOOK_AHEAD` frames before processing
//!   it (to prefetch its bucket and flow slot): the records it hands to its ring are exactly,
//!   and in the same order, those of the table fed one packet at a time without looking ahead;
//! - plain in-order TCP segments skip most of the analysis: the records are exactly those of
//!   a table that sends every segment the full way.

mod common;

use std::path::Path;

use capture::read_capture;
use engine::pipeline::worker::{SourceFrame, Worker};
use flowtable::config::Config;
use flowtable::packet::{parse, LinkType};
use flowtable::table::{FlowTable, RecordMode};
use synth::SynthOptions;

type Frames = Vec<(LinkType, u64, u32, Vec<u8>)>;

fn frames(path: &Path) -> Frames {
    let mut out = Vec::new();
    read_capture(
        path,
        |link, ts, wire, bytes| out.push((link, ts, wire, bytes.to_vec())),
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

/// Records (encoded) of a worker fed the frames in batches of `batch`.
fn through_worker(cfg: &Config, frames: &Frames, batch: usize, ring_path: &Path) -> Vec<Vec<u8>> {
    // A ring is only ever made new.
    let _ = std::fs::remove_file(ring_path);
    let (producer, mut consumer) = ring::create(ring_path, 1 << 22).expect("ring");
    let mut worker = Worker::new(cfg, 0, RecordMode::All, producer);
    let mut out = Vec::new();
    for chunk in frames.chunks(batch) {
        worker.frames(chunk.len(), |i| {
            let (link, ts, wire, bytes) = &chunk[i];
            SourceFrame {
                link: *link,
                ts_ns: *ts,
                wire_len: *wire,
                interface: 0,
                bytes,
            }
        });
        while consumer.pop(|rec| out.push(rec.to_vec())) {}
    }
    let stats = worker.finish();
    while consumer.pop(|rec| out.push(rec.to_vec())) {}
    assert_eq!(stats.ring_drops, 0);
    out
}

/// Records (encoded) of a table fed one packet at a time, nothing looked at ahead, plain
/// segments the short way if `steady`.
fn one_by_one(cfg: &Config, frames: &Frames, steady: bool) -> Vec<Vec<u8>> {
    let mut table = FlowTable::new(cfg, 0);
    table.set_mode(RecordMode::All);
    table.set_steady_path(steady);
    let mut out = Vec::new();
    let mut emit = |rec: &flowtable::record::Record<'_>| {
        let mut buf = Vec::new();
        flowtable::record::codec::encode(rec, &mut buf);
        out.push(buf);
    };
    for (link, ts, wire, bytes) in frames {
        match parse(*link, bytes) {
            Ok(pkt) => table.process(&pkt, *ts, *wire, &mut emit),
            Err(_) => table.tick(*ts, &mut emit),
        }
    }
    table.shutdown(&mut emit);
    out
}

fn check(name: &str, cfg: &Config, frames: &Frames, dir: &Path) {
    let want = one_by_one(cfg, frames, true);
    assert!(!want.is_empty(), "{name}: no records");
    let full_way = one_by_one(cfg, frames, false);
    assert_eq!(full_way.len(), want.len(), "{name}, full way: record count");
    if let Some(i) = (0..want.len()).find(|&i| full_way[i] != want[i]) {
        panic!("{name}, full way: record {i} differs");
    }
    // Batches shorter than the look-ahead, about as long, and long.
    for batch in [3, 8, 256] {
        let got = through_worker(cfg, frames, batch, &dir.join("lookahead.ring"));
        assert_eq!(
            got.len(),
            want.len(),
            "{name}, batches of {batch}: record count"
        );
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("{name}, batches of {batch}: record {i} differs");
        }
    }
}

#[test]
fn looking_ahead_and_the_short_way_change_no_record() {
    let dir = std::env::temp_dir().join(format!("conntrail-lookahead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let cfg = Config::default();
    for capture in common::corpus_captures() {
        let name = capture.display().to_string();
        check(&name, &cfg, &frames(&capture), &dir);
    }

    // Many concurrent flows in a small table: flows are evicted and slots reused while
    // frames looked at before the eviction wait their turn.
    let pcap = dir.join("lookahead.pcap");
    let opts = SynthOptions {
        flows: 3000,
        packets: 40_000,
        seed: 11,
        anomaly_share: 0.3,
        duration_s: 20.0,
    };
    synth::write(&opts, &pcap, &dir.join("lookahead.truth.jsonl")).expect("synth");
    let mut small = Config::default();
    small.table.capacity = 256;
    small.timeouts.tcp_closed_s = 1.0;
    let synthetic = frames(&pcap);
    check("synthetic", &small, &synthetic, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}
