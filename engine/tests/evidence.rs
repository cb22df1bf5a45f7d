//! Output-target safety through the binary: a replay never writes its log onto one of its
//! captures (by any name), never replaces an existing file without `--overwrite` nor a
//! non-log even with it, and a refused start leaves every file as it was.

mod common;

use std::path::{Path, PathBuf};

use common::{conntrail, corpus, s, temp_dir, text};

/// Every file in `dir` with its contents (byte for byte), sorted by name.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let bytes = if p.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    std::fs::copy(corpus("zeek_conn-size.pcap"), dir.join("a.pcap")).expect("copy");
    let rings = dir.join("rings");
    std::fs::create_dir(&rings).expect("rings");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", s(&rings))).expect("config");
    (dir, cfg)
}

/// Runs `replay --config CFG ARGS` in `dir`, checks it is refused with status 2 naming
/// `names`, and that nothing in `dir` changed.
fn refused(dir: &Path, cfg: &Path, args: &[&str], names: &[&str]) {
    let mut all = vec!["replay", "--config", s(cfg)];
    all.extend_from_slice(args);
    refused_command(dir, &all, names);
}

/// Runs `conntrail ARGS` in `dir`, checks it is refused with status 2 naming `names`, that
/// nothing in `dir` changed and that the ring directory is still empty.
fn refused_command(dir: &Path, args: &[&str], names: &[&str]) {
    let before = snapshot(dir);
    let out = std::process::Command::new(common::bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for n in names {
        assert!(err.contains(n), "{args:?}: {err} does not name {n}");
    }
    assert_eq!(snapshot(dir), before, "{args:?} changed files");
    assert!(std::fs::read_dir(dir.join("rings"))
        .expect("rings")
        .next()
        .is_none());
}

#[test]
fn a_log_onto_an_input_capture_by_any_name_is_refused() {
    let (dir, cfg) = setup("ev-input");
    std::fs::hard_link(dir.join("a.pcap"), dir.join("hard.pcap")).expect("hard link");
    std::os::unix::fs::symlink("a.pcap", dir.join("sym.pcap")).expect("symlink");
    let odd = format!(
        "{}/../{}/a.pcap",
        s(&dir),
        dir.file_name().and_then(|n| n.to_str()).expect("name")
    );
    for log in ["a.pcap", "./a.pcap", odd.as_str(), "hard.pcap", "sym.pcap"] {
        refused(
            &dir,
            &cfg,
            &["--overwrite", "--log", log, "a.pcap"],
            &[log, "pcap capture", "input"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn existing_files_are_replaced_only_on_purpose() {
    let (dir, cfg) = setup("ev-existing");
    std::fs::copy(dir.join("a.pcap"), dir.join("other.pcap")).expect("copy");
    std::fs::write(dir.join("notes.txt"), "notes\n").expect("notes");
    refused(
        &dir,
        &cfg,
        &["--overwrite", "--log", "other.pcap", "a.pcap"],
        &["other.pcap", "not a conntrail log"],
    );
    refused(
        &dir,
        &cfg,
        &["--overwrite", "--log", "notes.txt", "a.pcap"],
        &["notes.txt", "even with --overwrite"],
    );
    let log = dir.join("x.log");
    let first = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--log",
        s(&log),
        s(&dir.join("a.pcap")),
    ]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    refused(
        &dir,
        &cfg,
        &["--log", "x.log", "a.pcap"],
        &["x.log already exists", "1 segment", "--overwrite"],
    );
    std::fs::write(dir.join("x.log.1"), "not a segment").expect("segment");
    refused(
        &dir,
        &cfg,
        &["--overwrite", "--log", "x.log", "a.pcap"],
        &["x.log.1", "segment"],
    );
    std::fs::remove_file(dir.join("x.log.1")).expect("rm");
    let again = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--overwrite",
        "--log",
        s(&log),
        s(&dir.join("a.pcap")),
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_start_leaves_nothing_behind() {
    let (dir, cfg) = setup("ev-failed");
    refused(
        &dir,
        &cfg,
        &["--log", "x.log", "missing.pcap"],
        &["missing.pcap"],
    );
    refused(&dir, &cfg, &["--log", "nodir/x.log", "a.pcap"], &["nodir"]);
    refused(
        &dir,
        &cfg,
        &["--log", "a.pcap/x.log", "a.pcap"],
        &["not a directory"],
    );
    let good = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--log",
        s(&dir.join("y.log")),
        s(&dir.join("a.pcap")),
    ]);
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(
        !text(&good.stderr).contains("recover"),
        "{}",
        text(&good.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stdin_gives_the_records_of_the_file_and_a_cut_pipe_is_damage() {
    let (dir, cfg) = setup("ev-stdin");
    let pcap = dir.join("a.pcap");
    let bytes = std::fs::read(&pcap).expect("read");
    let replay_stdin = |log: &Path, input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(common::bin())
            .args([
                "replay",
                "--config",
                s(&cfg),
                "--record",
                "all",
                "--log",
                s(log),
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        child.wait_with_output().expect("wait")
    };
    let piped = replay_stdin(&dir.join("p.log"), &bytes);
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    let file = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--record",
        "all",
        "--log",
        s(&dir.join("f.log")),
        s(&pcap),
    ]);
    assert!(file.status.success(), "{}", text(&file.stderr));
    let show = |log: &str| text(&conntrail(&["show", "--json", s(&dir.join(log))]).stdout);
    assert!(!show("f.log").is_empty());
    assert_eq!(show("p.log"), show("f.log"));
    let cut = replay_stdin(&dir.join("c.log"), &bytes[..2000]);
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut.stderr));
    assert!(
        text(&cut.stderr).contains("<stdin>: capture damaged at byte"),
        "{}",
        text(&cut.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn extract_and_synth_do_not_clobber() {
    let (dir, cfg) = setup("ev-outputs");
    std::fs::write(dir.join("notes.txt"), "notes\n").expect("notes");
    refused_command(
        &dir,
        &["synth", "-o", "notes.txt"],
        &["notes.txt already exists", "--overwrite"],
    );
    std::fs::write(dir.join("p.back.pcap"), "kept\n").expect("back");
    refused_command(
        &dir,
        &["synth", "--proxy", "-o", "p"],
        &["p.back.pcap already exists"],
    );
    std::fs::remove_file(dir.join("p.back.pcap")).expect("rm");
    let log = dir.join("x.log");
    let made = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--record",
        "all",
        "--log",
        s(&log),
        s(&dir.join("a.pcap")),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    fn extract(out: &str, overwrite: bool) -> Vec<&str> {
        let mut args = vec!["extract", "x.log:2", "--pcap", "a.pcap", "-o", out];
        if overwrite {
            args.push("--overwrite");
        }
        args
    }
    refused_command(
        &dir,
        &extract("notes.txt", false),
        &["notes.txt already exists", "--overwrite"],
    );
    refused_command(
        &dir,
        &extract("a.pcap", true),
        &["a.pcap is a pcap capture", "input", "even with --overwrite"],
    );
    refused_command(
        &dir,
        &extract("x.log", true),
        &["x.log is a conntrail log", "input", "even with --overwrite"],
    );
    let out = std::process::Command::new(common::bin())
        .args(extract("notes.txt", true))
        .current_dir(&dir)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read(dir.join("notes.txt")).expect("read");
    assert_eq!(
        &written[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "a pcap replaced notes.txt"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The records of a log as JSON values, without their ids, sorted.
fn records_without_ids(dir: &Path, log: &str) -> Vec<String> {
    let out = conntrail(&["show", "--json", s(&dir.join(log))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut records: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json");
            v.as_object_mut().expect("object").remove("id");
            v.to_string()
        })
        .collect();
    records.sort();
    records
}

#[test]
fn append_adds_after_the_old_records_and_keeps_their_bytes() {
    let (dir, cfg) = setup("ev-append");
    std::fs::copy(corpus("zeek_ftp_ipv6.pcap"), dir.join("b.pcap")).expect("copy");
    let replay = |log: &str, pcap: &str, extra: &[&str]| {
        let mut args = vec!["replay", "--config", s(&cfg), "--record", "all"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--log", log, pcap]);
        let out = std::process::Command::new(common::bin())
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    replay("a.log", "a.pcap", &[]);
    replay("b.log", "b.pcap", &[]);
    replay("x.log", "a.pcap", &[]);
    let old = std::fs::read(dir.join("x.log")).expect("read");
    replay("x.log", "b.pcap", &["--append"]);
    let new = std::fs::read(dir.join("x.log")).expect("read");
    assert!(
        new.len() > old.len() && new.starts_with(&old),
        "old bytes changed"
    );
    let mut both = records_without_ids(&dir, "a.log");
    both.extend(records_without_ids(&dir, "b.log"));
    both.sort();
    assert!(!both.is_empty());
    assert_eq!(records_without_ids(&dir, "x.log"), both);
    let shown = conntrail(&["show", "--json", s(&dir.join("x.log"))]);
    let mut ids_seen: Vec<u64> = text(&shown.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["id"].as_u64().expect("id")
        })
        .collect();
    let n = ids_seen.len();
    ids_seen.sort_unstable();
    ids_seen.dedup();
    assert_eq!(ids_seen.len(), n, "ids repeat after --append");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_refuses_a_file_that_is_not_a_log_before_opening_anything() {
    let (dir, _) = setup("ev-run");
    let rings = dir.join("rings");
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[ring]\ndir = {:?}\n\n[[capture]]\ninterface = \"lo\"\n",
            s(&rings)
        ),
    )
    .expect("config");
    std::fs::write(dir.join("notes.txt"), "notes\n").expect("notes");
    for (log, what) in [
        ("notes.txt", "not a conntrail log"),
        ("a.pcap", "a pcap capture"),
    ] {
        refused_command(
            &dir,
            &["run", "--config", "run.toml", "--log", log],
            &[log, what, "refusing to write to it"],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_is_refused_before_anything_is_made() {
    let (dir, _) = setup("ev-config");
    std::fs::write(dir.join("typo.toml"), "[table]\ncapacity = \"many\"\n").expect("config");
    refused(
        &dir,
        Path::new("missing.toml"),
        &["--log", "x.log", "a.pcap"],
        &["missing.toml"],
    );
    refused(
        &dir,
        Path::new("typo.toml"),
        &["--log", "x.log", "a.pcap"],
        &["typo.toml", "line 2", "capacity"],
    );
    std::fs::write(dir.join("ring.toml"), "[ring]\ndir = \"nowhere/rings\"\n").expect("config");
    refused(
        &dir,
        Path::new("ring.toml"),
        &["--log", "x.log", "a.pcap"],
        &["nowhere/rings"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
