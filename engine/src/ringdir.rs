//! The ring directory (`[ring] dir`): where an engine keeps its shared-memory rings and run
//! files, and the only place whose contents it trusts.
//!
//! Crash recovery reads run files and then deletes the rings and writes the log they name,
//! as whoever runs the engine (often root). So nobody else may be able to put a file there:
//!
//! - the directory is private: owned by the engine's effective uid and not writable by its
//!   group or by others. The engine creates it (mode 0700) when it is missing and its parent
//!   exists; it refuses one that is a symbolic link, owned by someone else, or group- or
//!   world-writable, naming the directory and what to do;
//! - every directory above it is owned by root or by the engine's uid and is not writable by
//!   others unless sticky (`/dev/shm`, `/tmp`), so nobody can rename it away and put another
//!   in its place;
//! - inside it, a file is trusted only when its name is one the engine gives
//!   (`conntrail-PID-N.run`, `conntrail-PID-N-WORKER.ring`), it is a regular file with one
//!   link, owned by the engine's uid and not writable by group or others, and it is opened
//!   without following a symbolic link;
//! - every file the engine makes there is created with `O_EXCL | O_NOFOLLOW`, mode 0600, and
//!   every name is resolved against the directory opened once (`openat`, `unlinkat`,
//!   `renameat`), never through a path taken from a file.
//!
//! `%u` in the configured directory stands for the engine's effective uid: the default
//! `/dev/shm/conntrail-%u` gives every user a directory of their own.
//!
//! ```no_run
//! let dir = engine::ringdir::RingDir::open("/dev/shm/conntrail-%u").expect("a private directory");
//! println!("rings in {}", dir.path().display());
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Mode bits that let someone other than the owner add, remove or rename entries.
const WRITABLE_BY_OTHERS: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// The engine's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The configured directory with `%u` replaced by the effective uid.
pub fn expand(configured: &str) -> PathBuf {
    expand_for(configured, euid())
}

fn expand_for(configured: &str, uid: u32) -> PathBuf {
    PathBuf::from(configured.replace("%u", &uid.to_string()))
}

/// A ring directory checked and opened.
#[derive(Debug)]
pub struct RingDir {
    path: PathBuf,
    fd: OwnedFd,
    /// The uid that owns it and its files: the engine's, or (started as root with
    /// `--user NAME`) NAME's, the user the engine becomes.
    owner: u32,
}

/// What [`check`] found of a configured ring directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// It exists and is private.
    Private(PathBuf),
    /// It does not exist yet; the engine will create it (mode 0700) in a trusted parent.
    WillCreate(PathBuf),
}

/// Checks a configured ring directory without creating anything: for `config check` and
/// before an engine starts.
pub fn check(configured: &str) -> Result<DirState> {
    let path = expand(configured);
    let (parent, name) = split(&path)?;
    let parent_fd = open_trusted_parent(&path, &parent)?;
    match rustix::fs::statat(&parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(DirState::WillCreate(path)),
        Err(e) => {
            Err(io::Error::from(e)).with_context(|| format!("ring directory {}", path.display()))
        }
        Ok(_) => {
            open_dir(&parent_fd, name, &path, euid())?;
            Ok(DirState::Private(path))
        }
    }
}

impl RingDir {
    /// Opens the configured ring directory, creating it (mode 0700) when it is missing, and
    /// refuses it unless it is private (see the module docs).
    pub fn open(configured: &str) -> Result<RingDir> {
        RingDir::open_for(configured, euid())
    }

