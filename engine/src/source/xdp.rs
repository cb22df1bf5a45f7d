//! The AF_XDP source: one socket on one receive queue of one interface (through xsk-rs),
//! and the XDP program of each interface that steers frames to its sockets.
//!
//! A socket owns its UMEM (frames the kernel writes received packets into), the fill ring
//! (free frames handed to the kernel), the RX ring (received frames handed back) and a
//! completion ring the kernel requires but a receive-only socket leaves empty. A worker
//! calls [`XdpSocket::receive`] to take up to `batch` frames, reads them in place with
//! [`XdpSocket::frame`], and gives them back with [`XdpSocket::recycle`]: nothing is copied,
//! allocated or locked per packet, and the only system calls are the idle wait and the
//! wakeups the kernel asks for.
//!
//! Modes fall back from the fastest, as the entry's [`CaptureMode`] allows: a socket binds
//! zero-copy, else copy ([`BindMode`]); the interface's [`XdpProgram`] then attaches in
//! native (driver) mode, else generic (SKB) mode ([`XdpAttach`]). The program is ours,
//! loaded with bpf(2) and attached with a BPF link: it needs CAP_BPF and CAP_NET_ADMIN only,
//! and the kernel removes it when the process ends. Everything that can be checked before
//! touching the kernel is (the interface, the queue, the memlock limit), and every failure
//! is an [`XdpError`] that says what to change.
//!
//! ```no_run
//! use engine::source::xdp::{XdpAttach, XdpProgram, XdpSocket};
//! use flowtable::config::Capture;
//!
//! let capture = Capture { interface: "eth0".into(), ..Capture::default() };
//! let program = XdpProgram::load("eth0", 1).expect("program");
//! let mut socket = XdpSocket::open(&capture, 0, &program).expect("socket");
//! let (attach, _) = program
//!     .attach(XdpAttach::candidates(capture.mode, false))
//!     .expect("attached");
//! println!("eth0 queue 0: {attach} {}", socket.mode());
//! loop {
//!     let n = socket.receive();
//!     for i in 0..n {
//!         let _frame: &[u8] = socket.frame(i);
//!     }
//!     socket.recycle(n);
//!     if n == 0 {
//!         socket.wait(100);
//!     }
//! }
//! ```

use std::ffi::CString;
use std::fmt;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use flowtable::config::{Capture, CaptureMode};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// How a socket's frames get into its UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// The driver DMAs frames straight into the UMEM.
    ZeroCopy,
    /// The kernel copies frames into the UMEM.
    Copy,
}

impl BindMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
        }
    }

    /// The bind modes to try for a configured [`CaptureMode`], fastest first.
    pub fn candidates(mode: CaptureMode) -> &'static [BindMode] {
        match mode {
            CaptureMode::Auto | CaptureMode::Native => &[BindMode::ZeroCopy, BindMode::Copy],
            CaptureMode::ZeroCopy => &[BindMode::ZeroCopy],
            CaptureMode::Generic => &[BindMode::Copy],
        }
    }

    fn flags(self) -> BindFlags {
        match self {
            BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY | BindFlags::XDP_USE_NEED_WAKEUP,
            BindMode::Copy => BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP,
        }
    }
}

impl fmt::Display for BindMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the XDP program of an interface runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    /// In the driver, before the kernel builds a socket buffer.
    Native,
    /// On the kernel's socket buffers (any interface; after GRO).
    Generic,
}

impl XdpAttach {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpAttach::Native => "native",
            XdpAttach::Generic => "generic",
        }
    }

    /// Where to try to run the program for a configured [`CaptureMode`], fastest first;
    /// generic mode only when no socket got zero-copy (which needs the driver).
    pub fn candidates(mode: CaptureMode, any_zero_copy: bool) -> &'static [XdpAttach] {
        match mode {
            CaptureMode::Auto if !any_zero_copy => &[XdpAttach::Native, XdpAttach::Generic],
            CaptureMode::Auto | CaptureMode::Native | CaptureMode::ZeroCopy => &[XdpAttach::Native],
            CaptureMode::Generic => &[XdpAttach::Generic],
        }
    }

    /// XDP_FLAGS_DRV_MODE / XDP_FLAGS_SKB_MODE.
    fn flags(self) -> u32 {
        match self {
            XdpAttach::Native => 4,
            XdpAttach::Generic => 2,
        }
    }
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelStats {
    /// Frames dropped for any reason other than the two below (e.g. larger than a frame).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full: the worker was too slow.
    pub rx_ring_full: u64,
    /// Times the kernel found no free frame in the fill ring.
    pub fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
}

