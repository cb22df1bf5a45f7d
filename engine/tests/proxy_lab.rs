//! `conntrail correlate` through real reverse proxies: HAProxy and nginx from Debian, each
//! between a client and a small back end in network namespaces of our own
//! (`scripts/proxy-lab.py`). The back end answers, answers slowly, resets, hangs past the
//! proxy's timeout and closes early; the client gives up on some requests, with RST or
//! FIN. Both sides of the proxy are captured with tcpdump, replayed into two logs and
//! correlated with conntrace messages built from the proxy's own access log (its request
//! id and the four addresses).
//!
//! Every request must be paired, and at least [`MIN_BLAMED`] of them blamed as the proxy
//! itself logged them: nobody for a success, the back end for resets, early closes and
//! timeouts, the front end for client aborts. The expectation is read from the proxy's
//! log here, by this test's own table ([`logged_blame`]), and checked twice: with the
//! logged status and termination given to `correlate` as evidence, and with them removed
//! (as an Airlock conntrace message, which has neither), where the packets alone decide.
//! Pairing by time (`--proxy`) is measured on the same captures.
//!
//! Needs root, haproxy, nginx and tcpdump; skips with a message otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{conntrail, replay_to, s, temp_dir, text};

/// The share of requests that must be blamed as the proxy's log says.
const MIN_BLAMED: f64 = 0.95;

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (needs network namespaces)".into());
    }
    for tool in ["haproxy", "nginx", "tcpdump", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

/// Who the proxy's own log blames, by this test's reading of it: HAProxy's termination
/// state first (its first letter: C/c the client, S/s the server, `-` nobody), else the
/// status (499 the client, 5xx the server, others nobody).
fn logged_blame(message: &Value) -> &'static str {
    let termination = message["termination"].as_str().unwrap_or("");
    match termination.chars().next() {
        Some('C' | 'c') => return "front",
        Some('S' | 's') => return "back",
        Some('-') => return "neither",
        _ => {}
    }
    match message["status"].as_i64() {
        Some(499) => "front",
        Some(500..=599) => "back",
        _ => "neither",
    }
}

/// The lab's output for one proxy, replayed.
struct Lab {
    dir: PathBuf,
    front_log: PathBuf,
    back_log: PathBuf,
    conntrace: PathBuf,
    messages: Vec<Value>,
}

