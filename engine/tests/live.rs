//! Live capture end to end: `conntrail run` on a veth, fed corpus captures by tcpreplay,
//! must record exactly what `conntrail replay` records from the same files.
//!
//! Needs root (network namespaces, veth, AF_XDP). Skipped, with a message saying so, when
//! not root or when the kernel has no AF_XDP; it fails on anything else.
//!
//! One lab (`scripts/lab.sh`, names made unique with the pid, removed by a Drop guard even
//! when the test fails); for each capture: `conntrail run --record all` on the
//! root-namespace end of the veth, `tcpreplay --topspeed` of the capture into the other end
//! from inside the lab's namespace, a wait until the stats file counts every frame, SIGTERM,
//! and a comparison of `show --json` of the two logs, keyed by endpoints.
//!
//! Timing: tcpreplay rewrites nothing, but `--topspeed` squeezes a capture's time into a few
//! milliseconds, and live records are stamped by the clock. So the comparison leaves out
//! what depends on time: timestamps, durations, latencies, the `latency` flag, threshold
//! points (they mark a latency over its threshold) and the time-valued arguments of
//! syn-ack / handshake-done / first-data points, and the irregular point's index (threshold
//! points shift it). Everything else must be equal: the connections, client and server,
//! packets, bytes and payload each way, retransmissions, out-of-order, duplicate ACKs, zero
//! windows, close reason, Zeek conn_state and history, the other flags, the kinds, directions
//! and severities of the tracking points. One more equivalence: a flow that replay closes as
//! `aged-out` in a long gap of capture time is still open when the squeezed run stops, so
//! `aged-out` there matches `shutdown` here.
//!
//! Captures left out, because time decides more than that in them (measured: they differ
//! from replay, some only in some runs): `suricata_tls_tls-subjectaltname` (a port reused
//! after a RST within `tcp_closed_s` of capture time or not; retransmission against
//! out-of-order), `zeek_http_206_example_b` (a segment below the next sequence number is
//! out-of-order when it comes sooner than the initial RTT after the previous one, else a
//! retransmission: at top speed, and with one timestamp per batch, that is down to batching),
//! `zeek_communityid_icmp6` (pings more than `icmp_s` apart are two flows in replay, one
//! here). Original speed would keep all of it, but some captures span hours or years.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::source::pcap::read_capture;
use engine::stats::{RunState, StatsFile};
use flowtable::packet::LinkType;
use serde_json::Value;

/// The MTU lab.sh gives both ends (native XDP on a veth takes up to about 3500).
const MTU: usize = 3000;

/// Captures whose records through a veth equal those of replay (see the module doc).
const CAPTURES: &[&str] = &[
    "zeek_http_methods.pcap",
    "suricata_dcerpc_zerologon.pcap",
    "suricata_smb-filename.pcap",
    "suricata_smb2-09-trunc-file-logging.pcap",
    "suricata_ssl_version_negated.pcap",
    "suricata_output-eve-ftp-data.pcap",
    "zeek_nmap-vsn.pcap",
    "zeek_ftp_ipv6.pcap",
    "zeek_mixed-vlan-mpls.pcap",
    "zeek_conn-size.pcap",
    "zeek_dns-edns-ecs.pcap",
    "zeek_ssh_ssh.client-side-half-duplex.pcap",
    "tcpdump_bgp-4byte-asn.pcap",
];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_conntrail")
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/real")
        .join(name)
}

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (needs network namespaces, veth and AF_XDP)".into());
    }
    // SAFETY: plain socket(2); the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Some(format!(
            "AF_XDP is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just opened by us.
    unsafe { libc::close(fd) };
    None
}

/// A lab made by scripts/lab.sh, removed when dropped.
struct Lab {
    name: String,
    vars: BTreeMap<String, String>,
}

impl Lab {
    fn up(name: &str) -> Lab {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh");
        // Remove leftovers of an earlier run that died, then make the lab.
        let _ = Command::new("bash")
            .arg(&script)
            .args(["down", "--name", name])
            .status();
        let out = Command::new("bash")
            .arg(&script)
            .args(["up", "--name", name, "--mtu", &MTU.to_string()])
            .output()
            .expect("bash runs lab.sh");
        // Guard first, so a half-made lab is removed too.
        let mut lab = Lab {
            name: name.to_string(),
            vars: BTreeMap::new(),
        };
        assert!(
            out.status.success(),
            "lab.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once('=') {
                lab.vars.insert(k.to_string(), v.to_string());
            }
        }
        lab
    }

    fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("lab.sh up printed no {key}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .args(["down", "--name", &self.name])
            .status();
    }
}

