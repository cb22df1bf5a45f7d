//! `conntrail query` on logs of real captures (`../shared/corpus/real`, replayed with
//! `--record all`), checked against the tshark oracles beside the captures: how many
//! connections closed each way, on which port and network, with which handshake latency,
//! in which time range. Also: several logs at once, `LOG:ID` references that `show`
//! accepts, errors that point at the column, a damaged log, and matching that allocates
//! nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use forensics::expr::Expr;
use serde_json::Value;

mod common;
use common::{conntrail, corpus as capture, replay_to, s, temp_dir, text};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: delegates to the system allocator unchanged; only counts calls made while the
// calling thread has COUNTING set.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn oracle(name: &str) -> Value {
    let path = capture(&format!("{name}.oracle.json"));
    let t = std::fs::read_to_string(&path).expect("oracle reads");
    serde_json::from_str(&t).expect("oracle parses")
}

/// Replays a corpus capture with `--record all` into `DIR/NAME.log` (ring files in DIR).
fn replay(dir: &Path, cap: &str) -> PathBuf {
    let log = dir.join(format!("{cap}.log"));
    replay_to(dir, &capture(cap), &log, "all");
    log
}

/// Runs `query LOGS... EXPR --count-by reason --json` and returns the total selected.
fn count(logs: &[&Path], expr: &str) -> u64 {
    let mut args = vec!["query"];
    args.extend(logs.iter().map(|l| s(l)));
    args.extend(expr.split_whitespace());
    args.extend(["--count-by", "reason", "--json"]);
    let out = conntrail(&args);
    assert!(
        out.status.success(),
        "query {expr} failed: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text(&out.stdout)).expect("count JSON");
    v["total"].as_u64().expect("total")
}

/// How the oracle's `close_kind`s read as queries of `--record all` logs.
const KIND_QUERIES: [(&str, &str); 5] = [
    ("fin", "reason=tcp-fin"),
    ("rst_by_client", "reason=tcp-rst-client"),
    ("rst_by_server", "reason=tcp-rst-server and not state=REJ"),
    // A SYN answered by RST: reason tcp-rst-server, Zeek state REJ.
    ("rejected", "reason=tcp-rst-server and state=REJ"),
    // SYNs and nothing back: closed as aged-out or shutdown, state S0 either way.
    ("syn_unanswered", "tcp and state=S0"),
];

/// Every close kind of the oracle's summary, as a query, selects as many records.
fn close_kinds_agree(cap: &str, log: &Path) -> Vec<(String, u64)> {
    let kinds = oracle(cap)["summary"]["tcp_close_kinds"]
        .as_object()
        .expect("tcp_close_kinds")
        .clone();
    let mut seen = Vec::new();
    for (kind, n) in kinds {
        let n = n.as_u64().expect("count");
        let (_, expr) = KIND_QUERIES
            .iter()
            .find(|(k, _)| *k == kind)
            .unwrap_or_else(|| panic!("{cap}: no query for oracle kind {kind}"));
        assert_eq!(count(&[log], expr), n, "{cap}: {kind} is `{expr}`");
        seen.push((kind, n));
    }
    seen.sort();
    seen
}

#[test]
fn close_reasons_and_states_select_what_the_oracles_count() {
    let dir = temp_dir("kinds");
    // zeek_nmap-vsn.pcap.oracle.json, summary.tcp_close_kinds:
    // {"rejected": 6, "rst_by_client": 3, "syn_unanswered": 8}, udp_flows 1.
    let nmap = replay(&dir, "zeek_nmap-vsn.pcap");
    assert_eq!(
        close_kinds_agree("zeek_nmap-vsn.pcap", &nmap),
        [
            ("rejected".to_string(), 6),
            ("rst_by_client".to_string(), 3),
            ("syn_unanswered".to_string(), 8)
        ]
    );
    assert_eq!(count(&[&nmap], "udp"), 1);
    // 8 unanswered SYNs and the DNS flow are still open at the end of the capture.
    assert_eq!(count(&[&nmap], "reason=shutdown"), 9);
    // suricata_smb-filename.pcap.oracle.json: {"rst_by_client": 4, "rst_by_server": 23,
    // "syn_unanswered": 2}.
    let smb = replay(&dir, "suricata_smb-filename.pcap");
    assert_eq!(
        close_kinds_agree("suricata_smb-filename.pcap", &smb),
        [
            ("rst_by_client".to_string(), 4),
            ("rst_by_server".to_string(), 23),
            ("syn_unanswered".to_string(), 2)
        ]
    );
    // suricata_dcerpc_zerologon.pcap.oracle.json: {"fin": 42, "rst_by_server": 11}.
    let dcerpc = replay(&dir, "suricata_dcerpc_zerologon.pcap");
    assert_eq!(
        close_kinds_agree("suricata_dcerpc_zerologon.pcap", &dcerpc),
        [("fin".to_string(), 42), ("rst_by_server".to_string(), 11)]
    );
    // The same with the one-of list and the `!=` forms.
    assert_eq!(count(&[&nmap], "reason=tcp-rst-server,tcp-rst-client"), 9);
    assert_eq!(count(&[&nmap], "tcp and reason!=shutdown"), 9);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn count_by_tables_add_up_to_the_records() {
    let dir = temp_dir("count-by");
    let log = replay(&dir, "zeek_nmap-vsn.pcap");
    // 17 TCP connections and 1 UDP flow in the oracle, all recorded with --record all.
    let records = 18;
    for by in [
        "reason", "flags", "state", "proto", "client", "server", "port",
    ] {
        let out = conntrail(&["query", s(&log), "--count-by", by, "--json"]);
        assert!(out.status.success(), "{by}: {}", text(&out.stderr));
        let v: Value = serde_json::from_str(&text(&out.stdout)).expect("JSON");
        assert_eq!(v["total"], records, "{by}");
        let counts = v["counts"].as_array().expect("counts");
        let sum: u64 = counts.iter().map(|c| c["count"].as_u64().expect("n")).sum();
        assert_eq!(sum, records, "{by}: {v}");
        let ns: Vec<u64> = counts
            .iter()
            .map(|c| c["count"].as_u64().expect("n"))
            .collect();
        assert!(ns.windows(2).all(|w| w[0] >= w[1]), "{by}: most first: {v}");
    }
    // The text table: oracle server ports {80: 11, 443: 6}, plus DNS (53) for the UDP flow.
    let out = conntrail(&["query", s(&log), "--count-by", "port"]);
    assert_eq!(
        text(&out.stdout),
        "COUNT   SHARE  PORT\n   \
            11   61.1%  80\n    \
             6   33.3%  443\n    \
             1    5.6%  53\n   \
            18  100.0%  total\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn port_net_and_host_filters_agree_with_the_oracle() {
    let dir = temp_dir("endpoints");
    let dcerpc = replay(&dir, "suricata_dcerpc_zerologon.pcap");
    let o = oracle("suricata_dcerpc_zerologon.pcap");
    let tcp = o["tcp"].as_array().expect("tcp");
    let on_port = |p: u64| tcp.iter().filter(|c| c["server"]["port"] == p).count() as u64;
    // Oracle server ports: 135 x21, 49668 x21, 445 x11.
    assert_eq!(on_port(445), 11);
    assert_eq!(count(&[&dcerpc], "port 445"), on_port(445));
    assert_eq!(count(&[&dcerpc], "server port 135"), on_port(135));
    assert_eq!(count(&[&dcerpc], "port=49668"), on_port(49668));
    assert_eq!(count(&[&dcerpc], "client port 445"), 0);
    assert_eq!(
        count(&[&dcerpc], "server.port<1024"),
        on_port(135) + on_port(445)
    );
    assert_eq!(count(&[&dcerpc], "port 445 or port 135"), 32);

    let nmap = replay(&dir, "zeek_nmap-vsn.pcap");
    let o = oracle("zeek_nmap-vsn.pcap");
    let servers: Vec<Ipv4Addr> = o["tcp"]
        .as_array()
        .expect("tcp")
        .iter()
        .map(|c| c["server"]["ip"].as_str().expect("ip").parse().expect("v4"))
        .collect();
    // 192.168.1.64/28 is .64 to .79.
    let in_net = servers
        .iter()
        .filter(|ip| (64..80).contains(&ip.octets()[3]))
        .count() as u64;
    assert!(in_net > 0 && in_net < servers.len() as u64);
    assert_eq!(count(&[&nmap], "server net 192.168.1.64/28"), in_net);
    assert_eq!(
        count(&[&nmap], "tcp and not server net 192.168.1.64/28"),
        17 - in_net
    );
    // `net` without a side is either end: the scanner, 192.168.1.71, is in that /28 too.
    assert_eq!(count(&[&nmap], "net 192.168.1.64/28"), 18);
    let to_63 = servers.iter().filter(|ip| ip.octets()[3] == 63).count() as u64;
    assert_eq!(count(&[&nmap], "host 192.168.1.63"), to_63);
    assert_eq!(count(&[&nmap], "dst host 192.168.1.63"), to_63);
    // The scanner is the client of every connection.
    assert_eq!(count(&[&nmap], "client 192.168.1.71"), 18);
    assert_eq!(count(&[&nmap], "server 192.168.1.71"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latency_comparisons_agree_with_the_oracle() {
    let dir = temp_dir("latency");
    let log = replay(&dir, "suricata_dcerpc_zerologon.pcap");
    let o = oracle("suricata_dcerpc_zerologon.pcap");
    let synacks: Vec<f64> = o["tcp"]
        .as_array()
        .expect("tcp")
        .iter()
        .filter_map(|c| c["syn_to_synack_s"].as_f64())
        .collect();
    let over = |s: f64| synacks.iter().filter(|x| **x > s).count() as u64;
    // Oracle syn_to_synack_s over 1 ms: 0.001015, 0.001029, 0.001094, 0.001125, 0.001221.
    assert_eq!(over(0.001), 5);
    assert_eq!(count(&[&log], "latency.syn_synack>1ms"), 5);
    assert_eq!(count(&[&log], "latency.syn_synack>500us"), over(0.0005));
    assert_eq!(
        count(&[&log], "latency.syn_synack>0.5ms and tcp"),
        over(0.0005)
    );
    // Every one of the 53 connections had a SYN-ACK.
    assert_eq!(count(&[&log], "latency.syn_synack>=0"), 53);
    // nmap: rejected and unanswered SYNs never got a SYN-ACK, so no comparison holds on it,
    // not even `!=`; the 3 client aborts did (oracle: 0.000887, 0.001071, 0.005352 s).
    let nmap = replay(&dir, "zeek_nmap-vsn.pcap");
    assert_eq!(count(&[&nmap], "latency.syn_synack!=1s"), 3);
    assert_eq!(count(&[&nmap], "latency.syn_synack>1ms"), 2);
    assert_eq!(count(&[&nmap], "tcp and not latency.syn_synack>=0"), 14);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn time_ranges_split_the_capture() {
    let dir = temp_dir("time");
    let log = replay(&dir, "suricata_dcerpc_zerologon.pcap");
    let o = oracle("suricata_dcerpc_zerologon.pcap");
    let first = o["summary"]["capture_first_ts_ns"].as_u64().expect("first");
    let last = o["summary"]["capture_last_ts_ns"].as_u64().expect("last");
    let starts: Vec<u64> = o["tcp"]
        .as_array()
        .expect("tcp")
        .iter()
        .map(|c| c["first_ts_ns"].as_u64().expect("first_ts_ns"))
        .collect();
    let t = |ns: u64| forensics::units::rfc3339(ns);
    let all = format!("start>={} and end<={}", t(first), t(last));
    assert_eq!(count(&[&log], &all), 53);
    let middle = first + (last - first) / 2;
    let before = starts.iter().filter(|s| **s < middle).count() as u64;
    assert!(before > 0 && before < 53, "the middle splits the capture");
    assert_eq!(count(&[&log], &format!("start<{}", t(middle))), before);
    assert_eq!(
        count(&[&log], &format!("start>={}", t(middle))),
        53 - before
    );
    // `time` is overlap: every connection is active at some instant of the capture's span.
    let span = format!("time>={} and time<={}", t(first), t(last));
    assert_eq!(count(&[&log], &span), 53);
    assert_eq!(count(&[&log], &format!("time>{}", t(last))), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn several_logs_answer_together_with_refs_show_accepts() {
    let dir = temp_dir("multi");
    let nmap = replay(&dir, "zeek_nmap-vsn.pcap");
    let smb = replay(&dir, "suricata_smb-filename.pcap");
    // Oracles: nmap 6 rejected, smb 23 rst_by_server: all reason tcp-rst-server.
    assert_eq!(count(&[&nmap, &smb], "reason=tcp-rst-server"), 29);
    let out = conntrail(&[
        "query",
        s(&nmap),
        s(&smb),
        "reason=tcp-rst-server",
        "and",
        "port",
        "445",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("START (UTC)"), "{table}");
    assert_eq!(lines.len(), 1 + 23, "{table}");
    let header_at = |col: &str| lines[0].find(col).expect("column");
    for line in &lines[1..] {
        assert!(
            line.contains("tcp-rst-server") && line.contains(":445 "),
            "{line}"
        );
        assert_eq!(
            line.find("tcp-rst-server"),
            Some(header_at("REASON")),
            "{table}"
        );
    }
    // The last column is LOG:ID; `show` finds that record.
    let reference = lines[1].split_whitespace().last().expect("ref");
    let (log, id) = reference.rsplit_once(':').expect("LOG:ID");
    assert_eq!(log, s(&smb));
    let shown = conntrail(&["show", log, id, "--json"]);
    let rec: Value = serde_json::from_str(&text(&shown.stdout)).expect("show JSON");
    assert_eq!(rec["close_reason"], "tcp-rst-server");
    assert_eq!(rec["server"]["port"], 445);

    // JSON Lines name the log of each record; --where takes the expression, --limit stops.
    let out = conntrail(&[
        "query",
        s(&nmap),
        s(&smb),
        "--where",
        "reason=tcp-rst-server",
        "--json",
    ]);
    let docs: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(docs.len(), 29);
    assert_eq!(docs.iter().filter(|d| d["log"] == s(&nmap)).count(), 6);
    assert_eq!(docs.iter().filter(|d| d["log"] == s(&smb)).count(), 23);
    let out = conntrail(&["query", s(&nmap), s(&smb), "--limit", "8", "--ecs"]);
    let docs: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("ECS line"))
        .collect();
    assert_eq!(docs.len(), 8);
    assert_eq!(docs[0]["log"]["file"]["path"], s(&nmap));
    assert_eq!(docs[0]["source"]["ip"], "192.168.1.71");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_expression_is_an_error_at_its_column() {
    let dir = temp_dir("bad-expr");
    let log = replay(&dir, "zeek_nmap-vsn.pcap");
    let out = conntrail(&["query", s(&log), "port", "443", "and", "duration", ">"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("expected a value after `>` at column 23"),
        "{err}"
    );
    assert!(
        err.contains("\n  port 443 and duration >\n                        ^"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = conntrail(&["query", s(&log), "reason=tcp-rst"]);
    assert!(text(&out.stderr).contains("`tcp-rst` is not a close reason"));
    let out = conntrail(&["query", s(&log), "resaon=shutdown"]);
    assert!(text(&out.stderr).contains("did you mean `reason`?"));
    let out = conntrail(&["query", "/nonexistent/t.log", "tcp"]);
    assert!(text(&out.stderr).contains("`/nonexistent/t.log` is not an existing file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_log_still_answers_with_exit_1() {
    let dir = temp_dir("damaged");
    let log = replay(&dir, "suricata_smb-filename.pcap");
    let mut bytes = std::fs::read(&log).expect("log");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write");
    let out = conntrail(&["query", s(&log), "--count-by", "reason", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("damaged log") && err.contains(s(&log)) && err.contains("byte"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&text(&out.stdout)).expect("JSON");
    let total = v["total"].as_u64().expect("total");
    // One frame lost of the oracle's 29 connections; the rest is read past the damage.
    assert_eq!(total, 28, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn matching_real_records_allocates_nothing() {
    let dir = temp_dir("alloc");
    let logs = [
        replay(&dir, "zeek_nmap-vsn.pcap"),
        replay(&dir, "suricata_dcerpc_zerologon.pcap"),
    ];
    let records: Vec<_> = forensics::logs::Records::open(&logs)
        .expect("open")
        .map(|r| r.expect("intact"))
        .collect();
    assert_eq!(records.len(), 18 + 53);
    let expr = Expr::parse(
        "(host 192.168.1.71 or client net 10.0.0.0/8 or server port 445 or port 135) \
         and not (udp or ip6 or vlan 7 or midstream or point tls-alert) \
         and (reason=tcp-fin,tcp-rst-server or state=RSTO or flags=error or history=Sh \
              or latency.syn_synack>1ms or duration<=2m or s2c.bytes>100 or retrans>0 \
              or time>=2011-01-01T00:00:00Z or start<2030-01-01 or id!=3 or worker=0)",
    )
    .expect("parses");
    // The counter sees an allocation when there is one.
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let probe = std::hint::black_box(vec![0u8; 16]);
    COUNTING.with(|c| c.set(false));
    drop(probe);
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 1);
    let mut selected = 0;
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for rec in &records {
        selected += usize::from(expr.matches(rec));
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 0);
    // The third group holds for every record (all start after 2011-01-01): the endpoint
    // group and the exclusions decide.
    let ip = |a: &flowtable::record::Addr| a.to_string();
    let expected = records
        .iter()
        .filter(|r| {
            ip(&r.client.ip) == "192.168.1.71"
                || ip(&r.server.ip) == "192.168.1.71"
                || ip(&r.client.ip).starts_with("10.")
                || r.server.port == 445
                || [r.client.port, r.server.port].contains(&135)
        })
        .filter(|r| {
            r.proto != flowtable::record::Proto::Udp
                && r.ip_version == 4
                && !r.vlans.contains(&7)
                && !r.midstream
                && !r
                    .points
                    .iter()
                    .any(|p| p.kind == flowtable::point::PointKind::TlsAlert)
        })
        .count();
    assert!(expected > 0 && expected < records.len(), "{expected}");
    assert_eq!(selected, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
