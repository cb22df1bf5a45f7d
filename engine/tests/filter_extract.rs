//! `conntrail filter` and `conntrail extract` as an analyst uses them: for records of corpus
//! captures (IPv4 and IPv6, VLAN and MPLS, a reset, a rejected SYN, UDP, fragmented DNS,
//! ICMP and ICMPv6) and of a capture built here with ICMP errors and a reused 5-tuple,
//! `extract` writes, frame for frame (timestamps and bytes), what tshark selects with the
//! Wireshark filter that `filter` printed, and tcpdump with the BPF filter selects the same
//! frames within the record's time window. Needs tshark, editcap and tcpdump
//! (`scripts/setup.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{conntrail, corpus, s, temp_dir, text};

fn tool(name: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs (scripts/setup.sh installs it): {e}"))
}

/// Replays `capture` with `--record all` into `dir/NAME.log`.
fn replay(dir: &Path, capture: &Path) -> PathBuf {
    let name = capture.file_name().expect("file name").to_string_lossy();
    let log = dir.join(format!("{name}.log"));
    let cfg = dir.join("ring.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", s(dir))).expect("config");
    let out = conntrail(&[
        "replay",
        "--record",
        "all",
        "--config",
        s(&cfg),
        "--log",
        s(&log),
        s(capture),
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

fn id(rec: &Value) -> u64 {
    rec["id"].as_u64().expect("id")
}

/// `filter --json` of one record.
fn filters(log: &Path, id: u64) -> Value {
    let r = format!("{}:{id}", s(log));
    let out = conntrail(&["filter", "--json", &r]);
    assert!(out.status.success(), "filter: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("filter json")
}

/// Every frame of a capture (pcap or pcapng): capture time in ns and bytes.
fn frames(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut v = Vec::new();
    let stats = capture::read_capture(path, |_, ts, _, bytes| v.push((ts, bytes.to_vec())), |_| {})
        .expect("readable capture");
    assert!(
        stats.damage.is_empty(),
        "{}: {:?}",
        path.display(),
        stats.damage
    );
    v
}

/// Runs `extract` of one record into `out`; returns its JSON summary.
fn extract(log: &Path, id: u64, captures: &[&Path], out: &Path) -> Value {
    let r = format!("{}:{id}", s(log));
    let mut args = vec!["extract", &r, "-o", s(out), "--overwrite", "--json"];
    for c in captures {
        args.push("--pcap");
        args.push(s(c));
    }
    let o = conntrail(&args);
    assert!(o.status.success(), "extract: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("extract json")
}

/// What tshark selects from `capture` with `filter`.
fn tshark_selects(capture: &Path, filter: &str, out: &Path) -> Vec<(u64, Vec<u8>)> {
    let o = tool("tshark", &["-r", s(capture), "-Y", filter, "-w", s(out)]);
    assert!(
        o.status.success(),
        "tshark rejects {filter}: {}",
        text(&o.stderr)
    );
    frames(out)
}

/// What tcpdump selects from `capture` with `bpf`, within the window `filter --json` gave.
fn tcpdump_selects(dir: &Path, capture: &Path, f: &Value) -> Vec<(u64, Vec<u8>)> {
    let epoch = |ns: u64| format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
    let window = dir.join("window.pcap");
    let from = epoch(f["window_ns"]["from"].as_u64().expect("from"));
    let to = epoch(f["window_ns"]["to"].as_u64().expect("to"));
    let o = tool("editcap", &["-A", &from, "-B", &to, s(capture), s(&window)]);
    assert!(o.status.success(), "editcap: {}", text(&o.stderr));
    let out = dir.join("tcpdump.pcap");
    let bpf = f["bpf"].as_str().expect("bpf");
    let o = tool("tcpdump", &["-r", s(&window), "-w", s(&out), bpf]);
    assert!(
        o.status.success(),
        "tcpdump rejects {bpf}: {}",
        text(&o.stderr)
    );
    frames(&out)
}

/// Extracts `rec` from `capture` and compares with tshark (and, with `bpf`, tcpdump).
/// Returns the frames written.
fn check_record(
    dir: &Path,
    log: &Path,
    rec: &Value,
    capture: &Path,
    bpf: bool,
) -> Vec<(u64, Vec<u8>)> {
    let id = id(rec);
    let f = filters(log, id);
    let out = dir.join(format!("extract-{id}.pcap"));
    let summary = extract(log, id, &[capture], &out);
    let got = frames(&out);
    assert_eq!(summary["packets"].as_u64(), Some(got.len() as u64));
    let expected = tshark_selects(
        capture,
        f["wireshark"].as_str().expect("wireshark"),
        &dir.join("tshark.pcap"),
    );
    let what = format!(
        "record {id} of {} ({} {} -> {})",
        capture.display(),
        rec["proto"],
        rec["client"],
        rec["server"]
    );
    assert!(!got.is_empty(), "{what}: nothing extracted");
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: extract vs tshark frame count"
    );
    for (n, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.0, e.0, "{what}: frame {n} timestamp");
        assert_eq!(g.1, e.1, "{what}: frame {n} bytes");
    }
    if bpf {
        let by_bpf = tcpdump_selects(dir, capture, &f);
        assert_eq!(by_bpf, got, "{what}: tcpdump with the BPF filter");
    }
    got
}

fn kinds(rec: &Value) -> Vec<&str> {
    rec["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["kind"].as_str())
        .collect()
}

fn pkts(rec: &Value) -> u64 {
    rec["c2s"]["pkts"].as_u64().unwrap_or(0) + rec["s2c"]["pkts"].as_u64().unwrap_or(0)
}

#[test]
fn extract_writes_what_tshark_selects_with_the_printed_filter() {
    let dir = temp_dir("corpus");
    // (capture, BPF comparable: no MPLS)
    for (name, bpf) in [
        ("zeek_ftp_ipv6.pcap", true),
        ("zeek_mixed-vlan-mpls.pcap", false),
        ("zeek_conn-size.pcap", true),
        ("zeek_communityid_icmp6.pcap", true),
        ("zeek_dns-edns-ecs.pcap", true),
        ("zeek_nmap-vsn.pcap", true),
        ("suricata_dcerpc_zerologon.pcap", true),
    ] {
        let capture = corpus(name);
        let log = replay(&dir, &capture);
        let recs = records(&log);
        assert!(!recs.is_empty(), "{name}: records");
        // Every record of the small captures; of the larger ones, one per close reason and
        // protocol, and every record with fragments.
        let mut seen = std::collections::HashSet::new();
        let chosen: Vec<&Value> = recs
            .iter()
            .filter(|r| {
                recs.len() <= 20
                    || kinds(r).contains(&"fragment")
                    || seen.insert((r["close_reason"].to_string(), r["proto"].to_string()))
            })
            .collect();
        for rec in chosen {
            let got = check_record(&dir, &log, rec, &capture, bpf);
            if !kinds(rec).contains(&"fragment") && rec["proto"] != "icmp" {
                // Without fragments, the frames are the record's packets (no ICMP error
                // quotes a connection of these captures).
                assert_eq!(got.len() as u64, pkts(rec), "{name} record {}", id(rec));
            }
        }
        if name == "zeek_mixed-vlan-mpls.pcap" {
            let vlan = recs
                .iter()
                .find(|r| r["vlans"] == serde_json::json!([4093]));
            let f = filters(&log, id(vlan.expect("the VLAN 4093 connection")));
            assert!(f["wireshark"]
                .as_str()
                .unwrap_or("")
                .contains("vlan.id#1==4093"));
            assert!(f["bpf"]
                .as_str()
                .unwrap_or("")
                .starts_with("vlan 4093 and ("));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A legacy pcap (microseconds, Ethernet) of `(seconds, frame)`.
fn write_pcap(path: &Path, frames: &[(f64, Vec<u8>)]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65535u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for (t, f) in frames {
        let us = (t * 1e6).round() as u64 + 1_700_000_000_000_000;
        b.extend_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).expect("write pcap");
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[
        0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    t
}

/// An ICMP (or ICMPv6) error quoting an IP packet: its header and 8 bytes of transport.
fn icmp_error(icmp_type: u8, code: u8, quoted_ip: &[u8], quoted_header: usize) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&quoted_ip[..(quoted_header + 8).min(quoted_ip.len())]);
    m
}

#[test]
fn icmp_errors_quoting_a_connection_come_with_it_and_a_reused_tuple_does_not() {
    let dir = temp_dir("icmp");
    let (a, b, r) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 254]);
    let (c, d) = ([10, 0, 0, 3], [192, 0, 2, 80]);
    let mut e6 = [0u8; 16];
    e6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    let mut f6 = e6;
    e6[15] = 1;
    f6[15] = 2;
    let query = ipv4(17, a, b, &udp(5000, 53, b"query"));
    let other = ipv4(17, a, b, &udp(5001, 53, b"other"));
    let swapped = ipv4(17, a, b, &udp(53, 5000, b"swapped"));
    let syn = ipv4(6, c, d, &tcp_syn(40000, 80));
    let query6 = ipv6(17, e6, f6, &udp(6000, 53, b"query6"));
    let frames = vec![
        (0.000, eth(0x0800, &query)),
        // Port unreachable for the query: belongs to the A:5000 <-> B:53 connection.
        (
            0.010,
            eth(0x0800, &ipv4(1, b, a, &icmp_error(3, 3, &query, 20))),
        ),
        (0.020, eth(0x0800, &other)),
        (
            0.030,
            eth(0x0800, &ipv4(1, b, a, &icmp_error(3, 3, &other, 20))),
        ),
        // Quotes A:53 -> B:5000: the loose filter's false positive.
        (
            0.040,
            eth(0x0800, &ipv4(1, b, a, &icmp_error(3, 3, &swapped, 20))),
        ),
        (0.050, eth(0x0800, &syn)),
        // Administratively prohibited, from a router on the way.
        (
            0.060,
            eth(0x0800, &ipv4(1, r, c, &icmp_error(3, 13, &syn, 20))),
        ),
        (0.080, eth(0x86dd, &query6)),
        (
            0.090,
            eth(0x86dd, &ipv6(58, f6, e6, &icmp_error(1, 4, &query6, 40))),
        ),
        // The same 5-tuple again, long after the first connection aged out.
        (200.000, eth(0x0800, &query)),
        (
            200.005,
            eth(0x0800, &ipv4(17, b, a, &udp(53, 5000, b"answer"))),
        ),
    ];
    let capture = dir.join("icmp-errors.pcap");
    write_pcap(&capture, &frames);
    let log = replay(&dir, &capture);
    let recs = records(&log);
    let find = |port: u64, start_s: u64| {
        recs.iter()
            .find(|r| {
                r["client"]["port"] == port
                    && r["start_ns"].as_u64().unwrap_or(0) / 1_000_000_000
                        == 1_700_000_000 + start_s
            })
            .unwrap_or_else(|| panic!("a record of client port {port} at +{start_s} s: {recs:?}"))
    };
    let at = |t: f64| 1_700_000_000_000_000_000 + (t * 1e9).round() as u64;
    let frame = |i: usize| (at(frames[i].0), frames[i].1.clone());
    for (rec, expected) in [
        (find(5000, 0), vec![frame(0), frame(1)]),
        (find(5001, 0), vec![frame(2), frame(3)]),
        (find(40000, 0), vec![frame(5), frame(6)]),
        (find(6000, 0), vec![frame(7), frame(8)]),
        (find(5000, 200), vec![frame(9), frame(10)]),
    ] {
        assert!(
            rec["start_ns"].as_u64() >= Some(at(200.0)) || kinds(rec).contains(&"icmp-error"),
            "the tracker attributed the error: {rec}"
        );
        let got = check_record(&dir, &log, rec, &capture, true);
        assert_eq!(got, expected, "record {rec}");
    }
    // The error quoting A:53 -> B:5000 is an ICMP message of its own.
    let icmp = recs
        .iter()
        .find(|r| r["proto"] == "icmp")
        .expect("an ICMP message record");
    assert_eq!(
        check_record(&dir, &log, icmp, &capture, true),
        vec![frame(4)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pcapng_in_gives_pcapng_out_with_the_same_frames() {
    let dir = temp_dir("pcapng");
    let pcap = corpus("zeek_ftp_ipv6.pcap");
    let ng = dir.join("ftp6.pcapng");
    let o = tool("editcap", &["-F", "pcapng", s(&pcap), s(&ng)]);
    assert!(o.status.success(), "editcap: {}", text(&o.stderr));
    let log = replay(&dir, &ng);
    let recs = records(&log);
    let rec = recs.iter().max_by_key(|r| pkts(r)).expect("a record");
    let got = check_record(&dir, &log, rec, &ng, true);
    let out = dir.join(format!("extract-{}.pcap", id(rec)));
    let bytes = std::fs::read(&out).expect("output");
    assert_eq!(
        bytes.get(..4),
        Some(&[0x0a, 0x0d, 0x0d, 0x0a][..]),
        "pcapng out"
    );
    // The interface keeps the link type (Ethernet): the block after the section header.
    let shb_len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let idb = &bytes[shb_len..];
    assert_eq!(
        u32::from_le_bytes(idb[..4].try_into().expect("4 bytes")),
        1,
        "IDB"
    );
    assert_eq!(u16::from_le_bytes([idb[8], idb[9]]), 1, "Ethernet");
    // Same frames as from the legacy pcap.
    let legacy_out = dir.join("legacy.pcap");
    extract(&log, id(rec), &[&pcap], &legacy_out);
    assert_eq!(frames(&legacy_out), got);
    let legacy = std::fs::read(&legacy_out).expect("output");
    assert_eq!(
        legacy.get(..4),
        Some(&0xa1b2_c3d4u32.to_le_bytes()[..]),
        "pcap out, us"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reading_stops_after_the_window_of_a_time_ordered_capture() {
    let dir = temp_dir("window");
    let capture = dir.join("synth.pcap");
    let o = conntrail(&[
        "synth",
        "-o",
        s(&capture),
        "--flows",
        "400",
        "--packets",
        "8000",
        "--seed",
        "7",
        "--duration-s",
        "60",
    ]);
    assert!(o.status.success(), "synth: {}", text(&o.stderr));
    let log = replay(&dir, &capture);
    let recs = records(&log);
    let early = recs
        .iter()
        .filter(|r| r["proto"] == "tcp" && pkts(r) > 4)
        .min_by_key(|r| r["end_ns"].as_u64())
        .expect("a TCP record");
    let got = check_record(&dir, &log, early, &capture, false);
    assert_eq!(got.len() as u64, pkts(early));
    let out = dir.join("early.pcap");
    let summary = extract(&log, id(early), &[&capture], &out);
    let cap = &summary["captures"][0];
    assert_eq!(cap["stopped_early"], true, "{summary}");
    let (read, total) = (cap["bytes_read"].as_u64(), cap["bytes_total"].as_u64());
    assert!(read < total.map(|t| t / 2), "read {read:?} of {total:?}");
    // synth writes nanoseconds: so does extract.
    let bytes = std::fs::read(&out).expect("output");
    assert_eq!(
        bytes.get(..4),
        Some(&0xa1b2_3c4du32.to_le_bytes()[..]),
        "ns pcap"
    );
    assert_eq!(frames(&out), got);
    // The text summary says how much was read.
    let r = format!("{}:{}", s(&log), id(early));
    let o = conntrail(&[
        "extract",
        &r,
        "--pcap",
        s(&capture),
        "-o",
        s(&out),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let t = text(&o.stdout);
    assert!(
        t.starts_with(&format!("wrote {} packets of record", got.len())),
        "{t}"
    );
    assert!(t.contains("before the window closed"), "{t}");
    // --read-all reads everything and writes the same.
    let o = conntrail(&[
        "extract",
        &r,
        "--pcap",
        s(&capture),
        "-o",
        s(&out),
        "--read-all",
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("read all"), "{}", text(&o.stdout));
    assert_eq!(frames(&out), got);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn filter_text_names_both_filters_and_commands_report_a_damaged_log() {
    let dir = temp_dir("damage");
    let capture = corpus("suricata_dcerpc_zerologon.pcap");
    let log = replay(&dir, &capture);
    let recs = records(&log);
    let last = recs.last().expect("records");
    let r = format!("{}:{}", s(&log), id(last));
    let o = conntrail(&["filter", &r]);
    assert!(o.status.success());
    let t = text(&o.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert!(lines[0].starts_with("# Wireshark display filter"));
    assert!(lines[1].starts_with("frame.time_epoch >= "));
    assert!(lines[2].starts_with("# BPF") && lines[2].contains("editcap -A "));
    assert!(lines[3].starts_with("(tcp and src host "));
    // Damage before the record: reported, skipped, exit status 1, output still given.
    let mut bytes = std::fs::read(&log).expect("log");
    let n = bytes.len();
    bytes[n / 3] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write");
    let o = conntrail(&["filter", "--json", &r]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("damaged log"),
        "{}",
        text(&o.stderr)
    );
    let f: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(f["wireshark"].as_str().is_some() && f["bpf"].as_str().is_some());
    let out = dir.join("x.pcap");
    let o = conntrail(&["extract", &r, "--pcap", s(&capture), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).starts_with("wrote "), "{}", text(&o.stdout));
    // extract never writes over its input.
    let before = std::fs::read(&out).expect("output");
    let o = conntrail(&[
        "extract",
        &r,
        "--pcap",
        s(&out),
        "-o",
        s(&out),
        "--overwrite",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("and also an input of this extract"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&out).expect("output"), before);
    let _ = std::fs::remove_dir_all(&dir);
}
