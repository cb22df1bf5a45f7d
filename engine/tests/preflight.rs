//! Start-time checks of the configuration against the machine, through the real binary: a
//! table larger than memory or than the address-space limit is refused with status 2 by
//! `config check` and by `replay` before anything is created, and `config check` says what
//! is wrong with the ring directory.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{bin, conntrail, corpus, s, temp_dir, text};

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(&path, body).expect("config");
    path
}

/// The message of a refusal: exit status 2 (no signal, no panic), one line.
fn refusal(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("memory allocation"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn config_check_refuses_a_table_larger_than_memory() {
    let dir = temp_dir("preflight-check");
    let cfg = write_config(&dir, "[table]\ncapacity = 4294967295\n");
    let err = refusal(&conntrail(&["config", "check", s(&cfg)]));
    assert!(
        err.starts_with("conntrail: [table] capacity = 4294967295 needs "),
        "{err}"
    );
    assert!(err.contains("TiB for 1 worker ("), "{err}");
    assert!(err.contains("; this machine has "), "{err}");
    assert!(err.contains(" available"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn replay_refuses_a_table_larger_than_memory_before_making_any_file() {
    let dir = temp_dir("preflight-replay");
    let rings = dir.join("rings");
    std::fs::create_dir(&rings).expect("ring dir");
    let cfg = write_config(
        &dir,
        &format!(
            "[table]\ncapacity = 4294967295\n[ring]\ndir = {:?}\n",
            s(&rings)
        ),
    );
    let log = dir.join("t.log");
    let capture = corpus("zeek_conn-size.pcap");
    let err = refusal(&conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--workers",
        "2",
        "--log",
        s(&log),
        s(&capture),
    ]));
    assert!(
        err.contains("[table] capacity = 4294967295 needs "),
        "{err}"
    );
    assert!(err.contains("for 2 workers"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&rings).expect("ring dir").collect();
    assert!(left.is_empty(), "{left:?} left in the ring directory");
    assert!(!log.exists(), "no log written");
    std::fs::remove_dir_all(&dir).ok();
}

/// `conntrail ARGS` with its address space limited to `bytes`.
fn with_address_space(bytes: u64, args: &[&str]) -> Output {
    let mut command = Command::new(bin());
    command.args(args);
    // SAFETY: between fork and exec the closure calls only setrlimit, which is
    // async-signal-safe, on a limit built before the fork.
    unsafe {
        command.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.output().expect("conntrail runs")
}

#[test]
fn a_table_beyond_the_address_space_limit_is_refused() {
    let dir = temp_dir("preflight-ulimit");
    let rings = dir.join("rings");
    std::fs::create_dir(&rings).expect("ring dir");
    // About 1 GB of table: it fits this machine's memory but not 768 MiB of address space.
    let cfg = write_config(
        &dir,
        &format!(
            "[table]\ncapacity = 2000000\n[ring]\ndir = {:?}\n",
            s(&rings)
        ),
    );
    let log = dir.join("t.log");
    let capture = corpus("zeek_conn-size.pcap");
    let replay = ["replay", "--config", s(&cfg), "--log", s(&log), s(&capture)];
    let err = refusal(&with_address_space(768 << 20, &replay));
    assert!(err.contains("[table] capacity = 2000000 needs "), "{err}");
    assert!(
        err.contains("the address-space limit (ulimit -v) leaves "),
        "{err}"
    );
    assert!(std::fs::read_dir(&rings)
        .expect("ring dir")
        .next()
        .is_none());
    let err = refusal(&with_address_space(
        768 << 20,
        &["config", "check", s(&cfg)],
    ));
    assert!(err.contains("ulimit -v"), "{err}");
    // Without the limit the same replay runs.
    let out = conntrail(&replay);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_check_says_what_is_wrong_with_the_ring_directory() {
    let dir = temp_dir("preflight-ringdir");
    let check = |ring_dir: &Path| {
        let cfg = write_config(&dir, &format!("[ring]\ndir = {:?}\n", s(ring_dir)));
        conntrail(&["config", "check", s(&cfg)])
    };
    let missing = dir.join("no").join("rings");
    let err = refusal(&check(&missing));
    assert!(
        err.contains(&format!(
            "[ring] dir = \"{}\" does not exist, nor does its parent {}",
            missing.display(),
            dir.join("no").display()
        )),
        "{err}"
    );
    let file = dir.join("c.toml");
    let err = refusal(&check(&file));
    assert!(err.contains("is not a directory"), "{err}");
    // Missing with an existing parent: the engine makes it.
    let out = check(&dir.join("rings"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// A small tmpfs mounted for a test, unmounted and removed when dropped.
struct SmallFs(std::path::PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn config_check_warns_when_the_rings_do_not_fit_the_ring_file_system() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: mounting a small file system needs root");
        return;
    }
    let dir = temp_dir("preflight-space");
    let mount = SmallFs(dir.join("small"));
    std::fs::create_dir(&mount.0).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs", s(&mount.0)])
        .status()
        .expect("mount runs");
    assert!(mounted.success());
    // Two queues of 8 MiB rings: 16 MiB on 8 MiB; the ring dir is made inside it.
    let body = |bytes: u64| {
        format!(
            "[ring]\ndir = {:?}\nbytes = {bytes}\n\n[[capture]]\ninterface = \"eth0\"\n\
             queues = [0, 1]\n",
            s(&mount.0.join("rings"))
        )
    };
    let cfg = write_config(&dir, &body(8 << 20));
    let out = conntrail(&["config", "check", s(&cfg)]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.starts_with("conntrail: warning: [ring] dir = "),
        "{err}"
    );
    assert!(
        err.contains("the rings of 2 workers need 16.0 MiB"),
        "{err}"
    );
    assert!(err.contains(&format!("({})", mount.0.display())), "{err}");
    let cfg = write_config(&dir, &body(1 << 20));
    let out = conntrail(&["config", "check", s(&cfg)]);
    assert!(out.status.success());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    drop(mount);
    std::fs::remove_dir_all(&dir).ok();
}
