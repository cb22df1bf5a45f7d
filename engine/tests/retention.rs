//! Log retention as an operator meets it: a capped log keeps its newest segments and reads
//! without damage, and a log on a full disk costs records (counted, reported) but never the
//! engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{conntrail, s, text};

struct Scene {
    dir: PathBuf,
    capture: PathBuf,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let dir =
            std::env::temp_dir().join(format!("conntrail-retention-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let capture = dir.join("synth.pcap");
        let out = conntrail(&[
            "synth",
            "-o",
            s(&capture),
            "--flows",
            "3000",
            "--packets",
            "30000",
            "--seed",
            "4",
        ]);
        assert!(out.status.success());
        Scene { dir, capture }
    }

    fn replay(&self, log: &Path, log_section: &str) -> (HashMap<String, String>, String) {
        let cfg = self.dir.join("c.toml");
        std::fs::write(
            &cfg,
            format!("[ring]\ndir = {:?}\n[log]\n{log_section}", s(&self.dir)),
        )
        .expect("config");
        let out = conntrail(&[
            "replay",
            "--config",
            s(&cfg),
            "--record",
            "all",
            "--log",
            s(log),
            s(&self.capture),
        ]);
        let lost = text(&out.stdout).contains("log full: ");
        // Records lost for lack of space give exit status 4, said on stderr.
        assert_eq!(
            out.status.code(),
            Some(if lost { 4 } else { 0 }),
            "replay: {}",
            text(&out.stderr)
        );
        assert_eq!(lost, text(&out.stderr).contains("record(s) lost"));
        let stdout = text(&out.stdout);
        let summary = stdout
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (summary, stdout)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shown_ids(log: &Path) -> Vec<u64> {
    let out = conntrail(&["show", "--json", s(log)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            v["id"].as_u64().expect("id")
        })
        .collect()
}

#[test]
fn a_capped_log_keeps_its_newest_segments_and_reads_without_damage() {
    let scene = Scene::new("cap");
    let whole = scene.dir.join("whole.log");
    scene.replay(&whole, "min_free_bytes = 0\n");
    let all = shown_ids(&whole);
    assert_eq!(all.len(), 3000);

    let capped = scene.dir.join("capped.log");
    let (summary, stdout) = scene.replay(
        &capped,
        "rotate_bytes = 65536\nmax_total_bytes = 196608\nmin_free_bytes = 0\n",
    );
    assert!(
        summary
            .get("log retention")
            .is_some_and(|v| v.contains("old segment(s) deleted")),
        "{stdout}"
    );
    assert!(!capped.exists(), "the base file is the oldest segment");
    let on_disk: u64 = std::fs::read_dir(&scene.dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("capped.log."))
        .map(|e| e.metadata().expect("metadata").len())
        .sum();
    assert!(on_disk <= 196_608, "{on_disk} bytes on disk");
    // The newest records, in order, with no damage reported.
    let kept = shown_ids(&capped);
    assert!(kept.len() > 100 && kept.len() < all.len());
    assert_eq!(kept, all[all.len() - kept.len()..]);
    let out = conntrail(&["query", s(&capped), "--count-by", "proto"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{}  100.0%  total", kept.len())));
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_loses_counted_records_not_the_engine() {
    let scene = Scene::new("full");
    let mount_point = scene.dir.join("disk");
    std::fs::create_dir_all(&mount_point).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=192k", "tmpfs"])
        .arg(&mount_point)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs needs root (mount -t tmpfs)");
        return;
    }
    let disk = SmallDisk(mount_point);
    let log = disk.0.join("t.log");
    let (summary, stdout) = scene.replay(&log, "min_free_bytes = 0\n");
    let written: u64 = summary["records"].parse().expect("records");
    let lost: u64 = summary["log full"]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `log full` line: {stdout}"));
    assert!(lost > 0 && written > 0, "{stdout}");
    assert_eq!(written + lost, 3000, "every record is written or counted");
    // What was written reads back whole: no torn frame at the end of the full disk.
    assert_eq!(shown_ids(&log).len() as u64, written);
    drop(disk);
}
