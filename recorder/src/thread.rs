//! The recorder thread: drains every worker's ring into the log, or into one log per
//! context when the frames are routed ([`Logs::routed`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Which log a frame goes to, from its payload: an index into the logs of [`Logs::routed`]
/// (one out of range means the first).
pub type Route = fn(&[u8]) -> usize;

/// The logs the recorder writes: one, or several with the [`Route`] that picks each frame's.
#[derive(Debug)]
pub struct Logs {
    writers: Vec<LogWriter>,
    route: Option<Route>,
}

impl Logs {
    /// Every frame to `writer`.
    pub fn one(writer: LogWriter) -> Logs {
        Logs {
            writers: vec![writer],
            route: None,
        }
    }

    /// Each frame to the log `route` names: `first` (index 0, also where frames with an
    /// index out of range go), then `rest` (1, 2, ...).
    pub fn routed(first: LogWriter, rest: Vec<LogWriter>, route: Route) -> Logs {
        let mut writers = vec![first];
        writers.extend(rest);
        Logs {
            writers,
            route: Some(route),
        }
    }

    /// How many logs there are.
    pub fn len(&self) -> usize {
        self.writers.len()
    }

    /// Whether there are none (never: there is always a first).
    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }

    /// The log of a payload.
    fn index_of(&self, payload: &[u8]) -> usize {
        match self.route {
            Some(route) => Some(route(payload))
                .filter(|i| *i < self.writers.len())
                .unwrap_or(0),
            None => 0,
        }
    }

    fn flush(&mut self) -> Result<(), RecorderError> {
        self.writers.iter_mut().try_for_each(LogWriter::flush)
    }
}

/// What the recorder has written so far, published after every pass that wrote something,
/// for a metrics endpoint or a stats file to read while the engine runs.
#[derive(Debug)]
pub struct Progress {
    per_ring: Vec<AtomicU64>,
    per_log: Vec<AtomicU64>,
    checksum_failures_per_ring: Vec<AtomicU64>,
}