/// What went wrong opening a socket; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("there is no interface `{interface}` here (`ip link` lists them); change `interface`")]
    NoInterface { interface: String },
    #[error(
        "{interface} has no receive queue {queue}: it has {count} ({}); change `queues` or add \
         queues with `ethtool -L {interface} combined N`",
        if *count == 1 { "queue 0".to_string() } else { format!("queues 0-{}", count - 1) }
    )]
    NoQueue {
        interface: String,
        queue: u32,
        count: u32,
    },
    #[error(
        "the UMEM needs {need_mib:.1} MiB of locked memory but the memlock limit is \
         {limit_mib:.1} MiB: raise it (`ulimit -l`, LimitMEMLOCK= in a systemd unit), give the \
         process CAP_IPC_LOCK, or lower `frames` / `frame_size` in [[capture]]"
    )]
    Memlock { need_mib: f64, limit_mib: f64 },
    #[error(
        "no huge pages for a {mib:.1} MiB UMEM ({error}): reserve some (`sysctl \
         vm.nr_hugepages=N`) or set `huge_pages = false`"
    )]
    HugePages { mib: f64, error: io::Error },
    #[error("creating the UMEM: {0}")]
    Umem(String),
    #[error(
        "not permitted to open an AF_XDP socket on {interface} ({error}): run as root or with \
         CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK"
    )]
    Permission { interface: String, error: io::Error },
    #[error("{what} ({error}){}", bpf_hint(error))]
    Bpf {
        what: &'static str,
        error: io::Error,
    },
    #[error(
        "could not attach the XDP program to {interface} ({}){hint}",
        tried.join("; ")
    )]
    NoAttach {
        interface: String,
        tried: Vec<String>,
        hint: &'static str,
    },
    #[error("no mode worked ({}){hint}", tried.join("; "))]
    NoMode {
        interface: String,
        queue: u32,
        /// Each mode tried and why it failed.
        tried: Vec<String>,
        hint: &'static str,
    },
}

impl XdpError {
    /// The `[[capture]]` key to change.
    pub fn config_key(&self) -> &'static str {
        match self {
            XdpError::NoInterface { .. } | XdpError::Permission { .. } => "interface",
            XdpError::NoQueue { .. } => "queues",
            XdpError::Memlock { .. } | XdpError::Umem(_) => "frames",
            XdpError::HugePages { .. } => "huge_pages",
            XdpError::NoMode { .. } | XdpError::NoAttach { .. } => "mode",
            XdpError::Bpf { .. } => "interface",
        }
    }
}

/// An open AF_XDP socket and its rings, owned by one worker.
pub struct XdpSocket {
    // Field order is drop order: the rings and the socket go before the UMEM they map.
    rx: RxQueue,
    fill: FillQueue,
    _completion: CompQueue,
    _tx: TxQueue,
    umem: Umem,
    /// Frames the last `receive` took, valid up to its count.
    received: Vec<FrameDesc>,
    /// Frames owned by us and not yet in the fill ring (capacity: all frames).
    spare: Vec<FrameDesc>,
    batch: usize,
    mode: BindMode,
    busy_poll: bool,
    /// The faster modes tried before the one it got, each with why it failed.
    fallbacks: Vec<String>,
    /// Counters of this socket's loop, plain integers.
    pub counters: SocketCounters,
}