/// A running `conntrail run`, killed when dropped if it is still running.
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Running {
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Frames of a capture and the largest one; None if it is not all Ethernet.
fn frames_of(path: &Path) -> Option<(u64, usize)> {
    let mut largest = 0usize;
    let mut other_link = false;
    let stats = read_capture(
        path,
        |link, _, wire_len, bytes| {
            other_link |= link != LinkType::Ethernet || wire_len as usize != bytes.len();
            largest = largest.max(bytes.len());
        },
        |_| {},
    )
    .expect("capture reads");
    (!other_link && stats.damage.is_none()).then_some((stats.frames, largest))
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `show --json` of a log, as records keyed by endpoints, each normalised (see the module
/// doc), the records of one key sorted.
fn records(log: &Path) -> BTreeMap<String, Vec<String>> {
    let out = Command::new(bin())
        .args(["show", "--json"])
        .arg(log)
        .output()
        .expect("conntrail show runs");
    assert!(
        out.status.success(),
        "show {}: {}",
        log.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut r: Value = serde_json::from_str(line).expect("a JSON record");
        let key = format!(
            "{} {}:{} -> {}:{} vlans {}",
            r["proto"],
            r["client"]["ip"],
            r["client"]["port"],
            r["server"]["ip"],
            r["server"]["port"],
            r["vlans"]
        );
        normalise(&mut r);
        map.entry(key).or_default().push(r.to_string());
    }
    for v in map.values_mut() {
        v.sort();
    }
    map
}

fn normalise(r: &mut Value) {
    let Some(o) = r.as_object_mut() else { return };
    for k in [
        "id",
        "start_ns",
        "end_ns",
        "duration_ns",
        "latency_ns",
        "irregular_point",
    ] {
        o.remove(k);
    }
    // Replay ages a flow out in a long gap of capture time; squeezed, it is still open when
    // the run stops.
    if o.get("close_reason").and_then(Value::as_str) == Some("aged-out") {
        o.insert("close_reason".into(), "shutdown".into());
    }
    if let Some(Value::Array(flags)) = o.get_mut("flags") {
        flags.retain(|f| f != "latency");
    }
    if let Some(Value::Array(points)) = o.get_mut("points") {
        points.retain(|p| p["kind"] != "threshold");
        for p in points.iter_mut() {
            let timed = matches!(
                p["kind"].as_str(),
                Some("syn-ack" | "handshake-done" | "first-data")
            );
            if let Some(p) = p.as_object_mut() {
                p.remove("t_ns");
                if timed {
                    p.remove("arg");
                }
            }
        }
    }
}

/// One capture through the lab; returns a description of what differs (empty: equal).
fn live_equals_replay(lab: &Lab, dir: &Path, capture: &str) -> Vec<String> {
    let pcap = corpus(capture);
    let (frames, largest) = frames_of(&pcap).expect("an Ethernet capture");
    assert!(largest <= MTU + 18, "{capture}: frames larger than the MTU");
    let cap_dir = dir.join(capture.trim_end_matches(".pcap"));
    std::fs::create_dir_all(&cap_dir).expect("dir");
    let config = cap_dir.join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[table]\ncapacity = 16384\n\n[ring]\ndir = {dir:?}\n\n[[capture]]\ninterface = {if:?}\n\
             queues = [0]\n",
            dir = cap_dir.to_string_lossy(),
            if = lab.var("CAP_IF"),
        ),
    )
    .expect("config");
    let live_log = cap_dir.join("live.log");
    let stats_path = cap_dir.join("live.stats.json");
    let out = cap_dir.join("run.out");
    let err = cap_dir.join("run.err");
    let child = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--record", "all", "--log"])
        .arg(&live_log)
        .arg("--stats")
        .arg(&stats_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .spawn()
        .expect("conntrail run starts");
    let mut running = Running { child, out, err };
    wait_for(
        "conntrail run to open its socket",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!(
                    "conntrail run exited early ({status}):\n{}",
                    running.output()
                );
            }
            StatsFile::read(&stats_path)
                .ok()
                .filter(|s| s.state == RunState::Running)
        },
    );

    let replayed = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.var("GEN_NS"),
            "tcpreplay",
            "--topspeed",
            "-q",
            "-i",
        ])
        .arg(lab.var("GEN_IF"))
        .arg(&pcap)
        .output()
        .expect("tcpreplay runs (scripts/setup.sh installs it)");
    assert!(
        replayed.status.success(),
        "tcpreplay {capture}: {}",
        String::from_utf8_lossy(&replayed.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = StatsFile::read(&stats_path).expect("stats file");
        let t = s.total();
        if t.packets >= frames || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let t = stats.total();
    assert_eq!(
        t.packets,
        frames,
        "{capture}: frames counted by conntrail run (kernel: {:?})\n{}",
        t.kernel,
        running.output()
    );

    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_for("conntrail run to stop", Duration::from_secs(30), || {
        running.child.try_wait().expect("wait")
    });
    assert!(
        status.success(),
        "conntrail run: {status}\n{}",
        running.output()
    );
    let summary = running.output();
    assert!(
        summary.contains("rx dropped 0, rx ring full 0"),
        "{summary}"
    );
    let last = StatsFile::read(&stats_path).expect("final stats file");
    assert_eq!(last.state, RunState::Stopped);
    assert_eq!(last.total().packets, frames);

    let replay_log = cap_dir.join("replay.log");
    let out = Command::new(bin())
        .arg("replay")
        .arg("--config")
        .arg(&config)
        .args(["--record", "all", "--log"])
        .arg(&replay_log)
        .arg(&pcap)
        .output()
        .expect("conntrail replay runs");
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let live = records(&live_log);
    let replay = records(&replay_log);
    assert!(!replay.is_empty(), "{capture}: replay recorded nothing");
    let mut diffs = Vec::new();
    for (key, r) in &replay {
        match live.get(key) {
            None => diffs.push(format!("{capture}: only in replay: {key}")),
            Some(l) if l != r => diffs.push(format!(
                "{capture}: {key}\n  replay: {}\n  live:   {}",
                r.join("\n          "),
                l.join("\n          ")
            )),
            Some(_) => {}
        }
    }
    for key in live.keys().filter(|k| !replay.contains_key(*k)) {
        diffs.push(format!("{capture}: only live: {key}"));
    }
    diffs
}

#[test]
fn live_capture_records_what_replay_records() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED live_capture_records_what_replay_records: {why}");
        eprintln!("SKIPPED live_capture_records_what_replay_records: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("conntrail-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let lab = Lab::up(&format!("ct{}", std::process::id() % 100_000_000));
    let mut diffs = Vec::new();
    for capture in CAPTURES {
        diffs.extend(live_equals_replay(&lab, &dir, capture));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
