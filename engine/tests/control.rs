//! The control socket of a live run, end to end: runtime watches, the sessions view,
//! reload and the metrics endpoint of `conntrail run` on a veth.
//!
//! Needs root (network namespaces, veth, AF_XDP). Skipped, with a message saying so, when
//! not root or when the kernel has no AF_XDP; it fails on anything else.
//!
//! One lab (`scripts/lab.sh`, names made unique with the pid, removed by a Drop guard even
//! when the test fails) and one `conntrail run --metrics 127.0.0.1:0` on its capture end,
//! recording anomalous connections only. The test writes its own captures of TCP
//! connections between addresses of the benchmarking range (they never leave the veth) and
//! sends them with `tcpreplay --topspeed` from the lab's namespace:
//!
//! 1. `watch add "server port 8080" --for 3s`; five clean connections to port 8080, five to
//!    9090, three held open (handshake and data, no FIN) to 7070. `watch list` counts an
//!    evaluation per new connection and five matches; `sessions "port 7070"` lists the three
//!    open ones with their packets and bytes each way; `session ID` shows one with its
//!    tracking points.
//! 2. After the watch expired, five more clean connections to 8080.
//! 3. Reload: a connection refused by a RST (kept: flag `error`); a bad file, refused by
//!    `conntrail reload` and by SIGHUP with its file, line and key; another refused
//!    connection (still kept: the old thresholds stay); a good file that switches the RST
//!    triggers off; a third refused connection (not kept).
//! 4. The metrics endpoint, scraped and parsed: every sample line is `name{labels} value`
//!    under a `# TYPE`, and the packet count is the stats file's.
//!
//! After SIGTERM the log must hold, flagged `user`, exactly the five connections of step 1
//! to 8080; nothing of 9090 or of step 2; the first two refused connections, not the third.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use engine::observe::stats::{RunState, StatsFile};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use serde_json::Value;

mod common;
use common::bin;
use common::lab::{skip_reason, wait_for, Lab, Running};

/// One TCP segment of a connection between `client` and `server` (last octets of
/// 198.18.1.0/24 and 198.18.2.0/24).
struct Seg {
    from_client: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: usize,
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const RST_ACK: u8 = 0x14;

fn seg(from_client: bool, flags: u8, seq: u32, ack: u32, payload: usize) -> Seg {
    Seg {
        from_client,
        flags,
        seq,
        ack,
        payload,
    }
}

/// A clean connection: handshake, a request and a response, FIN both ways.
fn clean() -> Vec<Seg> {
    let mut s = held_open();
    s.extend([
        seg(true, FIN_ACK, 1011, 5021, 0),
        seg(false, FIN_ACK, 5021, 1012, 0),
        seg(true, ACK, 1012, 5022, 0),
    ]);
    s
}

/// Handshake, a 10-byte request and a 20-byte response; no FIN.
fn held_open() -> Vec<Seg> {
    vec![
        seg(true, SYN, 1000, 0, 0),
        seg(false, SYN | ACK, 5000, 1001, 0),
        seg(true, ACK, 1001, 5001, 0),
        seg(true, PSH_ACK, 1001, 5001, 10),
        seg(false, PSH_ACK, 5001, 1011, 20),
    ]
}

/// A SYN answered by RST-ACK (conn_state REJ).
fn refused() -> Vec<Seg> {
    vec![seg(true, SYN, 1000, 0, 0), seg(false, RST_ACK, 0, 1001, 0)]
}

/// A connection: client address octet and port, server port, segments.
type Conn = (u8, u16, u16, Vec<Seg>);

/// Writes the connections, one after the other, as an Ethernet capture; returns the number
/// of frames.
fn write_pcap(path: &Path, lab: &Lab, conns: &[Conn]) -> u64 {
    let mac = |s: &str| -> [u8; 6] {
        let mut m = [0u8; 6];
        for (b, part) in m.iter_mut().zip(s.split(':')) {
            *b = u8::from_str_radix(part, 16).expect("a MAC address");
        }
        m
    };
    let (cap_mac, gen_mac) = (mac(lab.var("CAP_MAC")), mac(lab.var("GEN_MAC")));
    let header = PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: 65535,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
    };
    let file = std::fs::File::create(path).expect("pcap file");
    let mut w = PcapWriter::with_header(file, header).expect("pcap header");
    let mut frames = 0u64;
    for (client, cport, sport, segs) in conns {
        let (c_ip, s_ip) = ([198, 18, 1, *client], [198, 18, 2, 1]);
        for s in segs {
            let (src, dst, sp, dp) = if s.from_client {
                (c_ip, s_ip, *cport, *sport)
            } else {
                (s_ip, c_ip, *sport, *cport)
            };
            let mut f = Vec::new();
            f.extend_from_slice(&cap_mac);
            f.extend_from_slice(&gen_mac);
            f.extend_from_slice(&[0x08, 0x00]);
            let total = (20 + 20 + s.payload) as u16;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&dst);
            let mut sum = 0u32;
            for pair in ip.chunks(2) {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&sp.to_be_bytes());
            f.extend_from_slice(&dp.to_be_bytes());
            f.extend_from_slice(&s.seq.to_be_bytes());
            f.extend_from_slice(&s.ack.to_be_bytes());
            f.extend_from_slice(&[0x50, s.flags, 0xff, 0xff, 0, 0, 0, 0]);
            f.extend(std::iter::repeat_n(b'x', s.payload));
            frames += 1;
            w.write_packet(&PcapPacket::new(
                Duration::from_micros(frames * 100),
                f.len() as u32,
                &f,
            ))
            .expect("pcap packet");
        }
    }
    frames
}

