//! The files of one log: its segments `LOG`, `LOG.1`, `LOG.2`... and its lock file
//! `LOG.lock`, by name. The reader and the writer both find segments here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The lock file of the log at `base`: `base.lock`. Not a segment (its suffix is not a
/// number), so readers and retention never see it.
pub fn lock_path(base: &Path) -> PathBuf {
    let mut name = OsString::from(base.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// The path of segment `index` of the log at `base`: `base` itself for 0, `base.N` for N.
pub fn segment_path(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_path_buf();
    }
    let mut name = OsString::from(base.as_os_str());
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The numbered segments (`base.N`, N >= 1) that exist beside `base`, sorted by N.
/// Only canonical names count (`LOG.2`, not `LOG.02` or `LOG.2.tmp`).
pub fn numbered_segments(base: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let Some(file_name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match base.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(suffix) = name
            .to_str()
            .and_then(|n| n.strip_prefix(file_name))
            .and_then(|n| n.strip_prefix('.'))
        else {
            continue;
        };
        if let Ok(index) = suffix.parse::<u32>() {
            if index >= 1 && suffix == index.to_string() {
                found.push((index, segment_path(base, index)));
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}
