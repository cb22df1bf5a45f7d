//! The log reader over any segment contents: every byte is accounted for as frames or damage,
//! and every intact frame's payload goes through the record decoder.
//!
//! Input: the bytes of the base file `LOG`; when it contains the split marker `LOG.1`, the
//! bytes after it become a second segment.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use recorder::LogReader;

const SPLIT: &[u8] = b"LOG.1";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("conntrail-fuzz-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fuzz_target!(|input: &[u8]| {
    thread_local!(static DIR: PathBuf = scratch());
    let base = DIR.with(|d| d.join("LOG"));
    let second = DIR.with(|d| d.join("LOG.1"));
    let split = input.windows(SPLIT.len()).position(|w| w == SPLIT);
    let (first, rest) = match split {
        Some(at) => (&input[..at], Some(&input[at + SPLIT.len()..])),
        None => (input, None),
    };
    std::fs::write(&base, first).expect("writing the scratch log");
    match rest {
        Some(bytes) => std::fs::write(&second, bytes).expect("writing the scratch segment"),
        None => {
            let _ = std::fs::remove_file(&second);
        }
    }
    let reader = LogReader::open(&base).expect("the scratch log opens");
    let mut payload_bytes = 0u64;
    for item in reader {
        match item {
            Ok(frame) => {
                payload_bytes += frame.payload.len() as u64;
                let _ = flowtable::record::codec::decode(&frame.payload);
            }
            Err(damage) => assert!(!damage.to_string().is_empty()),
        }
    }
    assert!(payload_bytes <= input.len() as u64);
});
