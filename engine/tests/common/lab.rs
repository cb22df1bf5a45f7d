//! The veth lab of scripts/lab.sh and a running `conntrail run`, for the live tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why this machine cannot run a live test, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (needs network namespaces, veth and AF_XDP)".into());
    }
    // SAFETY: plain socket(2); the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Some(format!(
            "AF_XDP is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just opened by us.
    unsafe { libc::close(fd) };
    None
}

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh")
}

/// A lab made by scripts/lab.sh, removed when dropped.
pub struct Lab {
    name: String,
    vars: BTreeMap<String, String>,
}

impl Lab {
    /// `lab.sh up --name NAME EXTRA...`, after removing leftovers of an earlier run that died.
    pub fn up(name: &str, extra: &[&str]) -> Lab {
        let _ = Command::new("bash")
            .arg(lab_script())
            .args(["down", "--name", name])
            .status();
        let out = Command::new("bash")
            .arg(lab_script())
            .args(["up", "--name", name])
            .args(extra)
            .output()
            .expect("bash runs lab.sh");
        // Guard first, so a half-made lab is removed too.
        let mut lab = Lab {
            name: name.to_string(),
            vars: BTreeMap::new(),
        };
        assert!(
            out.status.success(),
            "lab.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once('=') {
                lab.vars.insert(k.to_string(), v.to_string());
            }
        }
        lab
    }

    /// A variable `lab.sh up` printed (GEN_NS, GEN_IF, CAP_IF, ...).
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("lab.sh up printed no {key}"))
    }

    /// Sends a capture from the generator end, as fast as it goes.
    pub fn send(&self, pcap: &Path) {
        let out = Command::new("ip")
            .args(["netns", "exec", self.var("GEN_NS"), "tcpreplay"])
            .args(["--topspeed", "-q", "-i", self.var("GEN_IF")])
            .arg(pcap)
            .output()
            .expect("tcpreplay runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "tcpreplay {}: {}",
            pcap.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(lab_script())
            .args(["down", "--name", &self.name])
            .status();
    }
}

/// A running `conntrail run`, killed when dropped if it is still running.
pub struct Running {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Running {
    /// Starts `conntrail run --config CONFIG --log LOG ARGS...` with `envs`, its output in
    /// `dir` (`run.out`, `run.err`), and waits until it says it is running; panics with its
    /// output if it exits first. Returns it and its `running:` line.
    pub fn start(
        dir: &Path,
        config: &Path,
        log: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (Running, String) {
        let (out, err) = (dir.join("run.out"), dir.join("run.err"));
        let child = Command::new(super::bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--log")
            .arg(log)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err"))
            .spawn()
            .expect("conntrail run starts");
        let mut running = Running { child, out, err };
        let line = wait_for("conntrail run to start", Duration::from_secs(30), || {
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!(
                    "conntrail run exited early ({status}):\n{}",
                    running.output()
                );
            }
            let stdout = running.stdout();
            let line = stdout.lines().find(|l| l.starts_with("running:"))?;
            Some(line.to_string())
        });
        (running, line)
    }

    /// Sends SIGTERM and waits (at most 30 s) for it to exit; panics with its output unless
    /// it exits with success.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = wait_for("conntrail run to stop", Duration::from_secs(30), || {
            self.child.try_wait().expect("wait")
        });
        assert!(
            status.success(),
            "conntrail run: {status}\n{}",
            self.output()
        );
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr())
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 50 ms until it gives a value; panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
