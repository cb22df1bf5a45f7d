//! A live run that loses records says so in its exit status (4) and on stderr: a live
//! worker never waits for the recorder, it drops and counts, and the operator must learn it.
//!
//! Needs root and AF_XDP (a veth lab made by scripts/lab.sh); skips with a message otherwise.

use std::time::Duration;

mod common;
use common::lab::{skip_reason, wait_for, Lab, Running};
use common::s;

#[test]
fn a_live_run_that_drops_records_exits_4() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED a_live_run_that_drops_records_exits_4: {why}");
        eprintln!("SKIPPED a_live_run_that_drops_records_exits_4: {why}");
        return;
    }
    let dir = common::temp_dir("live-lost");
    let lab = Lab::up(&format!("ll{}", std::process::id() % 100_000_000), &[]);
    // The smallest ring and a recorder slowed to 20 ms a pass: 2000 connections, closed
    // together at shutdown, cannot all fit.
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = {dir:?}\nbytes = 4096\n\n[[capture]]\ninterface = {if:?}\nqueues = [0]\n",
            dir = s(&dir),
            if = lab.var("CAP_IF"),
        ),
    )
    .expect("config");
    let log = dir.join("live.log");
    let (mut running, _) = Running::start(
        &dir,
        &config,
        &log,
        &["--record", "all"],
        &[("CONNTRAIL_RECORDER_DELAY_US", "20000")],
    );
    let capture = dir.join("many.pcap");
    let out = common::conntrail(&[
        "synth",
        "-o",
        s(&capture),
        "--flows",
        "2000",
        "--packets",
        "8000",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "synth: {}", common::text(&out.stderr));
    lab.send(&capture);
    running.signal(libc::SIGTERM);
    let status = wait_for("conntrail run to stop", Duration::from_secs(60), || {
        running.child.try_wait().expect("wait")
    });
    let output = running.output();
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    let dropped = output
        .lines()
        .find_map(|l| l.strip_prefix("ring drops: "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("the summary counts ring drops");
    assert!(dropped > 0, "the test needs drops to happen:\n{output}");
    assert_eq!(status.code(), Some(4), "{output}");
    assert!(
        output.contains(&format!(
            "record(s) lost: {dropped} dropped from full rings"
        )),
        "{output}"
    );
}
