//! Resource exhaustion: a flow table smaller than the traffic, the smallest tracking-point
//! arena and a tiny ring. The engine keeps going, every loss is counted, `resource` records
//! are written where the design says (a flow evicted from a full table, a truncated trail),
//! and a full ring never makes a worker wait: its records are dropped and counted instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use flowtable::point::PointKind;
use flowtable::record::{CloseReason, Flags, Record};

mod common;
use common::{s, text};

fn conntrail(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conntrail"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("conntrail runs")
}

struct Scene {
    dir: PathBuf,
    capture: PathBuf,
}

impl Scene {
    fn new(name: &str, flows: &str, packets: &str) -> Scene {
        let dir =
            std::env::temp_dir().join(format!("conntrail-resources-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let capture = dir.join("synth.pcap");
        let out = conntrail(
            &[
                "synth",
                "-o",
                s(&capture),
                "--flows",
                flows,
                "--packets",
                packets,
                "--seed",
                "5",
                "--anomaly-share",
                "0.3",
            ],
            &[],
        );
        assert!(out.status.success(), "synth: {}", text(&out.stderr));
        Scene { dir, capture }
    }

    /// Replays the capture with `config` (TOML, after a `[ring] dir`) into a log; returns
    /// the summary's `key: value` lines and the records.
    fn replay(
        &self,
        name: &str,
        config: &str,
        record: &str,
        env: &[(&str, &str)],
    ) -> (HashMap<String, String>, Vec<Record<'static>>) {
        let cfg = self.dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n{config}", s(&self.dir)))
            .expect("config");
        let log = self.dir.join(format!("{name}.log"));
        let out = conntrail(
            &[
                "replay",
                "--config",
                s(&cfg),
                "--record",
                record,
                "--log",
                s(&log),
                s(&self.capture),
            ],
            env,
        );
        assert!(out.status.success(), "replay: {}", text(&out.stderr));
        let summary = text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let records = forensics::logs::Records::open(&[log])
            .expect("log")
            .map(|r| r.expect("intact"))
            .collect();
        (summary, records)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn number(summary: &HashMap<String, String>, key: &str) -> u64 {
    summary[key].parse().expect("a number")
}

/// `closed: tcp-fin 10, aged-out 3` -> count of one reason.
fn closed(summary: &HashMap<String, String>, reason: &str) -> u64 {
    summary["closed"]
        .split(", ")
        .find_map(|part| part.strip_prefix(reason)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_table_smaller_than_the_traffic_evicts_and_records_every_eviction() {
    let scene = Scene::new("table", "3000", "30000");
    let (summary, records) = scene.replay("small", "[table]\ncapacity = 64\n", "anomalous", &[]);
    let flows = number(&summary, "flows");
    let evicted = closed(&summary, "resource-limit");
    assert!(evicted > 1000, "{summary:?}");
    // Every flow is closed exactly once, whatever closed it.
    let all_closed: u64 = summary["closed"]
        .split(", ")
        .filter_map(|part| part.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(all_closed, flows);
    // Every eviction is a `resource` record ending with its eviction point.
    let evictions: Vec<_> = records
        .iter()
        .filter(|r| r.close_reason == CloseReason::ResourceLimit)
        .collect();
    assert_eq!(evictions.len() as u64, evicted);
    for rec in evictions {
        assert!(rec.flags.contains(Flags::RESOURCE), "{rec:?}");
        assert!(
            rec.points.iter().any(|p| p.kind == PointKind::Eviction),
            "{rec:?}"
        );
    }

    // Recording everything, the small table still loses no connection.
    let (summary, records) = scene.replay("small-all", "[table]\ncapacity = 64\n", "all", &[]);
    assert_eq!(records.len() as u64, number(&summary, "flows"));
    assert_eq!(number(&summary, "ring drops"), 0);
}

#[test]
fn the_smallest_arena_keeps_the_first_and_last_points_and_counts_the_rest() {
    let scene = Scene::new("arena", "500", "20000");
    let (_, full) = scene.replay("full", "[table]\npoints_per_flow = 1024\n", "all", &[]);
    let (_, tiny) = scene.replay("tiny", "[table]\npoints_per_flow = 2\n", "all", &[]);
    assert_eq!(full.len(), tiny.len());
    let full: HashMap<u64, &Record<'static>> = full.iter().map(|r| (r.id, r)).collect();
    let mut truncated = 0;
    for rec in &tiny {
        let whole = full[&rec.id];
        assert_eq!(whole.points_dropped, 0);
        // The note marking the end of the longest silence is added at close, outside the
        // arena.
        let silence = |p: &&flowtable::point::Point| {
            p.kind == PointKind::Stall && p.severity == flowtable::point::Severity::Info
        };
        let kept: Vec<_> = rec
            .points
            .iter()
            .filter(|p| p.kind != PointKind::Truncated && !silence(p))
            .copied()
            .collect();
        assert!(kept.len() <= 2);
        assert_eq!(
            kept.len() as u64 + u64::from(rec.points_dropped),
            whole.points.iter().filter(|p| !silence(p)).count() as u64,
            "every point is kept or counted: {rec:?}"
        );
        if rec.points_dropped > 0 {
            truncated += 1;
            assert!(rec.flags.contains(Flags::RESOURCE), "{rec:?}");
            let all: Vec<_> = whole.points.iter().filter(|p| !silence(p)).collect();
            assert_eq!(
                kept.first(),
                all.first().copied(),
                "the first point is kept"
            );
            assert_eq!(kept.last(), all.last().copied(), "the last point is kept");
            let marker = rec.points.iter().find(|p| p.kind == PointKind::Truncated);
            assert_eq!(marker.map(|p| p.arg), Some(rec.points_dropped));
        }
    }
    assert!(truncated > 100, "{truncated} trails truncated");
}

#[test]
fn with_the_smallest_ring_and_a_slow_recorder_replay_waits_and_loses_nothing() {
    let scene = Scene::new("ring", "5000", "30000");
    // A slow recorder and the smallest ring: a replaying worker waits for room (a live
    // one would drop and count).
    let (summary, records) = scene.replay(
        "tiny-ring",
        "bytes = 4096\n",
        "all",
        &[("CONNTRAIL_RECORDER_DELAY_US", "200")],
    );
    let flows = number(&summary, "flows");
    let drops = number(&summary, "ring drops");
    let written = number(&summary, "records");
    assert_eq!(drops, 0, "{summary:?}");
    assert_eq!(written, flows, "every record is written");
    assert_eq!(records.len() as u64, written);
}
