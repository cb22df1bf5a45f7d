//! Live aging: in `conntrail run`, an idle connection is closed on the clock, within the
//! wheel's resolution of its timeout, whether or not other packets arrive.
//!
//! Needs root and AF_XDP (a veth lab made by scripts/lab.sh); skips with a message otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::lab::{skip_reason, Lab, Running};
use common::{bin, corpus, s};

/// Idle timeout of every kind of flow in the test's configuration.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Id, close reason and end (ns since the epoch) of each record of `log`.
fn records(log: &Path) -> Vec<(u64, String, u64)> {
    let out = Command::new(bin())
        .args(["query", s(log), "--json"])
        .output()
        .expect("conntrail query runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| {
            Some((
                r["id"].as_u64()?,
                r["close_reason"].as_str()?.to_string(),
                r["end_ns"].as_u64()?,
            ))
        })
        .collect()
}

fn epoch_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[test]
fn idle_flows_age_out_on_the_clock_in_a_live_run() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED idle_flows_age_out_on_the_clock_in_a_live_run: {why}");
        eprintln!("SKIPPED idle_flows_age_out_on_the_clock_in_a_live_run: {why}");
        return;
    }
    let dir = common::temp_dir("live-aging");
    let lab = Lab::up(&format!("ag{}", std::process::id() % 100_000_000), &[]);
    let t = TIMEOUT.as_secs_f64();
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[timeouts]\ntcp_syn_s = {t}\ntcp_established_s = {t}\ntcp_closing_s = {t}\n\
             tcp_closed_s = {t}\nudp_s = {t}\nicmp_s = {t}\n\n[ring]\ndir = {dir:?}\n\n\
             [[capture]]\ninterface = {if:?}\nqueues = [0]\n",
            dir = s(&dir),
            if = lab.var("CAP_IF"),
        ),
    )
    .expect("config");
    let log = dir.join("live.log");
    let (mut running, _) = Running::start(&dir, &config, &log, &["--record", "all"], &[]);

    // DNS: connections that no packet closes, each idle from its last packet on.
    let pcap = corpus("zeek_dns-edns-ecs.pcap");
    // The connections of the capture, with timeouts long enough never to split one.
    let expected = {
        let replayed = dir.join("replay.log");
        let out = Command::new(bin())
            .args(["replay", "--record", "all", "--log", s(&replayed), s(&pcap)])
            .output()
            .expect("conntrail replay runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        records(&replayed).len()
    };
    assert!(expected > 0, "the capture has connections");
    lab.send(&pcap);
    // When each record first shows in the log; nothing is sent after the capture, so only
    // the clock can close the connections.
    let mut seen: BTreeMap<u64, (String, u64, u64)> = BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(30);
    while seen.len() < expected && Instant::now() < deadline {
        let now = epoch_ns();
        for (id, reason, end) in records(&log) {
            seen.entry(id).or_insert((reason, end, now));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(seen.len(), expected, "connections closed on the clock");
    let timeout = TIMEOUT.as_nanos() as u64;
    // The wheel's resolution, the polling above and a loaded machine; the defect was 6-10 s.
    let slack = Duration::from_secs(2).as_nanos() as u64;
    let mut worst = 0;
    for (id, (reason, end, shown)) in &seen {
        assert_eq!(reason, "aged-out", "record {id}");
        let after = shown.saturating_sub(*end);
        assert!(
            after + 100_000_000 >= timeout,
            "record {id} closed {after} ns after its last packet, before its timeout"
        );
        assert!(
            after < timeout + slack,
            "record {id} closed {after} ns after its last packet ({TIMEOUT:?} timeout)"
        );
        worst = worst.max(after);
    }
    println!(
        "{expected} idle connections closed at most {:.3} s after their last packet ({TIMEOUT:?} timeout)",
        worst as f64 / 1e9
    );
}
