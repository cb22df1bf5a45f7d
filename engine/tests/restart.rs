//! `conntrail run` restarted on the same log, after a clean stop and after a crash: the log
//! keeps every record it held, and no record id repeats (root, a veth lab and AF_XDP; skips
//! otherwise).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::lab::{skip_reason, wait_for, Lab, Running};
use common::{bin, corpus, text};
use engine::observe::stats::StatsFile;

const CAPTURE: &str = "zeek_http_methods.pcap";

/// The ids of the log's records, in log order.
fn ids(log: &Path) -> Vec<u64> {
    let out = Command::new(bin())
        .args(["show", "--json"])
        .arg(log)
        .output()
        .expect("conntrail show runs");
    assert!(out.status.success(), "show: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).expect("a JSON record");
            r["id"].as_u64().expect("an id")
        })
        .collect()
}

fn unique(ids: &[u64]) -> bool {
    ids.iter().collect::<HashSet<_>>().len() == ids.len()
}

/// Starts a run, sends the capture through the lab and waits until its packets are counted.
fn run_and_send(
    lab: &Lab,
    dir: &Path,
    config: &Path,
    log: &Path,
    envs: &[(&str, &str)],
) -> Running {
    let stats = dir.join("run.stats.json");
    let _ = std::fs::remove_file(&stats);
    let (running, _) = Running::start(
        dir,
        config,
        log,
        &["--record", "all", "--stats", stats.to_str().expect("utf-8")],
        envs,
    );
    let before = StatsFile::read(&stats).map_or(0, |s| s.total().packets);
    lab.send(&corpus(CAPTURE));
    wait_for("the packets to be counted", Duration::from_secs(30), || {
        let s = StatsFile::read(&stats).ok()?;
        (s.total().packets > before).then_some(())
    });
    running
}

#[test]
fn a_restarted_run_continues_its_log_and_never_repeats_an_id() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED a_restarted_run_continues_its_log_and_never_repeats_an_id: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("conntrail-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let lab = Lab::up(&format!("cr{}", std::process::id() % 100_000_000), &[]);
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = {rings:?}\n\n[[capture]]\ninterface = {if:?}\nqueues = [0]\n",
            rings = dir.join("rings").to_string_lossy(),
            if = lab.var("CAP_IF"),
        ),
    )
    .expect("config");
    let log = dir.join("run.log");

    let mut first = run_and_send(&lab, &dir, &config, &log, &[]);
    first.stop();
    let after_first = ids(&log);
    assert!(!after_first.is_empty(), "{}", first.output());

    // A clean stop and a plain restart (`systemctl restart`): the log goes on.
    let mut second = run_and_send(&lab, &dir, &config, &log, &[]);
    second.stop();
    let after_second = ids(&log);
    assert_eq!(&after_second[..after_first.len()], &after_first[..]);
    assert!(
        after_second.len() > after_first.len(),
        "{}",
        second.output()
    );
    assert!(
        unique(&after_second),
        "ids repeat after a clean restart: {after_second:?}"
    );

    // A crash with records still in the rings, then a restart that recovers them.
    let mut crashed = run_and_send(
        &lab,
        &dir,
        &config,
        &log,
        &[("CONNTRAIL_RECORDER_DELAY_US", "20000")],
    );
    crashed.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    crashed.signal(libc::SIGKILL);
    let _ = crashed.child.wait();
    let mut fourth = run_and_send(&lab, &dir, &config, &log, &[]);
    fourth.stop();
    let after_fourth = ids(&log);
    assert_eq!(&after_fourth[..after_second.len()], &after_second[..]);
    assert!(
        after_fourth.len() > after_second.len() + after_first.len(),
        "the crashed run's and the last run's records: {}",
        fourth.output()
    );
    assert!(
        unique(&after_fourth),
        "ids repeat after a crash: {after_fourth:?}"
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
