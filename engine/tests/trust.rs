//! No local user can turn the engine against its host through the ring directory: another
//! uid (`nobody`, through `setpriv`) plants run files, rings and symbolic links where root's
//! `replay` and `recover` look, and none of the files they name is deleted or rewritten.
//!
//! Root only: each test skips with a message otherwise.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{conntrail, corpus, s, temp_dir, text};

const NOBODY: u32 = 65534;

fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: planting files as another user needs root");
    false
}

/// Runs a shell command as `nobody`.
fn as_nobody(script: &str) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv runs");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        text(&out.stderr)
    );
}

/// The files a hostile run file aims at, with what they hold.
struct Targets {
    secret: PathBuf,
    precious: PathBuf,
    sums: Vec<(PathBuf, Vec<u8>)>,
}

impl Targets {
    /// Root-owned files in `dir`: a secret to be deleted, and a file not a log to be rewritten.
    fn new(dir: &Path) -> Targets {
        let secret = dir.join("secret");
        let precious = dir.join("precious");
        std::fs::write(&secret, b"root's secret\n").expect("write");
        std::fs::write(&precious, b"not a conntrail log, and root's\n").expect("write");
        for p in [&secret, &precious] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let sums = [&secret, &precious]
            .iter()
            .map(|p| ((*p).clone(), std::fs::read(p).expect("read")))
            .collect();
        Targets {
            secret,
            precious,
            sums,
        }
    }

    /// A run file naming the targets as its rings and its log.
    fn manifest(&self) -> String {
        format!(
            r#"{{"pid":999999,"log":"{}","context_logs":[],"rings":["{}"],"log_config":{{"rotate_bytes":1073741824,"rotate_age_s":0,"max_total_bytes":0,"min_free_bytes":0}}}}"#,
            self.precious.display(),
            self.secret.display()
        )
    }

    fn untouched(&self, what: &str) {
        for (p, before) in &self.sums {
            let now =
                std::fs::read(p).unwrap_or_else(|e| panic!("{what}: {} is gone: {e}", p.display()));
            assert_eq!(&now, before, "{what}: {} was rewritten", p.display());
        }
    }
}

