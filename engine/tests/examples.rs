//! The examples of `README.md` and `docs/*.md` are tests, so the documentation cannot drift
//! from what conntrail does.
//!
//! - Every ` ```console ` block is run by trycmd, command by command, and what each command
//!   prints (stdout and stderr) and its exit status must be what the block shows (`...` on a
//!   line of its own and `[..]` inside a line stand for what changes from run to run). Each
//!   document runs in a fresh scratch directory laid out like a clone: the directory stands
//!   for the repository's root and `../shared` beside it is the shared corpus, so
//!   `../shared/corpus/real/X.pcap` resolves as it does for a user, and the files the examples
//!   write (logs, captures) land in the scratch directory, removed afterwards. A ` ```toml `
//!   block whose first line is `# NAME.toml` is written there as `NAME.toml` first, so an
//!   example runs with the very configuration the text shows.
//! - The figures of the recorded outputs that tshark's oracle files also give (connections,
//!   close kinds, packets, bytes, payload and retransmissions each way of a connection, the
//!   handshake's SYN->SYN-ACK and SYN->ACK times) are compared with
//!   those oracles (`../shared/corpus/real/*.oracle.json`): a recorded output has to be true,
//!   not only what the code printed once.
//!
//! Blocks marked ` ```sh `, ` ```text `, ` ```toml ` or ` ```ini ` are not run: the examples
//! that need root, a NIC or a NATS server, synopses and configuration files.
//!
//! After a change of output, record every example again with one command, then read the diff:
//!
//! ```sh
//! TRYCMD=overwrite cargo test --release -p conntrail --test examples
//! ```

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the corpus is, as the examples name it (relative to the repository's root).
const CORPUS: &str = "../shared/corpus/real/";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository's root")
}

/// `README.md` and every `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("an entry of docs/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root.join("README.md"));
    docs
}

/// A fenced block of a document: its info string and its lines.
struct Block {
    lang: String,
    lines: Vec<String>,
}

fn blocks(doc: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(doc).expect("a document");
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in text.lines() {
        match open.take() {
            None => {
                if let Some(lang) = line.strip_prefix("```") {
                    open = Some(Block {
                        lang: lang.trim().to_string(),
                        lines: Vec::new(),
                    });
                }
            }
            Some(mut block) => {
                if line.starts_with("```") {
                    blocks.push(block);
                } else {
                    block.lines.push(line.to_string());
                    open = Some(block);
                }
            }
        }
    }
    assert!(open.is_none(), "{}: a block is not closed", doc.display());
    blocks
}

/// The files that ` ```toml ` blocks opening with `# NAME.toml` show.
fn shown_files(doc: &Path) -> Vec<(String, String)> {
    blocks(doc)
        .into_iter()
        .filter(|block| block.lang == "toml")
        .filter_map(|block| {
            let name = block.lines.first()?.strip_prefix("# ")?.trim().to_string();
            let plain = name.ends_with(".toml") && !name.contains('/') && !name.contains(' ');
            plain.then(|| (name, block.lines.join("\n") + "\n"))
        })
        .collect()
}

/// One command of a ` ```console ` block and the output recorded for it.
struct Step {
    args: Vec<String>,
    output: Vec<String>,
}

impl Step {
    fn is(&self, command: &str) -> bool {
        self.args.len() > 1 && self.args[0] == "conntrail" && self.args[1] == command
    }

    fn option(&self, name: &str) -> Option<&str> {
        let at = self.args.iter().position(|arg| arg == name)?;
        self.args.get(at + 1).map(String::as_str)
    }

    fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|arg| arg == flag)
    }

    /// The value of `NAME: VALUE` among the output lines.
    fn field(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.output
            .iter()
            .find_map(|line| line.strip_prefix(&prefix))
    }

    fn text(&self) -> String {
        format!("`{}`", self.args.join(" "))
    }
}

/// The commands of every ` ```console ` block of a document, in order.
fn steps(doc: &Path) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for block in blocks(doc).into_iter().filter(|b| b.lang == "console") {
        let mut prompted = false;
        for line in block.lines {
            if let Some(command) = line.strip_prefix("$ ") {
                let args = command
                    .split_whitespace()
                    .map(|arg| arg.trim_matches('\'').to_string())
                    .collect();
                steps.push(Step {
                    args,
                    output: Vec::new(),
                });
                prompted = true;
            } else if prompted && !line.starts_with("? ") {
                if let Some(step) = steps.last_mut() {
                    step.output.push(line);
                }
            }
        }
    }
    for step in &mut steps {
        while step.output.last().is_some_and(|line| line.is_empty()) {
            step.output.pop();
        }
    }
    steps
}