/// `conntrail ARGS --log LOG`, with its output.
fn ctl(log: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--log")
        .arg(log)
        .output()
        .expect("conntrail runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until the stats file counts at least `frames` packets, and until the flows of
/// a clean close have aged out (`tcp_closed_s` of the config).
fn wait_frames(stats: &Path, frames: u64) {
    wait_for("the frames to be counted", Duration::from_secs(15), || {
        StatsFile::read(stats)
            .ok()
            .filter(|s| s.total().packets >= frames)
    });
    std::thread::sleep(Duration::from_millis(400));
}

/// GET /metrics, the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connects to the metrics endpoint");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("writes");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reads");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Parses a Prometheus text exposition: (name, labels) -> value; every sample line must
/// belong to the family of the last `# TYPE`.
fn parse_metrics(body: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut family = String::new();
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            family = parts.next().expect("a name").to_string();
            let kind = parts.next().expect("a type");
            assert!(kind == "counter" || kind == "gauge", "{line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = series.split_once('{').expect("labels");
        assert_eq!(name, family, "{line}");
        let labels = labels.strip_suffix('}').expect("closing brace");
        let mut map = BTreeMap::new();
        for pair in labels.split(',') {
            let (k, v) = pair.split_once('=').expect("k=v");
            map.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        samples.insert((name.to_string(), map), value);
    }
    samples
}

fn config_text(dir: &Path, lab: &Lab, extra: &str) -> String {
    format!(
        "[table]\ncapacity = 1024\n\n[timeouts]\ntcp_closed_s = 0.2\n\n[ring]\ndir = {dir:?}\n\n\
         [[capture]]\ninterface = {if:?}\nqueues = [0]\n{extra}",
        dir = dir.to_string_lossy(),
        if = lab.var("CAP_IF"),
    )
}

#[test]
fn watches_sessions_reload_and_metrics_of_a_live_run() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED watches_sessions_reload_and_metrics_of_a_live_run: {why}");
        eprintln!("SKIPPED watches_sessions_reload_and_metrics_of_a_live_run: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("conntrail-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let lab = Lab::up(&format!("cc{}", std::process::id() % 100_000_000), &[]);
    let config = dir.join("live.toml");
    std::fs::write(&config, config_text(&dir, &lab, "")).expect("config");
    let log = dir.join("live.log");
    let stats = dir.join("live.log.stats.json");
    let (mut running, line) = Running::start(
        &dir,
        &config,
        &log,
        &["--metrics", "127.0.0.1:0"],
        &[("RUST_LOG", "info")],
    );
    let metrics_addr = line
        .split("metrics http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the metrics address")
        .to_string();
    assert!(
        running
            .stdout()
            .contains(&format!("control {}", dir.join("live.log.ctl").display())),
        "{}",
        running.output()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("live.log.ctl"))
            .expect("the control socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A watch refused: `reason` is not known when a connection starts.
    let o = ctl(&log, &["watch", "add", "port 8080 and reason=tcp-fin"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("not known when a connection starts"),
        "{}",
        text(&o)
    );

    // Step 1.
    let o = ctl(&log, &["watch", "add", "server port 8080", "--for", "3s"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("watch 1 active on 1 of 1 workers for 3.000 s"),
        "{}",
        text(&o)
    );
    let watched_at = Instant::now();
    let mut conns: Vec<Conn> = Vec::new();
    for i in 0..5u16 {
        conns.push((10, 41000 + i, 8080, clean()));
        conns.push((11, 42000 + i, 9090, clean()));
    }
    for i in 0..3u16 {
        conns.push((12, 43000 + i, 7070, held_open()));
    }
    let step1 = dir.join("step1.pcap");
    let mut frames = write_pcap(&step1, &lab, &conns);
    lab.send(&step1);
    wait_frames(&stats, frames);

    let o = ctl(&log, &["watch", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    let row = listed
        .lines()
        .find(|l| l.trim_start().starts_with("1 ") && l.ends_with("server port 8080"))
        .unwrap_or_else(|| panic!("watch 1 in\n{listed}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // id, date, time, UTC?, evaluations, matches, ns/eval, expression...
    let numbers: Vec<u64> = cols.iter().filter_map(|c| c.parse().ok()).collect();
    assert!(
        numbers.windows(2).any(|w| w == [13, 5]),
        "13 evaluations and 5 matches expected:\n{listed}"
    );

    // `conntrail stats` shows the watch and its cost too.
    let o = Command::new(bin())
        .arg("stats")
        .arg(&log)
        .output()
        .expect("conntrail stats runs");
    let shown = text(&o);
    assert!(
        o.status.success() && shown.contains("watches:") && shown.contains(row),
        "{shown}"
    );

    let o = ctl(&log, &["sessions", "port 7070", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let sessions: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON session"))
        .collect();
    assert_eq!(sessions.len(), 3, "{}", text(&o));
    let clients: BTreeSet<&str> = sessions
        .iter()
        .filter_map(|s| s["client"].as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "198.18.1.12:43000",
        "198.18.1.12:43001",
        "198.18.1.12:43002",
    ]
    .into();
    assert_eq!(clients, want);
    for s in &sessions {
        assert_eq!(s["server"], "198.18.2.1:7070");
        assert_eq!(s["state"], "S1");
        assert_eq!(
            (s["c2s_pkts"].as_u64(), s["s2c_pkts"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(
            (s["c2s_bytes"].as_u64(), s["s2c_bytes"].as_u64()),
            (Some(3 * 54 + 10), Some(2 * 54 + 20))
        );
        assert_eq!(s["user"], false);
    }
    // The plain table lists them too (and every connection still open), up to a limit.
    let o = ctl(&log, &["sessions"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 open connection(s)\n"), "{}", text(&o));
    let o = ctl(&log, &["sessions", "--limit", "2"]);
    assert!(
        text(&o).contains("3 open connection(s), the first 2 shown"),
        "{}",
        text(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 4);

    let id = sessions[0]["id"].as_u64().expect("an id").to_string();
    let o = ctl(&log, &["session", &id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let one: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(one["open"], true);
    let kinds: Vec<&str> = one["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["kind"].as_str())
        .collect();
    assert!(
        kinds.starts_with(&["syn", "syn-ack", "handshake-done"]),
        "{kinds:?}"
    );
    let o = ctl(&log, &["session", "12345"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not open"), "{}", text(&o));

    // Step 2: after expiry.
    let expiry = Duration::from_millis(3300);
    if let Some(left) = expiry.checked_sub(watched_at.elapsed()) {
        std::thread::sleep(left);
    }
    let o = ctl(&log, &["watch", "list"]);
    assert!(text(&o).contains("no active watch"), "{}", text(&o));
    let conns: Vec<Conn> = (0..5u16).map(|i| (13, 44000 + i, 8080, clean())).collect();
    let step2 = dir.join("step2.pcap");
    frames += write_pcap(&step2, &lab, &conns);
    lab.send(&step2);
    wait_frames(&stats, frames);

    // Step 3: reload.
    let send_refused = |port: u16, frames: &mut u64| {
        let p = dir.join(format!("refused{port}.pcap"));
        *frames += write_pcap(&p, &lab, &[(14, port, 6060, refused())]);
        lab.send(&p);
        wait_frames(&stats, *frames);
    };
    send_refused(45001, &mut frames);
    let good = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        config_text(&dir, &lab, "\n[triggers.latency]\nsyn_synack_ms = -5\n"),
    )
    .expect("bad config");
    let bad_line = std::fs::read_to_string(&config)
        .expect("config")
        .lines()
        .position(|l| l.starts_with("syn_synack_ms"))
        .expect("the bad line")
        + 1;
    let o = ctl(&log, &["reload"]);
    assert!(!o.status.success(), "{}", text(&o));
    let refusal = text(&o);
    assert!(
        refusal.contains(&format!(
            "{} line {bad_line}: key `syn_synack_ms`",
            config.display()
        )) && refusal.contains("the running configuration is kept"),
        "{refusal}"
    );
    running.signal(libc::SIGHUP);
    wait_for("the SIGHUP refusal", Duration::from_secs(5), || {
        running.stderr().contains("SIGHUP:").then_some(())
    });
    assert!(
        running
            .stderr()
            .contains(&format!("line {bad_line}: key `syn_synack_ms`")),
        "{}",
        running.output()
    );
    send_refused(45002, &mut frames);
    std::fs::write(
        &config,
        format!("{good}\n[triggers.error]\nrst_server = false\nrejected = false\n"),
    )
    .expect("good config");
    let o = ctl(&log, &["reload"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("thresholds reloaded on 1 of 1 workers"),
        "{}",
        text(&o)
    );
    // A new context needs a restart: said, not applied; the thresholds stay as reloaded.
    std::fs::write(
        &config,
        format!(
            "{good}\n[triggers.error]\nrst_server = false\nrejected = false\n\n\
             [[context]]\nname = \"later\"\nvlans = [7]\n"
        ),
    )
    .expect("config with a context");
    let o = ctl(&log, &["reload"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(
            "thresholds unchanged; [[context]] names, interfaces, VLANs or logs changed but \
             need a restart (not applied)"
        ),
        "{}",
        text(&o)
    );
    send_refused(45003, &mut frames);

    // Step 4: metrics (the workers publish once a second).
    let metrics = wait_for(
        "metrics to count every frame",
        Duration::from_secs(5),
        || {
            let m = parse_metrics(&scrape(&metrics_addr));
            let packets: f64 = m
                .iter()
                .filter(|((n, _), _)| n == "conntrail_packets_total")
                .map(|(_, v)| *v)
                .sum();
            let counted = StatsFile::read(&stats).ok()?.total().packets;
            (packets >= frames as f64 && packets == counted as f64).then_some(m)
        },
    );
    let get = |name: &str, label: Option<(&str, &str)>| -> f64 {
        metrics
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && l.get("worker").map(String::as_str) == Some("0")
                    && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, v)| *v)
            .sum()
    };
    // 10 + 5 clean ones closed by FIN, 3 open, 3 refused.
    assert_eq!(get("conntrail_flows_created_total", None), 21.0);
    assert_eq!(get("conntrail_flows_open", None), 3.0);
    assert_eq!(
        get("conntrail_flows_closed_total", Some(("reason", "tcp-fin"))),
        15.0
    );
    assert_eq!(
        get("conntrail_drops_total", Some(("cause", "ring-full"))),
        0.0
    );
    assert!(get("conntrail_bytes_total", None) > 0.0);
    // The recorder's count of records written catches up with the records handed to it.
    let handed = get("conntrail_records_total", None);
    assert!(
        handed >= 3.0,
        "the refused connections are recorded: {handed}"
    );
    wait_for("the recorder to write them", Duration::from_secs(5), || {
        let m = parse_metrics(&scrape(&metrics_addr));
        let value = |name: &str| {
            m.iter()
                .filter(|((n, _), _)| n == name)
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        let written = value("conntrail_records_written_total");
        let default = m
            .iter()
            .find(|((n, l), _)| {
                n == "conntrail_context_records_written_total"
                    && l.get("context").map(String::as_str) == Some("default")
            })
            .map(|(_, v)| *v);
        (written >= handed && default == Some(written)).then_some(())
    });

    // The end: what was recorded.
    running.stop();
    assert!(!dir.join("live.log.ctl").exists(), "the socket is removed");
    let last = StatsFile::read(&stats).expect("final stats");
    assert_eq!(last.state, RunState::Stopped);

    let o = Command::new(bin())
        .args(["show", "--json"])
        .arg(&log)
        .output()
        .expect("show runs");
    assert!(o.status.success(), "{}", text(&o));
    let mut user = BTreeSet::new();
    let mut others = BTreeSet::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let r: Value = serde_json::from_str(line).expect("a record");
        let client = format!("{}:{}", r["client"]["ip"], r["client"]["port"]).replace('"', "");
        let server_port = r["server"]["port"].as_u64().expect("a port");
        let flags: Vec<&str> = r["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if flags.contains(&"user") {
            user.insert((client, server_port));
        } else {
            others.insert((client, server_port));
        }
    }
    let want_user: BTreeSet<(String, u64)> = (0..5)
        .map(|i| (format!("198.18.1.10:{}", 41000 + i), 8080))
        .collect();
    assert_eq!(user, want_user);
    let want_others: BTreeSet<(String, u64)> = [
        ("198.18.1.14:45001".to_string(), 6060),
        ("198.18.1.14:45002".to_string(), 6060),
    ]
    .into();
    assert_eq!(others, want_others);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--user nobody`: once its socket is open the engine runs as nobody in every thread with
/// no capability, and still records, answers on its control socket, stops cleanly and
/// removes its files.
#[test]
fn a_run_that_drops_to_an_unprivileged_user_keeps_recording() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED a_run_that_drops_to_an_unprivileged_user_keeps_recording: {why}");
        eprintln!("SKIPPED a_run_that_drops_to_an_unprivileged_user_keeps_recording: {why}");
        return;
    }
    let Ok(nobody) = engine::privilege::lookup("nobody") else {
        println!(
            "SKIPPED a_run_that_drops_to_an_unprivileged_user_keeps_recording: no user nobody"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("conntrail-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The log's directory belongs to the user on an appliance; here anyone may write.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    // The ring directory is the user's: conntrail makes it for nobody (0700), in a parent
    // nobody else can change.
    let rings = std::env::temp_dir().join(format!("conntrail-user-rings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rings);
    let lab = Lab::up(&format!("cu{}", std::process::id() % 100_000_000), &[]);
    let config = dir.join("live.toml");
    std::fs::write(&config, config_text(&rings, &lab, "")).expect("config");
    let log = dir.join("live.log");
    let stats = dir.join("live.log.stats.json");
    let (mut running, _) = Running::start(&dir, &config, &log, &["--user", "nobody"], &[]);
    let made = std::fs::metadata(&rings).expect("the ring directory");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&made),
        nobody.uid,
        "the ring directory is the user's"
    );
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&made) & 0o7777, 0o700);
    assert!(
        running
            .stdout()
            .contains("running as user nobody, with no capability"),
        "{}",
        running.output()
    );
    // Every thread: all user ids nobody's, no capability in any set.
    let tasks = Path::new("/proc")
        .join(running.child.id().to_string())
        .join("task");
    let mut threads = 0;
    for task in std::fs::read_dir(&tasks).expect("threads") {
        let status =
            std::fs::read_to_string(task.expect("a thread").path().join("status")).expect("status");
        threads += 1;
        for line in status.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("Uid:") => {
                    let ids: Vec<u32> = fields.filter_map(|f| f.parse().ok()).collect();
                    assert_eq!(ids, vec![nobody.uid; 4], "{line}");
                }
                Some("CapPrm:" | "CapEff:" | "CapAmb:") => {
                    assert_eq!(fields.next(), Some("0000000000000000"), "{line}");
                }
                _ => {}
            }
        }
    }
    assert!(threads >= 4, "workers, recorder, stats and control threads");

    let pcap = dir.join("refused.pcap");
    let frames = write_pcap(&pcap, &lab, &[(14, 45001, 6060, refused())]);
    lab.send(&pcap);
    wait_frames(&stats, frames);
    let o = ctl(&log, &["watch", "list"]);
    assert!(o.status.success(), "{}", text(&o));

    running.stop();
    let last = StatsFile::read(&stats).expect("final stats");
    assert_eq!(last.state, RunState::Stopped);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ring") || n.ends_with(".ctl"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let rings_left = std::fs::read_dir(&rings).expect("ring dir").count();
    assert_eq!(rings_left, 0, "the run left files in its ring directory");
    let _ = std::fs::remove_dir_all(&rings);
    let o = Command::new(bin())
        .args(["show", "--json"])
        .arg(&log)
        .output()
        .expect("show runs");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.contains("\"port\":45001"), "{shown}");
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
