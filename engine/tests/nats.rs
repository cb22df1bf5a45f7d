//! Export to a real NATS JetStream and queries of the whole fleet: `nats-server` (Debian
//! package `nats-server`) is started on free loopback ports with a temporary store, and
//! killed at the end of each test, even when it fails. Without `nats-server` the tests say
//! so and pass.
//!
//! - A corpus capture replayed with `--record all --export` by two appliances: every local
//!   record is in the stream exactly once, `query --nats` gives the same records as `query`
//!   on the log, and `--host` narrows to one appliance.
//! - The server is killed in the middle of an export: the replay finishes its log while the
//!   server is down (the engine does not wait for it), and once the server is back the
//!   export catches up from the log: every record exactly once.
//! - A 3-node cluster (stream replicas 3): the stream's leader is killed during an export;
//!   nothing is lost and nothing is stored twice.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{conntrail, s, text};

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("conntrail-nats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `nats-server` program: on the PATH, else where Debian installs it.
fn nats_server() -> &'static str {
    let on_path = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        "nats-server"
    } else {
        "/usr/sbin/nats-server"
    }
}

fn nats_server_installed() -> bool {
    let found = Command::new(nats_server())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "skipping: nats-server is not installed (Debian: apt-get install nats-server; \
             scripts/setup.sh does it)"
        );
    }
    found
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One `nats-server` process with its configuration file; killed when dropped.
struct Node {
    name: String,
    config: PathBuf,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).expect("server log");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} does not listen", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `/jsz` of the monitoring port, with the streams.
    fn jsz(&self) -> Option<Value> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.monitor_port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        conn.write_all(b"GET /jsz?accounts=true&streams=true HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` JetStream servers (a cluster when `n > 1`), each with its own store in `dir`.
fn start_servers(dir: &Path, n: usize) -> Vec<Node> {
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, route_port) in routes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let port = free_port();
        let monitor_port = free_port();
        let store = dir.join(format!("store-{name}"));
        let mut conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
             jetstream {{ store_dir: {:?} }}\n",
            s(&store)
        );
        if n > 1 {
            let all: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            conf.push_str(&format!(
                "cluster {{ name: fleet, listen: 127.0.0.1:{route_port}, routes: [{}] }}\n",
                all.join(", ")
            ));
        }
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(&config, conf).expect("server config");
        nodes.push(Node {
            name,
            config,
            port,
            monitor_port,
            child: None,
        });
    }
    for node in &mut nodes {
        node.start();
    }
    nodes
}

fn corpus(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpus/real")
        .join(name);
    if !p.is_file() {
        eprintln!("skipping: {} is missing", p.display());
        return None;
    }
    Some(p)
}

/// A configuration for one appliance: its ring directory, host name and export keys.
fn appliance_config(dir: &Path, host: &str, export: &str) -> PathBuf {
    let path = dir.join(format!("{host}.toml"));
    std::fs::write(
        &path,
        format!(
            "[ring]\ndir = {:?}\n\n[export]\nhost = \"{host}\"\n{export}",
            s(dir)
        ),
    )
    .expect("config");
    path
}

/// Every record of `query ARGS --json`, keyed by record id, without the fields that name
/// where it was read (`log`, `host`). Panics on a repeated id.
fn records_by_id(args: &[&str]) -> BTreeMap<u64, Value> {
    let mut full = vec!["query"];
    full.extend_from_slice(args);
    full.push("--json");
    let out = conntrail(&full);
    assert!(
        out.status.success(),
        "query {args:?} failed: {}",
        text(&out.stderr)
    );
    let mut by_id = BTreeMap::new();
    for line in text(&out.stdout).lines() {
        let mut doc: Value = serde_json::from_str(line).expect("a JSON line");
        let obj = doc.as_object_mut().expect("an object");
        obj.remove("log");
        obj.remove("host");
        let id = doc["id"].as_u64().expect("id");
        assert!(
            by_id.insert(id, doc).is_none(),
            "record {id} is in the results of {args:?} twice"
        );
    }
    by_id
}

