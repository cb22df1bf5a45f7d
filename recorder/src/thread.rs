//! The recorder thread: drains every worker's ring into the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::writer::{LogWriter, WriterStats};
use crate::RecorderError;

/// Frames taken from one ring before moving to the next (round-robin fairness).
const BATCH_FRAMES: usize = 256;
/// Empty passes spent spinning, then yielding, before sleeping between passes.
const SPIN_PASSES: u32 = 64;
const YIELD_PASSES: u32 = 128;
/// Sleep between passes once idle.
const IDLE_SLEEP: Duration = Duration::from_micros(200);

/// What the recorder thread did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Frames written to the log, per ring (same order as the consumers given to [`spawn`]).
    pub frames_per_ring: Vec<u64>,
    /// Frames taken from a ring but not written because they exceed the log's maximum
    /// payload, per ring.
    pub rejected_per_ring: Vec<u64>,
    /// Rings that stopped delivering because their contents are corrupt, with what is wrong.
    pub corrupt_rings: Vec<(usize, ring::Corruption)>,
    /// The writer's counters: frames, bytes, segments.
    pub writer: WriterStats,
}

/// Starts the recorder thread (named `conntrail-recorder`).
///
/// It drains the rings round-robin into `writer`. After each pass that moved frames it
/// flushes the writer and only then releases the frames' ring space, so a frame is always in
/// the ring file or handed to the OS in the log: a crash loses nothing, and a frame may be
/// written twice if the crash falls between the flush and the release (recovery with
/// [`ring::open`] is at-least-once). When every ring is empty it spins briefly, then yields,
/// then sleeps ~200 µs between passes.
///
/// When `stop` is set it keeps draining until a whole pass finds every ring empty, flushes
/// and returns. Set `stop` after the producers have stopped pushing: frames pushed after the
/// final pass stay in their ring (and can be recovered by [`ring::open`]).
///
/// An I/O error of the writer ends the thread with that error; frames not yet written stay
/// in their rings.
pub fn spawn(
    consumers: Vec<ring::Consumer>,
    writer: LogWriter,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<RecorderStats, RecorderError>> {
    std::thread::Builder::new()
        .name("conntrail-recorder".into())
        .spawn(move || run(consumers, writer, &stop))
        // Same behaviour as `std::thread::spawn`, which panics on this OS failure too.
        .expect("the OS refused to start the recorder thread")
}

/// The body of the recorder thread, callable on the current thread.
pub fn run(
    mut consumers: Vec<ring::Consumer>,
    mut writer: LogWriter,
    stop: &AtomicBool,
) -> Result<RecorderStats, RecorderError> {
    let mut stats = RecorderStats {
        frames_per_ring: vec![0; consumers.len()],
        rejected_per_ring: vec![0; consumers.len()],
        ..RecorderStats::default()
    };
    let mut idle_passes = 0u32;
    loop {
        // Read before the pass: a pass that starts after `stop` and finds nothing means done.
        let stopping = stop.load(Ordering::Acquire);
        let moved = drain_pass(&mut consumers, &mut writer, &mut stats)?;
        if moved > 0 {
            writer.flush()?;
            for consumer in &mut consumers {
                consumer.release();
            }
            idle_passes = 0;
            continue;
        }
        if stopping {
            break;
        }
        idle_passes = idle_passes.saturating_add(1);
        if idle_passes <= SPIN_PASSES {
            std::hint::spin_loop();
        } else if idle_passes <= YIELD_PASSES {
            std::thread::yield_now();
        } else {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
    writer.flush()?;
    stats.writer = writer.stats();
    Ok(stats)
}

/// Takes up to [`BATCH_FRAMES`] from each ring in turn; returns how many frames it took.
fn drain_pass(
    consumers: &mut [ring::Consumer],
    writer: &mut LogWriter,
    stats: &mut RecorderStats,
) -> Result<usize, RecorderError> {
    let mut moved = 0;
    for (ring_index, consumer) in consumers.iter_mut().enumerate() {
        for _ in 0..BATCH_FRAMES {
            let mut failure = None;
            let popped = consumer.pop_unreleased(|frame| match writer.append(frame) {
                Ok(()) => stats.frames_per_ring[ring_index] += 1,
                Err(RecorderError::PayloadTooLarge { len, .. }) => {
                    stats.rejected_per_ring[ring_index] += 1;
                    log::warn!("ring {ring_index}: {len}-byte frame is too large for the log");
                }
                Err(e) => failure = Some(e),
            });
            if let Some(e) = failure {
                return Err(e);
            }
            if !popped {
                if let Some(corruption) = consumer.corruption() {
                    if !stats.corrupt_rings.iter().any(|(i, _)| *i == ring_index) {
                        log::error!("ring {ring_index} is corrupt, no longer read: {corruption}");
                        stats.corrupt_rings.push((ring_index, corruption.clone()));
                    }
                }
                break;
            }
            moved += 1;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::LogReader;
    use crate::test_dir::TestDir;

    #[test]
    fn two_rings_fed_by_two_threads_are_written_exactly_once() {
        const FRAMES: u64 = 50_000;
        let dir = TestDir::new("thread");
        let log = dir.path().join("tracker.log");
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for i in 0..2 {
            let (p, c) = ring::create(&dir.path().join(format!("ring{i}")), 16 * 1024).unwrap();
            producers.push(p);
            consumers.push(c);
        }
        let writer = LogWriter::create(&log, 256 * 1024).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = spawn(consumers, writer, Arc::clone(&stop));
        let feeders: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(ring_index, mut producer)| {
                std::thread::spawn(move || {
                    for seq in 0..FRAMES {
                        let mut frame = vec![ring_index as u8];
                        frame.extend_from_slice(&seq.to_le_bytes());
                        frame.resize(9 + (seq % 40) as usize, seq as u8);
                        while producer.push(&frame).is_err() {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for feeder in feeders {
            feeder.join().unwrap();
        }
        stop.store(true, Ordering::Release);
        let stats = recorder.join().unwrap().unwrap();
        assert_eq!(stats.frames_per_ring, vec![FRAMES, FRAMES]);
        assert_eq!(stats.writer.frames, 2 * FRAMES);
        assert!(stats.writer.segments > 1);
        assert!(stats.corrupt_rings.is_empty());

        let mut next = [0u64; 2];
        for item in LogReader::open(&log).unwrap() {
            let frame = item.unwrap();
            let ring_index = frame.payload[0] as usize;
            let seq = u64::from_le_bytes(frame.payload[1..9].try_into().unwrap());
            assert_eq!(
                seq, next[ring_index],
                "ring {ring_index}: order or duplicate"
            );
            assert_eq!(frame.payload.len(), 9 + (seq % 40) as usize);
            next[ring_index] += 1;
        }
        assert_eq!(next, [FRAMES, FRAMES]);
    }

    #[test]
    fn stop_drains_what_is_left_and_recovered_rings_are_drained() {
        let dir = TestDir::new("drain");
        let log = dir.path().join("LOG");
        let ring_path = dir.path().join("ring");
        {
            // A worker that pushed and crashed before any recorder ran.
            let (mut p, _c) = ring::create(&ring_path, 4096).unwrap();
            for i in 0..10u8 {
                p.push(&[i; 30]).unwrap();
            }
        }
        let recovered = ring::open(&ring_path).unwrap();
        let stop = Arc::new(AtomicBool::new(true));
        let writer = LogWriter::create(&log, u64::MAX).unwrap();
        let stats = spawn(vec![recovered], writer, stop)
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(stats.frames_per_ring, vec![10]);
        let payloads: Vec<_> = LogReader::open(&log)
            .unwrap()
            .map(|item| item.unwrap().payload)
            .collect();
        assert_eq!(payloads, (0..10u8).map(|i| vec![i; 30]).collect::<Vec<_>>());
        // Released after the flush: nothing is left to recover.
        assert!(ring::open(&ring_path).unwrap().is_empty());
    }
}