    /// Opens the ring directory of an engine that will run as `owner` (root handing over
    /// to `--user NAME`; `%u` is then NAME's uid): created for `owner` when missing, and
    /// trusted, with its files, only when `owner`'s.
    pub fn open_for(configured: &str, owner: u32) -> Result<RingDir> {
        let path = expand_for(configured, owner);
        let (parent, name) = split(&path)?;
        let parent_fd = open_trusted_parent(&path, &parent)?;
        match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) if owner != euid() => {
                rustix::fs::chownat(
                    &parent_fd,
                    name,
                    Some(rustix::process::Uid::from_raw(owner)),
                    None,
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io::Error::from)
                .with_context(|| {
                    format!("handing ring directory {} to uid {owner}", path.display())
                })?;
            }
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("creating ring directory {}", path.display()))
            }
        }
        let fd = open_dir(&parent_fd, name, &path, owner)?;
        Ok(RingDir { path, fd, owner })
    }

    /// The uid that owns the directory and every file it trusts there.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The directory's path (with `%u` expanded).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the entry `name`, for APIs that take a path (the ring files are created
    /// with `O_EXCL | O_NOFOLLOW` by [`ring::create`]).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates `name` for writing: it must not exist (`O_EXCL`), a symbolic link there is
    /// not followed, mode 0600.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Opens `name` for reading if it can be trusted: a regular file with a single link,
    /// owned by the directory's owner (or the engine's own uid) and not writable by group or
    /// others, not a symbolic link.
    /// The error says which of these it is not.
    pub fn open_trusted(&self, name: &str) -> Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .with_context(|| format!("opening {}", self.join(name).display()))?;
        let st = rustix::fs::fstat(&fd)
            .map_err(io::Error::from)
            .with_context(|| format!("reading the status of {}", self.join(name).display()))?;
        let why = if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            Some("it is not a regular file".to_string())
        } else if st.st_uid != self.owner && st.st_uid != euid() {
            Some(format!(
                "it belongs to uid {}, not to uid {}",
                st.st_uid, self.owner
            ))
        } else if st.st_mode & WRITABLE_BY_OTHERS != 0 {
            Some(format!(
                "its mode {:o} lets others write it",
                st.st_mode & 0o7777
            ))
        } else if st.st_nlink != 1 {
            Some(format!("it has {} links", st.st_nlink))
        } else {
            None
        };
        if let Some(why) = why {
            bail!("{}: not trusted: {why}", self.join(name).display());
        }
        Ok(File::from(fd))
    }

    /// Hands `file`, made by root for an engine that becomes the directory's owner, over to
    /// that owner (nothing to do otherwise).
    pub fn hand_over(&self, file: &File) -> io::Result<()> {
        if self.owner == euid() {
            return Ok(());
        }
        Ok(rustix::fs::fchown(
            file,
            Some(rustix::process::Uid::from_raw(self.owner)),
            None,
        )?)
    }

    /// Whether `file` (opened from this directory) is still what `name` names.
    pub fn still_names(&self, name: &str, file: &File) -> bool {
        match (
            rustix::fs::fstat(file),
            rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW),
        ) {
            (Ok(held), Ok(named)) => held.st_ino == named.st_ino && held.st_dev == named.st_dev,
            _ => false,
        }
    }

    /// Whether an entry `name` exists (a symbolic link counts, and is not followed).
    pub fn has(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Removes the entry `name` of this directory (a symbolic link itself, never its target).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Renames the entry `from` to `to`, both in this directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// The names of the directory's entries that are valid UTF-8, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(io::Error::from)
            .with_context(|| format!("listing {}", self.path.display()))?;
        let dir = rustix::fs::Dir::read_from(dup)
            .map_err(io::Error::from)
            .with_context(|| format!("listing {}", self.path.display()))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry
                .map_err(io::Error::from)
                .with_context(|| format!("listing {}", self.path.display()))?;
            if let Ok(name) = entry.file_name().to_str() {
                if name != "." && name != ".." {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// The parent and last component of a ring directory's path.
fn split(path: &Path) -> Result<(PathBuf, &OsStr)> {
    let absolute = path.is_absolute();
    match (path.parent(), path.components().next_back()) {
        (Some(parent), Some(Component::Normal(name))) => {
            let parent = if parent.as_os_str().is_empty() && !absolute {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            };
            Ok((parent, name))
        }
        _ => bail!(
            "ring directory {}: give a directory of its own, such as /dev/shm/conntrail-%u",
            path.display()
        ),
    }
}

/// Opens `parent` after checking that it and every directory above it are owned by root or
/// by the engine's uid and not writable by others unless sticky.
fn open_trusted_parent(dir: &Path, parent: &Path) -> Result<OwnedFd> {
    let canonical = std::fs::canonicalize(parent).with_context(|| {
        format!(
            "ring directory {}: its parent {} does not exist",
            dir.display(),
            parent.display()
        )
    })?;
    let me = euid();
    let mut at = PathBuf::new();
    for part in canonical.components() {
        at.push(part);
        let st = rustix::fs::stat(&at)
            .map_err(io::Error::from)
            .with_context(|| {
                format!(
                    "ring directory {}: checking {}",
                    dir.display(),
                    at.display()
                )
            })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            bail!(
                "ring directory {}: {} is not a directory",
                dir.display(),
                at.display()
            );
        }
        if st.st_uid != 0 && st.st_uid != me {
            bail!(
                "ring directory {}: {} belongs to uid {}, who could replace the ring directory; \
                 use a directory under one owned by root or by uid {me}",
                dir.display(),
                at.display(),
                st.st_uid
            );
        }
        if st.st_mode & WRITABLE_BY_OTHERS != 0 && st.st_mode & STICKY == 0 {
            bail!(
                "ring directory {}: {} (mode {:o}) can be written by others, who could replace \
                 the ring directory; use a directory under one that only its owner can change",
                dir.display(),
                at.display(),
                st.st_mode & 0o7777
            );
        }
    }
    rustix::fs::open(
        &canonical,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("opening {}", canonical.display()))
}

/// Opens the ring directory `name` in `parent`, not following a symbolic link, and checks
/// that it is private.
fn open_dir(parent: &impl AsFd, name: &OsStr, path: &Path, owner: u32) -> Result<OwnedFd> {
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            let link = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
            if link {
                bail!(
                    "ring directory {} is a symbolic link: refused (give the real directory, \
                     or remove the link and let conntrail create the directory)",
                    path.display()
                );
            }
            bail!("ring directory {} is not a directory", path.display())
        }
        Err(e) => {
            return Err(io::Error::from(e))
                .with_context(|| format!("opening ring directory {}", path.display()))
        }
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(io::Error::from)
        .with_context(|| format!("ring directory {}", path.display()))?;
    let me = owner;
    if st.st_uid != me {
        bail!(
            "ring directory {} belongs to uid {}, not to uid {me}, who runs the engine: refused \
             (its files could be planted by that user); use a directory of your own, such as \
             /dev/shm/conntrail-%u",
            path.display(),
            st.st_uid
        );
    }
    if st.st_mode & WRITABLE_BY_OTHERS != 0 {
        bail!(
            "ring directory {} has mode {:o}: others can write there, so its run files cannot \
             be trusted; use a private directory (chmod 700 {}, or the default \
             /dev/shm/conntrail-%u)",
            path.display(),
            st.st_mode & 0o7777,
            path.display()
        );
    }
    Ok(fd)
}

/// Whether `bytes` is a valid name for a file of ours (`conntrail-PID-N` + `suffix`,
/// returning the `conntrail-PID-N` part).
pub fn run_stem<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let stem = name.strip_suffix(suffix)?;
    let rest = stem.strip_prefix("conntrail-")?;
    let (pid, n) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then_some(stem)
}