fn config(dir: &Path, ring_dir: &Path) -> PathBuf {
    let c = dir.join(format!(
        "c-{}.toml",
        ring_dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&c, format!("[ring]\ndir = \"{}\"\n", ring_dir.display())).expect("config");
    c
}

fn replay(cfg: &Path, log: &Path) -> Output {
    conntrail(&[
        "replay",
        "--config",
        s(cfg),
        "--log",
        s(log),
        s(&corpus("zeek_nmap-vsn.pcap")),
    ])
}

/// A directory anyone may write (sticky, like /dev/shm) for nobody to plant in.
fn shared_dir(base: &Path) -> PathBuf {
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let shared = base.join("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    shared
}

#[test]
fn a_world_writable_ring_directory_is_refused_and_nothing_it_names_is_touched() {
    if !root() {
        return;
    }
    let base = temp_dir("trust-shared");
    let targets = Targets::new(&base);
    let shared = shared_dir(&base);
    let run = shared.join("conntrail-999999-0.run");
    as_nobody(&format!(
        "printf '%s' '{}' > {run} && ln -s {secret} {ring} && ln -s {secret} {tmp}",
        targets.manifest(),
        run = s(&run),
        secret = s(&targets.secret),
        ring = s(&shared.join("conntrail-999999-0-0.ring")),
        tmp = s(&shared.join(format!("conntrail-{}-0.run.tmp", std::process::id()))),
    ));
    let cfg = config(&base, &shared);
    let out = replay(&cfg, &base.join("out.log"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(s(&shared)) && err.contains("others can write there"),
        "{err}"
    );
    let out = conntrail(&["recover", "--ring-dir", s(&shared)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    targets.untouched("replay and recover with a shared ring directory");
    assert!(run.exists(), "the planted run file is left alone");
    assert!(!base.join("out.log").exists(), "no log was started");
    std::fs::remove_dir_all(&base).expect("clean up");
}

#[test]
fn a_ring_directory_made_by_another_user_or_a_link_to_one_is_refused() {
    if !root() {
        return;
    }
    let base = temp_dir("trust-squat");
    let targets = Targets::new(&base);
    let shared = shared_dir(&base);
    // nobody creates the directory root is configured to use, before root starts, with a
    // hostile run file in it; and a symbolic link to it under another name root might use.
    let squatted = shared.join("rings-root");
    let linked = shared.join("rings-link");
    as_nobody(&format!(
        "mkdir -m 700 {dir} && printf '%s' '{}' > {dir}/conntrail-999999-0.run && ln -s {secret} {dir}/conntrail-999999-0-0.ring && ln -s {dir} {link}",
        targets.manifest(),
        dir = s(&squatted),
        secret = s(&targets.secret),
        link = s(&linked),
    ));
    for (dir, why) in [
        (&squatted, "belongs to uid 65534"),
        (&linked, "symbolic link"),
    ] {
        let cfg = config(&base, dir);
        let out = replay(&cfg, &base.join("out.log"));
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(why), "{dir:?}: {err}");
        let out = conntrail(&["recover", "--ring-dir", s(dir)]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
    targets.untouched("replay and recover with a squatted ring directory");
    assert!(squatted.join("conntrail-999999-0.run").exists());
    std::fs::remove_dir_all(&base).expect("clean up");
}

#[test]
fn in_a_private_directory_only_our_own_files_naming_our_own_rings_are_acted_on() {
    if !root() {
        return;
    }
    let base = temp_dir("trust-private");
    let targets = Targets::new(&base);
    let private = base.join("rings");
    std::fs::create_dir(&private).expect("dir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let log = base.join("ok.log");
    let run_file = |n: u32, body: &str| {
        let p = private.join(format!("conntrail-999999-{n}.run"));
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    };
    // 1: written by another uid (as if it had been put there while the directory was open).
    let foreign = run_file(1, &targets.manifest());
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).expect("chown");
    // 2: ours, but naming a path outside the directory as its ring.
    let outside = run_file(2, &targets.manifest());
    // 3: ours, its own ring name, but a log that is not a conntrail log.
    let ring3 = private.join("conntrail-999999-3-0.ring");
    std::fs::write(&ring3, b"").expect("write");
    std::fs::set_permissions(&ring3, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let not_a_log = run_file(
        3,
        &targets
            .manifest()
            .replace(s(&targets.secret), "conntrail-999999-3-0.ring"),
    );
    // 4: a symbolic link to a run file elsewhere.
    let elsewhere = base.join("elsewhere.run");
    std::fs::write(&elsewhere, targets.manifest()).expect("write");
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let linked = private.join("conntrail-999999-4.run");
    std::os::unix::fs::symlink(&elsewhere, &linked).expect("symlink");
    // 5: group-writable.
    let loose = run_file(5, &targets.manifest());
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o660)).expect("chmod");

    let out = conntrail(&["recover", "--ring-dir", s(&private)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for (file, why) in [
        (&foreign, "belongs to uid 65534"),
        (&outside, "not one of its own"),
        (&not_a_log, "is not a conntrail log"),
        (&linked, "opening"),
        (&loose, "lets others write it"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(s(file)))
            .unwrap_or_else(|| panic!("nothing said of {}: {err}", file.display()));
        assert!(line.contains(why), "{}: {line}", file.display());
        assert!(
            std::fs::symlink_metadata(file).is_ok(),
            "{} was removed",
            file.display()
        );
    }
    assert!(ring3.exists(), "the ring of a refused run file stays");
    targets.untouched("recover in a private directory");
    assert_eq!(
        std::fs::read(&elsewhere).expect("read"),
        targets.manifest().into_bytes()
    );

    // The engine still starts there, and its own files are private and gone at the end.
    let cfg = config(&base, &private);
    let out = replay(&cfg, &log);
    assert!(out.status.success(), "{}", text(&out.stderr));
    targets.untouched("a replay in a private directory");
    let left: Vec<String> = std::fs::read_dir(&private)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("conntrail-999999-"))
        .collect();
    assert!(left.is_empty(), "the replay left {left:?}");
    std::fs::remove_dir_all(&base).expect("clean up");
}

#[test]
fn a_missing_ring_directory_is_created_private() {
    let base = temp_dir("trust-create");
    let dir = base.join("rings");
    let cfg = config(&base, &dir);
    let out = replay(&cfg, &base.join("x.log"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = std::fs::metadata(&dir).expect("created");
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
    std::fs::remove_dir_all(&base).expect("clean up");
}