/// The receive loop's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SocketCounters {
    pub frames: u64,
    pub bytes: u64,
    /// Non-empty batches taken from the RX ring.
    pub batches: u64,
    /// Waits for traffic (poll with a timeout) and kernel wakeups asked for.
    pub idle_waits: u64,
    pub wakeups: u64,
    /// Time spent handling frames (from a batch's arrival to its frames' return to the
    /// fill ring), measured by the worker per batch: its busy share, whatever it spins.
    pub busy_ns: u64,
}

impl XdpSocket {
    /// Opens a socket on `queue` of `capture.interface`, zero-copy if the entry allows and
    /// the driver can, after checking what can be checked, and enters it in `program`'s
    /// map (frames arrive once the program is attached). Binding again right after another
    /// socket on the same queue closed can fail for about a second (EBUSY): that is retried.
    pub fn open(
        capture: &Capture,
        queue: u32,
        program: &XdpProgram,
    ) -> Result<XdpSocket, XdpError> {
        quiet_libraries();
        check_interface(&capture.interface)?;
        check_queue(&capture.interface, queue)?;
        check_memlock(capture.umem_bytes())?;
        let iface: Interface = capture
            .interface
            .parse()
            .map_err(|_| XdpError::NoInterface {
                interface: capture.interface.clone(),
            })?;
        let mut tried = Vec::new();
        let mut hint = "";
        // EBUSY right after a close clears within about a second; past this it is real.
        let deadline = Instant::now() + Duration::from_secs(2);
        for &mode in BindMode::candidates(capture.mode) {
            let failure = loop {
                match open_in_mode(capture, &iface, queue, mode) {
                    Ok(mut socket) => {
                        for t in &tried {
                            log::info!("{} queue {queue}: {t}", capture.interface);
                        }
                        socket.fallbacks = tried;
                        program.register(queue, &socket)?;
                        return Ok(socket);
                    }
                    Err(OpenFailure::Fatal(e)) => return Err(e),
                    Err(OpenFailure::Mode(e)) => {
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                        break e;
                    }
                }
            };
            match failure.raw_os_error() {
                Some(libc::EOPNOTSUPP) if capture.mode != CaptureMode::Auto && hint.is_empty() => {
                    hint = ": the driver cannot do this mode; `mode = \"auto\"` falls back to \
                            the ones it can"
                }
                Some(libc::EBUSY) => {
                    hint = ": another program holds the queue or an XDP program is attached \
                            (`ip link show` shows `xdp`); stop it or remove it with `ip link set \
                            dev IF xdp off`"
                }
                Some(libc::ERANGE) if hint.is_empty() => {
                    hint = ": lower the MTU (`ip link set dev IF mtu 3000`)"
                }
                _ => {}
            }
            let why = match failure.raw_os_error() {
                Some(libc::ERANGE) => " (the MTU is too large for XDP in this mode)",
                Some(libc::EOPNOTSUPP) => " (not by this driver)",
                _ => "",
            };
            tried.push(format!("{mode}: {failure}{why}"));
        }
        Err(XdpError::NoMode {
            interface: capture.interface.clone(),
            queue,
            tried,
            hint,
        })
    }

    /// The mode this socket got.
    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// The faster modes tried first, each with why it failed (`mode: error`).
    pub fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    /// Takes up to `batch` received frames from the RX ring; returns how many. No system
    /// call: this reads the ring shared with the kernel.
    #[inline]
    pub fn receive(&mut self) -> usize {
        // SAFETY: `received` holds `batch` descriptors we own; `consume` overwrites them
        // with frames the kernel hands back, which are then ours until `recycle`.
        let n = unsafe { self.rx.consume(&mut self.received[..self.batch]) };
        if n > 0 {
            self.counters.batches += 1;
            self.counters.frames += n as u64;
            self.counters.bytes += self.received[..n]
                .iter()
                .map(|d| d.lengths().data() as u64)
                .sum::<u64>();
        }
        n
    }

