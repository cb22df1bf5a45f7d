//! Damaged logs: frames corrupted in the middle of a real replayed, rotated log, in every way
//! the format can be damaged. `show` and `query` lose exactly the damaged records (every
//! other record comes out, in order), report each damaged place with its file and byte
//! offset, and exit with status 1.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use recorder::segments::segment_path;
use recorder::LogReader;

mod common;
use common::{conntrail, s, text};

/// One frame of the intact log: its segment, offset, total length and record id.
#[derive(Clone, Debug)]
struct Placed {
    segment: PathBuf,
    offset: u64,
    len: u64,
    id: u64,
}

fn ids_of_json_lines(out: &[u8]) -> Vec<u64> {
    text(out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["id"].as_u64().expect("id")
        })
        .collect()
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let mut content = std::fs::read(path).expect("segment");
    let at = at as usize;
    content[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, content).expect("segment written");
}

#[test]
fn show_and_query_lose_only_the_damaged_records() {
    let dir = std::env::temp_dir().join(format!("conntrail-damaged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let capture = dir.join("synth.pcap");
    let out = conntrail(&[
        "synth",
        "-o",
        s(&capture),
        "--flows",
        "3000",
        "--packets",
        "30000",
        "--seed",
        "9",
    ]);
    assert!(out.status.success());
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[ring]\ndir = {:?}\n[log]\nrotate_bytes = 131072\nmin_free_bytes = 0\n",
            s(&dir)
        ),
    )
    .expect("config");
    let log = dir.join("t.log");
    let out = conntrail(&[
        "replay",
        "--config",
        s(&cfg),
        "--record",
        "all",
        "--log",
        s(&log),
        s(&capture),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let frames: Vec<Placed> = LogReader::open(&log)
        .expect("log")
        .map(|item| {
            let f = item.expect("intact");
            Placed {
                segment: f.segment.to_path_buf(),
                offset: f.offset,
                len: 12 + f.payload.len() as u64,
                id: flowtable::record::codec::decode(&f.payload)
                    .expect("record")
                    .id,
            }
        })
        .collect();
    assert_eq!(frames.len(), 3000);
    let in_segment = |index: u32| -> Vec<usize> {
        let path = segment_path(&log, index);
        (0..frames.len())
            .filter(|&i| frames[i].segment == path)
            .collect()
    };
    let (s0, s1, s2, s3) = (in_segment(0), in_segment(1), in_segment(2), in_segment(3));
    assert!(s3.len() > 10, "the log has at least four segments");
    let mut lost = Vec::new();
    let mut places = Vec::new();

    // A flipped payload byte: bad checksum.
    let f = &frames[s0[s0.len() / 2]];
    patch(&f.segment, f.offset + 20, &[0xEE]);
    lost.push(f.id);
    places.push((f.segment.clone(), f.offset));
    // An overwritten sync marker.
    let f = &frames[s1[5]];
    patch(&f.segment, f.offset, b"XXXX");
    lost.push(f.id);
    places.push((f.segment.clone(), f.offset));
    // A length field far beyond the file.
    let f = &frames[s1[s1.len() / 2]];
    patch(&f.segment, f.offset + 4, &u32::MAX.to_le_bytes());
    lost.push(f.id);
    places.push((f.segment.clone(), f.offset));
    // A zeroed run across the end of one frame and the start of the next: both go.
    let (a, b) = (&frames[s2[7]], &frames[s2[8]]);
    patch(&a.segment, a.offset + a.len - 10, &[0; 20]);
    lost.extend([a.id, b.id]);
    places.push((a.segment.clone(), a.offset));
    // A damaged file header: the frames behind it are still found.
    let first_of_3 = &frames[s3[0]];
    patch(&first_of_3.segment, 0, b"NOTALOG!");
    places.push((first_of_3.segment.clone(), 0));
    // The newest segment cut inside its last frame.
    let last = frames.last().expect("frames");
    let cut = std::fs::read(&last.segment).expect("segment");
    std::fs::write(&last.segment, &cut[..(last.offset + last.len - 7) as usize]).expect("cut");
    lost.push(last.id);
    places.push((last.segment.clone(), last.offset));

    let lost: HashSet<u64> = lost.into_iter().collect();
    let expected: Vec<u64> = frames
        .iter()
        .map(|f| f.id)
        .filter(|id| !lost.contains(id))
        .collect();
    assert_eq!(expected.len(), 3000 - 6);

    let show = conntrail(&["show", "--json", s(&log)]);
    assert_eq!(show.status.code(), Some(1));
    assert_eq!(ids_of_json_lines(&show.stdout), expected);
    let query = conntrail(&["query", s(&log), "--json"]);
    assert_eq!(query.status.code(), Some(1));
    assert_eq!(ids_of_json_lines(&query.stdout), expected);
    for out in [&show, &query] {
        let err = text(&out.stderr);
        for (segment, offset) in &places {
            let place = format!("{}: byte {offset}", segment.display());
            assert!(err.contains(&place), "{place} not reported in:\n{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