impl Progress {
    /// Counters for `rings` rings and `logs` logs, all 0.
    pub fn new(rings: usize, logs: usize) -> Arc<Progress> {
        Arc::new(Progress {
            per_ring: (0..rings).map(|_| AtomicU64::new(0)).collect(),
            per_log: (0..logs).map(|_| AtomicU64::new(0)).collect(),
            checksum_failures_per_ring: (0..rings).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Records written from ring `ring` so far.
    pub fn written_from_ring(&self, ring: usize) -> u64 {
        self.per_ring
            .get(ring)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Records written to log `log` so far.
    pub fn written_to_log(&self, log: usize) -> u64 {
        self.per_log
            .get(log)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Frames of ring `ring` skipped so far because they failed their checksum.
    pub fn checksum_failures_in_ring(&self, ring: usize) -> u64 {
        self.checksum_failures_per_ring
            .get(ring)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn publish(&self, stats: &RecorderStats) {
        for (counter, n) in self.per_ring.iter().zip(&stats.frames_per_ring) {
            counter.store(*n, Ordering::Relaxed);
        }
        for (counter, n) in self.per_log.iter().zip(&stats.frames_per_log) {
            counter.store(*n, Ordering::Relaxed);
        }
        for (counter, f) in self
            .checksum_failures_per_ring
            .iter()
            .zip(&stats.checksum_failures_per_ring)
        {
            counter.store(f.frames, Ordering::Relaxed);
        }
    }
}

/// What the recorder thread did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Frames written to the logs, per ring (same order as the consumers given to [`spawn`]).
    pub frames_per_ring: Vec<u64>,
    /// Frames written, per log (in the order of [`Logs`]).
    pub frames_per_log: Vec<u64>,
    /// Frames taken from a ring but not written because they exceed the log's maximum
    /// payload, per ring.
    pub rejected_per_ring: Vec<u64>,
    /// Frames skipped because they failed their checksum (damaged in the ring's memory),
    /// per ring: how many, and where the first was.
    pub checksum_failures_per_ring: Vec<ring::ChecksumFailures>,
    /// Rings that stopped delivering because their contents are corrupt, with what is wrong.
    pub corrupt_rings: Vec<(usize, ring::Corruption)>,
    /// Each log writer's counters (frames, bytes, segments), in the order of [`Logs`].
    pub writers: Vec<WriterStats>,
    /// CPU time the recorder thread used (user and system).
    pub cpu: Duration,
}

impl RecorderStats {
    /// The counters of all the logs added up.
    pub fn writers_total(&self) -> WriterStats {
        let mut t = WriterStats::default();
        for w in &self.writers {
            t.frames += w.frames;
            t.payload_bytes += w.payload_bytes;
            t.file_bytes += w.file_bytes;
            t.segments += w.segments;
            t.frames_lost += w.frames_lost;
            t.no_space_errors += w.no_space_errors;
            t.segments_deleted += w.segments_deleted;
            t.bytes_deleted += w.bytes_deleted;
        }
        t
    }
}

/// Starts the recorder thread (named `conntrail-recorder`).
///
/// It drains the rings round-robin into `logs`. After each pass that moved frames it
/// flushes the logs, publishes its counts in `progress` and only then releases the frames' ring space, so a frame is always in
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
    logs: Logs,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> JoinHandle<Result<RecorderStats, RecorderError>> {
    std::thread::Builder::new()
        .name("conntrail-recorder".into())
        .spawn(move || run(consumers, logs, &stop, &progress))
        // Same behaviour as `std::thread::spawn`, which panics on this OS failure too.
        .expect("the OS refused to start the recorder thread")
}

/// CPU time the calling thread has used so far, user and system (zero where the clock is
/// not available). Through the C library: it is read once per thread, and the C library's
/// clock calls run under every tool (valgrind included), where a raw vDSO lookup may not.
pub fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call to fill; the clock id is a
    // constant the C library knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The body of the recorder thread, callable on the current thread.
pub fn run(
    mut consumers: Vec<ring::Consumer>,
    mut logs: Logs,
    stop: &AtomicBool,
    progress: &Progress,
) -> Result<RecorderStats, RecorderError> {
    let mut stats = RecorderStats {
        frames_per_ring: vec![0; consumers.len()],
        frames_per_log: vec![0; logs.len()],
        rejected_per_ring: vec![0; consumers.len()],
        checksum_failures_per_ring: vec![ring::ChecksumFailures::default(); consumers.len()],
        ..RecorderStats::default()
    };
    let mut idle_passes = 0u32;
    loop {
        // Read before the pass: a pass that starts after `stop` and finds nothing means done.
        let stopping = stop.load(Ordering::Acquire);
        let moved = drain_pass(&mut consumers, &mut logs, &mut stats)?;
        if moved > 0 {
            logs.flush()?;
            progress.publish(&stats);
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
    logs.flush()?;
    progress.publish(&stats);
    stats.writers = logs.writers.iter().map(LogWriter::stats).collect();
    stats.cpu = thread_cpu_time();
    Ok(stats)
}

/// Takes up to [`BATCH_FRAMES`] from each ring in turn; returns how many frames it took,
/// those skipped for a failed checksum included (their space is released too). Each ring's
/// new checksum failures are reported on the log as they are found.
fn drain_pass(
    consumers: &mut [ring::Consumer],
    logs: &mut Logs,
    stats: &mut RecorderStats,
) -> Result<usize, RecorderError> {
    let mut moved = 0;
    for (ring_index, consumer) in consumers.iter_mut().enumerate() {
        for _ in 0..BATCH_FRAMES {
            let mut failure = None;
            let popped = consumer.pop_unreleased(|frame| {
                let log = logs.index_of(frame);
                match logs.writers[log].append(frame) {
                    Ok(()) => {
                        stats.frames_per_ring[ring_index] += 1;
                        stats.frames_per_log[log] += 1;
                    }
                    Err(RecorderError::PayloadTooLarge { len, .. }) => {
                        stats.rejected_per_ring[ring_index] += 1;
                        log::warn!("ring {ring_index}: {len}-byte frame is too large for the log");
                    }
                    Err(e) => failure = Some(e),
                }
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
        let failures = consumer.checksum_failures();
        let known = &mut stats.checksum_failures_per_ring[ring_index];
        if failures.frames > known.frames {
            let new = failures.frames - known.frames;
            log::error!(
                "ring {}: {new} {} failed {} checksum (damaged in memory), skipped; {} so far, \
                 the first at offset {}",
                consumer.path().display(),
                if new == 1 { "frame" } else { "frames" },
                if new == 1 { "its" } else { "their" },
                failures.frames,
                failures.first_offset
            );
            moved += usize::try_from(new).unwrap_or(usize::MAX);
            *known = failures;
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
        let progress = Progress::new(2, 1);
        let recorder = spawn(
            consumers,
            Logs::one(writer),
            Arc::clone(&stop),
            Arc::clone(&progress),
        );
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
        assert_eq!(stats.writers[0].frames, 2 * FRAMES);
        assert!(stats.writers[0].segments > 1);
        assert_eq!(progress.written_from_ring(1), FRAMES);
        assert_eq!(progress.written_to_log(0), 2 * FRAMES);
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
        let stats = spawn(
            vec![recovered],
            Logs::one(writer),
            stop,
            Progress::new(1, 1),
        )
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

    #[test]
    fn a_frame_damaged_in_the_ring_is_skipped_counted_and_published() {
        use std::os::unix::fs::FileExt;
        let dir = TestDir::new("checksum");
        let log = dir.path().join("LOG");
        let ring_path = dir.path().join("ring");
        let (mut producer, consumer) = ring::create(&ring_path, 4096).unwrap();
        for i in 0..10u8 {
            producer.push(&[i; 30]).unwrap();
        }
        // Frames of 30 bytes take 48 (8 header, 30 payload, 4 CRC, padded to 8), from the
        // data area at ring::spsc::HEADER_LEN: flip a bit in the payload of frame 3 in the file,
        // which the ring's shared mapping sees.
        let frame3 = (ring::spsc::HEADER_LEN + 3 * 48) as u64;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&ring_path)
            .unwrap();
        file.write_all_at(&[3 ^ 0x10], frame3 + 8 + 5).unwrap();
        drop(file);
        let progress = Progress::new(1, 1);
        let stats = spawn(
            vec![consumer],
            Logs::one(LogWriter::create(&log, u64::MAX).unwrap()),
            Arc::new(AtomicBool::new(true)),
            Arc::clone(&progress),
        )
        .join()
        .unwrap()
        .unwrap();
        assert_eq!(stats.frames_per_ring, vec![9]);
        assert_eq!(
            stats.checksum_failures_per_ring,
            vec![ring::ChecksumFailures {
                frames: 1,
                first_offset: frame3
            }]
        );
        assert_eq!(progress.checksum_failures_in_ring(0), 1);
        let payloads: Vec<_> = LogReader::open(&log)
            .unwrap()
            .map(|item| item.unwrap().payload)
            .collect();
        let intact: Vec<_> = (0..10u8).filter(|&i| i != 3).map(|i| vec![i; 30]).collect();
        assert_eq!(
            payloads, intact,
            "the damaged record is not written changed"
        );
        drop(producer);
    }

    #[test]
    fn routed_frames_go_each_to_its_log_in_ring_order() {
        let dir = TestDir::new("routed");
        let logs: Vec<_> = (0..3).map(|i| dir.path().join(format!("log{i}"))).collect();
        let (mut producer, consumer) = ring::create(&dir.path().join("ring"), 64 * 1024).unwrap();
        // The first byte names the log; 7 is out of range and goes to the first.
        let frames: Vec<Vec<u8>> = (0..300u32)
            .map(|i| vec![[0u8, 1, 2, 7][(i % 4) as usize], (i >> 8) as u8, i as u8])
            .collect();
        for f in &frames {
            producer.push(f).unwrap();
        }
        let writers: Vec<_> = logs
            .iter()
            .map(|p| LogWriter::create(p, u64::MAX).unwrap())
            .collect();
        let mut writers = writers.into_iter();
        let first = writers.next().unwrap();
        let routed = Logs::routed(first, writers.collect(), |p| usize::from(p[0]));
        let progress = Progress::new(1, 3);
        let stop = Arc::new(AtomicBool::new(true));
        let stats = spawn(vec![consumer], routed, stop, Arc::clone(&progress))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(stats.frames_per_log, vec![150, 75, 75]);
        assert_eq!(progress.written_to_log(2), 75);
        for (i, log) in logs.iter().enumerate() {
            let got: Vec<Vec<u8>> = LogReader::open(log)
                .unwrap()
                .map(|item| item.unwrap().payload)
                .collect();
            let want: Vec<Vec<u8>> = frames
                .iter()
                .filter(|f| usize::from(f[0]) == i || (i == 0 && f[0] == 7))
                .cloned()
                .collect();
            assert_eq!(got, want, "log {i}");
        }
    }
}