    /// The bytes of frame `i` of the last [`receive`](Self::receive) (empty past its count).
    #[inline]
    pub fn frame(&self, i: usize) -> &[u8] {
        match self.received.get(i) {
            // SAFETY: the descriptor came from this socket's UMEM through the RX ring and
            // is not in the fill ring until `recycle`, so the kernel does not write to it
            // while the returned slice (borrowing `self`) lives.
            Some(desc) => unsafe { self.umem.data(desc) }.contents(),
            None => &[],
        }
    }

    /// Gives the `n` frames of the last [`receive`](Self::receive) back to the kernel (as
    /// many as the fill ring has room for now; the rest on the next call).
    #[inline]
    pub fn recycle(&mut self, n: usize) {
        let n = n.min(self.batch);
        // Within capacity: at most every frame of the UMEM is ever held here.
        self.spare.extend_from_slice(&self.received[..n]);
        self.refill();
    }

    fn refill(&mut self) {
        let held = self.spare.len();
        if held == 0 {
            return;
        }
        let room = self.fill.nb_free(held as u32) as usize;
        let k = room.min(held);
        if k > 0 {
            // SAFETY: the frames in `spare` are ours (never handed out, or consumed from
            // the RX ring and done with); `produce` is all-or-nothing and `k` fits.
            let produced = unsafe { self.fill.produce(&self.spare[held - k..]) };
            self.spare.truncate(held - produced);
        }
    }

