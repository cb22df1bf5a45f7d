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
    let before = snapshot(dir);
    let mut all = vec!["replay", "--config", s(cfg)];
    all.extend_from_slice(args);
    let out = std::process::Command::new(common::bin())
        .args(&all)
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
    let (dir, _cfg) = setup("ev-outputs");
    std::fs::write(dir.join("notes.txt"), "notes\n").expect("notes");
    let before = snapshot(&dir);
    let out = conntrail(&["synth", "-o", s(&dir.join("notes.txt"))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("notes.txt already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(&dir), before);
    let _ = std::fs::remove_dir_all(&dir);
}
