//! Crash safety: an engine killed with SIGKILL while records are in flight loses none of the
//! records it handed to its rings, and recovery (`conntrail recover`, or the next start of
//! the engine) writes each of them to the log exactly once.
//!
//! The recorder is slowed down with `CONNTRAIL_RECORDER_DELAY_US` so records pile up in the
//! rings; rings are large enough that nothing is dropped, so every record a worker produced
//! before the kill was handed to its ring. Workers process their frames deterministically,
//! so a clean replay of the same capture gives each worker's records in the order it
//! produced them; after recovery the log must hold, for every worker, exactly a prefix of
//! that sequence (no record missing before the last one written, none twice), and at least
//! every record that was in the log or in a ring when the engine died. With contexts the
//! same holds for each context's log, and each record is in the log of its context.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowtable::record::Record;

mod common;
use common::{conntrail, s, text};

struct Scene {
    dir: PathBuf,
    rings: PathBuf,
    config: PathBuf,
    capture: PathBuf,
}

/// The config's context: every VLAN the generator tags flows with (10 to 4009), so about 3 %
/// of the flows go to `LOG.tagged`.
const TAGGED: &str = "tagged";

impl Scene {
    fn new(name: &str) -> Scene {
        Scene::with(name, "")
    }

    fn with_contexts(name: &str) -> Scene {
        let vlans: Vec<String> = (10..4010).map(|v: u32| v.to_string()).collect();
        Scene::with(
            name,
            &format!(
                "\n[[context]]\nname = {TAGGED:?}\nvlans = [{}]\n",
                vlans.join(", ")
            ),
        )
    }

    fn with(name: &str, extra: &str) -> Scene {
        let dir =
            std::env::temp_dir().join(format!("conntrail-crash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rings = dir.join("rings");
        std::fs::create_dir_all(&rings).expect("temp dir");
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[ring]\ndir = {:?}\nbytes = 67108864\n\n[log]\nmin_free_bytes = 0\n{extra}",
                s(&rings)
            ),
        )
        .expect("config");
        let capture = dir.join("synth.pcap");
        let out = conntrail(&[
            "synth",
            "-o",
            s(&capture),
            "--flows",
            "20000",
            "--packets",
            "160000",
            "--seed",
            "11",
            "--duration-s",
            "30",
        ]);
        assert!(out.status.success(), "synth: {}", text(&out.stderr));
        Scene {
            dir,
            rings,
            config,
            capture,
        }
    }

    fn replay(&self, log: &Path, capture: &Path) -> Output {
        conntrail(&[
            "replay",
            "--config",
            s(&self.config),
            "--workers",
            "2",
            "--record",
            "all",
            "--log",
            s(log),
            s(capture),
        ])
    }

