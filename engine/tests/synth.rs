//! The generator's ground truth against what the engine records: `conntrail synth` writes a
//! capture of concurrent flows with known anomalies and, beside it, what must be recorded
//! for each flow; a `--record all` replay must match every flow, and an anomalous-only
//! replay must keep exactly the flows the truth flags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::pipeline::replay::{replay, ReplayOptions};
use flowtable::config::Config;
use flowtable::record::Record;
use flowtable::table::RecordMode;
use serde_json::Value;
use synth::SynthOptions;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("conntrail-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn run(dir: &Path, pcap: &Path, mode: RecordMode, workers: usize) -> Vec<Record<'static>> {
    let mut cfg = Config::default();
    cfg.ring.dir = dir.to_string_lossy().into_owned();
    let log = dir.join(format!("{mode:?}-{workers}.log"));
    let opts = ReplayOptions {
        workers,
        mode,
        log: log.clone(),
        captures: vec![pcap.to_path_buf()],
        progress: false,
        interface: None,
        log_target: forensics::evidence::LogTarget::New,
    };
    let s = replay(&cfg, &opts).expect("replay");
    assert_eq!(s.ring_drops(), 0);
    recorder::reader::LogReader::open(&log)
        .expect("log")
        .map(|f| flowtable::record::codec::decode(&f.expect("intact").payload).expect("decodes"))
        .collect()
}

type Key = (String, String, u16, String, u16);

fn key_of_truth(t: &Value) -> Key {
    (
        t["proto"].as_str().unwrap_or("").to_string(),
        t["client"]["ip"].as_str().unwrap_or("").to_string(),
        t["client"]["port"].as_u64().unwrap_or(0) as u16,
        t["server"]["ip"].as_str().unwrap_or("").to_string(),
        t["server"]["port"].as_u64().unwrap_or(0) as u16,
    )
}

fn key_of_record(r: &Record<'_>) -> Key {
    (
        r.proto.as_str().to_string(),
        r.client.ip.to_string(),
        r.client.port,
        r.server.ip.to_string(),
        r.server.port,
    )
}

fn check(truth: &[Value], recs: &[Record<'static>], all: bool) -> Vec<String> {
    let mut by_key: HashMap<Key, &Record<'static>> = HashMap::new();
    for r in recs {
        assert!(
            by_key.insert(key_of_record(r), r).is_none(),
            "one record per flow"
        );
    }
    let mut bad = Vec::new();
    let mut expected = 0;
    for t in truth {
        let mut flags: Vec<String> = t["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        if all {
            flags.push("all".into());
        }
        if flags.is_empty() {
            if by_key.contains_key(&key_of_truth(t)) {
                bad.push(format!("{}: recorded but normal", t["class"]));
            }
            continue;
        }
        expected += 1;
        let Some(r) = by_key.get(&key_of_truth(t)) else {
            bad.push(format!(
                "{} {:?}: not recorded",
                t["class"],
                key_of_truth(t)
            ));
            continue;
        };
        let mut got_flags: Vec<String> = r.flags.names().map(str::to_string).collect();
        got_flags.sort();
        flags.sort();
        let class = &t["class"];
        let want = |k: &str, d: &str| t[d][k].as_u64().unwrap_or(u64::MAX);
        let checks = [
            ("flags", format!("{flags:?}"), format!("{got_flags:?}")),
            (
                "close_reason",
                t["close_reason"].as_str().unwrap_or("").into(),
                r.close_reason.as_str().into(),
            ),
            (
                "conn_state",
                t["conn_state"].as_str().unwrap_or("").into(),
                r.conn_state.as_str().into(),
            ),
            (
                "start_ns",
                t["start_ns"].to_string(),
                r.start_ns.to_string(),
            ),
            (
                "c2s",
                format!(
                    "{:?}",
                    (
                        want("pkts", "c2s"),
                        want("bytes", "c2s"),
                        want("payload", "c2s")
                    )
                ),
                format!("{:?}", (r.c2s.pkts, r.c2s.bytes, r.c2s.payload)),
            ),
            (
                "s2c",
                format!(
                    "{:?}",
                    (
                        want("pkts", "s2c"),
                        want("bytes", "s2c"),
                        want("payload", "s2c")
                    )
                ),
                format!("{:?}", (r.s2c.pkts, r.s2c.bytes, r.s2c.payload)),
            ),
        ];
        for (what, w, g) in checks {
            if w != g {
                bad.push(format!("{class} {what}: want {w} got {g}"));
            }
        }
        if let Some(lat) = t["latency_ns"]["syn_synack"].as_u64() {
            if r.latency.syn_synack_ns != Some(lat) {
                bad.push(format!(
                    "{class} syn_synack: want {lat} got {:?}",
                    r.latency.syn_synack_ns
                ));
            }
        }
        if let Some(lat) = t["latency_ns"]["ttfb"].as_u64() {
            if r.latency.ttfb_ns != Some(lat) {
                bad.push(format!(
                    "{class} ttfb: want {lat} got {:?}",
                    r.latency.ttfb_ns
                ));
            }
        }
    }
    if recs.len() != expected {
        bad.push(format!("{} records for {expected} expected", recs.len()));
    }
    bad
}

#[test]
fn every_record_matches_the_ground_truth() {
    let dir = temp_dir("synth");
    let pcap = dir.join("s.pcap");
    let truth_path = dir.join("s.pcap.truth.jsonl");
    let opts = SynthOptions {
        flows: 3000,
        packets: 60_000,
        seed: 11,
        anomaly_share: 0.4,
        duration_s: 10.0,
    };
    let summary = synth::write(&opts, &pcap, &truth_path).expect("synth");
    assert_eq!(summary.flows, 3000);
    let truth: Vec<Value> = std::fs::read_to_string(&truth_path)
        .expect("truth")
        .lines()
        .map(|l| serde_json::from_str(l).expect("truth line"))
        .collect();
    assert_eq!(truth.len(), 3000);
    for (mode, workers, all) in [
        (RecordMode::All, 2, true),
        (RecordMode::Anomalous, 1, false),
    ] {
        let recs = run(&dir, &pcap, mode, workers);
        let bad = check(&truth, &recs, all);
        for b in bad.iter().take(20) {
            println!("{b}");
        }
        assert!(
            bad.is_empty(),
            "{} disagreements with the ground truth ({mode:?})",
            bad.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