    /// Waits for traffic up to `timeout_ms` (not at all when busy polling, which instead
    /// asks the kernel to poll the queue), and wakes the kernel if it asked for it.
    pub fn wait(&mut self, timeout_ms: i32) {
        self.refill();
        let fd = self.rx.fd().as_raw_fd();
        if self.busy_poll || self.fill.needs_wakeup() {
            self.counters.wakeups += 1;
            // SAFETY: `fd` is this socket's open descriptor; a zero-length non-blocking
            // receive with null buffers is the documented way to drive an AF_XDP socket.
            unsafe {
                libc::recvfrom(
                    fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
            if self.busy_poll {
                return;
            }
        }
        self.counters.idle_waits += 1;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for an open descriptor. An error (EINTR) is as good as
        // a timeout here: the caller loops.
        unsafe {
            libc::poll(&mut pfd, 1, timeout_ms);
        }
    }

    /// The kernel's counters of this socket (one system call).
    pub fn kernel_stats(&self) -> io::Result<KernelStats> {
        let s = self.rx.fd().xdp_statistics()?;
        Ok(KernelStats {
            rx_dropped: s.rx_dropped(),
            rx_ring_full: s.rx_ring_full(),
            fill_ring_empty: s.rx_fill_ring_empty_descs(),
            rx_invalid_descs: s.rx_invalid_descs(),
        })
    }
}

/// libbpf and libxdp print notes to stderr by default (\"No bpffs found ... falling back\",
/// \"skipping unrecognized data section\"); every failure that matters reaches us as an
/// error code anyway. Keep them only when debug logging is on.
fn quiet_libraries() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if log::log_enabled!(log::Level::Debug) {
        return;
    }
    extern "C" {
        fn libbpf_set_print(print: *const libc::c_void) -> *const libc::c_void;
        fn libxdp_set_print(print: *const libc::c_void) -> *const libc::c_void;
    }
    ONCE.call_once(|| {
        // SAFETY: both take a print callback (a function pointer, the size of a data
        // pointer on the platforms AF_XDP exists on) and accept NULL, meaning no printing;
        // they only swap a global, before any socket is opened on this thread's run.
        unsafe {
            libbpf_set_print(std::ptr::null());
            libxdp_set_print(std::ptr::null());
        }
    });
}

enum OpenFailure {
    /// Not this mode: try the next one.
    Mode(io::Error),
    /// No mode will do better.
    Fatal(XdpError),
}

fn open_in_mode(
    capture: &Capture,
    iface: &Interface,
    queue: u32,
    mode: BindMode,
) -> Result<XdpSocket, OpenFailure> {
    let queue_size = |v: u32| QueueSize::new(v).map_err(|e| fatal_umem(e.to_string()));
    let frame_size = FrameSize::new(capture.frame_size).map_err(|e| fatal_umem(e.to_string()))?;
    let umem_config = UmemConfig::builder()
        .frame_size(frame_size)
        .fill_queue_size(queue_size(capture.fill_ring)?)
        .comp_queue_size(queue_size(capture.completion_ring)?)
        .build()
        .map_err(|e| fatal_umem(e.to_string()))?;
    let frames = NonZeroU32::new(capture.frames).ok_or_else(|| fatal_umem("no frames".into()))?;
    let (umem, descs) =
        Umem::new(umem_config, frames, capture.huge_pages).map_err(|e| umem_error(capture, e))?;
    let socket_config = SocketConfig::builder()
        .rx_queue_size(queue_size(capture.rx_ring)?)
        // Receive only: the TX ring exists because libxdp makes one; keep it small.
        .tx_queue_size(queue_size(64)?)
        // Our own program (XdpProgram) steers frames to the socket: libxdp loads none.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(mode.flags())
        .build();
    // SAFETY: the UMEM is new and used by this socket alone; the configuration rejects two
    // entries on one (interface, queue), and another process on it makes bind fail (EBUSY).
    let created = unsafe { Socket::new(socket_config, &umem, iface, queue) };
    let (tx, rx, rings) = match created {
        Ok(q) => q,
        Err(e) => {
            let os = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .and_then(io::Error::raw_os_error);
            let err = match os {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::other(e.to_string()),
            };
            return Err(match os {
                Some(libc::EPERM | libc::EACCES) => OpenFailure::Fatal(XdpError::Permission {
                    interface: capture.interface.clone(),
                    error: err,
                }),
                Some(libc::ENOBUFS | libc::ENOMEM) if !has_cap_ipc_lock() => {
                    OpenFailure::Fatal(memlock_error(capture.umem_bytes()))
                }
                Some(libc::ENODEV) => OpenFailure::Fatal(XdpError::NoInterface {
                    interface: capture.interface.clone(),
                }),
                _ => OpenFailure::Mode(err),
            });
        }
    };
    let Some((fill, completion)) = rings else {
        return Err(fatal_umem(
            "libxdp gave no fill and completion rings to a new UMEM".into(),
        ));
    };
    let batch = capture.batch as usize;
    let received = descs[..batch.min(descs.len())].to_vec();
    let mut spare = Vec::with_capacity(descs.len());
    spare.extend_from_slice(&descs);
    let busy_poll = capture.busy_poll_us > 0;
    let mut socket = XdpSocket {
        rx,
        fill,
        _completion: completion,
        _tx: tx,
        umem,
        received,
        spare,
        batch,
        mode,
        busy_poll,
        fallbacks: Vec::new(),
        counters: SocketCounters::default(),
    };
    if busy_poll {
        socket
            .set_busy_poll(capture.busy_poll_us, capture.batch)
            .map_err(OpenFailure::Mode)?;
    }
    socket.refill();
    Ok(socket)
}

impl XdpSocket {
    fn set_busy_poll(&mut self, usecs: u32, budget: u32) -> io::Result<()> {
        // Socket options of include/uapi/asm-generic/socket.h (x86-64, arm64, ...).
        const SO_BUSY_POLL: libc::c_int = 46;
        const SO_PREFER_BUSY_POLL: libc::c_int = 69;
        const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
        let fd = self.rx.fd().as_raw_fd();
        for (opt, value) in [
            (SO_PREFER_BUSY_POLL, 1),
            (SO_BUSY_POLL, usecs as libc::c_int),
            (SO_BUSY_POLL_BUDGET, budget as libc::c_int),
        ] {
            // SAFETY: `fd` is open; the option value is a c_int of the size passed.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("busy polling (socket option {opt}): {e}"),
                ));
            }
        }
        Ok(())
    }
}

fn fatal_umem(message: String) -> OpenFailure {
    OpenFailure::Fatal(XdpError::Umem(message))
}

