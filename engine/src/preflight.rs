//! Start-time checks of a configuration against the machine it is to run on: whether the
//! flow tables, point arenas, rings (and in live mode the UMEM) of all workers fit in
//! memory, and whether the ring directory can be used.
//!
//! Every byte a worker needs is allocated when it starts, so a table too large for the
//! machine would abort the process (`memory allocation failed`) after the ring files were
//! made. [`check_memory`] refuses such a configuration before anything is created, with the
//! key, what it needs and what there is. Memory is weighed against `MemAvailable` of
//! `/proc/meminfo` (what the kernel can hand out without swapping; `MemTotal` would count
//! the memory other processes hold) and against the address-space limit (`ulimit -v`,
//! `RLIMIT_AS`) less what the process maps already. `conntrail config check` runs
//! [`check_config`], which also looks at the ring directory.
//!
//! ```no_run
//! let cfg = flowtable::config::Config::default();
//! engine::preflight::check_memory(&cfg, 4, 0).expect("four workers fit");
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use flowtable::config::Config;
use flowtable::table::FlowTable;

/// Flow slots of the table built to measure the bytes per slot: large enough that the
/// fixed part (the timer wheel's own slots) adds only 2 bytes per slot, small enough to be
/// allocated in a moment under any limit.
const PROBE_SLOTS: u32 = 16384;

/// Bytes a fragment-table slot takes at most: a datagram under reassembly (addresses, ids
/// and 64 fragment offsets, about 200 bytes), its two hash-map entries and its free-list
/// entry.
const FRAGMENT_SLOT_BYTES: u64 = 512;

/// Address space each thread reserves besides what the tables ask for: its stack (8 MiB)
/// and the allocator arena glibc gives each thread that allocates (64 MiB).
const THREAD_ADDRESS_SPACE: u64 = 72 << 20;

/// What `workers` workers of `cfg` need, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// Bytes per flow slot, as the worker reports them (`bytes_per_flow`).
    pub bytes_per_flow: u64,
    /// One worker's flow table, point arena, timer wheel and fragment table.
    pub table: u64,
    /// One worker's ring file (its header and its data area rounded up to a power of two).
    pub ring: u64,
    /// Every worker together, rings and the UMEM given included.
    pub total: u64,
}

/// What `workers` workers of `cfg` need, with `umem_bytes` of UMEM in all (live mode).
pub fn need(cfg: &Config, workers: usize, umem_bytes: u64) -> Need {
    let mut probe = cfg.clone();
    probe.table.capacity = cfg.table.capacity.min(PROBE_SLOTS);
    probe.table.fragments = 1;
    let bytes_per_flow = FlowTable::new(&probe, 0).bytes_per_flow() as u64;
    let table = bytes_per_flow
        .saturating_mul(u64::from(cfg.table.capacity))
        .saturating_add(u64::from(cfg.table.fragments.max(1)) * FRAGMENT_SLOT_BYTES);
    let ring = ring_file_bytes(cfg.ring.bytes);
    let workers = workers as u64;
    let total = table
        .saturating_add(ring)
        .saturating_mul(workers)
        .saturating_add(umem_bytes);
    Need {
        bytes_per_flow,
        table,
        ring,
        total,
    }
}

/// The size of a ring file for `[ring] bytes = bytes`.
fn ring_file_bytes(bytes: u64) -> u64 {
    let data = bytes
        .max(ring::spsc::MIN_CAPACITY as u64)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    data.saturating_add(ring::spsc::HEADER_LEN as u64)
}

/// Refuses `cfg` for `workers` workers (and `umem_bytes` of UMEM) when it does not fit in
/// the memory available or under the address-space limit: before anything is created.
pub fn check_memory(cfg: &Config, workers: usize, umem_bytes: u64) -> Result<()> {
    let need = need(cfg, workers, umem_bytes);
    let available = mem_available();
    let address_space = address_space_left();
    judge(cfg, workers, umem_bytes, &need, available, address_space)
}

/// The verdict of [`check_memory`] for memory `available` and `address_space` left (each
/// `None` when unknown or unlimited).
fn judge(
    cfg: &Config,
    workers: usize,
    umem_bytes: u64,
    need: &Need,
    available: Option<u64>,
    address_space: Option<u64>,
) -> Result<()> {
    let what = || {
        let mut what = format!(
            "[table] capacity = {} needs {} for {workers} worker{} ({} bytes per connection \
             slot, rings of {}",
            cfg.table.capacity,
            human(need.total),
            if workers == 1 { "" } else { "s" },
            need.bytes_per_flow,
            human(need.ring),
        );
        if umem_bytes > 0 {
            what.push_str(&format!(", UMEM of {}", human(umem_bytes)));
        }
        what.push(')');
        what
    };
    if let Some(available) = available.filter(|a| need.total > *a) {
        bail!(
            "{}; this machine has {} available: lower [table] capacity (or the workers)",
            what(),
            human(available)
        );
    }
    let threads = (workers as u64).saturating_add(3);
    let with_threads = need
        .total
        .saturating_add(threads.saturating_mul(THREAD_ADDRESS_SPACE));
    if let Some(left) = address_space.filter(|l| with_threads > *l) {
        bail!(
            "{}, and {} for its {threads} threads; the address-space limit (ulimit -v) leaves \
             {}: lower [table] capacity or raise the limit",
            what(),
            human(threads.saturating_mul(THREAD_ADDRESS_SPACE)),
            human(left)
        );
    }
    Ok(())
}

