//! The log as the engine writes it: one engine per log (a second `replay` into the same log
//! is refused, naming the first's pid, and the first's records all arrive undamaged), a
//! full small disk (the log keeps its header and the summary counts the lost records), and
//! a damaged segment header (reported with its file and offset, no record lost).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{bin, conntrail, s, text};

/// A private scratch directory (0700), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "conntrail-log-writer-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        Scratch(dir)
    }

    /// A fresh private directory inside.
    fn private_dir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    /// A config file whose rings go to a fresh private directory, with `extra` appended.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let rings = self.private_dir(&format!("{name}-rings"));
        let cfg = self.0.join(format!("{name}.toml"));
        std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n{extra}", s(&rings))).expect("config");
        cfg
    }

    fn synth(&self, name: &str, flows: u32, packets: u32, seed: u32) -> PathBuf {
        let capture = self.0.join(name);
        let (flows, packets, seed) = (flows.to_string(), packets.to_string(), seed.to_string());
        let out = conntrail(&[
            "synth",
            "-o",
            s(&capture),
            "--flows",
            &flows,
            "--packets",
            &packets,
            "--seed",
            &seed,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        capture
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn replay_args<'a>(cfg: &'a Path, log: &'a Path, capture: &'a Path) -> [&'a str; 8] {
    [
        "replay",
        "--config",
        s(cfg),
        "--record",
        "all",
        "--log",
        s(log),
        s(capture),
    ]
}

/// The value of a `key: value` line of a replay summary.
fn summary_value(stdout: &[u8], key: &str) -> Option<String> {
    text(stdout).lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(": "))
            .map(str::to_string)
    })
}

/// `show --json` of a log, its lines sorted, after checking it reported no damage.
fn records_without_damage(log: &Path) -> Vec<String> {
    let out = conntrail(&["show", "--json", s(log)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    lines.sort_unstable();
    lines
}

#[test]
fn of_two_replays_into_one_log_one_is_refused_and_the_winners_records_all_arrive() {
    let scratch = Scratch::new("two");
    let captures = [
        scratch.synth("a.pcap", 20_000, 400_000, 1),
        scratch.synth("b.pcap", 20_000, 400_000, 2),
    ];
    let log = scratch.0.join("same.log");
    let configs = [scratch.config("a", ""), scratch.config("b", "")];
    let children: Vec<_> = configs
        .iter()
        .zip(&captures)
        .map(|(cfg, capture)| {
            Command::new(bin())
                .args(replay_args(cfg, &log, capture))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("replay starts")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("replay ends"))
        .collect();

    let winners: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one replay succeeds: {:?}",
        outputs.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
    let (winner, loser) = (winners[0], 1 - winners[0]);
    assert_ne!(outputs[loser].status.code(), Some(0));
    let refusal = text(&outputs[loser].stderr);
    let expected = format!(
        "log {} is being written by process {}",
        log.display(),
        pids[winner]
    );
    assert!(refusal.contains(&expected), "{refusal}");

    let records = summary_value(&outputs[winner].stdout, "records").expect("records line");
    assert_eq!(records, "20000", "{}", text(&outputs[winner].stdout));
    let in_log = records_without_damage(&log);
    assert_eq!(in_log.len(), 20_000);

    // The same records as the winner's capture gives alone.
    let solo = scratch.0.join("solo.log");
    let cfg = scratch.config("solo", "");
    let out = conntrail(&replay_args(&cfg, &solo, &captures[winner]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        in_log == records_without_damage(&solo),
        "the log holds the winner's records"
    );
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_replay_onto_a_full_small_disk_keeps_the_header_and_counts_every_lost_record() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a 1 MiB tmpfs needs root");
        return;
    }
    let scratch = Scratch::new("full");
    let capture = scratch.synth("c.pcap", 3000, 30_000, 3);
    let disk = scratch.private_dir("disk");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|st| st.success());
    assert!(mounted, "mount -t tmpfs");
    let _mount = Mount(disk.clone());
    // The default configuration: a 64 MiB free-space floor, above the whole disk.
    let cfg = scratch.config("full", "");
    let log = disk.join("full.log");
    let out = conntrail(&replay_args(&cfg, &log, &capture));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("3000 record(s) lost"),
        "{}",
        text(&out.stderr)
    );
    let full = summary_value(&out.stdout, "log full").expect("a `log full` line");
    assert!(
        full.starts_with("3000 record(s) lost"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::metadata(&log).expect("log").len(), 40);
    assert!(records_without_damage(&log).is_empty());
}

#[test]
fn a_flipped_bit_in_a_segment_header_is_reported_and_no_record_is_lost() {
    let scratch = Scratch::new("header");
    let capture = scratch.synth("d.pcap", 3000, 30_000, 4);
    let cfg = scratch.config("header", "[log]\nmin_free_bytes = 0\n");
    let log = scratch.0.join("d.log");
    let out = conntrail(&replay_args(&cfg, &log, &capture));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let intact = conntrail(&["show", "--json", s(&log)]);
    assert_eq!(intact.status.code(), Some(0));

    let mut bytes = std::fs::read(&log).expect("log");
    bytes[8] ^= 0x01; // the version field
    std::fs::write(&log, &bytes).expect("log written");
    let damaged = conntrail(&["show", "--json", s(&log)]);
    assert_eq!(damaged.status.code(), Some(1));
    assert_eq!(text(&damaged.stdout), text(&intact.stdout));
    let err = text(&damaged.stderr);
    assert!(
        err.contains(&format!("{}: byte 0: ", log.display())),
        "the header damage is reported with its file and offset: {err}"
    );
}

#[test]
fn replay_waits_for_a_slow_recorder_instead_of_dropping_records() {
    let scratch = Scratch::new("backpressure");
    let capture = scratch.synth("e.pcap", 4000, 40_000, 5);
    // A ring of 64 KiB holds a few hundred records; a recorder slowed to 100 µs a record
    // falls far behind the worker.
    let cfg = scratch.config("backpressure", "bytes = 65536\n[log]\nmin_free_bytes = 0\n");
    let log = scratch.0.join("e.log");
    let out = Command::new(bin())
        .args(replay_args(&cfg, &log, &capture))
        .env("CONNTRAIL_RECORDER_DELAY_US", "100")
        .output()
        .expect("conntrail runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        summary_value(&out.stdout, "ring drops").as_deref(),
        Some("0")
    );
    let flows = summary_value(&out.stdout, "flows").expect("flows");
    assert_eq!(summary_value(&out.stdout, "records"), Some(flows.clone()));
    assert_eq!(records_without_damage(&log).len().to_string(), flows);
}
