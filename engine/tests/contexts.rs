//! Contexts: connections are split by the interface and outer VLAN of their first packet
//! into named contexts, each judged by its own thresholds and written to its own log.
//!
//! - VLANs, against the tshark oracle of the corpus capture with a tagged connection: the
//!   tagged one goes to the context's log, the others to the default log, and a threshold of
//!   the context flags it where the default thresholds do not.
//! - VLANs, against the generator's truth: of 3000 flows, those tagged with a context's VLAN
//!   are in its log, judged without the error triggers the context switches off; every other
//!   flow is in the default log with exactly the truth's flags.
//! - Interfaces, in replay: pcapng interface names and `replay --interface` for a pcap.
//! - Interfaces, live (root; skipped otherwise): `conntrail run` with a context on the
//!   capture interface writes every record to the context's log, and `conntrail sessions`
//!   lists its open connections in that context.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::{skip_reason, Lab, Running};
use common::{conntrail, corpus, s, temp_dir, text};
use flowtable::record::Record;
use serde_json::Value;

/// Every record of a log (all of its segments), decoded.
fn records(log: &Path) -> Vec<Record<'static>> {
    recorder::reader::LogReader::open(log)
        .expect("log opens")
        .map(|f| flowtable::record::codec::decode(&f.expect("intact").payload).expect("decodes"))
        .collect()
}

/// `proto client server` of a record, as the oracle and the truth write them.
fn endpoints(r: &Record<'_>) -> String {
    format!(
        "{} {}:{} {}:{}",
        r.proto.as_str(),
        r.client.ip,
        r.client.port,
        r.server.ip,
        r.server.port
    )
}

fn endpoints_of(v: &Value, proto: &str) -> String {
    let ep = |e: &Value| {
        format!(
            "{}:{}",
            e["ip"].as_str().unwrap_or(""),
            e["port"].as_u64().unwrap_or(0)
        )
    };
    format!("{proto} {} {}", ep(&v["client"]), ep(&v["server"]))
}

