//! One test per rule of the TCP sequence analysis ([`flowtable::tcp`]): a hand-made segment
//! sequence and, written by hand, the flags Wireshark gives each of its frames.
//!
//! Each test checks the answer twice. Our analysis must give it, and so must tshark: the
//! sequence is written to a pcap (Ethernet, IPv4, TCP) and tshark's `tcp.analysis.*` fields
//! for every frame must be the expected ones. That proves the expectation is Wireshark's,
//! not ours. Without tshark on the machine the second half is skipped, with a message
//! (`scripts/setup.sh` installs it).

use std::path::PathBuf;
use std::process::Command;

use flowtable::packet::tcp_flags::{ACK, FIN, PSH, SYN};
use flowtable::tcp::{self, Findings, Segment, Tcp};

/// One segment: when (µs from the start), who sends it (0 the client, 1 the server) and
/// its header.
#[derive(Clone, Copy)]
struct Seg {
    t_us: u64,
    from: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    len: u32,
}

fn c(t_us: u64, seq: u32, ack: u32, flags: u8, len: u32) -> Seg {
    Seg {
        t_us,
        from: 0,
        seq,
        ack,
        flags,
        window: 64000,
        len,
    }
}

fn s(t_us: u64, seq: u32, ack: u32, flags: u8, len: u32) -> Seg {
    Seg {
        from: 1,
        ..c(t_us, seq, ack, flags, len)
    }
}

fn win(mut seg: Seg, window: u16) -> Seg {
    seg.window = window;
    seg
}

/// SYN at 0, SYN-ACK at 10 ms, ACK at 20 ms: the initial RTT is 20 ms. Client ISN 1000,
/// server ISN 5000.
fn handshake() -> Vec<Seg> {
    vec![
        c(0, 1000, 0, SYN, 0),
        s(10_000, 5000, 1001, SYN | ACK, 0),
        c(20_000, 1001, 5001, ACK, 0),
    ]
}

/// The `tcp.analysis` fields compared, with the finding each one is.
const FIELDS: [(&str, u16); 13] = [
    ("retransmission", Findings::RETRANSMISSION),
    ("fast_retransmission", Findings::FAST_RETRANSMISSION),
    ("spurious_retransmission", Findings::SPURIOUS_RETRANSMISSION),
    ("out_of_order", Findings::OUT_OF_ORDER),
    ("duplicate_ack", Findings::DUP_ACK),
    ("zero_window", Findings::ZERO_WINDOW),
    ("zero_window_probe", Findings::ZERO_WINDOW_PROBE),
    ("zero_window_probe_ack", Findings::ZERO_WINDOW_PROBE_ACK),
    ("window_full", Findings::WINDOW_FULL),
    ("keep_alive", Findings::KEEP_ALIVE),
    ("keep_alive_ack", Findings::KEEP_ALIVE_ACK),
    ("lost_segment", Findings::LOST_SEGMENT),
    ("ack_lost_segment", Findings::ACKED_UNSEEN),
];

/// The names of the flags in `found`, as tshark's fields are named.
fn names(found: Findings) -> Vec<String> {
    FIELDS
        .iter()
        .filter(|(_, bit)| found.has(*bit))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Checks `segs` against `want` (frame number from 1, flags); unlisted frames have none.
fn check(name: &str, segs: &[Seg], want: &[(usize, &[&str])]) {
    let expected: Vec<Vec<String>> = (1..=segs.len())
        .map(|frame| {
            let mut v: Vec<String> = want
                .iter()
                .filter(|(f, _)| *f == frame)
                .flat_map(|(_, names)| names.iter().map(|n| n.to_string()))
                .collect();
            v.sort();
            v
        })
        .collect();

    match tshark(name, segs) {
        Some(theirs) => assert_eq!(theirs, expected, "{name}: tshark, frame by frame"),
        None => eprintln!("skipped the tshark half of {name}: tshark is not installed"),
    }
    let ours = analyse(segs);
    assert_eq!(ours, expected, "{name}: our analysis, frame by frame");
}

/// Our flags for each segment, through the fast path first as the flow table runs it.
fn analyse(segs: &[Seg]) -> Vec<Vec<String>> {
    let mut state = Tcp::default();
    segs.iter()
        .map(|x| {
            let seg = Segment {
                seq: x.seq,
                ack: x.ack,
                flags: x.flags,
                window: x.window,
                wscale: None,
                payload_len: x.len,
            };
            let ts = x.t_us * 1000;
            let found = if tcp::steady(&mut state, x.from, &seg, ts) {
                Findings::default()
            } else {
                tcp::analyse(&mut state, x.from, &seg, ts)
            };
            let mut v = names(found);
            v.sort();
            v
        })
        .collect()
}

/// tshark's flags for each frame of `segs` written as a capture, or `None` without tshark.
fn tshark(name: &str, segs: &[Seg]) -> Option<Vec<Vec<String>>> {
    let path = write_pcap(name, segs);
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"]).arg(&path);
    cmd.args(["-T", "fields", "-E", "separator=/t", "-e", "frame.number"]);
    for (field, _) in FIELDS {
        cmd.args(["-e", &format!("tcp.analysis.{field}")]);
    }
    let out = cmd.output().ok()?;
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("tshark prints UTF-8");
    let frames = text
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let mut v: Vec<String> = FIELDS
                .iter()
                .enumerate()
                .filter(|(i, _)| cols.get(i + 1).is_some_and(|c| !c.is_empty()))
                .map(|(_, (n, _))| n.to_string())
                .collect();
            // tshark sets `retransmission` beside `fast_retransmission` and
            // `spurious_retransmission`; we keep only the finer kind.
            if v.iter()
                .any(|n| n == "fast_retransmission" || n == "spurious_retransmission")
            {
                v.retain(|n| n != "retransmission");
            }
            v.sort();
            v
        })
        .collect();
    Some(frames)
}