/// Removes the scratch directory of the examples, however the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs every ` ```console ` block of the documents (see the module doc).
///
/// The documents run one after the other, each in its own scratch directory, which is the
/// process's working directory while it runs: trycmd starts the commands there. Nothing
/// else in this test binary depends on the working directory.
#[test]
fn examples_run_as_documented() {
    let root = repo_root();
    let shared = root
        .join("../shared")
        .canonicalize()
        .expect("../shared beside the repository (the corpus)");
    let home = std::env::current_dir().expect("the working directory");
    for (n, doc) in documents().iter().enumerate() {
        let scratch = Scratch(
            std::env::temp_dir().join(format!("conntrail-examples-{}-{n}", std::process::id())),
        );
        let clone = scratch.0.join("repo");
        let _ = std::fs::remove_dir_all(&scratch.0);
        std::fs::create_dir_all(&clone).expect("the scratch directory");
        std::os::unix::fs::symlink(&shared, scratch.0.join("shared")).expect("../shared");
        for (name, text) in shown_files(doc) {
            std::fs::write(clone.join(name), text).expect("a file the document shows");
        }
        std::env::set_current_dir(&clone).expect("into the scratch directory");
        trycmd::TestCases::new()
            .register_bin("conntrail", trycmd::cargo::cargo_bin!("conntrail"))
            // The documented output is the default's (warnings only), whatever the caller's.
            .env("RUST_LOG", "warn")
            .timeout(std::time::Duration::from_secs(120))
            .case(doc)
            .run();
        std::env::set_current_dir(&home).expect("back to the working directory");
    }
}

/// The oracle of a corpus capture named as the examples name it.
fn oracle(capture: &str) -> Value {
    let name = capture
        .strip_prefix(CORPUS)
        .unwrap_or_else(|| panic!("{capture} is not in {CORPUS}"));
    let path = repo_root().join(CORPUS).join(format!("{name}.oracle.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Connections of an oracle: TCP connections, UDP and ICMP flows.
fn oracle_flows(oracle: &Value) -> u64 {
    let summary = &oracle["summary"];
    count(&summary["tcp_connections"])
        + count(&summary["udp_flows"])
        + count(&summary["icmp_flows"])
}

/// The close reasons whose count an oracle gives, as conntrail names them: tshark's
/// `fin`, `rst_by_client`, and `rst_by_server` plus `rejected` (a SYN answered by RST is
/// `tcp-rst-server`). The other reasons (`shutdown`, `aged-out`, ...) depend on timeouts
/// and the end of the capture, which the oracle does not model; only their sum is checked.
fn oracle_reasons(oracle: &Value) -> BTreeMap<&'static str, u64> {
    let kinds = &oracle["summary"]["tcp_close_kinds"];
    BTreeMap::from([
        ("tcp-fin", count(&kinds["fin"])),
        ("tcp-rst-client", count(&kinds["rst_by_client"])),
        (
            "tcp-rst-server",
            count(&kinds["rst_by_server"]) + count(&kinds["rejected"]),
        ),
    ])
}

/// The oracle's close kinds that conntrail names with a reason.
fn reason_of_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "fin" => Some("tcp-fin"),
        "rst_by_client" => Some("tcp-rst-client"),
        "rst_by_server" | "rejected" => Some("tcp-rst-server"),
        _ => None,
    }
}

/// Compares counted reasons (with their total) with the oracle's.
fn check_reasons(what: &str, counted: &BTreeMap<String, u64>, total: u64, oracles: &[Value]) {
    let flows: u64 = oracles.iter().map(oracle_flows).sum();
    assert_eq!(total, flows, "{what}: connections, oracle {flows}");
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for oracle in oracles {
        for (reason, n) in oracle_reasons(oracle) {
            *expected.entry(reason).or_default() += n;
        }
    }
    for (reason, n) in &expected {
        let got = counted.get(*reason).copied().unwrap_or(0);
        assert_eq!(got, *n, "{what}: {reason}, oracle {n}");
    }
    let sum: u64 = counted.values().sum();
    assert_eq!(sum, total, "{what}: the reasons add up to the total");
}