    /// Replays with a slow recorder and kills the engine once the log has some records.
    fn crashed_replay(&self, log: &Path) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_conntrail"))
            .args([
                "replay",
                "--config",
                s(&self.config),
                "--workers",
                "2",
                "--record",
                "all",
                "--log",
                s(log),
                s(&self.capture),
            ])
            .env("CONNTRAIL_RECORDER_DELAY_US", "300")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("conntrail starts");
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::fs::metadata(log).map_or(0, |m| m.len()) < 40_000 {
            assert!(Instant::now() < deadline, "the log never grew");
            assert!(
                child.try_wait().expect("wait").is_none(),
                "replay ended early"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    /// The ring files left in the ring directory, in worker order.
    fn ring_files(&self) -> Vec<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.rings)
            .expect("ring dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "ring"))
            .map(|p| {
                let worker = p
                    .file_stem()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.rsplit('-').next())
                    .and_then(|w| w.parse().ok())
                    .expect("conntrail-PID-N-WORKER.ring");
                (worker, p)
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.rings)
            .expect("ring dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The records of a log; `intact` requires no damage report.
fn records(log: &Path, intact: bool) -> Vec<Record<'static>> {
    forensics::logs::Records::open(&[log.to_path_buf()])
        .expect("log opens")
        .filter_map(|item| match item {
            Ok(rec) => Some(rec),
            Err(damage) => {
                assert!(!intact, "damage in {}: {damage}", log.display());
                None
            }
        })
        .collect()
}

fn by_worker<'r>(records: &'r [Record<'static>]) -> HashMap<u16, Vec<&'r Record<'static>>> {
    let mut out: HashMap<u16, Vec<&'r Record<'static>>> = HashMap::new();
    for rec in records {
        out.entry(rec.worker).or_default().push(rec);
    }
    out
}

/// The ids of the records in the rings left by the crash, read without releasing them.
fn ids_in_rings(rings: &[PathBuf]) -> HashSet<u64> {
    let mut ids = HashSet::new();
    for path in rings {
        let mut consumer = ring::open(path).expect("ring reopens after the crash");
        while consumer.pop_unreleased(|frame| {
            let rec = flowtable::record::codec::decode(frame).expect("a ring frame is a record");
            assert!(ids.insert(rec.id), "record {} twice in the rings", rec.id);
        }) {}
    }
    ids
}

/// The path of context `name`'s log beside `log`.
fn context_log(log: &Path, name: &str) -> PathBuf {
    let mut path = log.as_os_str().to_owned();
    path.push(format!(".{name}"));
    PathBuf::from(path)
}

/// Checks the recovered logs (one per context) against the clean replay's logs and what the
/// crash left behind.
fn check_exactly_once(
    clean: &[Vec<Record<'static>>],
    before: &HashSet<u64>,
    in_rings: &HashSet<u64>,
    recovered_logs: &[PathBuf],
) {
    let mut seen = HashSet::new();
    for (context, (log, clean)) in recovered_logs.iter().zip(clean).enumerate() {
        let after = records(log, true);
        for rec in &after {
            assert!(seen.insert(rec.id), "record {} written twice", rec.id);
            assert_eq!(usize::from(rec.context), context, "in {}", log.display());
        }
        let clean = by_worker(clean);
        for (worker, got) in by_worker(&after) {
            let want = &clean[&worker];
            assert!(got.len() <= want.len());
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "worker {worker}: record {i} of {} differs from the clean replay",
                    log.display()
                );
            }
        }
    }
    let expected: HashSet<u64> = before.union(in_rings).copied().collect();
    assert_eq!(
        seen, expected,
        "the logs are what was written plus what the rings held"
    );
}

/// What [`crash_and_recover`] saw.
struct Crash {
    /// The clean replay's records, per log (default context first).
    clean: Vec<Vec<Record<'static>>>,
    /// The crashed replay's logs, and the records in them before recovery.
    logs: Vec<PathBuf>,
    before: usize,
    /// Records in the rings but not in the logs when the engine died.
    in_flight: usize,
}

/// Replays the scene's capture cleanly, then again with a slow recorder killed by SIGKILL,
/// recovers with `conntrail recover` and checks that every record is in its context's log
/// (`contexts` are the config's context names) exactly once.
fn crash_and_recover(scene: &Scene, contexts: &[&str]) -> Crash {
    let logs_of = |log: PathBuf| {
        let mut logs = vec![log.clone()];
        logs.extend(contexts.iter().map(|c| context_log(&log, c)));
        logs
    };
    let out = scene.replay(&scene.dir.join("clean.log"), &scene.capture);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ring drops: 0\n"),
        "{}",
        text(&out.stdout)
    );
    let clean: Vec<_> = logs_of(scene.dir.join("clean.log"))
        .iter()
        .map(|l| records(l, true))
        .collect();
    assert_eq!(clean.iter().map(Vec::len).sum::<usize>(), 20_000);

    let logs = logs_of(scene.dir.join("crash.log"));
    scene.crashed_replay(&logs[0]);
    let rings = scene.ring_files();
    assert_eq!(rings.len(), 2, "the rings survive the crash");
    let before: HashSet<u64> = logs
        .iter()
        .flat_map(|l| records(l, false))
        .map(|r| r.id)
        .collect();
    let in_rings = ids_in_rings(&rings);
    let in_flight = in_rings.difference(&before).count();
    assert!(in_flight > 100, "only {in_flight} records were in flight");
    assert!(before.len() < 20_000);

    let out = conntrail(&["recover", "--config", s(&scene.config)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("{in_flight} records written to {}", s(&logs[0]))),
        "{said}"
    );
    check_exactly_once(&clean, &before, &in_rings, &logs);
    assert!(scene.leftovers().is_empty(), "{:?}", scene.leftovers());
    Crash {
        clean,
        logs,
        before: before.len(),
        in_flight,
    }
}

#[test]
fn records_in_flight_at_a_sigkill_are_recovered_exactly_once() {
    let scene = Scene::new("recover");
    let crash = crash_and_recover(&scene, &[]);
    let out = conntrail(&["recover", "--config", s(&scene.config)]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("nothing to recover"));
    assert_eq!(
        records(&crash.logs[0], true).len(),
        crash.before + crash.in_flight
    );
}

#[test]
fn with_contexts_each_record_is_recovered_once_into_its_contexts_log() {
    let scene = Scene::with_contexts("contexts");
    let crash = crash_and_recover(&scene, &[TAGGED]);
    assert!(
        crash.clean[1].len() > 300,
        "{} tagged",
        crash.clean[1].len()
    );
}

#[test]
fn the_next_start_of_the_engine_recovers_a_crashed_run() {
    let scene = Scene::new("restart");
    let clean_log = scene.dir.join("clean.log");
    let out = scene.replay(&clean_log, &scene.capture);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let clean = records(&clean_log, true);

    let log = scene.dir.join("crash.log");
    scene.crashed_replay(&log);
    let before: HashSet<u64> = records(&log, false).iter().map(|r| r.id).collect();
    let in_rings = ids_in_rings(&scene.ring_files());
    assert!(in_rings.difference(&before).count() > 100);

    // Another replay into another log, with the same ring directory.
    let small = scene.dir.join("small.pcap");
    let out = conntrail(&[
        "synth",
        "-o",
        s(&small),
        "--flows",
        "10",
        "--packets",
        "100",
        "--seed",
        "3",
    ]);
    assert!(out.status.success());
    let out = scene.replay(&scene.dir.join("next.log"), &small);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("records written to {}", s(&log))),
        "{}",
        text(&out.stderr)
    );
    check_exactly_once(
        std::slice::from_ref(&clean),
        &before,
        &in_rings,
        std::slice::from_ref(&log),
    );
    assert!(scene.leftovers().is_empty(), "{:?}", scene.leftovers());
}
