//! `conntrail show` timelines as an operator reads them: the two lanes, the irregular point
//! marked, the plain-words line naming the event that matters, colour only when asked for or
//! on a terminal, and the `--html` page as a real browser (headless Chromium) renders it.
//!
//! The browser test fails when Chromium is missing (scripts/setup.sh installs it), unless
//! `CONNTRAIL_SKIP_BROWSER=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use forensics::html::{ERROR_RGB, LANE_RGB, WARN_RGB};

mod common;
use common::{corpus as capture, s, temp_dir, text};

fn conntrail(args: &[&str]) -> Output {
    conntrail_env(args, &[])
}

fn conntrail_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conntrail"));
    cmd.args(args).env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("conntrail runs")
}

/// Replays `cap` into `dir/t.log` (the rings live in `dir` too) and returns the log.
fn replay(dir: &Path, cap: &Path, extra: &[&str]) -> PathBuf {
    let log = dir.join("t.log");
    let cfg = dir.join("ring.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", dir.to_string_lossy())).expect("config");
    let mut args = vec!["replay", "--config", s(&cfg), "--log", s(&log)];
    args.extend_from_slice(extra);
    args.push(s(cap));
    let out = conntrail(&args);
    assert!(out.status.success(), "replay failed: {}", text(&out.stderr));
    log
}

/// `conntrail show LOG extra...` as text, checked for success.
fn show(log: &Path, extra: &[&str]) -> String {
    let mut args = vec!["show", s(log)];
    args.extend_from_slice(extra);
    let out = conntrail(&args);
    assert!(out.status.success(), "show failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The text blocks of `show`, one per record.
fn blocks(shown: &str) -> Vec<&str> {
    shown
        .split("\n\n")
        .filter(|b| b.starts_with("record "))
        .collect()
}

fn line_with<'a>(block: &'a str, needle: &str) -> &'a str {
    block
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{block}"))
}

fn why(block: &str) -> &str {
    line_with(block, "  why kept: ")
}