/// The capture that the replay before `step_at` in `steps` wrote `log` from, and that
/// replay.
fn replay_of<'a>(steps: &'a [Step], step_at: usize, log: &str) -> (&'a Step, &'a str) {
    let replay = steps[..step_at]
        .iter()
        .rev()
        .find(|s| s.is("replay") && s.option("--log") == Some(log))
        .unwrap_or_else(|| panic!("{}: no replay shown writes {log}", steps[step_at].text()));
    let capture = replay
        .args
        .last()
        .filter(|arg| arg.starts_with(CORPUS))
        .unwrap_or_else(|| panic!("{}: not a replay of one corpus capture", replay.text()));
    (replay, capture)
}

/// The oracle's TCP connection from `client` to `server` (`IP:PORT` each).
fn oracle_tcp<'a>(oracle: &'a Value, client: &str, server: &str) -> &'a Value {
    let endpoint = |e: &Value| {
        let ip = e["ip"].as_str().unwrap_or_default();
        let port = count(&e["port"]);
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    oracle["tcp"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| endpoint(&c["client"]) == client && endpoint(&c["server"]) == server)
        .unwrap_or_else(|| panic!("the oracle has no connection {client} -> {server}"))
}

/// `tcp C -> S` at the start of `text`: the client and the server.
fn tcp_endpoints(text: &str) -> (&str, &str) {
    let mut words = text.split_whitespace();
    assert_eq!(words.next(), Some("tcp"), "not a TCP connection: {text}");
    let client = words.next().unwrap_or_default();
    assert_eq!(words.next(), Some("->"), "no client -> server in {text}");
    let server = words.next().unwrap_or_default();
    (client, server.trim_end_matches([':', ',', ')']))
}

