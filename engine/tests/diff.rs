//! `conntrail diff` as an analyst uses it: a connection closed normally and one reset by the
//! server, from the same capture (`suricata_dcerpc_zerologon.pcap`), side by side; the
//! deltas are those of the two records, the timelines are aligned on the handshake and the
//! divergence is marked where the server reset instead of closing. Records can come from
//! different logs and from any rotated segment.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{conntrail, s, temp_dir, text};

/// Replays a corpus capture (`--record all`) into `dir/LOG`, with `extra` configuration.
fn replay(dir: &Path, capture: &str, log: &str, extra: &str) -> PathBuf {
    let log = dir.join(log);
    let cfg = dir.join(format!("{capture}.toml"));
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n{extra}", s(dir))).expect("config");
    let capture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/real")
        .join(capture);
    let out = conntrail(&[
        "replay",
        "--record",
        "all",
        "--config",
        s(&cfg),
        "--log",
        s(&log),
        s(&capture),
    ]);
    assert!(out.status.success(), "replay: {}", text(&out.stderr));
    log
}

fn records(log: &Path) -> Vec<Value> {
    let out = conntrail(&["show", "--json", s(log)]);
    assert!(out.status.success(), "show: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn by_client_port(recs: &[Value], port: u64) -> &Value {
    recs.iter()
        .find(|r| r["client"]["port"] == port)
        .unwrap_or_else(|| panic!("a record of client port {port}"))
}

fn reference(log: &Path, rec: &Value) -> String {
    format!("{}:{}", s(log), rec["id"])
}

/// The points as `kind dir`, without the note marking the end of the longest silence
/// (`tcp_story.rs` and the corpus test check that one against tshark).
fn kinds(rec: &Value) -> Vec<String> {
    rec["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| !(p["kind"] == "stall" && p["severity"] == "info"))
        .map(|p| {
            format!(
                "{} {}",
                p["kind"].as_str().unwrap_or(""),
                p["dir"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn a_fin_and_a_server_reset_side_by_side() {
    let dir = temp_dir("fin-rst");
    let log = replay(&dir, "suricata_dcerpc_zerologon.pcap", "t.log", "");
    let recs = records(&log);
    // 172.16.0.10:50593 -> :135 closed with FIN both ways; :50688 -> :445 reset by the server.
    let (fin, rst) = (by_client_port(&recs, 50593), by_client_port(&recs, 50688));
    assert_eq!(fin["close_reason"], "tcp-fin");
    assert_eq!(rst["close_reason"], "tcp-rst-server");
    let common = [
        "syn c2s",
        "syn-ack s2c",
        "handshake-done c2s",
        "first-data c2s",
        "first-data s2c",
        "fin c2s",
    ];
    assert_eq!(kinds(fin)[..6], common);
    assert_eq!(kinds(fin)[6..], ["fin s2c"]);
    assert_eq!(kinds(rst)[..6], common);
    assert_eq!(kinds(rst)[6..], ["rst s2c"]);

    let out = conntrail(&[
        "diff",
        "--json",
        &reference(&log, fin),
        &reference(&log, rst),
    ]);
    assert!(out.status.success(), "diff: {}", text(&out.stderr));
    let d: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(d["baseline"]["record"]["id"], fin["id"]);
    assert_eq!(d["problem"]["record"]["id"], rst["id"]);
    let field = |name: &str| {
        d["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f["field"] == name)
            .unwrap_or_else(|| panic!("field {name}"))
            .clone()
    };
    let f = field("close_reason");
    assert_eq!(
        (f["baseline"].as_str(), f["problem"].as_str()),
        (Some("tcp-fin"), Some("tcp-rst-server"))
    );
    assert_eq!(f["differs"], true);
    assert_eq!(field("conn_state")["problem"], "RSTR");
    for (name, dir, key) in [
        ("c2s.pkts", "c2s", "pkts"),
        ("s2c.bytes", "s2c", "bytes"),
        ("c2s.payload", "c2s", "payload"),
        ("s2c.retrans", "s2c", "retrans"),
    ] {
        let (b, p) = (
            fin[dir][key].as_i64().expect("n"),
            rst[dir][key].as_i64().expect("n"),
        );
        let f = field(name);
        assert_eq!(f["delta"].as_i64(), Some(p - b), "{name}");
        assert_eq!(f["differs"], p != b, "{name}");
    }
    let (b, p) = (
        fin["duration_ns"].as_f64().expect("ns"),
        rst["duration_ns"].as_f64().expect("ns"),
    );
    let dur = field("duration_ns");
    assert_eq!(dur["delta"].as_f64(), Some(p - b));
    assert!((dur["ratio"].as_f64().expect("ratio") - p / b).abs() < 1e-9);
    for (name, key) in [
        ("latency_ns.syn_synack", "syn_synack"),
        ("latency_ns.ttfb", "ttfb"),
    ] {
        let f = field(name);
        assert_eq!(f["baseline"], fin["latency_ns"][key]);
        assert_eq!(f["problem"], rst["latency_ns"][key]);
    }

    // Aligned on the handshake: handshake-done is t=0 on both sides.
    let t = &d["timeline"];
    assert_eq!(t["anchor"], "handshake-done");
    let rows = t["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[2]["baseline"]["t_ns"], 0);
    assert_eq!(rows[2]["problem"]["t_ns"], 0);
    assert!(
        rows[0]["baseline"]["t_ns"].as_i64() < Some(0),
        "the SYN is before t=0"
    );
    for row in &rows[..6] {
        assert_eq!(row["same"], true);
        assert_eq!(row["diverges"], false);
    }
    assert_eq!(rows[6]["baseline"]["kind"], "fin");
    assert_eq!(rows[6]["problem"]["kind"], "rst");
    assert_eq!(rows[6]["diverges"], true);
    assert_eq!(d["divergence"]["row"], 6);
    let reason = d["divergence"]["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("baseline got fin s2c at +")
            && reason.contains("problem got rst s2c at +"),
        "{reason}"
    );

    // The text form: a delta column and the divergence marked on its row.
    let out = conntrail(&["diff", &reference(&log, fin), &reference(&log, rst)]);
    assert!(out.status.success());
    let t = text(&out.stdout);
    let pkts_delta =
        rst["c2s"]["pkts"].as_i64().unwrap_or(0) - fin["c2s"]["pkts"].as_i64().unwrap_or(0);
    let c2s_pkts = t
        .lines()
        .find(|l| l.starts_with("c2s pkts"))
        .expect("c2s pkts row");
    assert!(c2s_pkts.ends_with(&format!("{pkts_delta:+}")), "{c2s_pkts}");
    let close = t
        .lines()
        .find(|l| l.starts_with("close reason"))
        .expect("close reason row");
    assert!(
        close.contains("tcp-fin") && close.contains("tcp-rst-server") && close.ends_with("differs")
    );
    assert!(t.contains("timeline, t=0 at handshake-done"), "{t}");
    let marked: Vec<&str> = t.lines().filter(|l| l.starts_with(">>")).collect();
    assert_eq!(marked.len(), 1, "{t}");
    assert!(
        marked[0].contains("fin s2c") && marked[0].contains("rst s2c"),
        "{}",
        marked[0]
    );
    assert!(
        marked[0].contains("<< diverges here: baseline got fin s2c"),
        "{}",
        marked[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_from_two_logs_and_rotated_segments() {
    let dir = temp_dir("two-logs");
    // Small segments: the log rotates many times.
    let fin_log = replay(
        &dir,
        "zeek_http_methods.pcap",
        "http.log",
        "[log]\nrotate_bytes = 4096\n",
    );
    assert!(dir.join("http.log.1").exists(), "the log rotated");
    let rst_log = replay(
        &dir,
        "suricata_smb2-09-trunc-file-logging.pcap",
        "smb.log",
        "",
    );
    let fins = records(&fin_log);
    let last = fins.last().expect("records");
    let rst = records(&rst_log)
        .into_iter()
        .find(|r| r["close_reason"] == "tcp-rst-client")
        .expect("a client reset");
    let out = conntrail(&[
        "diff",
        "--json",
        &reference(&fin_log, last),
        &reference(&rst_log, &rst),
    ]);
    assert!(out.status.success(), "diff: {}", text(&out.stderr));
    let d: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(d["baseline"]["record"], *last);
    assert_eq!(d["problem"]["record"], rst);
    assert!(
        d["divergence"]["row"].as_u64().is_some(),
        "{}",
        d["divergence"]
    );
    // A record that is not there.
    let out = conntrail(&[
        "diff",
        &format!("{}:999999", s(&fin_log)),
        &reference(&rst_log, &rst),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no record with id 999999"),
        "{}",
        text(&out.stderr)
    );
    // A record against itself: no divergence.
    let out = conntrail(&[
        "diff",
        &reference(&rst_log, &rst),
        &reference(&rst_log, &rst),
    ]);
    assert!(
        text(&out.stdout).contains("no divergence"),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
