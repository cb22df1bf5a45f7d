//! Output-target safety: a command that writes a file (a log, a capture, a truth file) never
//! writes onto one of its inputs, and never replaces a file that was not meant to be
//! replaced.
//!
//! The checks run before the command creates anything (no lock file, ring, run file or
//! segment), so a refusal leaves every file as it was; each refusal says what the file is
//! and what to do, and the command exits 2 (a refusal).
//!
//! - *Inputs* are compared by device and inode, never by name, so a different spelling
//!   (`./a.pcap`, `/tmp/x/../x/a.pcap`), a symbolic link and a hard link are all the same
//!   file. Every name a log writes (its base file, its numbered segments `LOG.N` and its
//!   lock file `LOG.lock`) is compared with every input.
//! - A log ([`LogTarget`]) is created new where nothing is; an existing one is replaced only
//!   with `--overwrite` and continued only with `--append` (`run` always continues its
//!   log). Either way every existing file of it (base and segments) must be a conntrail log
//!   segment: its header starts with the log's magic. Anything else (a capture, a text
//!   file, a directory) is refused even with `--overwrite`, and old segments are removed only
//!   once all of them are conntrail segments. An empty file at the log's name counts as an
//!   existing file: replaced with `--overwrite`, continued with `--append`.
//! - Another output ([`check_outputs`], [`create_output`]) is created new; an existing file
//!   is replaced only with `--overwrite` and never when it is an input. Replacing removes
//!   the name and creates a new file, so another name of the old file keeps its contents.
//!
//! ```no_run
//! use forensics::evidence::{check_logs, Inputs, LogTarget};
//! # fn main() -> anyhow::Result<()> {
//! let inputs = Inputs::of_paths(&["a.pcap".into()]);
//! check_logs("replay", &["x.log".into()], &inputs, LogTarget::New)?;
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use recorder::format::MAGIC;

/// The name standing for standard input among a command's captures, and how messages
/// name it.
pub use capture::{STDIN, STDIN_NAME};

/// What to do with a log that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// Create it; refuse when any file of it exists (`replay` without options).
    #[default]
    New,
    /// Replace it, when every file of it is a conntrail log segment (`replay --overwrite`).
    Overwrite,
    /// Continue it after its last intact record, or create it (`replay --append`, `run`).
    Continue,
}

/// A file as the file system knows it: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// The input files of a command, by device and inode, with the name each was given as.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    files: Vec<(FileId, PathBuf)>,
}

impl Inputs {
    /// The files at `paths` (followed through symbolic links). A path that cannot be looked
    /// at is left out: opening it reports the error.
    pub fn of_paths(paths: &[PathBuf]) -> Inputs {
        let mut inputs = Inputs::default();
        for path in paths {
            if let Ok(meta) = std::fs::metadata(path) {
                inputs.add(&meta, path);
            }
        }
        inputs
    }

    /// Adds the (open) file whose metadata is `meta`, given as `name`.
    pub fn add(&mut self, meta: &std::fs::Metadata, name: &Path) {
        // Only files have contents to lose; a pipe or a terminal shares no name with an
        // output.
        if meta.is_file() {
            self.files.push((FileId::of(meta), name.to_path_buf()));
        }
    }

    /// The name of the input that `path` is (followed through a symbolic link, or the link
    /// itself), if it is one.
    fn find(&self, path: &Path) -> Option<&Path> {
        let ids = [std::fs::metadata(path), std::fs::symlink_metadata(path)];
        ids.iter().flatten().find_map(|m| {
            let id = FileId::of(m);
            self.files
                .iter()
                .find(|(input, _)| *input == id)
                .map(|(_, name)| name.as_path())
        })
    }
}

/// What is at a path, as far as replacing it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    /// A file of no bytes.
    Empty,
    /// A conntrail log segment (its header starts with the magic, or is a torn start of it).
    Log,
    /// Another regular file, described ("a pcap capture", "not a conntrail log").
    Other(String),
    /// Not a regular file at all, described ("a directory", ...): never replaced.
    NotAFile(String),
}

/// Looks at what is at `path` without changing it (a symbolic link is followed to tell what
/// it points to).
fn look(path: &Path) -> Result<Found> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) if link.file_type().is_symlink() => {
            return Ok(Found::NotAFile("a symbolic link to nothing".into()))
        }
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return Ok(Found::NotAFile("a directory".into()));
    }
    if kind.is_fifo() || kind.is_socket() || kind.is_block_device() || kind.is_char_device() {
        return Ok(Found::NotAFile("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Ok(Found::Empty);
    }
    let mut head = [0u8; 8];
    let got = read_head(path, &mut head)?;
    let head = &head[..got];
    Ok(if head == &MAGIC[..got] {
        Found::Log
    } else {
        Found::Other(describe_head(head).into())
    })
}

/// Reads the first bytes of `path` into `head` (never blocking on a FIFO put there in
/// between); how many it got.
fn read_head(path: &Path, head: &mut [u8]) -> Result<usize> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(got)
}