/// Every documented replay of one corpus capture: its `flows:` (every connection), its
/// `records:` when it kept every connection, and its `closed:` reasons agree with the oracle.
#[test]
fn replay_summaries_match_the_oracles() {
    let mut checked = 0;
    for doc in documents() {
        for step in steps(&doc).iter().filter(|s| s.is("replay")) {
            let Some(capture) = step.args.last().filter(|arg| arg.starts_with(CORPUS)) else {
                continue;
            };
            let oracle = oracle(capture);
            let flows = oracle_flows(&oracle);
            if let Some(shown) = step.field("flows") {
                assert_eq!(shown, flows.to_string(), "{}: flows", step.text());
                checked += 1;
            }
            if let Some(shown) = step.field("records").filter(|_| step.has("--record")) {
                assert_eq!(step.option("--record"), Some("all"));
                assert_eq!(shown, flows.to_string(), "{}: records", step.text());
            }
            if let Some(closed) = step.field("closed") {
                let mut counted = BTreeMap::new();
                for item in closed.split(", ") {
                    let (reason, n) = item.rsplit_once(' ').expect("`reason N`");
                    counted.insert(reason.to_string(), n.parse().expect("a count"));
                }
                check_reasons(&step.text(), &counted, flows, &[oracle]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "the README shows the summary of a replay");
}

/// The `query --count-by reason` table counts every connection of its logs as tshark does,
/// which holds only when each log was replayed with `--record all`.
#[test]
fn count_by_reason_table_matches_the_oracles() {
    let mut tables = 0;
    for doc in documents() {
        let steps = steps(&doc);
        for (at, step) in steps.iter().enumerate() {
            if !step.is("query") || step.option("--count-by") != Some("reason") {
                continue;
            }
            let logs: Vec<&str> = step.args[2..]
                .iter()
                .take_while(|arg| !arg.starts_with('-') && arg.ends_with(".log"))
                .map(String::as_str)
                .collect();
            let mut oracles = Vec::new();
            for log in logs {
                let (replay, capture) = replay_of(&steps, at, log);
                assert_eq!(
                    replay.option("--record"),
                    Some("all"),
                    "{}: the table counts every connection only when {log} has them all",
                    replay.text()
                );
                oracles.push(oracle(capture));
            }
            let mut counted = BTreeMap::new();
            let mut total = None;
            for row in step.output.iter().skip(1) {
                let cells: Vec<&str> = row.split_whitespace().collect();
                let [n, share, reason] = cells[..] else {
                    panic!("{}: row {row:?}", step.text());
                };
                let n: u64 = n.parse().expect("a count");
                if reason == "total" {
                    total = Some(n);
                    assert_eq!(share, "100.0%");
                } else {
                    counted.insert(reason.to_string(), n);
                }
            }
            let total = total.expect("a total row");
            for row in step.output.iter().skip(1) {
                let cells: Vec<&str> = row.split_whitespace().collect();
                let share = format!(
                    "{:.1}%",
                    cells[0].parse::<f64>().unwrap_or(0.0) * 100.0 / total as f64
                );
                assert_eq!(cells[1], share, "{}: share of {row:?}", step.text());
            }
            check_reasons(&step.text(), &counted, total, &oracles);
            tables += 1;
        }
    }
    assert!(tables >= 1, "the README shows a --count-by reason table");
}

/// `LOG ID` or `LOG:ID` of a `show`.
fn shown_record(step: &Step) -> (&str, &str) {
    let first = step.args.get(2).map(String::as_str).unwrap_or_default();
    match first.rsplit_once(':') {
        Some((log, id)) if id.chars().all(|c| c.is_ascii_digit()) => (log, id),
        _ => (
            first,
            step.args.get(3).map(String::as_str).unwrap_or_default(),
        ),
    }
}

/// The numbers of a `show` counter line, `c2s 17 pkts, 1775 bytes (777 payload); retrans 0, ...`.
fn counters(line: &str) -> BTreeMap<String, u64> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || ",;()".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    let mut counters = BTreeMap::new();
    let mut at = 1;
    while at + 1 < words.len() {
        let (first, second) = (words[at], words[at + 1]);
        match (first.parse::<u64>(), second.parse::<u64>()) {
            (Ok(n), Err(_)) => counters.insert(second.to_string(), n),
            (Err(_), Ok(n)) => counters.insert(first.to_string(), n),
            _ => {
                at += 1;
                continue;
            }
        };
        at += 2;
    }
    counters
}

/// A duration as conntrail prints it (`281.0 us`, `1.094 ms`, `5.057 s`), in seconds; none
/// for `-` (not measured).
fn seconds(value: &str, unit: &str) -> Option<f64> {
    let value: f64 = value.trim_start_matches('+').parse().ok()?;
    let scale = match unit.trim_end_matches(',') {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        other => panic!("unit {other:?}"),
    };
    Some(value * scale)
}

/// Checks packets, bytes and payload each way and the close reason of a TCP connection.
fn check_connection(what: &str, oracle: &Value, client: &str, server: &str, fields: &Fields) {
    let conn = oracle_tcp(oracle, client, server);
    for dir in ["c2s", "s2c"] {
        for counter in ["pkts", "bytes", "payload", "retrans"] {
            if let Some(shown) = fields.get(&format!("{dir} {counter}")) {
                let expected = count(&conn[dir][counter]);
                assert_eq!(
                    *shown, expected,
                    "{what}: {dir} {counter}, oracle {expected}"
                );
            }
        }
    }
    if let Some((syn_synack, synack_ack)) = fields.handshake_s {
        let close = |shown: f64, oracle: &Value, name: &str| {
            let expected = oracle.as_f64().unwrap_or(f64::NAN);
            assert!(
                (shown - expected).abs() <= expected * 1e-3 + 1e-9,
                "{what}: {name} {shown:.9} s, oracle {expected:.9} s"
            );
        };
        close(syn_synack, &conn["syn_to_synack_s"], "syn->syn-ack");
        close(syn_synack + synack_ack, &conn["initial_rtt_s"], "syn->ack");
    }
    if let Some(reason) = &fields.reason {
        let kind = conn["close_kind"].as_str().unwrap_or_default();
        assert_eq!(
            Some(reason.as_str()),
            reason_of_kind(kind),
            "{what}: close reason, oracle close kind {kind}"
        );
    }
}

/// What a document shows of one connection: `c2s pkts` and the like, the close reason.
#[derive(Default)]
struct Fields {
    counters: BTreeMap<String, u64>,
    reason: Option<String>,
    /// SYN to SYN-ACK and SYN-ACK to ACK, in seconds.
    handshake_s: Option<(f64, f64)>,
}

impl Fields {
    fn get(&self, name: &str) -> Option<&u64> {
        self.counters.get(name)
    }
}

/// A shown record (`show LOG ID`) has the oracle's packets, bytes, payload and
/// retransmissions each way and its close kind.
#[test]
fn shown_records_match_the_oracles() {
    let mut records = 0;
    for doc in documents() {
        let steps = steps(&doc);
        for (at, step) in steps.iter().enumerate() {
            if !step.is("show") || step.has("--json") || step.has("--ecs") {
                continue;
            }
            let (log, id) = shown_record(step);
            let (_, capture) = replay_of(&steps, at, log);
            let header = step.output.first().map(String::as_str).unwrap_or_default();
            let rest = header
                .strip_prefix(&format!("record {id} "))
                .unwrap_or_else(|| panic!("{}: header {header:?}", step.text()));
            let (client, server) = tcp_endpoints(rest);
            let mut fields = Fields {
                reason: rest
                    .rsplit_once('(')
                    .map(|(_, r)| r.trim_end_matches(')').to_string()),
                ..Fields::default()
            };
            for line in &step.output {
                let line = line.trim_start();
                if let Some(latency) = line.strip_prefix("latency ") {
                    let words: Vec<&str> = latency.split_whitespace().collect();
                    if let ["syn->syn-ack", a, a_unit, "syn-ack->ack", b, b_unit, ..] = words[..] {
                        fields.handshake_s = seconds(a, a_unit).zip(seconds(b, b_unit));
                    }
                }
                for dir in ["c2s", "s2c"] {
                    if line.starts_with(&format!("{dir} ")) {
                        for (name, n) in counters(line) {
                            fields.counters.insert(format!("{dir} {name}"), n);
                        }
                    }
                }
            }
            assert!(
                fields.get("c2s pkts").is_some(),
                "{}: no counters",
                step.text()
            );
            let oracle = oracle(capture);
            let complete = oracle_tcp(&oracle, client, server)["handshake"] == "complete";
            assert_eq!(
                fields.handshake_s.is_some(),
                complete,
                "{}: handshake latencies shown when the oracle's handshake completed",
                step.text()
            );
            check_connection(&step.text(), &oracle, client, server, &fields);
            records += 1;
        }
    }
    assert!(records >= 1, "the README shows a record");
}

/// Each row of a `query` listing is a connection that the oracle closes the same way, and a
/// `reason=R` query lists as many as the oracle counts.
#[test]
fn query_rows_match_the_oracles() {
    let mut listings = 0;
    for doc in documents() {
        let steps = steps(&doc);
        for (at, step) in steps.iter().enumerate() {
            let plain = !["--count-by", "--json", "--ecs", "--limit"]
                .iter()
                .any(|option| step.has(option));
            if !step.is("query") || !plain {
                continue;
            }
            let logs: Vec<&str> = step.args[2..]
                .iter()
                .take_while(|arg| arg.ends_with(".log"))
                .map(String::as_str)
                .collect();
            let oracles: BTreeMap<&str, Value> = logs
                .iter()
                .map(|log| (*log, oracle(replay_of(&steps, at, log).1)))
                .collect();
            let rows = &step.output[1..];
            for row in rows {
                let cells: Vec<&str> = row.split_whitespace().collect();
                let [_, _, _, _, "tcp", client, server, reason, _, _, record] = cells[..] else {
                    panic!("{}: not a TCP row: {row:?}", step.text());
                };
                let log = record
                    .rsplit_once(':')
                    .map(|(log, _)| log)
                    .unwrap_or_default();
                let fields = Fields {
                    reason: Some(reason.to_string()),
                    ..Fields::default()
                };
                check_connection(&step.text(), &oracles[log], client, server, &fields);
            }
            let expression = step.args[2 + logs.len()..].join(" ");
            if let Some(reason) = expression.strip_prefix("reason=") {
                let expected: u64 = oracles
                    .values()
                    .map(|o| oracle_reasons(o).get(reason).copied().unwrap_or(0))
                    .sum();
                assert_eq!(rows.len() as u64, expected, "{}: rows", step.text());
            }
            listings += 1;
        }
    }
    assert!(listings >= 1, "the README shows a query listing");
}

/// `diff` shows both connections with the oracle's counters and close kinds.
#[test]
fn diffed_records_match_the_oracles() {
    let mut diffs = 0;
    for doc in documents() {
        let steps = steps(&doc);
        for (at, step) in steps.iter().enumerate() {
            if !step.is("diff") {
                continue;
            }
            for (column, side) in ["baseline", "problem"].iter().enumerate() {
                let line = step
                    .output
                    .iter()
                    .find_map(|l| l.strip_prefix(side))
                    .unwrap_or_else(|| panic!("{}: no {side} line", step.text()));
                let mut words = line.split_whitespace();
                let record = words.next().unwrap_or_default();
                let log = record
                    .rsplit_once(':')
                    .map(|(log, _)| log)
                    .unwrap_or_default();
                let connection = words.collect::<Vec<_>>().join(" ");
                let (client, server) = tcp_endpoints(&connection);
                let (_, capture) = replay_of(&steps, at, log);
                let mut fields = Fields::default();
                let latency = |name: &str| {
                    let row = step.output.iter().find_map(|row| row.strip_prefix(name))?;
                    let words: Vec<&str> = row.split_whitespace().collect();
                    seconds(words.get(2 * column)?, words.get(2 * column + 1)?)
                };
                fields.handshake_s = latency("syn -> syn-ack").zip(latency("syn-ack -> ack"));
                for row in &step.output {
                    if let Some(values) = row.strip_prefix("close reason") {
                        fields.reason = values.split_whitespace().nth(column).map(String::from);
                    }
                    for dir in ["c2s", "s2c"] {
                        for counter in ["pkts", "bytes", "payload", "retrans"] {
                            let name = format!("{dir} {counter}");
                            if let Some(values) = row.strip_prefix(&name) {
                                let value = values.split_whitespace().nth(column);
                                let n = value.and_then(|v| v.parse().ok()).expect("a count");
                                fields.counters.insert(name, n);
                            }
                        }
                    }
                }
                assert!(
                    fields.get("c2s pkts").is_some(),
                    "{}: no counters",
                    step.text()
                );
                check_connection(&step.text(), &oracle(capture), client, server, &fields);
            }
            diffs += 1;
        }
    }
    assert!(diffs >= 1, "the README shows a diff");
}

/// `extract` writes as many packets as the oracle's connection has.
#[test]
fn extracted_packets_match_the_oracles() {
    let mut extracts = 0;
    for doc in documents() {
        for step in steps(&doc).iter().filter(|s| s.is("extract")) {
            let capture = step.option("--pcap").expect("--pcap");
            let wrote = step.output.first().map(String::as_str).unwrap_or_default();
            let rest = wrote
                .strip_prefix("wrote ")
                .unwrap_or_else(|| panic!("{}: {wrote:?}", step.text()));
            let (packets, rest) = rest.split_once(" packets of record ").expect("packets");
            let (_, connection) = rest.split_once(" (").expect("the connection");
            let (client, server) = tcp_endpoints(connection);
            let oracle = oracle(capture);
            let conn = oracle_tcp(&oracle, client, server);
            let expected = count(&conn["c2s"]["pkts"]) + count(&conn["s2c"]["pkts"]);
            assert_eq!(packets, expected.to_string(), "{}: packets", step.text());
            extracts += 1;
        }
    }
    assert!(extracts >= 1, "the README shows an extract");
}

/// The ECS documents of a `query --ecs` carry the oracle's counters each way and close kind.
#[test]
fn ecs_records_match_the_oracles() {
    let mut documents_checked = 0;
    for doc in documents() {
        let steps = steps(&doc);
        for (at, step) in steps.iter().enumerate() {
            if !step.is("query") || !step.has("--ecs") {
                continue;
            }
            for line in &step.output {
                let ecs: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: {e}: {line}", step.text()));
                let log = ecs["log"]["file"]["path"].as_str().expect("log.file.path");
                let (_, capture) = replay_of(&steps, at, log);
                let endpoint =
                    |e: &Value| format!("{}:{}", e["ip"].as_str().unwrap_or(""), e["port"]);
                let fields = Fields {
                    counters: BTreeMap::from([
                        ("c2s pkts".to_string(), count(&ecs["source"]["packets"])),
                        ("c2s bytes".to_string(), count(&ecs["source"]["bytes"])),
                        (
                            "s2c pkts".to_string(),
                            count(&ecs["destination"]["packets"]),
                        ),
                        ("s2c bytes".to_string(), count(&ecs["destination"]["bytes"])),
                    ]),
                    reason: ecs["event"]["reason"].as_str().map(String::from),
                    handshake_s: ecs["conntrail"]["latency_ns"]["syn_synack"]
                        .as_f64()
                        .zip(ecs["conntrail"]["latency_ns"]["synack_ack"].as_f64())
                        .map(|(a, b)| (a * 1e-9, b * 1e-9)),
                };
                let (client, server) = (endpoint(&ecs["source"]), endpoint(&ecs["destination"]));
                check_connection(&step.text(), &oracle(capture), &client, &server, &fields);
                documents_checked += 1;
            }
        }
    }
    assert!(documents_checked >= 1, "the README shows an ECS document");
}

/// The VLAN ids of each `[[context]]` of a configuration file a document shows.
fn context_vlans(config: &str) -> BTreeMap<String, Vec<String>> {
    let mut contexts = BTreeMap::new();
    let mut name = None;
    for line in config.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_string());
        }
        if let (Some(list), Some(name)) = (line.strip_prefix("vlans = "), &name) {
            let ids = list
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty())
                .collect();
            contexts.insert(name.clone(), ids);
        }
    }
    contexts
}

