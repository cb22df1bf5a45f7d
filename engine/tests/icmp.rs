//! ICMP records against the tshark oracles of the corpus: every ICMP and ICMPv6 message
//! stream of an oracle has a record with its type and code, and one-shot control messages
//! (neighbour discovery, router solicitations, errors) are never latency anomalies: only
//! request/reply pairs (echo and the like) have a response time.

mod common;

use serde_json::Value;

fn records(capture: &std::path::Path, dir: &std::path::Path) -> Vec<Value> {
    common::replayed_json(capture, dir)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}

#[test]
fn icmp_records_carry_tsharks_type_and_code_and_control_messages_have_no_latency() {
    let dir = common::temp_dir("icmp");
    let mut messages = 0;
    for cap in common::corpus_captures() {
        let oracle: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}.oracle.json", cap.display()))
                .expect("oracle readable"),
        )
        .expect("oracle parses");
        let Some(icmp) = oracle["icmp"].as_array().filter(|a| !a.is_empty()) else {
            continue;
        };
        let recs = records(&cap, &dir);
        for o in icmp.iter().filter(|o| o["kind"] == "message") {
            let first = o["first_ts_ns"].as_u64().expect("first_ts_ns");
            // A message of the same type each way between two hosts (a neighbour
            // solicitation each way) is one flow of ours, two streams of the oracle's.
            let ends = |r: &Value| {
                let (c, s) = (&r["client"]["ip"], &r["server"]["ip"]);
                (*c == o["src"] && *s == o["dst"]) || (*c == o["dst"] && *s == o["src"])
            };
            let during = |r: &Value| {
                let (start, end) = (r["start_ns"].as_u64(), r["end_ns"].as_u64());
                start.is_some_and(|t| t <= first + 1_000_000)
                    && end.is_some_and(|t| t + 1_000_000 >= first)
            };
            let rec = recs
                .iter()
                .find(|r| {
                    r["proto"] == "icmp" && r["icmp"]["type"] == o["type"] && ends(r) && during(r)
                })
                .unwrap_or_else(|| panic!("{}: no record for {o}", cap.display()));
            assert_eq!(rec["icmp"]["code"], o["code"], "{rec}");
            assert!(rec["icmp"]["name"].is_string(), "{rec}");
            assert!(rec["latency_ns"]["ttfb"].is_null(), "{rec}");
            let flags: Vec<&str> = rec["flags"]
                .as_array()
                .expect("flags")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(!flags.contains(&"latency"), "{rec}");
            messages += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{messages} ICMP message streams checked");
    assert!(
        messages >= 10,
        "only {messages} ICMP message streams in the corpus"
    );
}

#[test]
fn an_echo_reply_is_the_answer_to_its_request() {
    let dir = common::temp_dir("icmp-echo");
    let cap = common::corpus("zeek_communityid_icmp6.pcap");
    let recs = records(&cap, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let echo = recs
        .iter()
        .find(|r| r["icmp"]["type"] == 128 && r["s2c"]["pkts"].as_u64() > Some(0))
        .expect("an answered echo request in the capture");
    assert_eq!(echo["icmp"]["name"], "echo request");
    assert!(echo["latency_ns"]["ttfb"].as_u64().is_some(), "{echo}");
}
