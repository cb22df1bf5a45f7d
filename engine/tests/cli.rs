//! The `conntrail` binary as an operator uses it: replay a corpus capture, show its records,
//! read a damaged log up to (and past) the damage, and reject bad configuration files with
//! the file, line and key.

use std::path::{Path, PathBuf};

mod common;
use common::{conntrail, corpus as capture, temp_dir, text};

/// Replays `cap` into `log` with `extra` options, its ring in `dir`.
fn replay_into(dir: &Path, log: &Path, cap: &Path, extra: &[&str]) {
    let cfg = dir.join("ring.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", dir.to_string_lossy())).expect("config");
    let mut args = vec![
        "replay",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--log",
        log.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    args.push(cap.to_str().expect("utf-8"));
    let out = conntrail(&args);
    assert!(out.status.success(), "replay failed: {}", text(&out.stderr));
}

/// Replays the corpus capture `cap` into `dir`/t.log.
fn replay_to(dir: &Path, cap: &str, extra: &[&str]) -> PathBuf {
    let log = dir.join("t.log");
    replay_into(dir, &log, &capture(cap), extra);
    log
}

#[test]
fn replay_prints_a_summary_and_show_decodes_it() {
    let dir = temp_dir("summary");
    let log = dir.join("t.log");
    let cfg = dir.join("ring.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", dir.to_string_lossy())).expect("config");
    let out = conntrail(&[
        "replay",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--log",
        log.to_str().expect("utf-8"),
        capture("zeek_nmap-vsn.pcap").to_str().expect("utf-8"),
    ]);
    let summary = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // 547 frames: 503 ARP/STP, 44 IP; 6 rejected + 3 client aborts + 8 unanswered SYNs are
    // anomalous, the DNS exchange is not.
    for line in [
        "packets: 547",
        "records: 17",
        "not ip (ARP, STP, ...): 503",
        "ring drops: 0",
    ] {
        assert!(summary.contains(line), "summary lacks {line:?}:\n{summary}");
    }
    assert!(summary.contains("tcp-rst-server 6"), "{summary}");
    // Each thread's CPU time against the elapsed time: the reader (which also set the
    // worker up), the one worker, the recorder.
    let threads = summary
        .lines()
        .find_map(|l| l.strip_prefix("thread cpu / elapsed: "))
        .unwrap_or_else(|| panic!("no thread line:\n{summary}"));
    let shares: Vec<(&str, u32)> = threads
        .split(", ")
        .map(|t| {
            let (name, pct) = t
                .strip_suffix(" %")
                .and_then(|t| t.rsplit_once(' '))
                .unwrap_or_else(|| panic!("{t:?}"));
            (name, pct.parse().unwrap_or_else(|_| panic!("{t:?}")))
        })
        .collect();
    let names: Vec<&str> = shares.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["reader", "worker 0", "recorder"], "{threads}");
    assert!(shares[0].1 > 0, "the reader used no CPU? {threads}");
    let shown = conntrail(&["show", log.to_str().expect("utf-8")]);
    let shown_text = text(&shown.stdout);
    assert!(shown.status.success());
    assert_eq!(
        shown_text
            .matches("reset by the server (tcp-rst-server)")
            .count(),
        6
    );
    assert!(
        shown_text.contains("state REJ, history Sr, flags error"),
        "{shown_text}"
    );
    assert!(shown_text.contains(">> +"), "irregular point marked");
    let json = conntrail(&["show", "--json", log.to_str().expect("utf-8")]);
    let lines: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 17);
    for key in [
        "id",
        "client",
        "server",
        "c2s",
        "s2c",
        "close_reason",
        "conn_state",
        "history",
        "flags",
        "irregular_point",
        "latency_ns",
        "points",
        "points_dropped",
        "vlans",
        "midstream",
        "start_ns",
        "end_ns",
        "ip_version",
        "proto",
        "worker",
    ] {
        assert!(lines[0].get(key).is_some(), "json lacks {key}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_log_is_read_up_to_and_past_the_damage() {
    let dir = temp_dir("damage");
    let log = replay_to(&dir, "zeek_http_methods.pcap", &["--record", "all"]);
    let intact = conntrail(&["show", "--json", log.to_str().expect("utf-8")]);
    let n = text(&intact.stdout).lines().count();
    assert_eq!(n, 49);
    let mut bytes = std::fs::read(&log).expect("log");
    let len = bytes.len();
    // Corrupt one byte in the middle of the log: exactly one record is lost.
    bytes[len / 2] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write");
    let out = conntrail(&["show", "--json", log.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), n - 1);
    let err = text(&out.stderr);
    assert!(err.contains("byte "), "damage offset reported: {err}");
    // Truncate the log in its last frame: every earlier record is still shown.
    std::fs::write(&log, &bytes[..len - 5]).expect("write");
    let out = conntrail(&["show", "--json", log.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), n - 2);
    assert!(text(&out.stderr).contains("byte "));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = temp_dir("config");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[table]\ncapacity = 1000\n\n[triggers.latency]\nsyn_synack = 5\n",
    )
    .expect("write");
    let out = conntrail(&["config", "check", bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{} line 5", bad.display())), "{err}");
    assert!(err.contains("syn_synack"), "{err}");
    // The documented default passes its own check.
    let default = conntrail(&["config", "default"]);
    let good = dir.join("good.toml");
    std::fs::write(&good, &default.stdout).expect("write");
    let out = conntrail(&["config", "check", good.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A capture that arrives through a pipe (read as it comes, in chunks of whatever the pipe
/// gives) replays to the same records as the same file read from disk.
#[test]
fn a_capture_through_a_pipe_gives_the_records_of_the_file() {
    let dir = temp_dir("pipe");
    let name = "suricata_tls_tls-subjectaltname.pcap";
    let bytes = std::fs::read(capture(name)).expect("corpus capture");
    assert!(bytes.len() > 1 << 20, "a capture of several chunks");
    let fifo = dir.join("through.pcap");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(&fifo, &bytes))
    };
    let json_of = |cap: &Path, log: &Path| {
        replay_into(&dir, log, cap, &["--record", "all"]);
        let json = conntrail(&["show", "--json", log.to_str().expect("utf-8")]);
        assert!(json.status.success(), "show: {}", text(&json.stderr));
        text(&json.stdout)
    };
    let through_pipe = json_of(&fifo, &dir.join("pipe.log"));
    writer
        .join()
        .expect("writer thread")
        .expect("capture written into the pipe");
    let from_file = json_of(&capture(name), &dir.join("file.log"));
    assert!(from_file.lines().count() > 10, "{from_file}");
    assert_eq!(through_pipe, from_file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_capture_is_a_clear_error() {
    let dir = temp_dir("missing");
    let out = conntrail(&[
        "replay",
        "--log",
        dir.join("x.log").to_str().expect("utf-8"),
        dir.join("nope.pcap").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nope.pcap"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `synth --proxy` writes the two sides of a reverse proxy and its conntrace log; replaying
/// both captures and correlating them through the binary gives back, per request, the side
/// the generator's truth file says failed first.
#[test]
fn synth_proxy_replay_and_correlate_agree_with_the_truth() {
    let dir = temp_dir("proxy");
    let prefix = dir.join("p");
    let out = conntrail(&[
        "synth",
        "--proxy",
        "-o",
        prefix.to_str().expect("utf-8"),
        "--requests",
        "60",
        "--seed",
        "7",
        "--failure-share",
        "0.5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("requests: 60"),
        "{}",
        text(&out.stdout)
    );
    let file = |suffix: &str| dir.join(format!("p{suffix}"));
    let mut logs = Vec::new();
    for side in ["front", "back"] {
        let log = dir.join(format!("{side}.log"));
        replay_into(
            &dir,
            &log,
            &file(&format!(".{side}.pcap")),
            &["--record", "all"],
        );
        logs.push(log);
    }
    let conntrace = file(".conntrace.jsonl");
    let out = conntrail(&[
        "correlate",
        "--json",
        "--conntrace",
        conntrace.to_str().expect("utf-8"),
        logs[0].to_str().expect("utf-8"),
        logs[1].to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut got = std::collections::HashMap::new();
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let id = v["req_id"].as_str().expect("req_id").to_string();
        got.insert(
            id,
            v["failed_first"]
                .as_str()
                .expect("failed_first")
                .to_string(),
        );
    }
    let truth = std::fs::read_to_string(file(".truth.jsonl")).expect("truth");
    let mut failures = 0;
    for line in truth.lines() {
        let t: serde_json::Value = serde_json::from_str(line).expect("truth line");
        let want = t["failed"].as_str().unwrap_or("neither");
        failures += usize::from(want != "neither");
        let id = t["req_id"].as_str().expect("req_id");
        assert_eq!(got.get(id).map(String::as_str), Some(want), "request {id}");
    }
    assert_eq!(got.len(), 60);
    assert!(
        failures >= 20,
        "the scenario should fail about half: {failures}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