/// A replay with contexts that keeps every connection puts in each context's log the
/// oracle's connections on that context's VLANs, and the rest in the default log.
#[test]
fn context_records_match_the_oracles() {
    let mut replays = 0;
    for doc in documents() {
        let files: BTreeMap<String, String> = shown_files(&doc).into_iter().collect();
        for step in steps(&doc).iter().filter(|s| s.is("replay")) {
            let Some(config) = step.option("--config").and_then(|c| files.get(c)) else {
                continue;
            };
            assert_eq!(
                step.option("--record"),
                Some("all"),
                "{}: a context's log has its connections only with --record all",
                step.text()
            );
            let capture = step.args.last().expect("a capture");
            let oracle = oracle(capture);
            let mut in_contexts = 0;
            for (name, vlans) in context_vlans(config) {
                let on_vlans = ["tcp", "udp", "icmp"]
                    .iter()
                    .flat_map(|proto| oracle[proto].as_array().into_iter().flatten())
                    .filter(|conn| {
                        conn["vlans"].as_array().into_iter().flatten().any(|v| {
                            let id = v.as_str().map(String::from).unwrap_or(v.to_string());
                            vlans.contains(&id)
                        })
                    })
                    .count();
                let line = step
                    .output
                    .iter()
                    .find_map(|l| l.strip_prefix(&format!("context {name}: ")))
                    .unwrap_or_else(|| panic!("{}: no line for context {name}", step.text()));
                assert!(
                    line.starts_with(&format!("{on_vlans} records ")),
                    "{}: context {name}: {line}, oracle {on_vlans}",
                    step.text()
                );
                in_contexts += on_vlans as u64;
            }
            let default = oracle_flows(&oracle) - in_contexts;
            let line = step.field("context default").expect("context default");
            assert!(
                line.starts_with(&format!("{default} records ")),
                "{}: context default: {line}, oracle {default}",
                step.text()
            );
            replays += 1;
        }
    }
    assert!(replays >= 1, "the README shows a replay with contexts");
}

/// Every example with a `$` prompt is in a ` ```console ` block, so the harness runs it: no
/// indented block or block of another kind shows a prompt, and every fence names its kind
/// (trycmd would run a bare one without the checks above seeing it).
#[test]
fn every_prompted_example_runs() {
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("a document");
        let mut lang: Option<&str> = None;
        for (n, line) in text.lines().enumerate() {
            let at = format!("{}:{}", doc.display(), n + 1);
            if let Some(info) = line.strip_prefix("```") {
                lang = match lang {
                    Some(_) => None,
                    None => {
                        assert!(!info.trim().is_empty(), "{at}: a fence without a kind");
                        Some(info.trim())
                    }
                };
                continue;
            }
            if lang != Some("console") {
                assert!(
                    !line.trim_start().starts_with("$ "),
                    "{at}: an example with a prompt outside a ```console block is never run: {line}"
                );
            }
        }
    }
}
