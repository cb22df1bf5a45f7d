//! Criterion benches of each stage a packet or a record goes through, on frames from a
//! `conntrail synth` capture (20 k packets, 2 000 concurrent flows, a fifth anomalous):
//!
//! - `parse`: link, IP and transport headers of every frame;
//! - `key_hash_lookup`: canonical flow key, hash, and find-or-insert in the flow index sized
//!   like a worker's (keys kept in the slots, as the flow table does), and the same in
//!   hashbrown's table for comparison;
//! - `tcp_state`: the TCP sequence analysis of a bulk transfer, segment by segment;
//! - `point_append`: appending tracking points to trails in the arena (wrapping full ones);
//! - `table_process`: the whole per-packet path of a flow table (timer wheel, key, table,
//!   state, points, closing and the anomaly rules);
//! - `record_encode`: MessagePack encoding of a kept record with a full trail;
//! - `ring_push_pop`: handing an encoded record through the shared-memory ring;
//! - `recorder_write`: appending it as a checksummed frame to the log.
//!
//! Measurement times are short so `cargo bench -p conntrail-benches` takes a few minutes.
//! Whole-process throughput against peer tools is `scripts/bench-replay.sh`.

#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowtable::config::Config;
use flowtable::index::FlowIndex;
use flowtable::key::FlowKey;
use flowtable::packet::{parse, tcp_flags, LinkType};
use flowtable::point::{Arena, Dir, Point, PointKind, Severity, Trail};
use flowtable::record::codec;
use flowtable::record::Record;
use flowtable::table::{FlowTable, RecordMode};
use flowtable::tcp::{self, Findings, Segment, Tcp};
use hashbrown::{DefaultHashBuilder, HashTable};
use recorder::writer::LogWriter;
use synth::SynthOptions;

/// Frames of one synthetic capture: (link, ts_ns, wire_len, bytes).
struct Capture {
    frames: Vec<(LinkType, u64, u32, Vec<u8>)>,
    dir: PathBuf,
}