fn run_lab(proxy: &str) -> Lab {
    let dir = temp_dir(&format!("proxy-lab-{proxy}"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/proxy-lab.py");
    let name = format!("pl{}{}", &proxy[..1], std::process::id() % 100_000);
    let out = Command::new("python3")
        .arg(&script)
        .args(["--proxy", proxy, "--name", &name, "--out", s(&dir)])
        .output()
        .expect("python3 runs the lab");
    assert!(
        out.status.success(),
        "proxy-lab.py --proxy {proxy}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    println!("{}", text(&out.stdout).trim());
    let mut logs = Vec::new();
    for side in ["front", "back"] {
        let log = dir.join(format!("{side}.log"));
        replay_to(&dir, &dir.join(format!("{side}.pcap")), &log, "all");
        logs.push(log);
    }
    let conntrace = dir.join("conntrace.jsonl");
    let messages: Vec<Value> = std::fs::read_to_string(&conntrace)
        .expect("conntrace")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a conntrace line"))
        .collect();
    let back_log = logs.pop().expect("back log");
    let front_log = logs.pop().expect("front log");
    Lab {
        dir,
        front_log,
        back_log,
        conntrace,
        messages,
    }
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn endpoint(v: &Value) -> String {
    format!("{}:{}", v["ip"].as_str().unwrap_or("?"), v["port"])
}

/// Correlates with `conntrace`, checks that every request is paired with the legs its
/// message names, and returns (blamed as logged, requests, misses).
fn blame_by_conntrace(lab: &Lab, conntrace: &Path) -> (usize, usize, Vec<String>) {
    let out = conntrail(&[
        "correlate",
        "--conntrace",
        s(conntrace),
        "--json",
        s(&lab.front_log),
        s(&lab.back_log),
    ]);
    assert!(out.status.success(), "correlate: {}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), lab.messages.len());
    let by_id: HashMap<&str, &Value> = lines
        .iter()
        .map(|r| (r["req_id"].as_str().expect("req_id"), r))
        .collect();
    let (mut right, mut misses) = (0usize, Vec::new());
    for m in &lab.messages {
        let id = m["req_id"].as_str().expect("req_id");
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id}: not reported"));
        // Paired: both sides recorded, with the endpoints the message names.
        assert_eq!(r["front"]["recorded"], true, "{id}: front not found: {r}");
        assert_eq!(
            endpoint(&r["front"]["client"]),
            format!(
                "{}:{}",
                m["front_src_ip"].as_str().unwrap_or(""),
                m["front_src_port"]
            ),
            "{id}"
        );
        if m["back_src_port"].is_number() {
            assert_eq!(r["back"]["recorded"], true, "{id}: back not found: {r}");
            assert_eq!(
                endpoint(&r["back"]["client"]),
                format!(
                    "{}:{}",
                    m["back_src_ip"].as_str().unwrap_or(""),
                    m["back_src_port"]
                ),
                "{id}"
            );
        }
        let want = logged_blame(m);
        if r["failed_first"] == want {
            right += 1;
        } else {
            misses.push(format!(
                "{id} (logged {} {}): want {want}, got {} ({})",
                m["status"], m["termination"], r["failed_first"], r["cause"]["text"]
            ));
        }
    }
    (right, lab.messages.len(), misses)
}

fn check_proxy(proxy: &str) {
    let lab = run_lab(proxy);
    assert!(
        lab.messages.len() >= 50,
        "{} requests logged",
        lab.messages.len()
    );

    // With the proxy's status and termination as evidence.
    let (right, n, misses) = blame_by_conntrace(&lab, &lab.conntrace);
    println!(
        "{proxy}: {n} of {n} requests paired; {right} of {n} ({:.1} %) blamed as the proxy logged, with its status{} as evidence",
        100.0 * right as f64 / n as f64,
        if proxy == "haproxy" { " and termination" } else { "" }
    );
    for m in &misses {
        println!("  {m}");
    }
    assert!(
        right as f64 >= MIN_BLAMED * n as f64,
        "{proxy}: {misses:#?}"
    );

    // Without it: the packets alone.
    let bare = lab.dir.join("conntrace-bare.jsonl");
    let stripped: Vec<String> = lab
        .messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Value::Object(o) = &mut m {
                o.remove("status");
                o.remove("termination");
            }
            m.to_string()
        })
        .collect();
    std::fs::write(&bare, stripped.join("\n") + "\n").expect("write");
    let (right, n, misses) = blame_by_conntrace(&lab, &bare);
    println!(
        "{proxy}: {right} of {n} ({:.1} %) blamed as the proxy logged, from the packets alone",
        100.0 * right as f64 / n as f64
    );
    for m in &misses {
        println!("  {m}");
    }
    assert!(
        right as f64 >= MIN_BLAMED * n as f64,
        "{proxy}: {misses:#?}"
    );

    // The kinds a reader meets here: the proxy's timeout is the server's silence.
    let out = conntrail(&[
        "correlate",
        "--conntrace",
        s(&bare),
        "--json",
        s(&lab.front_log),
        s(&lab.back_log),
    ]);
    let kinds: HashMap<String, usize> =
        json_lines(&out).iter().fold(HashMap::new(), |mut acc, r| {
            *acc.entry(r["cause"]["kind"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            acc
        });
    println!("{proxy}: causes {kinds:?}");
    for kind in [
        "server-silent",
        "server-reset",
        "server-closed-early",
        "client-abort",
    ] {
        assert!(kinds.contains_key(kind), "{proxy}: no {kind}: {kinds:?}");
    }
    if proxy == "haproxy" {
        assert!(
            kinds.contains_key("completed-proxy-rst"),
            "HAProxy's http-server-close resets back ends after the response: {kinds:?}"
        );
    }

    // By time alone: the back end each front end is paired with, against the message's.
    let out = conntrail(&[
        "correlate",
        "--proxy",
        "198.18.1.1",
        "--proxy",
        "198.18.2.1",
        "--json",
        s(&lab.front_log),
        s(&lab.back_log),
    ]);
    assert!(
        out.status.success(),
        "correlate --proxy: {}",
        text(&out.stderr)
    );
    let truth: HashMap<String, (String, &str)> = lab
        .messages
        .iter()
        .map(|m| {
            let front = format!(
                "{}:{}",
                m["front_src_ip"].as_str().unwrap_or(""),
                m["front_src_port"]
            );
            let back = format!(
                "{}:{}",
                m["back_src_ip"].as_str().unwrap_or(""),
                m["back_src_port"]
            );
            (front, (back, logged_blame(m)))
        })
        .collect();
    let (mut paired_right, mut blamed_right) = (0usize, 0usize);
    for r in json_lines(&out) {
        if r["front"].is_null() {
            continue;
        }
        let Some((back, blame)) = truth.get(&endpoint(&r["front"]["client"])) else {
            continue;
        };
        if !r["back"].is_null() && &endpoint(&r["back"]["client"]) == back {
            paired_right += 1;
            blamed_right += usize::from(r["failed_first"] == *blame);
        }
    }
    let n = lab.messages.len();
    println!(
        "{proxy}: by time (--proxy), {paired_right} of {n} ({:.1} %) paired right, {blamed_right} of those blamed as the proxy logged",
        100.0 * paired_right as f64 / n as f64
    );
    assert!(paired_right as f64 >= MIN_BLAMED * n as f64);
    assert!(blamed_right as f64 >= MIN_BLAMED * paired_right as f64);
    let _ = std::fs::remove_dir_all(&lab.dir);
}

#[test]
fn haproxy_requests_are_paired_and_blamed_as_haproxy_logged_them() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED haproxy lab: {why}");
        eprintln!("SKIPPED haproxy lab: {why}");
        return;
    }
    check_proxy("haproxy");
}

#[test]
fn nginx_requests_are_paired_and_blamed_as_nginx_logged_them() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED nginx lab: {why}");
        eprintln!("SKIPPED nginx lab: {why}");
        return;
    }
    check_proxy("nginx");
}
