//! Recovery after a crash: the records a dead engine left in its rings are written to its log
//! exactly once.
//!
//! The recorder releases a ring's space only after the frames taken from it are in the log
//! (see [`crate::thread::spawn`]), so after a crash a ring holds every frame handed to it
//! that might not be in the log. Some of them may be: a crash between the write and the
//! release leaves frames in both places. Frames of one ring reach the log in ring order, so
//! the ones already there are a prefix of what the ring holds, and they are found by
//! comparing the log's frames with the ring's, byte for byte (every record carries a unique
//! id, so two distinct records never compare equal). The rest is appended after the log's
//! last intact frame; a frame torn by the crash is cut off first.
//!
//! A ring frame that fails its CRC is never written: the ring skips it, and the recovery
//! reports it per ring ([`Recovery::checksum_failures`]) beside the rings whose framing broke
//! ([`Recovery::corrupt_rings`]). So damage in a ring file loses records, it never changes one.
//!
//! Running recovery twice over the same rings writes nothing the second time.

use std::path::{Path, PathBuf};

use crate::reader::LogReader;
use crate::thread::Route;
use crate::writer::{LogWriter, Retention, WriterStats};
use crate::RecorderError;

/// What [`recover`] did, per ring (in the order given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Frames the ring held that were not in the log, now written.
    pub written_per_ring: Vec<u64>,
    /// Frames the ring held that the log already had (not written again).
    pub already_logged_per_ring: Vec<u64>,
    /// Frames too large for the log (not written).
    pub rejected_per_ring: Vec<u64>,
    /// Rings whose contents turned out corrupt part-way, with what is wrong; the frames
    /// before the corruption are recovered.
    pub corrupt_rings: Vec<(usize, ring::Corruption)>,
    /// Rings holding frames that failed their CRC (skipped, not written), in ring order.
    pub checksum_failures: Vec<RingChecksumFailures>,
    /// Each log's writer counters (frames lost to a full disk included), in the order
    /// given; a log nothing was recovered for has zeros.
    pub writers: Vec<WriterStats>,
}

/// Frames of one ring that failed their CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChecksumFailures {
    /// Index of the ring in the order given to [`recover`].
    pub ring: usize,
    /// The ring file.
    pub path: PathBuf,
    /// How many frames, and where the first one starts in the ring file.
    pub failures: ring::ChecksumFailures,
}

impl Recovery {
    /// Frames written by the recovery, all rings together.
    pub fn written(&self) -> u64 {
        self.written_per_ring.iter().sum()
    }

    /// Frames found already in the log, all rings together.
    pub fn already_logged(&self) -> u64 {
        self.already_logged_per_ring.iter().sum()
    }

    /// Frames lost to a full disk, all logs together.
    pub fn frames_lost(&self) -> u64 {
        self.writers.iter().map(|w| w.frames_lost).sum()
    }
}

/// Writes the frames left in `rings` that `log` does not hold yet to the end of `log`
/// (started when there is none), under `retention`, and releases them from the rings.
pub fn recover(
    log: &Path,
    retention: Retention,
    rings: Vec<ring::Consumer>,
) -> Result<Recovery, RecorderError> {
    recover_routed(&[(log, retention)], None, rings)
}

