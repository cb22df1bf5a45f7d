//! Least privilege for `conntrail run --user NAME`: once its sockets are open and its XDP
//! programs attached, the engine becomes NAME and keeps no capability at all.
//!
//! Nothing it does afterwards needs one: receiving from an AF_XDP socket, refilling its
//! fill ring and reading its kernel counters need only the socket; the BPF links and the
//! sockets are released by closing them, which needs no privilege either (and the kernel
//! closes them when the process ends, even by SIGKILL). What the engine still writes (log
//! segments, the stats file, the control socket's removal) must be writable by NAME: the
//! log's directory is, on an appliance, NAME's own (`StateDirectory=` in systemd).
//!
//! The switch is `setgroups` to NAME's primary group only, `setgid`, `setuid`, through the
//! C library, which applies each to every thread of the process (the workers already run);
//! a change of every user id away from 0 clears the permitted, effective and ambient
//! capability sets (no `PR_SET_KEEPCAPS`). The switch is then checked: every id is NAME's and
//! going back to root fails.

use std::ffi::CString;
use std::io;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A user's ids from the password database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserIds {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks `name` up in the password database.
pub fn lookup(name: &str) -> Result<UserIds> {
    let c_name = CString::new(name).with_context(|| format!("user name {name:?}"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `buf` has
    // `buf.len()` bytes, `pwd` and `found` are live locals.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc))
            .with_context(|| format!("looking up user `{name}`"));
    }
    if found.is_null() {
        bail!("there is no user `{name}` (give an existing one to --user)");
    }
    Ok(UserIds {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Hands `paths` (files the engine made as root and must still remove) to `user`, then
/// becomes `user` in every thread, with no capability left.
pub fn drop_to(user: &str, paths: &[&Path]) -> Result<()> {
    let ids = lookup(user)?;
    if ids.uid == 0 {
        bail!("--user {user}: that is root; give an unprivileged user");
    }
    for p in paths {
        std::os::unix::fs::chown(p, Some(ids.uid), Some(ids.gid))
            .with_context(|| format!("--user {user}: handing {} over", p.display()))?;
    }
    let fail = |what: &str| {
        Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "--user {user}: {what} (switching users needs root, or CAP_SETUID and \
                 CAP_SETGID)"
            )
        })
    };
    let groups = [ids.gid];
    // SAFETY: `groups` holds one valid gid and lives across the call.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return fail("setgroups");
    }
    // SAFETY: plain system calls on ids; the C library applies them to every thread.
    if unsafe { libc::setgid(ids.gid) } != 0 {
        return fail("setgid");
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(ids.uid) } != 0 {
        return fail("setuid");
    }
    // SAFETY: plain queries and an attempt to regain root, which must fail.
    let (uid, euid, gid, regained) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::setuid(0) == 0,
        )
    };
    if uid != ids.uid || euid != ids.uid || gid != ids.gid || regained {
        bail!("--user {user}: the switch did not hold (uid {uid}, euid {euid}, gid {gid})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_unknown_ones_named() {
        assert_eq!(lookup("root").expect("root exists").uid, 0);
        let e = lookup("no-such-user-here")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("there is no user `no-such-user-here`"), "{e}");
        let e = drop_to("root", &[]).expect_err("refused").to_string();
        assert!(e.contains("that is root"), "{e}");
    }
}
