//! A capture with a damaged record length in the middle, replayed by the real binary: the
//! records after the damage are read too, the damaged place is reported on stderr with the
//! file and byte offset, and the exit status is 1.

mod common;
use common::{conntrail, corpus, s, temp_dir, text};

/// The offset of each record of a little-endian legacy pcap.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        offsets.push(at);
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        at += 16 + caplen as usize;
    }
    offsets
}

fn packets(stdout: &[u8]) -> u64 {
    text(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("packets: "))
        .and_then(|n| n.parse().ok())
        .expect("packets line")
}

#[test]
fn replay_reads_past_a_bad_record_length_and_exits_1() {
    let dir = temp_dir("damaged-capture");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, format!("[ring]\ndir = {:?}\n", s(&dir))).expect("config");
    let intact = std::fs::read(corpus("zeek_http_methods.pcap")).expect("corpus");
    let offsets = record_offsets(&intact);
    let at = offsets[offsets.len() / 2];
    let mut bytes = intact.clone();
    bytes[at + 8..at + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let damaged = dir.join("damaged.pcap");
    std::fs::write(&damaged, &bytes).expect("capture");
    let replay = |capture: &std::path::Path| {
        conntrail(&[
            "replay",
            "--config",
            s(&cfg),
            "--overwrite",
            "--log",
            s(&dir.join("t.log")),
            s(capture),
        ])
    };
    let whole = replay(&corpus("zeek_http_methods.pcap"));
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    let out = replay(&damaged);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(packets(&out.stdout), packets(&whole.stdout) - 1, "{err}");
    let line = format!(
        "conntrail: {}: capture damaged at byte {at}: record length 4294967280 is over the \
         snapshot length",
        damaged.display()
    );
    assert!(err.starts_with(&line), "{err}");
    assert!(err.contains("bytes to the next plausible one"), "{err}");
    assert!(
        !text(&out.stdout).contains("damaged"),
        "damage goes to stderr"
    );
    std::fs::remove_dir_all(&dir).ok();
}