fn umem_error(capture: &Capture, e: xsk_rs::umem::UmemCreateError) -> OpenFailure {
    let os = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    let mib = capture.umem_bytes() as f64 / (1 << 20) as f64;
    OpenFailure::Fatal(match os {
        Some(code) if capture.huge_pages => XdpError::HugePages {
            mib,
            error: io::Error::from_raw_os_error(code),
        },
        Some(libc::ENOBUFS | libc::ENOMEM | libc::EPERM) if !has_cap_ipc_lock() => {
            memlock_error(capture.umem_bytes())
        }
        Some(code) => XdpError::Umem(format!("{e}: {}", io::Error::from_raw_os_error(code))),
        None => XdpError::Umem(e.to_string()),
    })
}

fn memlock_error(need: u64) -> XdpError {
    let limit = memlock_limit().map_or(0, |(soft, _)| soft);
    XdpError::Memlock {
        need_mib: need as f64 / (1 << 20) as f64,
        limit_mib: limit as f64 / (1 << 20) as f64,
    }
}

/// Checks that `interface` exists (in this network namespace).
pub fn check_interface(interface: &str) -> Result<(), XdpError> {
    let missing = || XdpError::NoInterface {
        interface: interface.to_string(),
    };
    let name = CString::new(interface).map_err(|_| missing())?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(missing());
    }
    Ok(())
}

/// Receive queues of `interface` according to sysfs, if it can be read.
pub fn rx_queue_count(interface: &str) -> Option<u32> {
    let dir = Path::new("/sys/class/net").join(interface).join("queues");
    let entries = std::fs::read_dir(dir).ok()?;
    let n = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    (n > 0).then_some(n as u32)
}

/// Checks that `interface` has receive queue `queue`.
pub fn check_queue(interface: &str, queue: u32) -> Result<(), XdpError> {
    match rx_queue_count(interface) {
        Some(count) if queue >= count => Err(XdpError::NoQueue {
            interface: interface.to_string(),
            queue,
            count,
        }),
        _ => Ok(()),
    }
}