#[test]
fn rejected_syn_is_drawn_on_both_lanes_and_explained() {
    let dir = temp_dir("rej");
    let log = replay(&dir, &capture("zeek_nmap-vsn.pcap"), &[]);
    let shown = show(&log, &[]);
    assert!(!shown.contains('\x1b'), "no colour when not a terminal");
    let rej: Vec<&str> = blocks(&shown)
        .into_iter()
        .filter(|b| b.contains("state REJ"))
        .collect();
    assert_eq!(rej.len(), 6, "{shown}");
    for b in rej {
        // The plain-words line is right under the title.
        assert!(
            b.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("  why kept: ")),
            "{b}"
        );
        assert!(
            why(b).contains("server rejected the connection: RST ")
                && why(b).contains(" after the SYN"),
            "{b}"
        );
        let lanes = line_with(b, "client 192.168.1.71:");
        assert!(lanes.contains("server 192.168.1."), "{b}");
        // The SYN leaves the client lane, the RST comes back from the server's, marked.
        let syn = line_with(b, "-- syn -");
        assert!(syn.trim_end().ends_with("->|"), "{b}");
        let rst = line_with(b, " rst --|");
        assert!(rst.starts_with("  >> +"), "irregular point marked: {b}");
        assert!(rst.contains("|<-") && rst.ends_with("[error]"), "{b}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_alert_and_client_reset_name_the_event() {
    let dir = temp_dir("tls");
    let log = replay(&dir, &capture("suricata_ssl_version_negated.pcap"), &[]);
    let shown = show(&log, &[]);
    let resets: Vec<&str> = blocks(&shown)
        .into_iter()
        .filter(|b| b.contains("(tcp-rst-client)"))
        .collect();
    assert_eq!(resets.len(), 6, "{shown}");
    for b in resets {
        let w = why(b);
        // The server closed (FIN, with or after its own alert), then the client sent an
        // alert and reset.
        assert!(
            w.contains("client reset the connection ")
                && (w.contains(" after the server's FIN")
                    || w.contains(" after the server's encrypted TLS alert"))
                && w.contains(" after its own encrypted TLS alert"),
            "{b}"
        );
        // The client's alert on the client lane, the server's hello on the server lane.
        let alert = b
            .lines()
            .rfind(|l| l.contains("tls-alert (encrypted)"))
            .expect("client alert row");
        assert!(alert.contains("|-- tls-alert (encrypted) -"), "{b}");
        assert!(alert.trim_end().ends_with("->|"), "{b}");
        let hello = line_with(b, "tls-server-hello (TLS 1.0)");
        assert!(hello.contains("|<-") && hello.ends_with(" --|"), "{b}");
        let rst = line_with(b, ">> +");
        assert!(rst.contains("-- rst -") && rst.ends_with("[error]"), "{b}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_window_stall_and_truncation() {
    let dir = temp_dir("zwin");
    let log = replay(&dir, &capture("zeek_http_206_example_b.pcap"), &[]);
    let shown = show(&log, &[]);
    let b = blocks(&shown)
        .into_iter()
        .find(|b| b.contains("zero-window 57"))
        .unwrap_or_else(|| panic!("no zero-window record:\n{shown}"));
    let w = why(b);
    for part in [
        "server reset the connection",
        "57 zero-window advertisements from the client",
        "the connection stalled for 15.6 s",
        "the trail was truncated: 101 points dropped",
    ] {
        assert!(w.contains(part), "{part:?} not in {w:?}");
    }
    let irregular = line_with(b, ">> +");
    assert!(
        irregular.contains("|-- zero-window -") && irregular.ends_with("[warn]"),
        "{b}"
    );
    let cut = line_with(b, "truncated (101 points dropped here)");
    assert!(cut.contains("~~~"), "{b}");
    // The 15.6 s stalls are the longest gaps: full bars; the 697 us one is no bar at all.
    let stalls: Vec<&str> = b
        .lines()
        .filter(|l| l.contains(" 15.560 s ████████ |"))
        .collect();
    assert_eq!(stalls.len(), 4, "{b}");
    let short = line_with(b, "handshake-done (after 697.0 us)");
    assert!(short.contains("697.0 us          |"), "{b}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn colour_always_never_and_no_color() {
    let dir = temp_dir("colour");
    let log = replay(&dir, &capture("zeek_http_206_example_b.pcap"), &[]);
    let always = show(&log, &["--color", "always"]);
    assert!(
        always.contains("\x1b[1;33m"),
        "irregular warn point bold yellow"
    );
    assert!(always.contains("\x1b[31m"), "error point red");
    assert!(always.contains("\x1b[33m"), "warn points yellow");
    for plain in [
        show(&log, &["--color", "never"]),
        show(&log, &[]),
        text(&conntrail_env(&["show", s(&log), "--color", "auto"], &[("NO_COLOR", "1")]).stdout),
    ] {
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(plain.contains(">> +"), "{plain}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_colour_on_a_terminal_unless_no_color() {
    let dir = temp_dir("tty");
    let log = replay(&dir, &capture("zeek_nmap-vsn.pcap"), &[]);
    // util-linux `script` runs the command on a pseudo-terminal.
    let on_tty = |no_color: Option<&str>| {
        let cmd = format!(
            "'{}' show '{}'",
            env!("CARGO_BIN_EXE_conntrail"),
            log.display()
        );
        let mut script = Command::new("script");
        script
            .args(["-qec", &cmd, "/dev/null"])
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            script.env("NO_COLOR", v);
        }
        let out = script
            .stdin(Stdio::null())
            .output()
            .expect("`script` (util-linux) runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let coloured = on_tty(None);
    assert!(coloured.contains("\x1b[1;31m>>"), "{coloured}");
    assert!(!on_tty(Some("1")).contains('\x1b'));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synth_anomalies_are_explained() {
    let dir = temp_dir("synth");
    let cap = dir.join("s.pcap");
    let out = conntrail(&[
        "synth",
        "-o",
        s(&cap),
        "--flows",
        "200",
        "--packets",
        "4000",
        "--seed",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = replay(&dir, &cap, &[]);
    let shown = show(&log, &[]);
    let json = show(&log, &["--json"]);
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let by_id = blocks(&shown);
    assert_eq!(by_id.len(), records.len());
    let (mut thresholds, mut unanswered, mut zero) = (0, 0, 0);
    for (rec, b) in records.iter().zip(by_id) {
        assert!(
            b.starts_with(&format!("record {} ", rec["id"])),
            "same order"
        );
        let w = why(b);
        let points = rec["points"].as_array().expect("points");
        let n = points.iter().filter(|p| p["kind"] == "threshold").count();
        assert_eq!(w.matches(" threshold").count(), n, "{b}");
        thresholds += n;
        if rec["conn_state"] == "S0" {
            assert!(w.contains("and the server never answered"), "{b}");
            unanswered += 1;
        }
        let zw = rec["c2s"]["zero_window"].as_u64().unwrap_or(0)
            + rec["s2c"]["zero_window"].as_u64().unwrap_or(0);
        if zw > 0 {
            assert!(w.contains("zero-window advertisement"), "{b}");
            zero += 1;
        }
        if rec["conn_state"] == "REJ" {
            assert!(
                w.starts_with("  why kept: server rejected the connection"),
                "{b}"
            );
        }
    }
    assert!(thresholds > 0 && unanswered > 0 && zero > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_output_is_unchanged() {
    let dir = temp_dir("json");
    let log = replay(&dir, &capture("zeek_nmap-vsn.pcap"), &[]);
    let json = show(&log, &["--json", "--color", "always"]);
    assert!(!json.contains('\x1b'));
    let mut keys: Vec<String> = Vec::new();
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        keys = v.as_object().expect("object").keys().cloned().collect();
    }
    keys.sort();
    let mut want = vec![
        "id",
        "worker",
        "context",
        "proto",
        "ip_version",
        "client",
        "server",
        "midstream",
        "vlans",
        "start_ns",
        "end_ns",
        "duration_ns",
        "c2s",
        "s2c",
        "close_reason",
        "conn_state",
        "history",
        "flags",
        "irregular_point",
        "latency_ns",
        "points",
        "points_dropped",
    ];
    want.sort();
    assert_eq!(keys, want);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// The HTML page in a real browser
// ---------------------------------------------------------------------------------------

/// The Chromium binary, or why the test cannot run.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Renders `page` headless at 1200x1600 and returns the screenshot's RGB pixels.
fn screenshot(browser: &Path, page: &Path, dir: &Path) -> Vec<[u8; 3]> {
    let png = dir.join(format!(
        "{}.png",
        page.file_stem().and_then(|n| n.to_str()).unwrap_or("page")
    ));
    let profile = dir.join("chromium-profile");
    let page = page.canonicalize().expect("page path");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,1600",
            &format!("file://{}", page.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium took more than 120 s to take a screenshot");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = child
        .wait_with_output()
        .map(|o| text(&o.stderr))
        .unwrap_or_default();
    assert!(
        status.success() && png.exists(),
        "chromium failed ({status}): {err}"
    );
    let file = std::fs::File::open(&png).expect("screenshot");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!((info.width, info.height), (1200, 1600), "window size");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|px| [px[0], px[1], px[2]])
        .collect()
}

/// Pixels within a small distance of `rgb` (anti-aliased edges do not count).
fn count(pixels: &[[u8; 3]], rgb: [u8; 3]) -> usize {
    pixels
        .iter()
        .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 12))
        .count()
}

#[test]
fn html_page_renders_lanes_and_points_in_chromium() {
    let dir = temp_dir("html");
    // One record with warn points (zero window, retransmissions) and an error (the RST).
    let log = replay(&dir, &capture("zeek_http_206_example_b.pcap"), &[]);
    let id = show(&log, &["--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|r| r["c2s"]["zero_window"] == 57)
        .map(|r| r["id"].to_string())
        .expect("zero-window record");
    let page = dir.join("zero-window.html");
    let out = conntrail(&["show", s(&log), &id, "--html", s(&page)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1 record written to "));
    // A control: the unanswered SYNs of the TLS capture, warn points and no error point.
    let dir2 = temp_dir("html-control");
    let log2 = replay(
        &dir2,
        &capture("suricata_ssl_version_negated.pcap"),
        &["--record", "all"],
    );
    let control = dir.join("unanswered.html");
    let out = conntrail(&["show", s(&log2), "0", "--html", s(&control)]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    for p in [&page, &control] {
        let html = std::fs::read_to_string(p).expect("page");
        assert!(
            html.contains("<svg") && html.contains("why kept:"),
            "{html}"
        );
        for banned in ["<script", "src=", "href=", "http://", "https://", "url("] {
            assert!(!html.contains(banned), "{banned} in {}", p.display());
        }
    }
    let page_html = std::fs::read_to_string(&page).expect("page");
    assert!(page_html.contains("57 zero-window advertisements from the client"));
    assert!(page_html.contains("client 192.168.72.14:3254"));

    if chromium().is_none() && std::env::var("CONNTRAIL_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("CONNTRAIL_SKIP_BROWSER=1: the page was not rendered in a browser");
        return;
    }
    let browser = chromium().unwrap_or_else(|| {
        panic!(
            "chromium is not installed: this test renders the --html page in headless \
             Chromium (scripts/setup.sh installs it); set CONNTRAIL_SKIP_BROWSER=1 to skip"
        )
    });
    let pixels = screenshot(&browser, &page, &dir);
    let (lane, warn, error) = (
        count(&pixels, LANE_RGB),
        count(&pixels, WARN_RGB),
        count(&pixels, ERROR_RGB),
    );
    // Measured: ~7,900 lane, ~16,700 orange and ~1,650 red pixels. Two 5 px lanes over
    // ~900 px; 13 warn points and one error point, each a filled marker, a 3 px arrow
    // across ~460 px and an arrowhead. Without the SVG (or with the wrong colours) these
    // are all near zero: nothing else on the page uses these colours.
    assert!(lane > 4_000, "lanes not drawn: {lane} lane-blue pixels");
    assert!(
        warn > 13 * 300,
        "warn points not drawn: {warn} orange pixels"
    );
    assert!(error > 600, "error point not drawn: {error} red pixels");

    let pixels = screenshot(&browser, &control, &dir);
    let (lane, warn, error) = (
        count(&pixels, LANE_RGB),
        count(&pixels, WARN_RGB),
        count(&pixels, ERROR_RGB),
    );
    // Measured: ~2,300 lane and ~3,500 orange pixels, no red.
    assert!(lane > 1_000, "control lanes not drawn: {lane}");
    assert!(warn > 2 * 300, "control warn points not drawn: {warn}");
    assert!(
        error < 20,
        "no error point in the control, yet {error} red pixels"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}
