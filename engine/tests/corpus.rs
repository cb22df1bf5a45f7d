//! Correctness against real captures: every capture in `../shared/corpus/real/` is replayed
//! with `--record all` and compared with its tshark oracle (`*.oracle.json`).
//!
//! Per TCP connection of the oracle: matched (same endpoints, start within 1 ms), orientation
//! (unless the oracle only guessed from the first packet), packets and bytes each way, close
//! reason compatible with the oracle's `close_kind`, SYN->SYN-ACK within 2 us. Per UDP flow:
//! matched, packets each way. Each figure must reach 99 % over the whole corpus.
//!
//! Where we disagree with the oracle on purpose: tshark keeps a TCP stream open forever, we
//! do not. A connection closed by a RST (or by FIN both ways) lingers `tcp_closed_s`
//! (10 s) to collect trailing segments, then its record is written; a segment on the same
//! 5-tuple after that starts a new connection. In `suricata_tls_tls-subjectaltname.pcap` a
//! client resets a stray ACK and retransmits the same SYN 13 s later: tshark counts one
//! stream, we count two connections (the first, reset by the client, and a second one).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use engine::pipeline::replay::{replay, ReplayOptions};
use flowtable::config::Config;
use flowtable::record::{Proto, Record};
use flowtable::table::RecordMode;
use serde_json::Value;

fn read_log(path: &Path) -> Vec<Record<'static>> {
    let reader = recorder::reader::LogReader::open(path).expect("log opens");
    reader
        .map(|item| {
            let frame = item.expect("undamaged log");
            flowtable::record::codec::decode(&frame.payload).expect("record decodes")
        })
        .collect()
}

fn replay_all(capture: &Path, out: &Path) -> Vec<Record<'static>> {
    let mut cfg = Config::default();
    cfg.ring.dir = out.to_string_lossy().into_owned();
    let log = out.join("corpus.log");
    let opts = ReplayOptions {
        workers: 2,
        mode: RecordMode::All,
        log: log.clone(),
        captures: vec![capture.to_path_buf()],
        progress: false,
        interface: None,
        log_target: forensics::evidence::LogTarget::New,
    };
    let summary = replay(&cfg, &opts).expect("replay succeeds");
    assert_eq!(summary.ring_drops(), 0, "{}: ring drops", capture.display());
    read_log(&log)
}

type Ep = (std::net::IpAddr, u16);

fn ep(v: &Value) -> Ep {
    let ip = v["ip"].as_str().expect("ip").parse().expect("ip parses");
    (ip, v["port"].as_u64().unwrap_or(0) as u16)
}

fn rec_ep(e: &flowtable::record::Endpoint) -> Ep {
    (e.ip.to_ip(), e.port)
}

/// (packets, bytes) sent by `from` in `r`.
fn sent_by(r: &Record<'_>, from: Ep) -> (u64, u64) {
    if rec_ep(&r.client) == from {
        (r.c2s.pkts, r.c2s.bytes)
    } else {
        (r.s2c.pkts, r.s2c.bytes)
    }
}

fn reasons_for(close_kind: &str) -> &'static [&'static str] {
    match close_kind {
        "fin" => &["tcp-fin"],
        "rst_by_client" => &["tcp-rst-client"],
        "rst_by_server" | "rejected" => &["tcp-rst-server"],
        "syn_unanswered" => &["aged-out", "shutdown"],
        "open_at_end" => &["aged-out", "shutdown", "tcp-reuse"],
        _ => &[],
    }
}

#[derive(Default, Debug)]
struct Score {
    tcp: u32,
    matched: u32,
    orient_n: u32,
    orient: u32,
    counts: u32,
    reason: u32,
    state: u32,
    synack_n: u32,
    synack: u32,
    udp: u32,
    udp_ok: u32,
}