/// Whether `head`, the first bytes of a file, start a conntrail log.
pub fn is_log_head(head: &[u8]) -> bool {
    head.len() >= MAGIC.len() && head[..MAGIC.len()] == MAGIC[..]
}

/// Whether the file at `path` starts as a pcap or pcapng capture does: `a pcap capture` or
/// `a pcapng capture`.
pub fn capture_kind(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; 4];
    let got = read_head(path, &mut head).ok()?;
    Some(describe_head(&head[..got])).filter(|d| d.ends_with("capture"))
}

/// What a file that is not a log is, from its first bytes.
fn describe_head(head: &[u8]) -> &'static str {
    match head.get(..4) {
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => "a pcapng capture",
        Some([0xd4, 0xc3, 0xb2, 0xa1] | [0xa1, 0xb2, 0xc3, 0xd4])
        | Some([0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d]) => "a pcap capture",
        _ => "not a conntrail log",
    }
}

/// `path`, or [`STDIN_NAME`] for standard input.
pub fn display(path: &Path) -> std::path::Display<'_> {
    if path.as_os_str() == STDIN {
        Path::new(STDIN_NAME).display()
    } else {
        path.display()
    }
}

/// Checks that the logs at `logs` (each context's, from the engine's `contexts::log_paths`) may
/// be written by `command` as `target` says, with `inputs` read: fails, having touched
/// nothing, when a file of a log (its base, a numbered segment, its lock file) is an input,
/// when a log exists and `target` is [`LogTarget::New`], when a file of it is not a conntrail
/// log segment, or when its directory does not exist or cannot be written.
pub fn check_logs(
    command: &str,
    logs: &[PathBuf],
    inputs: &Inputs,
    target: LogTarget,
) -> Result<()> {
    for log in logs {
        check_log(command, log, inputs, target)?;
    }
    Ok(())
}

fn check_log(command: &str, log: &Path, inputs: &Inputs, target: LogTarget) -> Result<()> {
    check_directory(log, "log")?;
    check_log_files(command, log, inputs, target)
}

/// Checks that the log at `log` may be continued by a recovery: every file of it that exists
/// is a conntrail log segment, its lock file one a writer left.
pub fn check_continuable(log: &Path) -> Result<()> {
    check_log_files("recovery", log, &Inputs::default(), LogTarget::Continue)
}

/// [`check_logs`] for one log, its directory aside.
fn check_log_files(command: &str, log: &Path, inputs: &Inputs, target: LogTarget) -> Result<()> {
    let refusal = match target {
        LogTarget::Continue => "refusing to write to it",
        LogTarget::New | LogTarget::Overwrite => "refusing to replace it even with --overwrite",
    };
    let numbered = recorder::segments::numbered_segments(log)
        .with_context(|| format!("listing the segments of log {}", log.display()))?;
    let mut files = vec![log.to_path_buf()];
    files.extend(numbered.into_iter().map(|(_, path)| path));
    let lock = recorder::segments::lock_path(log);
    for path in files.iter().chain([&lock]) {
        if let Some(input) = inputs.find(path) {
            bail!(
                "{} is {}, and also an input of this {command}{}; refusing to write the log \
                 {} onto it (nothing was changed): choose another --log",
                path.display(),
                what(&look(path)?),
                spelled(path, input),
                log.display()
            );
        }
    }
    if !check_lock_file(&lock)? {
        bail!(
            "{} exists and is not the lock file of a conntrail log; refusing to write the log \
             {} (nothing was changed): move it away or choose another --log",
            lock.display(),
            log.display()
        );
    }
    let mut segments = 0;
    let mut exists = false;
    for (index, path) in files.iter().enumerate() {
        match look(path)? {
            Found::Nothing => {}
            Found::Empty => exists = true,
            Found::Log => {
                exists = true;
                segments += 1;
            }
            Found::Other(what) | Found::NotAFile(what) if index == 0 => bail!(
                "{} exists and is {}; {refusal} (nothing was changed): choose another --log",
                log.display(),
                not_a_log(&what)
            ),
            Found::Other(what) | Found::NotAFile(what) => bail!(
                "{} exists and is {}, but has the name of a segment of the log {}; refusing to \
                 write that log (nothing was changed): move it away or choose another --log",
                path.display(),
                not_a_log(&what),
                log.display()
            ),
        }
    }
    if exists && target == LogTarget::New {
        let what = match segments {
            0 => "an empty file".to_string(),
            1 => "a conntrail log, 1 segment".to_string(),
            n => format!("a conntrail log, {n} segments"),
        };
        bail!(
            "{} already exists ({what}); give --overwrite to replace it, --append to add to it, \
             or choose another --log (nothing was changed)",
            log.display()
        );
    }
    Ok(())
}