/// Does this process have CAP_IPC_LOCK (so locked memory is not limited)?
pub fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The memlock limit (soft, hard) in bytes; `u64::MAX` is unlimited.
pub fn memlock_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write into.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Checks that `need` more bytes can be locked: raises the soft memlock limit to the hard
/// one if that helps, and says what to change if even that is too low (CAP_IPC_LOCK lifts
/// the limit).
pub fn check_memlock(need: u64) -> Result<(), XdpError> {
    if has_cap_ipc_lock() {
        return Ok(());
    }
    let Some((soft, hard)) = memlock_limit() else {
        return Ok(());
    };
    if soft >= need {
        return Ok(());
    }
    if hard > soft {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one is always
        // allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    }
    match memlock_limit() {
        Some((soft, _)) if soft < need => Err(memlock_error(need)),
        _ => Ok(()),
    }
}

/// The XDP program of one interface, ours: frames of receive queue q go to the socket in
/// slot q of its XSKMAP, frames of queues without a socket to the kernel's stack.
///
/// Loaded and attached with the bpf(2) system call directly, not by libxdp: it needs only
/// CAP_BPF and CAP_NET_ADMIN (libxdp looks its programs up by id afterwards, which needs
/// CAP_SYS_ADMIN), and it is attached through a BPF link, which the kernel removes when
/// the process ends, however it ends: no program is left behind after a crash.
pub struct XdpProgram {
    interface: String,
    ifindex: u32,
    map: OwnedFd,
    program: OwnedFd,
    link: std::sync::Mutex<Option<OwnedFd>>,
}

impl XdpProgram {
    /// Loads the program and its map (slots for `queues` receive queues) for `interface`;
    /// nothing reaches it before [`attach`](Self::attach).
    pub fn load(interface: &str, queues: u32) -> Result<XdpProgram, XdpError> {
        check_interface(interface)?;
        let name = CString::new(interface).map_err(|_| XdpError::NoInterface {
            interface: interface.to_string(),
        })?;
        // SAFETY: a valid NUL-terminated string; the call only reads it.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let map = bpf::create_xskmap(queues.max(1)).map_err(|error| XdpError::Bpf {
            what: "creating the XSKMAP",
            error,
        })?;
        let program = bpf::load_redirect_program(&map).map_err(|error| XdpError::Bpf {
            what: "loading the XDP program",
            error,
        })?;
        Ok(XdpProgram {
            interface: interface.to_string(),
            ifindex,
            map,
            program,
            link: std::sync::Mutex::new(None),
        })
    }

    /// Enters `socket` in the map at `queue`.
    pub fn register(&self, queue: u32, socket: &XdpSocket) -> Result<(), XdpError> {
        bpf::map_update(&self.map, queue, socket.rx.fd().as_raw_fd() as u32).map_err(|error| {
            XdpError::Bpf {
                what: "entering the socket in the XSKMAP",
                error,
            }
        })
    }

    /// Attaches the program in the first mode of `candidates` that works; returns it and
    /// the faster modes that failed, each with why.
    pub fn attach(&self, candidates: &[XdpAttach]) -> Result<(XdpAttach, Vec<String>), XdpError> {
        let mut tried = Vec::new();
        let mut hint = "";
        for &mode in candidates {
            match bpf::link_xdp(&self.program, self.ifindex, mode.flags()) {
                Ok(link) => {
                    if let Ok(mut slot) = self.link.lock() {
                        *slot = Some(link);
                    }
                    for t in &tried {
                        log::info!("{}: {t}", self.interface);
                    }
                    return Ok((mode, tried));
                }
                Err(e) => {
                    let why = match e.raw_os_error() {
                        Some(libc::EBUSY | libc::EEXIST) => {
                            hint = ": another XDP program is attached (`ip link show` shows \
                                    `xdp`); remove it with `ip link set dev IF xdp off`";
                            " (another XDP program is attached)"
                        }
                        Some(libc::ERANGE) => {
                            if hint.is_empty() {
                                hint = ": lower the MTU (`ip link set dev IF mtu 3000`)";
                            }
                            " (the MTU is too large for XDP in this mode)"
                        }
                        Some(libc::EOPNOTSUPP) => " (not by this driver)",
                        Some(libc::EPERM | libc::EACCES) => {
                            hint = ": needs CAP_NET_ADMIN and CAP_BPF";
                            ""
                        }
                        _ => "",
                    };
                    tried.push(format!("{mode}: {e}{why}"));
                }
            }
        }
        Err(XdpError::NoAttach {
            interface: self.interface.clone(),
            tried,
            hint,
        })
    }
}

fn bpf_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            ": run as root or with CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK"
        }
        _ => "",
    }
}