/// [`recover`] for an engine that wrote several logs: each frame goes to the log `route`
/// picks, as the recorder's [`crate::thread::Logs::routed`] would have sent it (`None`:
/// all to the first). A log none of the frames belongs to is left as it is.
pub fn recover_routed(
    logs: &[(&Path, Retention)],
    route: Option<Route>,
    mut rings: Vec<ring::Consumer>,
) -> Result<Recovery, RecorderError> {
    let mut recovery = Recovery {
        written_per_ring: vec![0; rings.len()],
        already_logged_per_ring: vec![0; rings.len()],
        rejected_per_ring: vec![0; rings.len()],
        ..Recovery::default()
    };
    let mut left: Vec<Vec<Vec<u8>>> = Vec::with_capacity(rings.len());
    for (index, consumer) in rings.iter_mut().enumerate() {
        let mut frames = Vec::new();
        while consumer.pop_unreleased(|frame| frames.push(frame.to_vec())) {}
        if let Some(corruption) = consumer.corruption() {
            recovery.corrupt_rings.push((index, corruption.clone()));
        }
        let failures = consumer.checksum_failures();
        if failures.frames > 0 {
            recovery.checksum_failures.push(RingChecksumFailures {
                ring: index,
                path: consumer.path().to_path_buf(),
                failures,
            });
        }
        left.push(frames);
    }
    let log_of = |frame: &[u8]| {
        route
            .map(|r| r(frame))
            .filter(|i| *i < logs.len())
            .unwrap_or(0)
    };
    for (log_index, (log, retention)) in logs.iter().enumerate() {
        // Each ring's frames for this log, in ring order: the recorder wrote them so.
        let mine: Vec<Vec<&Vec<u8>>> = left
            .iter()
            .map(|frames| frames.iter().filter(|f| log_of(f) == log_index).collect())
            .collect();
        if mine.iter().all(Vec::is_empty) {
            // Nothing in flight for it: the log is left as it is.
            recovery.writers.push(WriterStats::default());
            continue;
        }
        // How many of each ring's frames, from the oldest, the log already holds.
        let mut logged = vec![0usize; mine.len()];
        if let Ok(reader) = LogReader::open(log) {
            for frame in reader.flatten() {
                for (frames, count) in mine.iter().zip(logged.iter_mut()) {
                    if frames.get(*count).is_some_and(|f| **f == frame.payload) {
                        *count += 1;
                        break;
                    }
                }
            }
        }
        let mut writer = LogWriter::resume(log, *retention)?;
        for (index, frames) in mine.iter().enumerate() {
            let count = logged[index];
            recovery.already_logged_per_ring[index] += count as u64;
            for frame in frames.iter().skip(count) {
                match writer.append(frame) {
                    Ok(()) => recovery.written_per_ring[index] += 1,
                    Err(RecorderError::PayloadTooLarge { .. }) => {
                        recovery.rejected_per_ring[index] += 1
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        writer.flush()?;
        recovery.writers.push(writer.stats());
    }
    for consumer in &mut rings {
        consumer.release();
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{FrameHeader, FRAME_HEADER_LEN};
    use crate::test_dir::TestDir;
    use std::io::Write;

    fn frame(i: u8) -> Vec<u8> {
        let mut f = vec![i; 20 + usize::from(i)];
        f[0] = 0x90 | (i & 0x0f);
        f
    }

    fn payloads(log: &Path) -> Vec<Vec<u8>> {
        LogReader::open(log)
            .unwrap()
            .map(|item| item.expect("no damage").payload)
            .collect()
    }

    /// A record encoded as a worker encodes it, told apart by `id`.
    fn engine_record(id: u64) -> Vec<u8> {
        use flowtable::record::{
            Addr, CloseReason, ConnState, DirStats, Endpoint, Flags, History, Latency, Proto,
            Record,
        };
        use std::borrow::Cow;
        let mut history = History::default();
        for b in b"ShADadFf" {
            history.push(*b);
        }
        let ip = |s: &str| Addr::from_ip(s.parse().unwrap());
        let rec = Record {
            id,
            worker: 0,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 4,
            client: Endpoint {
                ip: ip("192.0.2.10"),
                port: 40_000 + id as u16,
            },
            server: Endpoint {
                ip: ip("198.51.100.7"),
                port: 443,
            },
            midstream: false,
            vlans: Cow::Owned(vec![]),
            start_ns: 1_700_000_000_000_000_000 + id * 1_000_000,
            end_ns: 1_700_000_001_000_000_000 + id * 1_000_000,
            c2s: DirStats {
                pkts: 6 + id,
                bytes: 700 + id,
                payload: 300,
                ..Default::default()
            },
            s2c: DirStats {
                pkts: 5,
                bytes: 5_000 + id,
                payload: 4_200,
                ..Default::default()
            },
            close_reason: CloseReason::TcpFin,
            conn_state: ConnState::SF,
            history,
            flags: Flags(0),
            irregular_point: None,
            latency: Latency {
                syn_synack_ns: Some(1_500 + id),
                ..Default::default()
            },
            points: Cow::Owned(vec![]),
            points_dropped: 0,
            icmp_type_code: 0,
        };
        let mut buf = Vec::new();
        flowtable::record::codec::encode(&rec, &mut buf);
        buf
    }

    #[test]
    fn bit_flips_in_pending_ring_frames_never_become_changed_records() {
        let dir = TestDir::new("recover-flips");
        let original = dir.path().join("ring");
        let records: Vec<Vec<u8>> = (1..=8).map(engine_record).collect();
        {
            let (mut producer, _consumer) = ring::create(&original, 4096).unwrap();
            for record in &records {
                producer.push(record).unwrap();
            }
        }
        // Where each frame starts in the file (ring/src/spsc.rs: a 512-byte header, then
        // records of [len][check][payload][crc] padded to 8 bytes).
        let mut starts = Vec::new();
        let mut at = 512u64;
        for record in &records {
            starts.push(at);
            at += ((8 + record.len() + 4 + 7) & !7) as u64;
        }
        // 40 flips in payloads, then 8 in frame headers (the framing).
        let flips = (0..48usize).map(|i| {
            let frame = i % records.len();
            let within = if i < 40 {
                8 + (i * 37) % records[frame].len()
            } else {
                i % 8
            };
            (frame, starts[frame] + within as u64, 1u8 << (i % 8))
        });
        let bytes = std::fs::read(&original).unwrap();
        for (n, (frame, offset, bit)) in flips.enumerate() {
            let copy = dir.path().join(format!("ring-{n}"));
            let log = dir.path().join(format!("LOG-{n}"));
            let mut damaged = bytes.clone();
            damaged[offset as usize] ^= bit;
            std::fs::write(&copy, &damaged).unwrap();
            let recovery = recover(
                &log,
                Retention::rotate_at(u64::MAX),
                vec![ring::open(&copy).unwrap()],
            )
            .unwrap();
            // Nothing to write (a flip in the first frame's header) leaves no log.
            let logged = if log.exists() {
                payloads(&log)
            } else {
                Vec::new()
            };
            for record in &logged {
                assert!(
                    records.contains(record),
                    "flip {n} at {offset}: a changed record reached the log"
                );
            }
            let what = format!("flip {n} at byte {offset} of frame {frame}");
            if n < 40 {
                assert_eq!(
                    recovery.checksum_failures,
                    vec![RingChecksumFailures {
                        ring: 0,
                        path: copy.clone(),
                        failures: ring::ChecksumFailures {
                            frames: 1,
                            first_offset: starts[frame],
                        },
                    }],
                    "{what}"
                );
                assert!(recovery.corrupt_rings.is_empty(), "{what}");
                let mut rest = records.clone();
                rest.remove(frame);
                assert_eq!(logged, rest, "{what}: every other record is written");
            } else {
                assert_eq!(recovery.corrupt_rings.len(), 1, "{what}");
                assert_eq!(logged, records[..frame], "{what}: the records before it");
            }
        }
    }

    #[test]
    fn a_crash_between_write_and_release_writes_nothing_twice() {
        let dir = TestDir::new("recover-window");
        let log = dir.path().join("LOG");
        let ring_path = dir.path().join("ring");
        {
            let (mut producer, mut consumer) = ring::create(&ring_path, 4096).unwrap();
            for i in 0..10 {
                producer.push(&frame(i)).unwrap();
            }
            let mut writer = LogWriter::create(&log, u64::MAX).unwrap();
            // Frames 0 and 1 written and released; 2..6 written, not released; 6 torn.
            for i in 0..6 {
                assert!(consumer.pop_unreleased(|f| writer.append(f).unwrap()));
                if i == 1 {
                    writer.flush().unwrap();
                    consumer.release();
                }
            }
            writer.flush().unwrap();
            drop(writer);
            let torn = frame(6);
            let header = FrameHeader::for_payload(&torn).unwrap().encode();
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            file.write_all(&header).unwrap();
            file.write_all(&torn[..5]).unwrap();
        }
        let recovery = recover(
            &log,
            Retention::rotate_at(u64::MAX),
            vec![ring::open(&ring_path).unwrap()],
        )
        .unwrap();
        assert_eq!(recovery.already_logged_per_ring, vec![4]);
        assert_eq!(recovery.written_per_ring, vec![4]);
        assert_eq!(payloads(&log), (0..10).map(frame).collect::<Vec<_>>());
        // The torn frame was cut off: the file is exactly the header and ten whole frames.
        let whole: u64 = 40
            + (0..10)
                .map(|i| (FRAME_HEADER_LEN + frame(i).len()) as u64)
                .sum::<u64>();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), whole);

        // Released by the recovery: a second one finds nothing.
        let again = recover(
            &log,
            Retention::rotate_at(u64::MAX),
            vec![ring::open(&ring_path).unwrap()],
        )
        .unwrap();
        assert_eq!(again.written(), 0);
        assert_eq!(payloads(&log).len(), 10);
    }

    #[test]
    fn a_second_recovery_of_unreleased_rings_finds_everything_logged() {
        let dir = TestDir::new("recover-twice");
        let log = dir.path().join("LOG");
        let paths = [dir.path().join("r0"), dir.path().join("r1")];
        for (w, path) in paths.iter().enumerate() {
            let (mut producer, _consumer) = ring::create(path, 4096).unwrap();
            for i in 0..5 {
                producer.push(&frame(i * 2 + w as u8)).unwrap();
            }
        }
        std::fs::write(&log, b"").unwrap();
        // Recovery killed after writing but before releasing: simulated by recovering from
        // copies of the ring files.
        for path in &paths {
            let mut copy = path.clone().into_os_string();
            copy.push(".copy");
            std::fs::copy(path, &copy).unwrap();
        }
        let open_all = |suffix: &str| {
            paths
                .iter()
                .map(|p| {
                    let mut name = p.clone().into_os_string();
                    name.push(suffix);
                    ring::open(Path::new(&name)).unwrap()
                })
                .collect::<Vec<_>>()
        };
        let first = recover(&log, Retention::rotate_at(u64::MAX), open_all("")).unwrap();
        assert_eq!(first.written_per_ring, vec![5, 5]);
        let second = recover(&log, Retention::rotate_at(u64::MAX), open_all(".copy")).unwrap();
        assert_eq!(second.written_per_ring, vec![0, 0]);
        assert_eq!(second.already_logged_per_ring, vec![5, 5]);
        let mut got = payloads(&log);
        got.sort();
        let mut want: Vec<_> = (0..10).map(frame).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn routed_recovery_writes_each_frame_once_to_its_own_log() {
        let dir = TestDir::new("recover-routed");
        let logs = [dir.path().join("LOG"), dir.path().join("LOG.dmz")];
        let ring_path = dir.path().join("ring");
        // Even frames belong to the first log, odd ones to the second.
        let route: Route = |f| usize::from(f[1] % 2);
        {
            let (mut producer, mut consumer) = ring::create(&ring_path, 4096).unwrap();
            for i in 0..12 {
                producer.push(&frame(i)).unwrap();
            }
            // The recorder wrote frames 0..5 to their logs and died before releasing them.
            let mut writers: Vec<_> = logs
                .iter()
                .map(|p| LogWriter::create(p, u64::MAX).unwrap())
                .collect();
            for _ in 0..5 {
                assert!(consumer.pop_unreleased(|f| writers[route(f)].append(f).unwrap()));
            }
        }
        let retention = Retention::rotate_at(u64::MAX);
        let recovery = recover_routed(
            &[(&logs[0], retention), (&logs[1], retention)],
            Some(route),
            vec![ring::open(&ring_path).unwrap()],
        )
        .unwrap();
        assert_eq!(recovery.already_logged_per_ring, vec![5]);
        assert_eq!(recovery.written_per_ring, vec![7]);
        for (i, log) in logs.iter().enumerate() {
            let want: Vec<_> = (0..12).map(frame).filter(|f| route(f) == i).collect();
            assert_eq!(payloads(log), want, "{}", log.display());
        }
    }
}