/// Whether the lock file at `path` is absent or one a log writer left (empty, or a pid):
/// the writer empties it to write its pid, so anything else would be lost.
fn check_lock_file(path: &Path) -> Result<bool> {
    match look(path)? {
        Found::Nothing | Found::Empty => Ok(true),
        Found::Log | Found::NotAFile(_) => Ok(false),
        Found::Other(_) => {
            let mut head = [0u8; 17];
            let got = read_head(path, &mut head)?;
            let text = head.get(..got).unwrap_or(&[]);
            Ok(got < head.len() && text.iter().all(|b| b.is_ascii_digit() || *b == b'\n'))
        }
    }
}

/// "a pcap capture" -> "a pcap capture, not a conntrail log"; "not a conntrail log" as is.
fn not_a_log(what: &str) -> String {
    if what.starts_with("not ") {
        what.to_string()
    } else {
        format!("{what}, not a conntrail log")
    }
}

fn what(found: &Found) -> String {
    match found {
        Found::Nothing => "nothing".into(),
        Found::Empty => "an empty file".into(),
        Found::Log => "a conntrail log".into(),
        Found::Other(what) | Found::NotAFile(what) if what.starts_with("not ") => {
            format!("a file {what}")
        }
        Found::Other(what) | Found::NotAFile(what) => what.clone(),
    }
}

/// " (given as X)" when the input was named otherwise than `path`.
fn spelled(path: &Path, input: &Path) -> String {
    if input == path {
        String::new()
    } else {
        format!(" (given as {})", display(input))
    }
}

/// Checks that the directory a file `path` would be created in exists, is a directory and
/// can be written; `what` names the file in the message ("log", "output").
fn check_directory(path: &Path, what: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{what} {}: the directory {} does not exist (nothing was written)",
            path.display(),
            dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("{what} {}: looking at its directory", path.display()))
        }
    };
    if !meta.is_dir() {
        bail!(
            "{what} {}: {} is not a directory (nothing was written)",
            path.display(),
            dir.display()
        );
    }
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    if rustix::fs::access(dir, access).is_err() {
        bail!(
            "{what} {}: the directory {} cannot be written (nothing was written)",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Checks that `command` may write each of `outputs` with `inputs` read: fails, having
/// touched nothing, when an output is an input (even with `overwrite`), when one exists
/// and `overwrite` is not given, or when one is not a regular file. Two outputs never share
/// a name (the caller derives them).
pub fn check_outputs(
    command: &str,
    outputs: &[&Path],
    inputs: &Inputs,
    overwrite: bool,
) -> Result<()> {
    for out in outputs {
        check_directory(out, "output")?;
        if let Some(input) = inputs.find(out) {
            bail!(
                "{} is {}, and also an input of this {command}{}; refusing to write onto it \
                 even with --overwrite (nothing was changed): choose another output",
                out.display(),
                what(&look(out)?),
                spelled(out, input),
            );
        }
        match look(out)? {
            Found::Nothing => {}
            Found::NotAFile(what) => bail!(
                "{} exists and is {what}; refusing to replace it even with --overwrite (nothing \
                 was changed): choose another output",
                out.display()
            ),
            found if !overwrite => bail!(
                "{} already exists ({}); give --overwrite to replace it, or choose another \
                 output (nothing was changed)",
                out.display(),
                match found {
                    Found::Other(what) if what.starts_with("not ") => "a file".to_string(),
                    found => what(&found),
                }
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Creates the output file at `path` (after [`check_outputs`]): a new file, the name of an
/// existing one removed first (so that its other names keep their contents; a symbolic
/// link is removed, not followed).
pub fn create_output(path: &Path) -> Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_magics_are_told_apart() {
        assert_eq!(
            describe_head(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0]),
            "a pcap capture"
        );
        assert_eq!(describe_head(&[0xa1, 0xb2, 0x3c, 0x4d]), "a pcap capture");
        assert_eq!(
            describe_head(&[0x0a, 0x0d, 0x0d, 0x0a, 1]),
            "a pcapng capture"
        );
        assert_eq!(describe_head(b"notes"), "not a conntrail log");
    }
}