fn nearest<'a>(
    recs: &'a [Record<'static>],
    proto: Proto,
    a: Ep,
    b: Ep,
    start_ns: u64,
    used: &mut HashSet<usize>,
) -> Option<&'a Record<'static>> {
    let mut best: Option<(u64, usize)> = None;
    for (i, r) in recs.iter().enumerate() {
        if r.proto != proto || used.contains(&i) {
            continue;
        }
        let (c, s) = (rec_ep(&r.client), rec_ep(&r.server));
        if !((c == a && s == b) || (c == b && s == a)) {
            continue;
        }
        let dt = r.start_ns.abs_diff(start_ns);
        if dt <= 1_000_000 && best.is_none_or(|(d, _)| dt < d) {
            best = Some((dt, i));
        }
    }
    best.map(|(_, i)| {
        used.insert(i);
        &recs[i]
    })
}

fn score(oracle: &Value, recs: &[Record<'static>], s: &mut Score, bad: &mut Vec<String>) {
    let mut used = HashSet::new();
    for c in oracle["tcp"].as_array().into_iter().flatten() {
        s.tcp += 1;
        let (cli, srv) = (ep(&c["client"]), ep(&c["server"]));
        let start = c["first_ts_ns"].as_u64().expect("first_ts_ns");
        let kind = c["close_kind"].as_str().unwrap_or("");
        let Some(r) = nearest(recs, Proto::Tcp, cli, srv, start, &mut used) else {
            bad.push(format!("unmatched tcp {cli:?} -> {srv:?} ({kind})"));
            continue;
        };
        s.matched += 1;
        if c["client_by"] != "first_packet" {
            s.orient_n += 1;
            if rec_ep(&r.client) == cli {
                s.orient += 1;
            } else {
                bad.push(format!("orientation {cli:?} -> {srv:?}"));
            }
        }
        let want = (
            (
                c["c2s"]["pkts"].as_u64().unwrap_or(0),
                c["c2s"]["bytes"].as_u64().unwrap_or(0),
            ),
            (
                c["s2c"]["pkts"].as_u64().unwrap_or(0),
                c["s2c"]["bytes"].as_u64().unwrap_or(0),
            ),
        );
        let got = (sent_by(r, cli), sent_by(r, srv));
        if want == got {
            s.counts += 1;
        } else {
            bad.push(format!(
                "counts {cli:?} -> {srv:?}: want {want:?} got {got:?}"
            ));
        }
        if reasons_for(kind).contains(&r.close_reason.as_str()) {
            s.reason += 1;
        } else {
            bad.push(format!(
                "reason {cli:?} -> {srv:?}: oracle {kind}, we {}",
                r.close_reason.as_str()
            ));
        }
        // Zeek's conn_state where the oracle's close kind pins it down.
        let state_ok = match kind {
            "rejected" => r.conn_state.as_str() == "REJ",
            "syn_unanswered" => ["S0", "SH"].contains(&r.conn_state.as_str()),
            _ => true,
        };
        if state_ok {
            s.state += 1;
        } else {
            bad.push(format!(
                "conn_state {cli:?} -> {srv:?}: {kind} but {}",
                r.conn_state.as_str()
            ));
        }
        if let Some(want) = c["syn_to_synack_s"].as_f64() {
            s.synack_n += 1;
            let want_ns = (want * 1e9).round() as i64;
            match r.latency.syn_synack_ns {
                Some(got) if (got as i64 - want_ns).abs() <= 2000 => s.synack += 1,
                got => bad.push(format!(
                    "syn->syn-ack {cli:?} -> {srv:?}: want {want_ns} got {got:?}"
                )),
            }
        }
    }
    for u in oracle["udp"].as_array().into_iter().flatten() {
        s.udp += 1;
        let (cli, srv) = (ep(&u["client"]), ep(&u["server"]));
        let start = u["first_ts_ns"].as_u64().expect("first_ts_ns");
        let Some(r) = nearest(recs, Proto::Udp, cli, srv, start, &mut used) else {
            bad.push(format!("unmatched udp {cli:?} -> {srv:?}"));
            continue;
        };
        let want = (
            u["c2s"]["pkts"].as_u64().unwrap_or(0),
            u["s2c"]["pkts"].as_u64().unwrap_or(0),
        );
        if (sent_by(r, cli).0, sent_by(r, srv).0) == want {
            s.udp_ok += 1;
        } else {
            bad.push(format!(
                "udp counts {cli:?} -> {srv:?}: want {want:?} got {:?}",
                (sent_by(r, cli).0, sent_by(r, srv).0)
            ));
        }
    }
}

fn pct(a: u32, b: u32) -> f64 {
    if b == 0 {
        100.0
    } else {
        100.0 * f64::from(a) / f64::from(b)
    }
}

#[test]
fn corpus_agrees_with_tshark_oracles() {
    let captures = common::corpus_captures();
    let tmp = std::env::temp_dir().join(format!("conntrail-corpus-{}", std::process::id()));
    let mut total = Score::default();
    for cap in &captures {
        let oracle_path = PathBuf::from(format!("{}.oracle.json", cap.display()));
        let oracle: Value =
            serde_json::from_str(&std::fs::read_to_string(&oracle_path).expect("oracle readable"))
                .expect("oracle parses");
        let out = tmp.join(cap.file_name().expect("name"));
        std::fs::create_dir_all(&out).expect("temp dir");
        let recs = replay_all(cap, &out);
        let mut s = Score::default();
        let mut bad = Vec::new();
        score(&oracle, &recs, &mut s, &mut bad);
        println!(
            "{}: tcp {}/{} counts {} reason {} state {} orient {}/{} synack {}/{} udp {}/{}",
            cap.file_name().unwrap_or_default().to_string_lossy(),
            s.matched,
            s.tcp,
            s.counts,
            s.reason,
            s.state,
            s.orient,
            s.orient_n,
            s.synack,
            s.synack_n,
            s.udp_ok,
            s.udp
        );
        for b in bad.iter().take(8) {
            println!("    {b}");
        }
        total.tcp += s.tcp;
        total.matched += s.matched;
        total.orient_n += s.orient_n;
        total.orient += s.orient;
        total.counts += s.counts;
        total.reason += s.reason;
        total.state += s.state;
        total.synack_n += s.synack_n;
        total.synack += s.synack;
        total.udp += s.udp;
        total.udp_ok += s.udp_ok;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let figures = [
        ("matched", pct(total.matched, total.tcp)),
        ("orientation", pct(total.orient, total.orient_n)),
        ("counts", pct(total.counts, total.tcp)),
        ("close reason", pct(total.reason, total.tcp)),
        ("conn_state", pct(total.state, total.tcp)),
        ("syn->syn-ack", pct(total.synack, total.synack_n)),
        ("udp", pct(total.udp_ok, total.udp)),
    ];
    let line: Vec<String> = figures
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}%"))
        .collect();
    println!(
        "agreement over {} tcp, {} udp: {}",
        total.tcp,
        total.udp,
        line.join(", ")
    );
    for (name, v) in figures {
        assert!(v >= 99.0, "{name} agreement {v:.1}% is under 99%");
    }
}

/// The TCP analysis counters and the largest stall, event for event against tshark, scored
/// by `../shared/tools/counters.py`: per connection and direction,
/// `sum(min(tshark, ours)) / sum(max(tshark, ours))` for retransmissions (every kind),
/// out-of-order segments, duplicate ACKs and zero windows, and the share of connections whose
/// `max_stall` is tshark's longest gap between two packets (within 1 us). Each must reach
/// 99 %.
///
/// What stays apart, on purpose: the connection of `suricata_tls_tls-subjectaltname.pcap`
/// described at the top is two records here, one stream there, so tshark's retransmitted
/// SYN (13 s after the reset) and its 13 s gap have no counterpart in either record.
#[test]
fn tcp_analysis_counters_agree_with_tshark_event_for_event() {
    let out = common::temp_dir("counters");
    for cap in common::corpus_captures() {
        let name = cap
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let records = common::replayed_json(&cap, &out);
        std::fs::write(out.join(format!("{name}.jsonl")), records).expect("write records");
    }
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/counters.py");
    let scored = std::process::Command::new("python3")
        .arg(&tool)
        .arg(common::corpus(""))
        .arg(&out)
        .args(["--min", "99", "--verbose"])
        .output()
        .expect("python3 runs counters.py (scripts/setup.sh installs python3 and tshark)");
    print!("{}", common::text(&scored.stdout));
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        scored.status.success(),
        "counters under 99 %: {}{}",
        common::text(&scored.stdout),
        common::text(&scored.stderr)
    );
}
