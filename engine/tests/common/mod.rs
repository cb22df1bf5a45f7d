//! Helpers shared by the integration tests: running the binary, temporary directories,
//! corpus paths, and (in [`lab`]) the veth lab and a running `conntrail run`.
//!
//! Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `conntrail` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_conntrail")
}

/// Runs the binary to completion.
pub fn conntrail(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("conntrail runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A fresh, empty directory of this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("conntrail-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Every capture (`.pcap`, `.pcapng`) of the shared corpus, sorted by name.
pub fn corpus_captures() -> Vec<PathBuf> {
    let dir = corpus("");
    let mut captures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the corpus must sit beside the repository",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    captures.sort();
    assert!(
        captures.len() >= 10,
        "{} holds {} captures",
        dir.display(),
        captures.len()
    );
    captures
}

/// A capture of the shared corpus.
pub fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/real")
        .join(name)
}

/// `show --json` of a `replay --record all --workers 1` of `capture` into `dir`: one JSON
/// record per line, as the shared scoring tools read them.
pub fn replayed_json(capture: &Path, dir: &Path) -> String {
    let name = capture.file_name().expect("name").to_string_lossy();
    let log = dir.join(format!("{name}.log"));
    let replayed = conntrail(&[
        "replay",
        "--record",
        "all",
        "--workers",
        "1",
        "--log",
        s(&log),
        s(capture),
    ]);
    assert!(
        replayed.status.success(),
        "{name}: {}",
        text(&replayed.stderr)
    );
    let shown = conntrail(&["show", "--json", s(&log)]);
    assert!(shown.status.success(), "{name}: {}", text(&shown.stderr));
    text(&shown.stdout)
}

/// Replays `capture` into `log` keeping `record` connections (`all`, `anomalous`), with the
/// ring files in `dir` (a config `dir/ring.toml` says so); panics if the replay fails.
pub fn replay_to(dir: &Path, capture: &Path, log: &Path, record: &str) {
    let cfg = dir.join("ring.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", s(dir))).expect("config");
    let out = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--record",
        record,
        "--log",
        s(log),
        s(capture),
    ]);
    assert!(
        out.status.success(),
        "replay {}: {}",
        capture.display(),
        text(&out.stderr)
    );
}
