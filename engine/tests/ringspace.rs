//! Ring files and their damage as the engine meets them. A ring directory too small for the
//! configured rings: `conntrail replay` refuses to start with a message naming the directory
//! and the space (exit status 2), instead of dying of SIGBUS on the first write past the free
//! space, and leaves no ring file behind. A bit flipped in a ring a crashed engine left:
//! `conntrail recover` skips that record and says where it was.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Reads a little-endian u64 of the ring file at `offset`.
fn u64_at(file: &std::fs::File, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, offset).expect("ring file read");
    u64::from_le_bytes(b)
}

#[test]
fn recover_skips_a_damaged_ring_frame_and_says_where_it_was() {
    let work = temp_dir("ringcrc");
    let rings = work.join("rings");
    std::fs::create_dir(&rings).unwrap();
    std::fs::set_permissions(&rings, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = work.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[ring]\ndir = \"{}\"\nbytes = 16777216\n[log]\nmin_free_bytes = 0\n",
            rings.display()
        ),
    )
    .unwrap();
    let capture = work.join("synth.pcap");
    let out = conntrail(&[
        "synth",
        "-o",
        s(&capture),
        "--flows",
        "4000",
        "--packets",
        "32000",
        "--seed",
        "5",
    ]);
    assert!(out.status.success(), "synth: {}", text(&out.stderr));
    // A slow recorder, killed while records wait in the ring.
    let log = work.join("LOG");
    let mut child = Command::new(common::bin())
        .args([
            "replay",
            "--config",
            s(&config),
            "--workers",
            "1",
            "--record",
            "all",
        ])
        .args(["--log", s(&log), s(&capture)])
        .env("CONNTRAIL_RECORDER_DELAY_US", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("conntrail starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&log).map_or(0, |m| m.len()) < 4_000 {
        assert!(Instant::now() < deadline, "the log never grew");
        assert!(child.try_wait().unwrap().is_none(), "replay ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let ring = std::fs::read_dir(&rings)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "ring"))
        .expect("the ring survives the crash");
    // The oldest frame not released (ring/src/spsc.rs: data area at 512, tail at 256, the
    // capacity at 16, frames [len][check][payload][crc]): flip a bit of its payload.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ring)
        .unwrap();
    let capacity = u64_at(&file, 16);
    let (head, tail) = (u64_at(&file, 128), u64_at(&file, 256));
    assert!(head > tail, "records wait in the ring");
    let mut frame = 512 + tail % capacity;
    if u64_at(&file, frame) as u32 == u32::MAX {
        frame = 512;
    }
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, frame + 20).unwrap();
    file.write_all_at(&[byte[0] ^ 0x04], frame + 20).unwrap();
    drop(file);

    let out = conntrail(&["recover", "--config", s(&config)]);
    let said = text(&out.stdout);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        said.contains(&format!(
            "; 1 frame failed its checksum in {} at offset {frame}, skipped",
            s(&ring)
        )),
        "stdout: {said}\nstderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "damage found: exit status 1");
}