impl Capture {
    fn new() -> Capture {
        let dir = std::env::temp_dir().join(format!("conntrail-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bench temp dir");
        let pcap = dir.join("stages.pcap");
        let opts = SynthOptions {
            flows: 2000,
            packets: 20_000,
            seed: 3,
            anomaly_share: 0.2,
            duration_s: 10.0,
        };
        synth::write(&opts, &pcap, &dir.join("stages.truth.jsonl")).expect("synth capture");
        let mut frames = Vec::new();
        capture::read_capture(
            &pcap,
            |link, ts, wire, bytes| frames.push((link, ts, wire, bytes.to_vec())),
            |_| {},
        )
        .expect("reading the synth capture");
        Capture { frames, dir }
    }

    fn packets(&self) -> u64 {
        self.frames.len() as u64
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parse_stage(c: &mut Criterion, cap: &Capture) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(cap.packets()));
    g.bench_function("synth_frames", |b| {
        b.iter(|| {
            let mut ok = 0u32;
            for (link, _, _, bytes) in &cap.frames {
                ok += u32::from(parse(*link, std::hint::black_box(bytes)).is_ok());
            }
            ok
        })
    });
    g.finish();
}

fn key_hash_lookup_stage(c: &mut Criterion, cap: &Capture) {
    let keys: Vec<FlowKey> = cap
        .frames
        .iter()
        .filter_map(|(link, _, _, bytes)| parse(*link, bytes).ok())
        .filter_map(|p| FlowKey::of(&p).map(|(k, _)| k))
        .collect();
    let mut g = c.benchmark_group("key_hash_lookup");
    g.throughput(Throughput::Elements(cap.packets()));
    g.bench_function("key_of_parsed", |b| {
        let pkts: Vec<_> = cap
            .frames
            .iter()
            .filter_map(|(link, _, _, bytes)| parse(*link, bytes).ok())
            .collect();
        b.iter(|| {
            let mut lo = 0u32;
            for p in &pkts {
                lo += u32::from(FlowKey::of(std::hint::black_box(p)).is_some_and(|(_, l)| l));
            }
            lo
        })
    });
    g.throughput(Throughput::Elements(keys.len() as u64));
    let capacity = Config::default().table.capacity as usize;
    g.bench_function("find_or_insert", |b| {
        // As the flow table does it: its index of slot numbers, the keys in the slots, one
        // hash per packet for the lookup and the insert.
        let hasher = DefaultHashBuilder::default();
        let mut index = FlowIndex::with_capacity(capacity);
        let mut slots: Vec<FlowKey> = Vec::with_capacity(capacity);
        b.iter(|| {
            let mut sum = 0u64;
            for k in &keys {
                let hash = hasher.hash_one(k);
                let found = index.find(hash, |i| slots.get(i as usize) == Some(k));
                let idx = found.unwrap_or_else(|| {
                    let i = slots.len() as u32;
                    slots.push(*k);
                    index.insert(hash, i);
                    i
                });
                sum += u64::from(idx);
            }
            sum
        })
    });
    g.bench_function("find_or_insert_hashbrown", |b| {
        // The same with hashbrown's table of slot numbers, which the flow table used before
        // its own index (no bucket address to prefetch).
        let hasher = DefaultHashBuilder::default();
        let mut table: HashTable<u32> = HashTable::with_capacity(capacity);
        let mut slots: Vec<FlowKey> = Vec::with_capacity(capacity);
        b.iter(|| {
            let mut sum = 0u64;
            for k in &keys {
                let hash = hasher.hash_one(k);
                let idx = match table.find(hash, |&i| slots[i as usize] == *k) {
                    Some(&i) => i,
                    None => {
                        let i = slots.len() as u32;
                        slots.push(*k);
                        table.insert_unique(hash, i, |&j| hasher.hash_one(slots[j as usize]));
                        i
                    }
                };
                sum += u64::from(idx);
            }
            sum
        })
    });
    g.finish();
}

fn tcp_state_stage(c: &mut Criterion) {
    // A bulk transfer: the client sends full segments, the server ACKs every second one.
    let mut segs = Vec::new();
    let (mut c_seq, s_seq) = (1_000u32, 9_000u32);
    segs.push((
        0,
        Segment {
            seq: c_seq,
            ack: 0,
            flags: tcp_flags::SYN,
            window: 64240,
            wscale: None,
            payload_len: 0,
        },
    ));
    segs.push((
        1,
        Segment {
            seq: s_seq,
            ack: c_seq + 1,
            flags: tcp_flags::SYN | tcp_flags::ACK,
            window: 65160,
            wscale: None,
            payload_len: 0,
        },
    ));
    c_seq += 1;
    for i in 0..1000u32 {
        segs.push((
            0,
            Segment {
                seq: c_seq,
                ack: s_seq + 1,
                flags: tcp_flags::ACK | tcp_flags::PSH,
                window: 502,
                wscale: None,
                payload_len: 1448,
            },
        ));
        c_seq = c_seq.wrapping_add(1448);
        if i % 2 == 1 {
            segs.push((
                1,
                Segment {
                    seq: s_seq + 1,
                    ack: c_seq,
                    flags: tcp_flags::ACK,
                    window: 500,
                    wscale: None,
                    payload_len: 0,
                },
            ));
        }
    }
    let mut g = c.benchmark_group("tcp_state");
    g.throughput(Throughput::Elements(segs.len() as u64));
    g.bench_function("bulk_transfer", |b| {
        b.iter(|| {
            let mut state = Tcp::default();
            let mut retrans = 0u32;
            for (i, (d, seg)) in segs.iter().enumerate() {
                let found = tcp::analyse(&mut state, *d, seg, i as u64 * 10_000);
                retrans += u32::from(found.has(Findings::ANY_RETRANSMISSION));
            }
            retrans
        })
    });
    g.finish();
}

fn point_append_stage(c: &mut Criterion) {
    const SLOTS: usize = 65_536;
    const PER_SLOT: usize = 16;
    const APPENDS: u32 = 100_000;
    let mut arena = Arena::new(SLOTS, PER_SLOT);
    let mut trails = vec![Trail::default(); SLOTS];
    let mut g = c.benchmark_group("point_append");
    g.throughput(Throughput::Elements(u64::from(APPENDS)));
    g.bench_function("scattered_slots", |b| {
        let mut slot = 0u32;
        b.iter(|| {
            for i in 0..APPENDS {
                // A stride that visits slots in a cache-unfriendly order, as flows do.
                slot = (slot + 40_503) % SLOTS as u32;
                arena.push(
                    slot,
                    &mut trails[slot as usize],
                    Point {
                        t_ns: u64::from(i),
                        kind: PointKind::Retransmission,
                        dir: Dir::C2s,
                        severity: Severity::Warn,
                        arg: i,
                    },
                );
            }
        })
    });
    g.finish();
}

fn table_stage(c: &mut Criterion, cap: &Capture) {
    let cfg = Config::default();
    let mut g = c.benchmark_group("table_process");
    g.throughput(Throughput::Elements(cap.packets()));
    g.sample_size(10);
    g.bench_function("synth_capture", |b| {
        b.iter_batched_ref(
            || {
                let mut cfg = cfg.clone();
                cfg.table.capacity = 8192;
                FlowTable::new(&cfg, 0)
            },
            |table| {
                let mut records = 0u32;
                for (link, ts, wire, bytes) in &cap.frames {
                    if let Ok(pkt) = parse(*link, bytes) {
                        table.process(&pkt, *ts, *wire, &mut |_| records += 1);
                    }
                }
                table.shutdown(&mut |_| records += 1);
                records
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The kept record with the longest trail, encoded, from a replay of `cap` keeping all.
fn sample_record(cap: &Capture) -> Record<'static> {
    let mut table = FlowTable::new(&Config::default(), 0);
    table.set_mode(RecordMode::All);
    let mut best: Option<Record<'static>> = None;
    let mut keep = |r: &Record<'_>| {
        if best
            .as_ref()
            .is_none_or(|b| r.points.len() > b.points.len())
        {
            best = Some(r.clone().into_owned());
        }
    };
    for (link, ts, wire, bytes) in &cap.frames {
        if let Ok(pkt) = parse(*link, bytes) {
            table.process(&pkt, *ts, *wire, &mut keep);
        }
    }
    table.shutdown(&mut keep);
    best.expect("the capture has flows")
}

fn record_stages(c: &mut Criterion, cap: &Capture) {
    let rec = sample_record(cap);
    let mut buf = Vec::with_capacity(4096);
    codec::encode(&rec, &mut buf);
    let encoded = buf.clone();

    let mut g = c.benchmark_group("record_encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("{}_points", rec.points.len()), |b| {
        b.iter(|| {
            codec::encode(std::hint::black_box(&rec), &mut buf);
            buf.len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ring_push_pop");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    let ring_path = cap.dir.join("bench.ring");
    let (mut producer, mut consumer) = ring::create(&ring_path, 4 << 20).expect("ring");
    g.bench_function(format!("{}_byte_record", encoded.len()), |b| {
        b.iter(|| {
            let pushed = producer.push(&encoded).is_ok();
            let mut len = 0;
            consumer.pop(|f| len = f.len());
            (pushed, len)
        })
    });
    g.finish();
    drop((producer, consumer));

    let mut g = c.benchmark_group("recorder_write");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    let log_path = cap.dir.join("bench.log");
    let mut writer = LogWriter::create(&log_path, 64 << 20).expect("log");
    g.bench_function(format!("{}_byte_record", encoded.len()), |b| {
        b.iter(|| writer.append(&encoded).is_ok())
    });
    g.finish();
    writer.flush().expect("flush");
}

fn stages(c: &mut Criterion) {
    let cap = Capture::new();
    parse_stage(c, &cap);
    key_hash_lookup_stage(c, &cap);
    tcp_state_stage(c);
    point_append_stage(c);
    table_stage(c, &cap);
    record_stages(c, &cap);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = stages
}
criterion_main!(benches);