#[test]
fn replayed_records_are_in_the_stream_exactly_once_and_query_reads_the_fleet() {
    if !nats_server_installed() {
        return;
    }
    let (Some(nmap), Some(tls)) = (
        corpus("zeek_nmap-vsn.pcap"),
        corpus("suricata_tls_tls-subjectaltname.pcap"),
    ) else {
        return;
    };
    let dir = TempDir::new("fleet");
    let servers = start_servers(&dir.0, 1);
    let url = servers[0].url();
    let mut local = BTreeMap::new();
    for (host, capture) in [("box1", &nmap), ("box2", &tls)] {
        let cfg = appliance_config(&dir.0, host, "");
        let log = dir.0.join(format!("{host}.log"));
        let out = conntrail(&[
            "replay",
            "--config",
            s(&cfg),
            "--record",
            "all",
            "--export",
            &url,
            "--log",
            s(&log),
            s(capture),
        ]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        assert!(stdout.contains("; 0 pending"), "{stdout}");
        let records = records_by_id(&[s(&log)]);
        assert!(records.len() > 10, "{host}: {} records", records.len());
        local.insert(host, (log, records));
    }
    for (host, (log, records)) in &local {
        // Same records, same fields, each once, from the stream as from the log.
        let remote = records_by_id(&["--nats", &url, "--host", host]);
        assert_eq!(&remote, records, "{host}: stream and log differ");
        // The table names each record HOST:LOG:ID.
        let out = conntrail(&["query", "--nats", &url, "--host", host, "--limit", "1"]);
        let table = text(&out.stdout);
        let reference = table
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().last())
            .expect("one record line");
        let id = reference
            .strip_prefix(&format!("{host}:{}:", s(log)))
            .and_then(|id| id.parse::<u64>().ok())
            .expect("HOST:LOG:ID");
        assert!(records.contains_key(&id), "{table}");
    }
    // The whole fleet: both appliances; an expression selects the same on both sides.
    let everything = conntrail(&["query", "--nats", &url, "--count-by", "proto", "--json"]);
    let counts: Value = serde_json::from_slice(&everything.stdout).expect("counts");
    let total: usize = local.values().map(|(_, r)| r.len()).sum();
    assert_eq!(counts["total"].as_u64(), Some(total as u64), "{counts}");
    for host in ["box1", "box2"] {
        let (log, _) = &local[host];
        let expr = "reason=tcp-rst-server or state=S0";
        let here = records_by_id(&[s(log), expr]);
        let there = records_by_id(&["--nats", &url, "--host", host, "--context", "default", expr]);
        assert_eq!(here, there, "{host}: {expr}");
    }
    // show and diff on records from the stream, named HOST:LOG and HOST:LOG:ID, print what
    // they print on the log.
    let (log, records) = &local["box2"];
    let ids: Vec<String> = records.keys().take(2).map(u64::to_string).collect();
    let origin = format!("box2:{}", s(log));
    let here = conntrail(&["show", s(log), &ids[0], &ids[1], "--color", "never"]);
    let there = conntrail(&[
        "show", &origin, &ids[0], &ids[1], "--color", "never", "--nats", &url,
    ]);
    assert!(there.status.success(), "{}", text(&there.stderr));
    assert!(!here.stdout.is_empty());
    assert_eq!(text(&there.stdout), text(&here.stdout));
    let refs_here = [
        format!("{}:{}", s(log), ids[0]),
        format!("{}:{}", s(log), ids[1]),
    ];
    let refs_there = [
        format!("{origin}:{}", ids[0]),
        format!("{origin}:{}", ids[1]),
    ];
    let here = conntrail(&["diff", &refs_here[0], &refs_here[1], "--json"]);
    let there = conntrail(&[
        "diff",
        &refs_there[0],
        &refs_there[1],
        "--json",
        "--nats",
        &url,
    ]);
    assert!(there.status.success(), "{}", text(&there.stderr));
    let strip = |out: &Output| {
        let mut v: Value = serde_json::from_slice(&out.stdout).expect("diff JSON");
        // The references name where each record was read; everything else must agree.
        for side in ["baseline", "problem"] {
            if let Some(o) = v.get_mut(side).and_then(Value::as_object_mut) {
                o.remove("ref");
            }
        }
        v
    };
    assert_eq!(strip(&there), strip(&here));
    // Exporting a log again sends nothing: its position says it is all there.
    let (log, _) = &local["box1"];
    let again = conntrail(&["export", s(log), "--nats", &url]);
    assert!(
        text(&again.stdout).contains("export: 0 records"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(
        records_by_id(&["--nats", &url, "--host", "box1"]).len(),
        local["box1"].1.len()
    );
}

/// Lines of a child's stdout as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Records the stream has acknowledged, from the exporter's position file.
fn acknowledged(log: &Path) -> u64 {
    let mut path = log.as_os_str().to_owned();
    path.push(".export.json");
    std::fs::read(PathBuf::from(path))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["records"].as_u64())
        .unwrap_or(0)
}

/// Waits until the exporter of `log` has had `n` records acknowledged.
fn wait_acknowledged(log: &Path, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let acked = acknowledged(log);
        if acked >= n {
            return acked;
        }
        assert!(
            Instant::now() < deadline,
            "only {acked} records acknowledged"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A replay with export, in the background, with its stdout lines.
struct Replay {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Replay {
    fn start(cfg: &Path, servers: &str, log: &Path, capture: &Path) -> Replay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_conntrail"))
            .args(["replay", "--config", s(cfg), "--record", "all"])
            .args(["--export", servers, "--log", s(log), s(capture)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("replay starts");
        let lines = lines_of(&mut child);
        Replay {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no `{prefix}` line; so far: {:?}", self.seen),
            }
        }
    }

    /// Waits for the exit; returns success and stdout and stderr as text.
    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().expect("replay ends");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        // Every line up to the end of the output (the reading thread ends there).
        self.seen.extend(self.lines.iter());
        let output = format!("{status}\n{}\n{err}", self.seen.join("\n"));
        (status.success(), output)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A capture with `flows` connections (every one recorded with `--record all`).
fn synth_capture(dir: &Path, flows: u64) -> PathBuf {
    let pcap = dir.join("synth.pcap");
    let out = conntrail(&[
        "synth",
        "-o",
        s(&pcap),
        "--flows",
        &flows.to_string(),
        "--packets",
        &(flows * 4).to_string(),
        "--seed",
        "8",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    pcap
}

/// The ids in the log, each once.
fn log_ids(log: &Path) -> HashSet<u64> {
    let ids: Vec<u64> = records_by_id(&[s(log)]).into_keys().collect();
    ids.into_iter().collect()
}

#[test]
fn the_export_catches_up_after_the_server_was_down_and_the_engine_did_not_wait() {
    if !nats_server_installed() {
        return;
    }
    const FLOWS: u64 = 40_000;
    let dir = TempDir::new("outage");
    let mut servers = start_servers(&dir.0, 1);
    let url = servers[0].url();
    let capture = synth_capture(&dir.0, FLOWS);
    let cfg = appliance_config(&dir.0, "box1", "drain_timeout_s = 40.0\n");
    let log = dir.0.join("box1.log");
    let mut replay = Replay::start(&cfg, &url, &log, &capture);
    // Mid-export: some records are in the stream, most are not.
    let acked = wait_acknowledged(&log, 1000);
    servers[0].kill();
    assert!(
        acked < FLOWS,
        "the export finished before the server was stopped"
    );
    // With the server down, the engine finishes: all packets replayed, every record in the
    // log.
    let records = replay.wait_line("records: ", Duration::from_secs(30));
    assert_eq!(records, format!("records: {FLOWS}"));
    replay.wait_line("log: ", Duration::from_secs(10));
    let in_log = log_ids(&log);
    assert_eq!(
        in_log.len() as u64,
        FLOWS,
        "the log is complete while the server is down"
    );
    assert!(
        acknowledged(&log) < FLOWS,
        "nothing can be acknowledged while the server is down"
    );
    std::thread::sleep(Duration::from_millis(500));
    servers[0].start();
    let (ok, output) = replay.finish();
    assert!(ok, "{output}");
    assert!(output.contains("; 0 pending"), "{output}");
    assert!(
        output.contains("sending again from the log"),
        "the exporter saw the outage: {output}"
    );
    // Exactly once: every record of the log, no other, none twice (records_by_id checks).
    let in_stream = records_by_id(&["--nats", &url]);
    assert_eq!(in_stream.len() as u64, FLOWS);
    assert_eq!(in_stream.into_keys().collect::<HashSet<_>>(), in_log);
}

/// The name of the server that leads the stream `CONNTRAIL`, asked of any node that answers.
fn stream_leader(nodes: &[Node]) -> Option<String> {
    nodes.iter().filter_map(Node::jsz).find_map(|jsz| {
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|st| st["name"] == "CONNTRAIL")
            .and_then(|st| st["cluster"]["leader"].as_str().map(String::from))
    })
}

#[test]
fn a_cluster_loses_nothing_when_the_stream_leader_dies_during_an_export() {
    if !nats_server_installed() {
        return;
    }
    const FLOWS: u64 = 30_000;
    let dir = TempDir::new("cluster");
    let mut nodes = start_servers(&dir.0, 3);
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let urls = urls.join(",");
    let capture = synth_capture(&dir.0, FLOWS);
    let cfg = appliance_config(&dir.0, "box1", "replicas = 3\ndrain_timeout_s = 40.0\n");
    let log = dir.0.join("box1.log");
    let replay = Replay::start(&cfg, &urls, &log, &capture);
    let acked = wait_acknowledged(&log, 1000);
    let leader = stream_leader(&nodes).expect("the stream has a leader");
    let victim = nodes
        .iter_mut()
        .find(|n| n.name == leader)
        .expect("the leader is one of ours");
    victim.kill();
    assert!(
        acked < FLOWS,
        "the export finished before a node was killed"
    );
    let (ok, output) = replay.finish();
    assert!(ok, "{output}");
    assert!(output.contains("; 0 pending"), "{output}");
    let survivors: Vec<String> = nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(Node::url)
        .collect();
    let in_stream = records_by_id(&["--nats", &survivors.join(",")]);
    assert_eq!(in_stream.len() as u64, FLOWS);
    assert_eq!(in_stream.into_keys().collect::<HashSet<_>>(), log_ids(&log));
}