/// Writes `segs` as a microsecond pcap of Ethernet frames between 10.0.0.1:40000 (the
/// client) and 10.0.0.2:80, payload bytes all zero.
fn write_pcap(name: &str, segs: &[Seg]) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("conntrail-rule-{name}-{}.pcap", std::process::id()));
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let hosts = [([10, 0, 0, 1], 40000u16), ([10, 0, 0, 2], 80u16)];
    for x in segs {
        let (src, dst) = (hosts[x.from], hosts[1 - x.from]);
        let mut frame = vec![
            2,
            0,
            0,
            0,
            0,
            2 - x.from as u8,
            2,
            0,
            0,
            0,
            0,
            1 + x.from as u8,
        ];
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = 40 + x.len as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src.0);
        ip.extend_from_slice(&dst.0);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&src.1.to_be_bytes());
        frame.extend_from_slice(&dst.1.to_be_bytes());
        frame.extend_from_slice(&x.seq.to_be_bytes());
        frame.extend_from_slice(&x.ack.to_be_bytes());
        frame.extend_from_slice(&[0x50, x.flags]);
        frame.extend_from_slice(&x.window.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.resize(frame.len() + x.len as usize, 0);
        let secs = (x.t_us / 1_000_000) as u32;
        let micros = (x.t_us % 1_000_000) as u32;
        out.extend_from_slice(&(1_700_000_000 + secs).to_le_bytes());
        out.extend_from_slice(&micros.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(&path, out).expect("write the capture");
    path
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn with_handshake(more: &[Seg]) -> Vec<Seg> {
    let mut v = handshake();
    v.extend_from_slice(more);
    v
}

const DATA: u8 = ACK | PSH;

#[test]
fn a_segment_sent_again_later_is_a_retransmission() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        c(31_000, 1101, 5001, DATA, 100),
        c(300_000, 1001, 5001, DATA, 100),
        s(301_000, 5001, 1201, ACK, 0),
    ]);
    check("retransmission", &segs, &[(6, &["retransmission"])]);
}

#[test]
fn data_the_peer_had_acknowledged_is_a_spurious_retransmission() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        s(40_000, 5001, 1101, ACK, 0),
        c(300_000, 1001, 5001, DATA, 100),
    ]);
    check("spurious", &segs, &[(6, &["spurious_retransmission"])]);
}

#[test]
fn a_resend_soon_after_two_duplicate_acks_is_a_fast_retransmission() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        c(31_000, 1201, 5001, DATA, 100),
        c(32_000, 1301, 5001, DATA, 100),
        s(40_000, 5001, 1101, ACK, 0),
        s(41_000, 5001, 1101, ACK, 0),
        s(42_000, 5001, 1101, ACK, 0),
        c(45_000, 1101, 5001, DATA, 100),
        s(46_000, 5001, 1401, ACK, 0),
    ]);
    check(
        "fast",
        &segs,
        &[
            (5, &["lost_segment"]),
            (8, &["duplicate_ack"]),
            (9, &["duplicate_ack"]),
            (10, &["fast_retransmission"]),
        ],
    );
}

#[test]
fn a_resend_long_after_the_duplicate_acks_is_a_plain_retransmission() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        c(31_000, 1201, 5001, DATA, 100),
        c(32_000, 1301, 5001, DATA, 100),
        s(40_000, 5001, 1101, ACK, 0),
        s(41_000, 5001, 1101, ACK, 0),
        s(42_000, 5001, 1101, ACK, 0),
        c(80_000, 1101, 5001, DATA, 100),
    ]);
    check(
        "late",
        &segs,
        &[
            (5, &["lost_segment"]),
            (8, &["duplicate_ack"]),
            (9, &["duplicate_ack"]),
            (10, &["retransmission"]),
        ],
    );
}

#[test]
fn a_gap_filled_within_the_initial_rtt_is_out_of_order() {
    let segs = with_handshake(&[
        c(30_000, 1101, 5001, DATA, 100),
        c(31_000, 1001, 5001, DATA, 100),
        s(32_000, 5001, 1201, ACK, 0),
    ]);
    check(
        "ooo",
        &segs,
        &[(4, &["lost_segment"]), (5, &["out_of_order"])],
    );
}