/// The bpf(2) calls the program needs, with their attribute layouts (include/uapi/linux/
/// bpf.h; the kernel zero-extends an attribute shorter than its own).
mod bpf {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const BPF_MAP_CREATE: libc::c_int = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
    const BPF_PROG_LOAD: libc::c_int = 5;
    const BPF_LINK_CREATE: libc::c_int = 28;
    const BPF_MAP_TYPE_XSKMAP: u32 = 17;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    const BPF_FUNC_REDIRECT_MAP: i32 = 51;
    const XDP_PASS: i32 = 2;

    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }

    #[repr(C)]
    struct MapUpdate {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }

    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Insn {
        code: u8,
        /// dst_reg in the low nibble, src_reg in the high one.
        regs: u8,
        off: i16,
        imm: i32,
    }

    /// bpf(2) with one attribute struct; a new descriptor when the command returns one.
    fn call<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a live, initialised #[repr(C)] attribute struct of the layout
        // the command expects, and its size is passed with it; pointers inside it point
        // to buffers that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T as *mut libc::c_void,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn owned(rc: libc::c_long) -> OwnedFd {
        // SAFETY: the command returned a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) }
    }

    fn name(text: &str) -> [u8; 16] {
        let mut n = [0u8; 16];
        for (d, s) in n.iter_mut().zip(text.bytes().take(15)) {
            *d = s;
        }
        n
    }

    pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
        let mut attr = MapCreate {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: entries,
            map_flags: 0,
            inner_map_fd: 0,
            numa_node: 0,
            map_name: name("conntrail_xsks"),
        };
        call(BPF_MAP_CREATE, &mut attr).map(owned)
    }

    /// `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`
    pub fn load_redirect_program(map: &OwnedFd) -> io::Result<OwnedFd> {
        let insns = [
            // r2 = *(u32 *)(r1 + 16): ctx->rx_queue_index
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 16,
                imm: 0,
            },
            // r1 = the map (a 64-bit immediate in two instructions)
            Insn {
                code: 0x18,
                regs: 0x01 | (BPF_PSEUDO_MAP_FD << 4),
                off: 0,
                imm: map.as_raw_fd(),
            },
            Insn {
                code: 0,
                regs: 0,
                off: 0,
                imm: 0,
            },
            // r3 = XDP_PASS: what the helper returns when the slot is empty
            Insn {
                code: 0xb7,
                regs: 0x03,
                off: 0,
                imm: XDP_PASS,
            },
            // r0 = bpf_redirect_map(r1, r2, r3); return r0
            Insn {
                code: 0x85,
                regs: 0,
                off: 0,
                imm: BPF_FUNC_REDIRECT_MAP,
            },
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0,
            },
        ];
        let license = b"GPL\0";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name("conntrail_xsk"),
            prog_ifindex: 0,
            expected_attach_type: BPF_XDP,
        };
        call(BPF_PROG_LOAD, &mut attr).map(owned)
    }

    pub fn map_update(map: &OwnedFd, key: u32, value: u32) -> io::Result<()> {
        let mut attr = MapUpdate {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        call(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }

    /// Attaches `prog` to interface `ifindex` with a BPF link; dropping the link detaches.
    pub fn link_xdp(prog: &OwnedFd, ifindex: u32, xdp_flags: u32) -> io::Result<OwnedFd> {
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: xdp_flags,
        };
        call(BPF_LINK_CREATE, &mut attr).map(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_fall_back_from_fastest_to_generic() {
        assert_eq!(
            BindMode::candidates(CaptureMode::Auto),
            &[BindMode::ZeroCopy, BindMode::Copy]
        );
        assert_eq!(
            XdpAttach::candidates(CaptureMode::Auto, false),
            &[XdpAttach::Native, XdpAttach::Generic]
        );
        // Zero-copy needs the driver: no generic fallback once a socket has it.
        assert_eq!(
            XdpAttach::candidates(CaptureMode::Auto, true),
            &[XdpAttach::Native]
        );
        assert_eq!(
            BindMode::candidates(CaptureMode::Generic),
            &[BindMode::Copy]
        );
        assert_eq!(
            XdpAttach::candidates(CaptureMode::Generic, false),
            &[XdpAttach::Generic]
        );
        assert_eq!(
            XdpAttach::candidates(CaptureMode::Native, false),
            &[XdpAttach::Native]
        );
    }

    #[test]
    fn a_missing_interface_or_queue_says_what_to_change() {
        let e = check_interface("nosuchif0").unwrap_err();
        assert!(e.to_string().contains("no interface `nosuchif0`"), "{e}");
        assert!(e.to_string().contains("change `interface`"), "{e}");
        if rx_queue_count("lo").is_some() {
            let e = check_queue("lo", 4096).unwrap_err();
            assert!(e.to_string().contains("has no receive queue 4096"), "{e}");
            assert!(e.to_string().contains("change `queues`"), "{e}");
        }
    }

    #[test]
    fn the_memlock_error_names_the_limit_and_the_fixes() {
        let e = XdpError::Memlock {
            need_mib: 16.0,
            limit_mib: 8.0,
        }
        .to_string();
        assert!(e.contains("16.0 MiB"), "{e}");
        assert!(e.contains("8.0 MiB"), "{e}");
        assert!(e.contains("CAP_IPC_LOCK") && e.contains("ulimit -l"), "{e}");
    }
}