fn replay(args: &[&str]) -> String {
    let o = conntrail(&[&["replay"], args].concat());
    assert!(o.status.success(), "replay {args:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn a_vlan_context_gets_its_connections_and_judges_them_by_its_thresholds() {
    let dir = temp_dir("ctx-vlan");
    let pcap = corpus("zeek_mixed-vlan-mpls.pcap");
    let oracle: Value = serde_json::from_str(
        &std::fs::read_to_string(corpus("zeek_mixed-vlan-mpls.pcap.oracle.json")).expect("oracle"),
    )
    .expect("oracle is JSON");
    let (mut tagged, mut untagged) = (BTreeSet::new(), BTreeSet::new());
    for c in oracle["tcp"].as_array().expect("tcp connections") {
        let outer = c["vlans"].as_array().and_then(|v| v.first()).cloned();
        match outer.and_then(|v| v.as_str().and_then(|v| v.parse::<u16>().ok())) {
            Some(4093) => tagged.insert(endpoints_of(c, "tcp")),
            Some(other) => panic!("the oracle has VLAN {other}, this test knows only 4093"),
            None => untagged.insert(endpoints_of(c, "tcp")),
        };
    }
    assert_eq!(
        (tagged.len(), untagged.len()),
        (1, 2),
        "the capture as the test knows it"
    );

    // Every connection, to the log of its context.
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[[context]]\nname = \"lab\"\nvlans = [4093]\n\
         [context.triggers.latency]\nsyn_synack_ms = 0.001\n",
    )
    .expect("config");
    let log = dir.join("all.log");
    let summary = replay(&[
        "--config",
        s(&config),
        "--record",
        "all",
        "--log",
        s(&log),
        s(&pcap),
    ]);
    let lab_log = dir.join("all.log.lab");
    assert!(
        summary.contains(&format!("context lab: 1 records in {}", lab_log.display())),
        "{summary}"
    );
    let lab = records(&lab_log);
    let default = records(&log);
    let got = |recs: &[Record<'_>]| recs.iter().map(endpoints).collect::<BTreeSet<_>>();
    assert_eq!(got(&lab), tagged);
    assert_eq!(got(&default), untagged);
    assert!(lab.iter().all(|r| r.context == 1 && r.vlans[..] == [4093]));
    assert!(default.iter().all(|r| r.context == 0 && r.vlans.is_empty()));
    let o = conntrail(&[
        "query",
        s(&log),
        s(&lab_log),
        "context=1",
        "--count-by",
        "proto",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout)
            .lines()
            .any(|l| l.split_whitespace().eq(["1", "100.0%", "total"])),
        "{}",
        text(&o.stdout)
    );

    // Anomalous only: the context's 1 µs SYN -> SYN-ACK threshold keeps the tagged
    // connection; under the default thresholds it is normal and not kept.
    let log = dir.join("anomalous.log");
    replay(&["--config", s(&config), "--log", s(&log), s(&pcap)]);
    let kept = records(&dir.join("anomalous.log.lab"));
    assert_eq!(got(&kept), tagged);
    assert_eq!(kept[0].flags.names().collect::<Vec<_>>(), ["latency"]);
    let shown = text(&conntrail(&["show", s(&dir.join("anomalous.log.lab"))]).stdout);
    assert!(shown.contains(", vlan 4093, context 1"), "{shown}");
    let plain = dir.join("plain.log");
    replay(&["--log", s(&plain), s(&pcap)]);
    assert!(
        !got(&records(&plain)).contains(tagged.first().expect("one")),
        "normal under the default thresholds"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn generated_vlan_flows_land_in_their_context_judged_by_its_triggers() {
    let dir = temp_dir("ctx-synth");
    let pcap = dir.join("s.pcap");
    let o = conntrail(&[
        "synth",
        "-o",
        s(&pcap),
        "--flows",
        "3000",
        "--packets",
        "40000",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let truth: Vec<Value> = std::fs::read_to_string(dir.join("s.pcap.truth.jsonl"))
        .expect("truth")
        .lines()
        .map(|l| serde_json::from_str(l).expect("truth line"))
        .collect();
    let outer = |t: &Value| t["vlans"].as_array()?.first()?.as_u64();
    // The context takes every other VLAN the generator used.
    let vlans: BTreeSet<u64> = truth
        .iter()
        .filter_map(outer)
        .filter(|v| v % 2 == 0)
        .collect();
    let in_context = |t: &Value| outer(t).is_some_and(|v| vlans.contains(&v));
    let flagged_in_context = truth
        .iter()
        .filter(|t| in_context(t) && t["flags"].as_array().is_some_and(|f| !f.is_empty()))
        .count();
    assert!(
        vlans.len() >= 20 && flagged_in_context >= 3,
        "{} VLANs, {flagged_in_context} flagged flows in them: too few to test",
        vlans.len()
    );
    let list: Vec<String> = vlans.iter().map(u64::to_string).collect();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[context]]\nname = \"tagged\"\nvlans = [{}]\nlog = \"tagged.log\"\n\
             [context.triggers.error]\nrst_client = false\nrst_server = false\n\
             rejected = false\nunanswered = false\nicmp_error = false\n",
            list.join(", ")
        ),
    )
    .expect("config");
    let log = dir.join("main.log");
    replay(&["--config", s(&config), "--log", s(&log), s(&pcap)]);
    let mut kept: BTreeMap<String, (u16, Vec<String>)> = BTreeMap::new();
    for (path, context) in [(log.clone(), 0u16), (dir.join("tagged.log"), 1)] {
        for r in records(&path) {
            assert_eq!(
                r.context,
                context,
                "{} in {}",
                endpoints(&r),
                path.display()
            );
            let flags = r.flags.names().map(str::to_string).collect();
            assert!(kept.insert(endpoints(&r), (context, flags)).is_none());
        }
    }
    let mut bad = Vec::new();
    let mut checked = [0usize; 2];
    for t in &truth {
        let proto = t["proto"].as_str().unwrap_or("");
        let key = endpoints_of(t, proto);
        let context = u16::from(in_context(t));
        let mut want: Vec<String> = t["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .filter(|f| context == 0 || f != "error")
            .collect();
        want.sort();
        let got = kept.remove(&key);
        match (want.is_empty(), got) {
            (true, None) => {}
            (true, Some(g)) => bad.push(format!("{key}: kept {g:?}, the truth says normal")),
            (false, None) => bad.push(format!("{key}: not kept, want {want:?}")),
            (false, Some((c, mut flags))) => {
                flags.sort();
                checked[usize::from(c)] += 1;
                if (c, &flags) != (context, &want) {
                    bad.push(format!(
                        "{key}: context {c} {flags:?}, want {context} {want:?}"
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{} wrong:\n{}", bad.len(), bad.join("\n"));
    assert!(kept.is_empty(), "records of no truth flow: {kept:?}");
    assert!(checked[0] > 100 && checked[1] >= 3, "{checked:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `pcap` rewritten as a pcapng whose one interface is called `name`.
fn pcapng_on(pcap: &Path, name: &str, out: &Path) {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    use std::borrow::Cow;
    let mut reader =
        pcap_file::pcap::PcapReader::new(std::fs::File::open(pcap).expect("pcap")).expect("pcap");
    let mut writer = pcap_file::pcapng::PcapNgWriter::new(std::fs::File::create(out).expect("out"))
        .expect("pcapng");
    writer
        .write_pcapng_block(InterfaceDescriptionBlock {
            linktype: reader.header().datalink,
            snaplen: 65535,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })
        .expect("writes");
    while let Some(p) = reader.next_packet() {
        let p = p.expect("packet");
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: p.timestamp,
                original_len: p.orig_len,
                data: p.data,
                options: Vec::new(),
            })
            .expect("writes");
    }
}

#[test]
fn interface_contexts_take_pcapng_interface_names_and_replay_interface() {
    let dir = temp_dir("ctx-iface");
    let (a, b) = (
        corpus("zeek_http_methods.pcap"),
        corpus("zeek_dns-edns-ecs.pcap"),
    );
    let (a_ng, b_ng) = (dir.join("a.pcapng"), dir.join("b.pcapng"));
    pcapng_on(&a, "eth0", &a_ng);
    pcapng_on(&b, "eth1", &b_ng);
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[[context]]\nname = \"uplink\"\ninterfaces = [\"eth1\"]\n",
    )
    .expect("config");
    // What each capture alone gives, without contexts.
    let alone = |pcap: &Path, name: &str| {
        let log = dir.join(name);
        replay(&["--record", "all", "--log", s(&log), s(pcap)]);
        records(&log).iter().map(endpoints).collect::<BTreeSet<_>>()
    };
    let (want_a, want_b) = (alone(&a, "a.log"), alone(&b, "b.log"));
    assert!(want_a.len() > 10 && want_b.len() > 10);

    let split = |log: &Path, args: &[&str]| {
        let mut all = vec!["--config", s(&config), "--record", "all", "--log", s(log)];
        all.extend(args);
        replay(&all);
        let mut uplink = log.as_os_str().to_owned();
        uplink.push(".uplink");
        let got = |p: &Path| records(p).iter().map(endpoints).collect::<BTreeSet<_>>();
        (got(log), got(Path::new(&uplink)))
    };
    let (default, uplink) = split(&dir.join("ng.log"), &[s(&a_ng), s(&b_ng)]);
    assert_eq!(default, want_a, "eth0 is no context's: default");
    assert_eq!(uplink, want_b, "eth1 is the uplink's");
    // A pcap names no interface: --interface says which it was.
    let (default, uplink) = split(&dir.join("pcap.log"), &["--interface", "eth1", s(&b)]);
    assert!(default.is_empty(), "{default:?}");
    assert_eq!(uplink, want_b);
    // A named pcapng interface wins over --interface.
    let (default, uplink) = split(&dir.join("both.log"), &["--interface", "eth1", s(&a_ng)]);
    assert_eq!((default, uplink.len()), (want_a, 0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_live_run_writes_a_context_interface_to_its_own_log() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED a_live_run_writes_a_context_interface_to_its_own_log: {why}");
        eprintln!("SKIPPED a_live_run_writes_a_context_interface_to_its_own_log: {why}");
        return;
    }
    let dir = temp_dir("ctx-live");
    let lab = Lab::up(&format!("cx{}", std::process::id() % 100_000_000), &[]);
    let config = dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[table]\ncapacity = 1024\n\n[ring]\ndir = {dir:?}\n\n\
             [[capture]]\ninterface = {iface:?}\nqueues = [0]\n\n\
             [[context]]\nname = \"lab\"\ninterfaces = [{iface:?}]\nlog = \"lab.log\"\n",
            dir = dir.to_string_lossy(),
            iface = lab.var("CAP_IF"),
        ),
    )
    .expect("config");
    let log = dir.join("live.log");
    let (mut running, _) = Running::start(&dir, &config, &log, &["--record", "all"], &[]);
    let pcap = corpus("zeek_http_methods.pcap");
    lab.send(&pcap);
    std::thread::sleep(Duration::from_millis(500));
    // The open connections (FIN seen, within tcp_closed_s) say their context.
    let o = conntrail(&["sessions", "--log", s(&log), "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rows: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a session"))
        .collect();
    assert!(!rows.is_empty(), "no open connection listed");
    assert!(rows.iter().all(|r| r["context"] == "lab"), "{rows:?}");
    running.stop();
    let lab_log: PathBuf = dir.join("lab.log");
    let kept = records(&lab_log);
    assert!(
        running.stdout().contains(&format!(
            "context lab: {} records in {}",
            kept.len(),
            lab_log.display()
        )),
        "{}",
        running.output()
    );
    // The same capture replayed gives the same connections.
    let replayed = dir.join("replay.log");
    replay(&["--record", "all", "--log", s(&replayed), s(&pcap)]);
    let want: BTreeSet<String> = records(&replayed).iter().map(endpoints).collect();
    let got: BTreeSet<String> = kept.iter().map(endpoints).collect();
    assert_eq!(got, want);
    assert!(kept.iter().all(|r| r.context == 1));
    let stats = conntrail(&["stats", s(&log)]);
    assert!(
        text(&stats.stdout).contains(&format!(
            "context lab: {} records written to {}",
            kept.len(),
            lab_log.display()
        )),
        "{}",
        text(&stats.stdout)
    );
    assert!(records(&log).is_empty(), "nothing for the default context");
    drop(lab);
    std::fs::remove_dir_all(&dir).ok();
}
