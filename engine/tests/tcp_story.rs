//! The story `show` tells of a real connection that went on after a reset, and the largest
//! silence it reports, on `suricata_tls_tls-subjectaltname.pcap`: the client
//! 192.168.100.206:59621 resets a stray ACK 18.5 ms after its SYN, sends the same SYN again
//! 3.1 s later, and the connection then runs to a FIN both ways at +18.5 s. tshark
//! (`tcp.stream`) holds all of it as one stream; so does our record. The times in the
//! expected sentence are tshark's (`frame.time_relative` of frames 10, 14, 20, 21 and 245).

mod common;

use serde_json::Value;

#[test]
fn a_connection_that_went_on_after_its_reset_is_told_as_it_happened() {
    let dir = common::temp_dir("story");
    let log = dir.join("t.log");
    let cap = common::corpus("suricata_tls_tls-subjectaltname.pcap");
    let replayed = common::conntrail(&[
        "replay",
        "--record",
        "all",
        "--log",
        common::s(&log),
        common::s(&cap),
    ]);
    assert!(
        replayed.status.success(),
        "{}",
        common::text(&replayed.stderr)
    );
    let found = common::conntrail(&["query", "--json", common::s(&log), "client.port=59621"]);
    let recs: Vec<Value> = common::text(&found.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let [rec] = &recs[..] else {
        panic!("one record for port 59621: {recs:?}");
    };
    assert_eq!(
        rec["close_reason"], "tcp-rst-client",
        "the first reset, as tshark's"
    );
    let id = rec["id"].as_u64().expect("id").to_string();
    let shown = common::conntrail(&["show", common::s(&log), &id]);
    let text = common::text(&shown.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.contains(
            "client reset the connection 18.5 ms after its own SYN, then it went on: the client \
             sent its SYN again at +3.1 s, the server answered at +3.1 s, and it closed with \
             FIN both ways at +18.5 s"
        ),
        "{text}"
    );
    // The longest silence is the one the header reports, and the timeline marks its end:
    // tshark's frames 31 and 244 of the stream, 15.221614 s apart.
    let stall = rec["latency_ns"]["max_stall"].as_u64().expect("max_stall");
    assert_eq!(stall, 15_221_614_000, "{text}");
    assert!(text.contains("largest stall 15.222 s"), "{text}");
    assert!(text.contains("stall (15.222 s of silence)"), "{text}");
}