#[test]
fn without_a_handshake_the_out_of_order_threshold_is_3_ms() {
    let segs = [
        c(0, 1001, 5001, DATA, 100),
        c(1_000, 1201, 5001, DATA, 100),
        c(2_000, 1101, 5001, DATA, 100),
        c(10_000, 1001, 5001, DATA, 100),
    ];
    check(
        "ooo3ms",
        &segs,
        &[
            (2, &["lost_segment"]),
            (3, &["out_of_order"]),
            (4, &["retransmission"]),
        ],
    );
}

#[test]
fn a_quick_resend_that_ends_at_the_next_expected_byte_is_a_retransmission() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        c(30_500, 1101, 5001, DATA, 100),
        c(31_000, 1101, 5001, DATA, 100),
    ]);
    check("resend", &segs, &[(6, &["retransmission"])]);
}

#[test]
fn zero_window_probes_and_their_acks() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        win(s(31_000, 5001, 1101, ACK, 0), 0),
        c(231_000, 1101, 5001, DATA, 1),
        win(s(232_000, 5001, 1101, ACK, 0), 0),
        c(632_000, 1101, 5001, DATA, 1),
        s(633_000, 5001, 1102, ACK, 0),
        c(634_000, 1102, 5001, DATA, 100),
    ]);
    check(
        "zwp",
        &segs,
        &[
            (5, &["zero_window"]),
            (6, &["zero_window_probe"]),
            (7, &["zero_window", "zero_window_probe_ack"]),
            (8, &["zero_window_probe"]),
            (9, &["ack_lost_segment"]),
            (10, &["lost_segment"]),
        ],
    );
}

#[test]
fn keep_alives_and_their_acks_are_not_retransmissions_or_duplicate_acks() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        s(31_000, 5001, 1101, ACK, 0),
        c(60_031_000, 1100, 5001, ACK, 0),
        s(60_032_000, 5001, 1101, ACK, 0),
        c(120_032_000, 1100, 5001, ACK, 1),
        s(120_033_000, 5001, 1101, ACK, 0),
    ]);
    check(
        "keepalive",
        &segs,
        &[
            (6, &["keep_alive"]),
            (7, &["keep_alive_ack"]),
            (8, &["keep_alive"]),
            (9, &["keep_alive_ack"]),
        ],
    );
}

#[test]
fn a_repeated_ack_is_a_duplicate_unless_its_window_changed() {
    let segs = with_handshake(&[
        c(30_000, 1001, 5001, DATA, 100),
        s(31_000, 5001, 1101, ACK, 0),
        s(32_000, 5001, 1101, ACK, 0),
        win(s(33_000, 5001, 1101, ACK, 0), 65000),
        win(s(34_000, 5001, 1101, ACK, 0), 65000),
        win(s(35_000, 5001, 1101, DATA, 10), 65000),
    ]);
    check(
        "dupack",
        &segs,
        &[(6, &["duplicate_ack"]), (8, &["duplicate_ack"])],
    );
}

#[test]
fn data_up_to_the_edge_of_the_peers_window_fills_it() {
    let mut segs = handshake();
    segs[1].window = 300;
    segs.push(c(30_000, 1001, 5001, DATA, 300));
    check("window_full", &segs, &[(4, &["window_full"])]);
}

#[test]
fn a_syn_or_fin_sent_again_is_a_retransmission() {
    let segs = [
        c(0, 1000, 0, SYN, 0),
        c(1_000_000, 1000, 0, SYN, 0),
        s(1_010_000, 5000, 1001, SYN | ACK, 0),
        c(1_020_000, 1001, 5001, ACK, 0),
        c(1_030_000, 1001, 5001, FIN | ACK, 0),
        c(1_330_000, 1001, 5001, FIN | ACK, 0),
    ];
    check(
        "synfin",
        &segs,
        &[(2, &["retransmission"]), (6, &["retransmission"])],
    );
}

#[test]
fn an_ack_of_data_never_seen_is_flagged() {
    let segs = with_handshake(&[s(30_000, 5001, 1101, ACK, 0)]);
    check("acked_unseen", &segs, &[(4, &["ack_lost_segment"])]);
}

#[test]
fn a_syn_sent_again_after_a_reset_restarts_from_the_data_seen_without_a_hole() {
    use flowtable::packet::tcp_flags::RST;
    // The client resets a stray ACK (at its ACK number, far ahead), then tries again with
    // the same ISN: the new attempt is measured from its SYN, not from the reset.
    let segs = [
        c(0, 1000, 0, SYN, 0),
        s(20_000, 4000, 2_000_000, ACK, 0),
        c(20_200, 2_000_000, 0, RST, 0),
        c(3_060_000, 1000, 0, SYN, 0),
        s(3_080_000, 5000, 1001, SYN | ACK, 0),
        c(3_080_200, 1001, 5001, ACK, 0),
        c(3_080_300, 1001, 5001, DATA, 195),
    ];
    check(
        "syn_after_rst",
        &segs,
        &[
            (2, &["ack_lost_segment"]),
            (4, &["retransmission"]),
            (5, &["lost_segment"]),
            (6, &["ack_lost_segment"]),
        ],
    );
}