/// `bytes` in the largest binary unit that keeps a number of at least 1 (`23.4 GiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "MemAvailable:")
}

/// The value of a `Name:   1234 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft address-space limit less what this process maps now; `None` when unlimited.
fn address_space_left() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write into.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let mapped = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib_field(&s, "VmSize:"))
        .unwrap_or(0);
    Some(lim.rlim_cur.saturating_sub(mapped))
}

/// Workers and UMEM bytes of a live run of `cfg`: one worker and one UMEM per `[[capture]]`
/// queue (one worker when there is no `[[capture]]`, as for `replay`).
pub fn live_workers(cfg: &Config) -> (usize, u64) {
    let workers = cfg.captures.iter().map(|c| c.queues.len()).sum::<usize>();
    let umem = cfg
        .captures
        .iter()
        .map(|c| c.umem_bytes().saturating_mul(c.queues.len() as u64))
        .fold(0u64, u64::saturating_add);
    (workers.max(1), umem)
}

/// `conntrail config check` beyond the file itself: the memory of a live run of `cfg` (or
/// one replay worker), and the ring directory. Errors refuse the file; the warnings (a ring
/// directory on a file system too full for the rings) do not.
pub fn check_config(cfg: &Config) -> Result<Vec<String>> {
    let (workers, umem) = live_workers(cfg);
    check_memory(cfg, workers, umem)?;
    let dir = crate::ringdir::expand(&cfg.ring.dir);
    let existing = existing_ancestor(&dir)?;
    // Private, in a directory nobody else can change (see `ringdir`).
    crate::ringdir::check(&cfg.ring.dir)?;
    let mut warnings = Vec::new();
    let rings = need(cfg, workers, 0).ring.saturating_mul(workers as u64);
    if let Ok(vfs) = rustix::fs::statvfs(&existing) {
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        if free < rings {
            warnings.push(format!(
                "[ring] dir = {:?}: its file system ({}) has {} free, and the rings of {workers} \
                 worker{} need {}",
                cfg.ring.dir,
                existing.display(),
                human(free),
                if workers == 1 { "" } else { "s" },
                human(rings)
            ));
        }
    }
    Ok(warnings)
}

/// The ring directory `dir`, or its parent when `dir` does not exist yet (the engine makes
/// it): an error when `dir` is not a directory, or when neither it nor its parent exists.
fn existing_ancestor(dir: &Path) -> Result<PathBuf> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(dir.to_path_buf()),
        Ok(_) => bail!("[ring] dir = \"{shown}\" is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("[ring] dir = \"{shown}\": {e}"),
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => Ok(parent),
        Ok(_) => bail!(
            "[ring] dir = \"{shown}\" does not exist, and {} is not a directory to make it in",
            parent.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "[ring] dir = \"{shown}\" does not exist, nor does its parent {}",
            parent.display()
        ),
        Err(e) => bail!("[ring] dir = \"{shown}\": {}: {e}", parent.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(23_400 << 20), "22.9 GiB");
        assert_eq!(human(1_210_000_000_000), "1.1 TiB");
    }

    #[test]
    fn the_ring_limit_of_the_config_is_the_rings() {
        assert_eq!(
            flowtable::config::MAX_RING_BYTES,
            ring::spsc::MAX_CAPACITY as u64
        );
        assert_eq!(ring_file_bytes(4 << 20), (4 << 20) + 512);
        assert_eq!(ring_file_bytes(5 << 20), (8 << 20) + 512);
    }

    #[test]
    fn the_need_grows_with_capacity_and_workers_by_the_measured_slot_size() {
        let mut cfg = Config::default();
        cfg.table.capacity = 1 << 20;
        let one = need(&cfg, 1, 0);
        let built = FlowTable::new(&cfg, 0).bytes_per_flow() as u64;
        // The probe's wheel overhead is spread over fewer slots: at most 2 bytes more.
        assert!(
            (built..=built + 2).contains(&one.bytes_per_flow),
            "{} vs {built}",
            one.bytes_per_flow
        );
        let four = need(&cfg, 4, 1 << 30);
        assert_eq!(four.total, 4 * (one.table + one.ring) + (1 << 30));
        cfg.table.capacity = u32::MAX;
        let huge = need(&cfg, 1, 0);
        assert!(huge.total > 1 << 40, "{}", huge.total);
    }

    #[test]
    fn a_table_larger_than_memory_is_refused_with_what_it_needs_and_what_there_is() {
        let mut cfg = Config::default();
        cfg.table.capacity = u32::MAX;
        let n = need(&cfg, 1, 0);
        let e = judge(&cfg, 1, 0, &n, Some(23_400 << 20), None).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("[table] capacity = 4294967295 needs "), "{m}");
        assert!(m.contains("TiB for 1 worker ("), "{m}");
        assert!(m.contains("; this machine has 22.9 GiB available"), "{m}");
        let e = judge(&cfg, 1, 0, &n, None, Some(1 << 30)).unwrap_err();
        assert!(e.to_string().contains("ulimit -v"), "{e}");
        cfg.table.capacity = 1000;
        let n = need(&cfg, 2, 0);
        judge(&cfg, 2, 0, &n, Some(1 << 30), Some(1 << 30)).expect("fits");
        // The threads' address space counts under the limit only.
        let e = judge(&cfg, 2, 0, &n, None, Some(n.total + 1)).unwrap_err();
        assert!(e.to_string().contains("5 threads"), "{e}");
    }
}
