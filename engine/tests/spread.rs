//! Replay with several workers spreads plain TCP frames on a key read from the raw bytes:
//! that key must be the parser's, or the two directions of a connection could part.

mod common;

use std::path::Path;

use capture::read_capture;
use flowtable::key::FlowKey;
use flowtable::packet::parse;
use synth::SynthOptions;

/// Checks every frame of `path`; returns (frames, frames with a raw-bytes key).
fn check(path: &Path) -> (usize, usize) {
    let (mut frames, mut fast) = (0, 0);
    read_capture(
        path,
        |link, _, _, bytes| {
            frames += 1;
            let Some(raw) = FlowKey::of_plain_tcp_frame(link, bytes) else {
                return;
            };
            fast += 1;
            let parsed = parse(link, bytes).ok().and_then(|pkt| FlowKey::of(&pkt));
            assert_eq!(
                Some(raw),
                parsed,
                "{}: frame {frames}: raw-bytes key differs from the parser's",
                path.display()
            );
        },
        |_| {},
    )
    .expect("reading the capture");
    (frames, fast)
}

#[test]
fn raw_bytes_key_is_the_parsers_on_every_corpus_frame() {
    let mut captures = common::corpus_captures();
    let tmp = common::temp_dir("spread");
    let synth_pcap = tmp.join("synth.pcap");
    let opts = SynthOptions {
        flows: 500,
        packets: 5_000,
        seed: 7,
        anomaly_share: 0.3,
        duration_s: 5.0,
    };
    synth::write(&opts, &synth_pcap, &tmp.join("synth.truth.jsonl")).expect("synth capture");
    captures.push(synth_pcap);
    let (mut frames, mut fast) = (0, 0);
    for c in &captures {
        let (n, f) = check(c);
        frames += n;
        fast += f;
    }
    eprintln!("{fast} of {frames} frames with a raw-bytes key");
    // Most frames take the short way; the others (VLANs, tunnels, UDP, ICMP, fragments,
    // other link types) are still parsed.
    assert!(
        fast * 2 > frames,
        "{fast} of {frames} frames with a raw-bytes key"
    );
    assert!(fast < frames, "some frames need the parser");
    let _ = std::fs::remove_dir_all(&tmp);
}