/// Whether `name` is the ring file name of worker `WORKER` of the run `stem`
/// (`STEM-WORKER.ring`).
pub fn is_ring_of(stem: &str, name: &str) -> bool {
    name.strip_prefix(stem)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".ring"))
        .is_some_and(|w| !w.is_empty() && w.len() <= 5 && w.bytes().all(|b| b.is_ascii_digit()))
}

/// The file name of `path` when it is a single plain component (no directory part).
pub fn plain_name(path: &Path) -> Option<&str> {
    let mut parts = path.components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) => std::str::from_utf8(name.as_bytes()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_names_are_ours() {
        assert_eq!(
            run_stem("conntrail-12-0.run", ".run"),
            Some("conntrail-12-0")
        );
        for bad in [
            "conntrail-12.run",
            "conntrail--0.run",
            "conntrail-1x-0.run",
            "x-conntrail-1-0.run",
            "conntrail-1-0.run.tmp",
            "conntrail-1-0/../x.run",
        ] {
            assert_eq!(run_stem(bad, ".run"), None, "{bad}");
        }
        assert!(is_ring_of("conntrail-12-0", "conntrail-12-0-3.ring"));
        for bad in [
            "conntrail-12-0-.ring",
            "conntrail-12-1-3.ring",
            "conntrail-12-0-3.ring.x",
            "/root/secret",
            "conntrail-12-0-3/../../x.ring",
        ] {
            assert!(!is_ring_of("conntrail-12-0", bad), "{bad}");
        }
        assert_eq!(plain_name(Path::new("a.ring")), Some("a.ring"));
        assert_eq!(plain_name(Path::new("/dev/shm/a.ring")), None);
        assert_eq!(plain_name(Path::new("../a.ring")), None);
    }

    #[test]
    fn percent_u_is_the_effective_uid() {
        assert_eq!(
            expand("/dev/shm/conntrail-%u"),
            PathBuf::from(format!("/dev/shm/conntrail-{}", euid()))
        );
    }

    #[test]
    fn a_missing_directory_is_created_private_and_a_shared_one_refused() {
        let base = std::env::temp_dir().join(format!("conntrail-ringdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).expect("temp dir");
        let made = base.join("rings");
        let dir = RingDir::open(made.to_str().expect("utf-8")).expect("created");
        let mode = std::fs::metadata(dir.path()).expect("stat").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );

        let shared = base.join("shared");
        std::fs::create_dir(&shared).expect("dir");
        std::fs::set_permissions(
            &shared,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .expect("chmod");
        let err = RingDir::open(shared.to_str().expect("utf-8")).expect_err("refused");
        assert!(
            format!("{err:#}").contains("others can write there"),
            "{err:#}"
        );

        let link = base.join("link");
        std::os::unix::fs::symlink(&made, &link).expect("symlink");
        let err = RingDir::open(link.to_str().expect("utf-8")).expect_err("refused");
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        // Under a world-writable directory without the sticky bit, anyone could swap it.
        let open_parent = shared.join("open");
        std::fs::create_dir(&open_parent).expect("dir");
        std::fs::set_permissions(
            &open_parent,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let err =
            RingDir::open(open_parent.join("rings").to_str().expect("utf-8")).expect_err("refused");
        assert!(
            format!("{err:#}").contains("can be written by others"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&base).expect("clean up");
    }
}
