//! A ring directory too small for the configured rings: `conntrail replay` refuses to start
//! with a message naming the directory and the space (exit status 2), instead of dying of
//! SIGBUS on the first write past the free space, and leaves no ring file behind.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

use common::{conntrail, corpus, s, temp_dir, text};

/// A 1 MiB tmpfs on a fresh directory (mode 0700), unmounted and removed on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    /// `None` (with a message) when not root or the mount fails.
    fn mount(dir: PathBuf) -> Option<SmallTmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|st| st.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            eprintln!("skipped: could not mount a tmpfs on {}", dir.display());
            return None;
        }
        Some(SmallTmpfs(dir))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn replay_refuses_a_ring_dir_too_small_for_its_rings() {
    let work = temp_dir("ringspace");
    let Some(tmpfs) = SmallTmpfs::mount(work.join("rings")) else {
        let _ = std::fs::remove_dir_all(&work);
        return;
    };
    let config = work.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = \"{}\"\nbytes = 4194304\n[log]\nmin_free_bytes = 0\n",
            tmpfs.0.display()
        ),
    )
    .unwrap();
    let log = work.join("LOG");
    let out = conntrail(&[
        "replay",
        "--config",
        s(&config),
        "--log",
        s(&log),
        s(&corpus("zeek_http_methods.pcap")),
    ]);
    let stderr = text(&out.stderr);
    let rings: Vec<_> = std::fs::read_dir(&tmpfs.0)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ring"))
        .collect();
    drop(tmpfs);
    let _ = std::fs::remove_dir_all(&work);
    assert_eq!(
        out.status.signal(),
        None,
        "killed by a signal; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(s(&work.join("rings"))), "{stderr}");
    assert!(
        stderr.contains("not enough space: the ring needs 4194816 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("bytes free"), "{stderr}");
    assert!(rings.is_empty(), "ring files left: {rings:?}");
}
