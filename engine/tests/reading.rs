//! What `show`, `query` and `stats` say when they read: records in time order unless
//! `--sort` says otherwise, `LOG:ID`, ids that are not there, captures and files given in
//! the wrong place, one spelling of a missing `conn_state`, and no TCP-only lines for UDP
//! and ICMP.

mod common;

use std::path::{Path, PathBuf};

use common::{conntrail, corpus, replay_to, s, temp_dir, text};
use serde_json::Value;

/// A log of every connection of `capture`, in a fresh directory.
fn replayed(name: &str, capture: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let log = dir.join("t.log");
    replay_to(&dir, &corpus(capture), &log, "all");
    (dir, log)
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn key(v: &Value, name: &str) -> u64 {
    match name {
        "bytes" => {
            v["c2s"]["bytes"].as_u64().expect("c2s") + v["s2c"]["bytes"].as_u64().expect("s2c")
        }
        field => v[field].as_u64().expect(field),
    }
}

#[test]
fn show_and_query_print_in_time_order_unless_sorted_otherwise() {
    let (dir, log) = replayed("read-order", "zeek_dns-edns-ecs.pcap");
    let as_written = json_lines(&conntrail(&["show", "--json", "--sort", "log", s(&log)]).stdout);
    let starts: Vec<u64> = as_written.iter().map(|v| key(v, "start_ns")).collect();
    assert!(
        starts.windows(2).any(|w| w[0] > w[1]),
        "the log is already in start order; the test needs one that is not"
    );
    for command in [&["show", "--json"][..], &["query", "--json"][..]] {
        for sort in ["start", "end", "duration", "bytes", "id"] {
            for reverse in [false, true] {
                let mut args = command.to_vec();
                args.extend_from_slice(&["--sort", sort, s(&log)]);
                if reverse {
                    args.push("--reverse");
                }
                let out = conntrail(&args);
                assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
                let got = json_lines(&out.stdout);
                assert_eq!(got.len(), as_written.len(), "{args:?}");
                let field = match sort {
                    "start" => "start_ns",
                    "end" => "end_ns",
                    "duration" => "duration_ns",
                    "id" => "id",
                    _ => "bytes",
                };
                let mut keys: Vec<(u64, u64, u64)> = got
                    .iter()
                    .map(|v| (key(v, field), key(v, "start_ns"), key(v, "id")))
                    .collect();
                if sort == "id" {
                    keys.iter_mut().for_each(|k| *k = (k.0, 0, 0));
                }
                if reverse {
                    keys.reverse();
                }
                assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{args:?}: {keys:?}");
            }
        }
    }
    let default = json_lines(&conntrail(&["show", "--json", s(&log)]).stdout);
    let by_start = json_lines(&conntrail(&["show", "--json", "--sort", "start", s(&log)]).stdout);
    assert_eq!(default, by_start, "the default order is start, then id");
    let limited = json_lines(
        &conntrail(&[
            "query",
            "--json",
            "--sort",
            "bytes",
            "--reverse",
            "--limit",
            "2",
            s(&log),
        ])
        .stdout,
    );
    let largest = json_lines(
        &conntrail(&["query", "--json", "--sort", "bytes", "--reverse", s(&log)]).stdout,
    );
    assert_eq!(
        limited,
        largest[..2],
        "--limit keeps the first records of the order"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_takes_log_id_and_says_when_an_id_is_not_there() {
    let (dir, log) = replayed("read-ids", "zeek_conn-size.pcap");
    let one = conntrail(&["show", &format!("{}:2", s(&log))]);
    assert!(one.status.success(), "{}", text(&one.stderr));
    let same = conntrail(&["show", s(&log), "2"]);
    assert_eq!(text(&one.stdout), text(&same.stdout));
    assert!(
        text(&one.stdout).starts_with("record 2 "),
        "{}",
        text(&one.stdout)
    );

    let missing = conntrail(&["show", s(&log), "2", "9999"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    assert_eq!(
        text(&missing.stdout),
        text(&one.stdout),
        "what is there is still shown"
    );
    assert_eq!(
        text(&missing.stderr),
        format!("conntrail: {}: no record with id 9999\n", s(&log))
    );
    let missing = conntrail(&["show", &format!("{}:9999", s(&log))]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stdout).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn captures_and_missing_files_are_named_once_with_what_to_do() {
    let (dir, log) = replayed("read-wrong", "zeek_conn-size.pcap");
    let pcap = corpus("zeek_conn-size.pcap");
    for command in ["show", "query"] {
        let out = conntrail(&[command, s(&pcap)]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = text(&out.stderr);
        assert!(
            err.contains("is a pcap capture, not a conntrail log: replay it first"),
            "{command}: {err}"
        );
        assert!(err.contains("conntrail replay --log"), "{command}: {err}");
    }
    let nowhere = dir.join("nowhere.log");
    let out = conntrail(&["show", s(&nowhere)]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the OS error once: {err}"
    );
    assert!(err.contains(s(&nowhere)), "{err}");
    assert!(!err.contains("Error("), "no debug text: {err}");

    let stats = conntrail(&["stats", s(&log)]);
    assert_eq!(stats.status.code(), Some(2));
    let err = text(&stats.stderr);
    assert!(
        err.contains("is a conntrail log with no stats file beside it"),
        "{err}"
    );

    let extract = conntrail(&[
        "extract",
        &format!("{}:2", s(&log)),
        "--pcap",
        s(&log),
        "-o",
        s(&dir.join("x.pcap")),
    ]);
    assert_eq!(extract.status.code(), Some(2));
    let err = text(&extract.stderr);
    assert!(err.contains("it is a conntrail log"), "{err}");
    assert!(
        !err.contains("HeaderNotRecognized") && !err.contains("Error("),
        "{err}"
    );
    assert!(!dir.join("x.pcap").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `show` block of the record with `proto`.
fn block<'a>(shown: &'a str, proto: &str) -> &'a str {
    shown
        .split("\n\n")
        .find(|b| b.split_whitespace().nth(2) == Some(proto))
        .unwrap_or_else(|| panic!("no {proto} record in {shown}"))
}

#[test]
fn udp_and_icmp_show_no_tcp_lines_and_no_state_is_none_everywhere() {
    let (dir, log) = replayed("read-udp", "zeek_conn-size.pcap");
    let shown = text(&conntrail(&["show", "--color", "never", s(&log)]).stdout);
    for proto in ["udp", "icmp"] {
        let b = block(&shown, proto);
        for tcp_only in ["retrans", "zero-window", "syn->syn-ack", "dup-ack"] {
            assert!(!b.contains(tcp_only), "{proto} shows {tcp_only}: {b}");
        }
        assert!(b.contains("first response byte"), "{b}");
    }
    let tcp = block(&shown, "tcp");
    assert!(
        tcp.contains("retrans") && tcp.contains("syn->syn-ack"),
        "{tcp}"
    );
    assert!(!shown.contains("µs"), "one unit: us");

    let records = json_lines(&conntrail(&["query", "--json", s(&log), "proto=udp"]).stdout);
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r["conn_state"] == "none"),
        "{records:?}"
    );
    let counts = text(&conntrail(&["query", s(&log), "--count-by", "state"]).stdout);
    assert!(counts.contains("none"), "{counts}");
    let selected = json_lines(&conntrail(&["query", "--json", s(&log), "state=none"]).stdout);
    assert_eq!(
        selected.len(),
        records.len() + {
            json_lines(&conntrail(&["query", "--json", s(&log), "proto=icmp"]).stdout).len()
        }
    );
    let table = text(&conntrail(&["query", s(&log), "proto=udp"]).stdout);
    assert!(
        table.lines().skip(1).all(|l| l.contains(" none ")),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_html_page_never_replaces_a_file_unasked() {
    let (dir, log) = replayed("read-html", "zeek_conn-size.pcap");
    let page = dir.join("page.html");
    std::fs::write(&page, "mine\n").expect("page");
    let out = conntrail(&["show", "--html", s(&page), s(&log)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&page).expect("page"), b"mine\n");
    let onto = conntrail(&["show", "--html", s(&log), "--overwrite", s(&log)]);
    assert_eq!(onto.status.code(), Some(2));
    let again = conntrail(&["show", "--html", s(&page), "--overwrite", s(&log)]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(std::fs::read_to_string(&page)
        .expect("page")
        .starts_with("<!DOCTYPE html>"));
    assert!(Path::new(&log).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
