//! Ring files left by a crash, in any state: `ring::open`, popping every frame and
//! `recorder::recover::recover` into a log never panic or hang, and every frame handed out
//! fits the ring.
//!
//! Input: `[shape: u8][capacity: u8][tail: u16][span: u16][bytes...]`, little-endian. With
//! `shape` even the ring file gets a valid header (layout of `ring/src/spsc.rs`) for a data
//! area of `64 << (capacity % 8)` bytes, `tail = 8 * tail`, `head = tail + 8 * (span %
//! (capacity / 8 + 1))`, and `bytes` fill the data area (zeros after them); that gets past
//! the header checks to the frames. With `shape` odd, `bytes` are the whole file.
#![no_main]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use recorder::writer::Retention;

/// Where the producer and consumer positions sit in the header.
const OFF_HEAD: usize = 128;
const OFF_TAIL: usize = 256;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("conntrail-fuzz-ring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn ring_file(input: &[u8]) -> Vec<u8> {
    let (Some(&shape), Some(&capacity), Some(tail), Some(span), Some(rest)) = (
        input.first(),
        input.get(1),
        input.get(2..4),
        input.get(4..6),
        input.get(6..),
    ) else {
        return input.to_vec();
    };
    if shape % 2 == 1 {
        return rest.to_vec();
    }
    let capacity = ring::spsc::MIN_CAPACITY << (capacity % 8);
    let tail = 8 * u64::from(u16::from_le_bytes([tail[0], tail[1]]));
    let span = u64::from(u16::from_le_bytes([span[0], span[1]])) % (capacity as u64 / 8 + 1);
    let head = tail + 8 * span;
    let mut file = vec![0u8; ring::spsc::HEADER_LEN + capacity];
    file[..8].copy_from_slice(&ring::spsc::MAGIC);
    file[8..12].copy_from_slice(&ring::spsc::VERSION.to_le_bytes());
    file[12..16].copy_from_slice(&(ring::spsc::HEADER_LEN as u32).to_le_bytes());
    file[16..24].copy_from_slice(&(capacity as u64).to_le_bytes());
    file[OFF_HEAD..OFF_HEAD + 8].copy_from_slice(&head.to_le_bytes());
    file[OFF_TAIL..OFF_TAIL + 8].copy_from_slice(&tail.to_le_bytes());
    file[384..392].copy_from_slice(&1u64.to_le_bytes());
    let n = rest.len().min(capacity);
    file[ring::spsc::HEADER_LEN..ring::spsc::HEADER_LEN + n].copy_from_slice(&rest[..n]);
    file
}

fuzz_target!(|input: &[u8]| {
    thread_local!(static DIR: PathBuf = scratch());
    let (path, log) = DIR.with(|d| (d.join("ring"), d.join("LOG")));
    let bytes = ring_file(input);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("the scratch ring file opens");
    file.write_all(&bytes)
        .expect("writing the scratch ring file");
    drop(file);

    let Ok(mut consumer) = ring::open(&path) else {
        return;
    };
    let capacity = consumer.capacity();
    let max_frame = consumer.max_frame();
    // Every record takes at least 16 bytes: more pops than that would be a loop.
    let mut popped = 0;
    while consumer.pop_unreleased(|frame| assert!(frame.len() <= max_frame)) {
        popped += 1;
        assert!(
            popped <= capacity / 16,
            "{popped} frames from {capacity} bytes"
        );
    }
    assert!(consumer.is_empty());
    let failures = consumer.checksum_failures();
    assert!(failures.frames <= (capacity / 16) as u64);
    drop(consumer);

    for entry in std::fs::read_dir(DIR.with(PathBuf::clone))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("LOG") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let consumer = ring::open(&path).expect("opened once, opens again");
    let recovery = recorder::recover::recover(&log, Retention::rotate_at(u64::MAX), vec![consumer])
        .expect("recovery into a fresh scratch log");
    let rejected: u64 = recovery.rejected_per_ring.iter().sum();
    assert_eq!(recovery.written() + rejected, popped as u64);
});
