//! Configuration: table sizes, idle timeouts and every anomaly threshold, read from TOML.
//!
//! The documented default file is [`DEFAULT_TOML`] (`conntrail config default` prints it);
//! every key is optional and falls back to it. Unknown keys, wrong types and bad values are
//! errors that name the file, the line and the key. Per-port and per-network overrides
//! (`[[override]]`) replace any trigger key for the connections they match.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::packet::Ip;
use crate::record::Addr;

/// The documented default configuration.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Sizes of the per-worker structures; all of it is allocated before the first packet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableConfig {
    pub capacity: u32,
    pub points_per_flow: u32,
    pub fragments: u32,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            capacity: 262_144,
            points_per_flow: 16,
            fragments: 4096,
        }
    }
}

/// Idle timeouts in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub tcp_syn_s: f64,
    pub tcp_established_s: f64,
    pub tcp_closing_s: f64,
    pub tcp_closed_s: f64,
    pub udp_s: f64,
    pub icmp_s: f64,
    pub fragment_s: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_s: 30.0,
            tcp_established_s: 3600.0,
            tcp_closing_s: 120.0,
            tcp_closed_s: 10.0,
            udp_s: 60.0,
            icmp_s: 30.0,
            fragment_s: 30.0,
        }
    }
}

/// The shared-memory ring of each worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    pub bytes: u64,
    /// The ring directory; `%u` stands for the engine's effective uid.
    pub dir: String,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            bytes: 4 << 20,
            dir: "/dev/shm/conntrail-%u".to_string(),
        }
    }
}

/// The log written by the recorder: rotation and retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Start a new segment when the current one would exceed this size.
    pub rotate_bytes: u64,
    /// Start a new segment when the current one is this old (0: never).
    pub rotate_age_s: u64,
    /// Delete the oldest segments to keep the whole log under this size (0: no cap).
    pub max_total_bytes: u64,
    /// Keep this much space free on the log's file system, deleting the oldest segments and
    /// then dropping (and counting) records (0: no floor).
    pub min_free_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            rotate_bytes: 1 << 30,
            rotate_age_s: 0,
            max_total_bytes: 0,
            min_free_bytes: 64 << 20,
        }
    }
}

/// `error` triggers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorTriggers {
    pub rst_client: bool,
    pub rst_server: bool,
    pub rejected: bool,
    pub unanswered: bool,
    pub icmp_error: bool,
    pub tls_fatal_alert: bool,
}

impl Default for ErrorTriggers {
    fn default() -> Self {
        ErrorTriggers {
            rst_client: true,
            rst_server: true,
            rejected: true,
            unanswered: true,
            icmp_error: true,
            tls_fatal_alert: true,
        }
    }
}

/// `latency` triggers, in milliseconds; 0 switches one off. The thresholds are converted
/// to [`Limit`]s once, when the triggers are made (read from a file or defaulted), so the
/// packet path compares integers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, from = "LatencyKeys", into = "LatencyKeys")]
pub struct LatencyTriggers {
    pub(crate) syn_synack_ms: f64,
    pub(crate) synack_ack_ms: f64,
    pub(crate) ttfb_ms: f64,
    pub(crate) stall_ms: f64,
    pub syn_retransmit: bool,
    /// SYN to SYN-ACK, SYN-ACK to ACK, first response byte, silence.
    pub syn_synack: Limit,
    pub synack_ack: Limit,
    pub ttfb: Limit,
    pub stall: Limit,
}

/// A latency threshold in integers: a measurement over `ns` trips it ([`Limit::over`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The largest measurement that does not trip it; `u64::MAX` when it is off.
    pub ns: u64,
    /// The threshold in microseconds, as a threshold point's argument says it.
    pub us: u32,
}

impl Limit {
    pub const OFF: Limit = Limit {
        ns: u64::MAX,
        us: 0,
    };

    /// `ms` milliseconds; 0 (or less) is off. A measurement `v` trips it when `v > ms`
    /// exactly: `v > floor(ms * 10^6)` for whole nanoseconds.
    fn of_ms(ms: f64) -> Limit {
        if ms > 0.0 {
            Limit {
                ns: (ms * 1e6).floor() as u64,
                us: (ms * 1e3).min(f64::from(u32::MAX)) as u32,
            }
        } else {
            Limit::OFF
        }
    }

    pub fn is_on(self) -> bool {
        self.ns != u64::MAX
    }

    /// Does a measurement of `value_ns` trip it?
    #[inline]
    pub fn over(self, value_ns: u64) -> bool {
        value_ns > self.ns
    }
}

/// The `latency` keys as the file writes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LatencyKeys {
    syn_synack_ms: f64,
    synack_ack_ms: f64,
    ttfb_ms: f64,
    stall_ms: f64,
    syn_retransmit: bool,
}

impl Default for LatencyKeys {
    fn default() -> Self {
        LatencyKeys {
            syn_synack_ms: 100.0,
            synack_ack_ms: 100.0,
            ttfb_ms: 1000.0,
            stall_ms: 5000.0,
            syn_retransmit: true,
        }
    }
}

impl From<LatencyKeys> for LatencyTriggers {
    fn from(k: LatencyKeys) -> LatencyTriggers {
        LatencyTriggers {
            syn_synack: Limit::of_ms(k.syn_synack_ms),
            synack_ack: Limit::of_ms(k.synack_ack_ms),
            ttfb: Limit::of_ms(k.ttfb_ms),
            stall: Limit::of_ms(k.stall_ms),
            syn_synack_ms: k.syn_synack_ms,
            synack_ack_ms: k.synack_ack_ms,
            ttfb_ms: k.ttfb_ms,
            stall_ms: k.stall_ms,
            syn_retransmit: k.syn_retransmit,
        }
    }
}

impl From<LatencyTriggers> for LatencyKeys {
    fn from(t: LatencyTriggers) -> LatencyKeys {
        LatencyKeys {
            syn_synack_ms: t.syn_synack_ms,
            synack_ack_ms: t.synack_ack_ms,
            ttfb_ms: t.ttfb_ms,
            stall_ms: t.stall_ms,
            syn_retransmit: t.syn_retransmit,
        }
    }
}

impl Default for LatencyTriggers {
    fn default() -> Self {
        LatencyKeys::default().into()
    }
}

/// `protocol` triggers; counts are "at least N", 0 switches one off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolTriggers {
    pub retransmissions: u32,
    pub out_of_order: u32,
    pub dup_acks: u32,
    pub zero_window: bool,
    pub bad_flags: bool,
    pub data_after_fin: bool,
}

impl Default for ProtocolTriggers {
    fn default() -> Self {
        ProtocolTriggers {
            retransmissions: 3,
            out_of_order: 3,
            dup_acks: 3,
            zero_window: true,
            bad_flags: true,
            data_after_fin: true,
        }
    }
}

/// `resource` triggers; limits of 0 are off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceTriggers {
    pub truncated: bool,
    pub evicted: bool,
    pub max_packets: u64,
    pub max_bytes: u64,
    pub max_duration_s: f64,
}

impl Default for ResourceTriggers {
    fn default() -> Self {
        ResourceTriggers {
            truncated: true,
            evicted: true,
            max_packets: 0,
            max_bytes: 0,
            max_duration_s: 0.0,
        }
    }
}

/// `path` triggers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathTriggers {
    pub fragments: bool,
    pub ttl_change: bool,
    pub frag_needed: bool,
    pub vlan_change: bool,
}

impl Default for PathTriggers {
    fn default() -> Self {
        PathTriggers {
            fragments: true,
            ttl_change: true,
            frag_needed: true,
            vlan_change: true,
        }
    }
}

/// All anomaly triggers, evaluated when a connection closes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Triggers {
    pub error: ErrorTriggers,
    pub latency: LatencyTriggers,
    pub protocol: ProtocolTriggers,
    pub resource: ResourceTriggers,
    pub path: PathTriggers,
}

/// Longest time any duration key may give (timeouts, latency thresholds, durations): 30
/// days. More is a typo, and (in ns) would come close to overflowing the clocks' 64 bits.
pub const MAX_SECONDS: f64 = 30.0 * 86400.0;

/// Largest `[ring] bytes`: the ring's largest data area (`ring::spsc::MAX_CAPACITY`, 2 GiB),
/// so every length in it fits a `u32` with room for its padding marker.
pub const MAX_RING_BYTES: u64 = 1 << 31;

/// Checks a duration key: a finite number from 0 (or from just above 0 when `zero_is_off`
/// is false) to [`MAX_SECONDS`], given in `unit`s (`per_s` of them to a second).
fn check_duration(v: f64, unit: &str, per_s: f64, zero_is_off: bool) -> Result<(), String> {
    let max = MAX_SECONDS * per_s;
    let in_range = v.is_finite() && v >= 0.0 && v <= max && (zero_is_off || v > 0.0);
    if in_range {
        return Ok(());
    }
    let what = if zero_is_off {
        format!("0 (off) or a positive number of {unit}")
    } else {
        format!("a positive number of {unit}")
    };
    Err(format!("must be {what} up to {max} (30 days), not {v}"))
}

impl Triggers {
    /// Checks the duration thresholds: finite, from 0 (off) to 30 days.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let l = &self.latency;
        for (key, v) in [
            ("syn_synack_ms", l.syn_synack_ms),
            ("synack_ack_ms", l.synack_ack_ms),
            ("ttfb_ms", l.ttfb_ms),
            ("stall_ms", l.stall_ms),
        ] {
            check_duration(v, "milliseconds", 1000.0, true).map_err(|m| (key, m))?;
        }
        check_duration(self.resource.max_duration_s, "seconds", 1.0, true)
            .map_err(|m| ("max_duration_s", m))
    }
}

/// `[export]`: shipping every record of the log to a NATS JetStream stream (see the `fleet`
/// crate). Off while `servers` is empty (the command line's `--export URL` fills it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); the client picks one and
    /// fails over to the others and to the cluster members the servers announce.
    pub servers: Vec<String>,
    /// The JetStream stream, created (subjects `conntrail.records.>`) when missing.
    pub stream: String,
    /// This appliance's name in subjects (`conntrail.records.<host>.<context>`); empty: the
    /// machine's host name, with characters a subject token cannot hold replaced by `_`.
    pub host: String,
    /// Copies of each message when the stream is created (1, or 3 on a 3-node cluster).
    pub replicas: u32,
    /// How long the stream remembers message ids to drop duplicates, when it is created.
    pub duplicate_window_s: f64,
    /// How long to wait for the server to acknowledge a record before sending it again.
    pub ack_timeout_s: f64,
    /// At the end of `replay` (or `run`), how long to wait for the export to catch up.
    pub drain_timeout_s: f64,
    /// NATS credentials file (`.creds`: user JWT and NKey seed); empty: none.
    pub credentials: String,
    /// Require TLS to the servers.
    pub tls: bool,
    /// PEM file of the CA that signed the servers' certificates; empty: the system's roots.
    pub tls_ca: String,
    /// PEM client certificate and key, for servers that verify clients; both or neither.
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            servers: Vec::new(),
            stream: "CONNTRAIL".to_string(),
            host: String::new(),
            replicas: 1,
            duplicate_window_s: 3600.0,
            ack_timeout_s: 2.0,
            drain_timeout_s: 30.0,
            credentials: String::new(),
            tls: false,
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// Whether `token` can be one token of a NATS subject (and a stream name): printable ASCII
/// without `.`, `*`, `>`, `/`, `\` or white space, at most 64 bytes.
pub fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b".*>/\\".contains(&b))
}

impl ExportConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for server in &self.servers {
            let rest = ["nats://", "tls://"]
                .iter()
                .find_map(|scheme| server.strip_prefix(scheme))
                .unwrap_or(server);
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err((
                    "servers",
                    format!("`{server}` is not a server URL such as nats://10.0.0.1:4222"),
                ));
            }
        }
        if !is_subject_token(&self.stream) {
            return Err((
                "stream",
                format!(
                    "`{}` is not a stream name (letters, digits, - and _; no `.`, `*`, `>`)",
                    self.stream
                ),
            ));
        }
        if !self.host.is_empty() && !is_subject_token(&self.host) {
            return Err((
                "host",
                format!(
                    "`{}` cannot be a subject token (no `.`, `*`, `>` or spaces)",
                    self.host
                ),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err((
                "replicas",
                format!("must be from 1 to 5, not {}", self.replicas),
            ));
        }
        for (key, v) in [
            ("duplicate_window_s", self.duplicate_window_s),
            ("ack_timeout_s", self.ack_timeout_s),
            ("drain_timeout_s", self.drain_timeout_s),
        ] {
            check_duration(v, "seconds", 1.0, false).map_err(|m| (key, m))?;
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            let key = if self.tls_cert.is_empty() {
                "tls_cert"
            } else {
                "tls_key"
            };
            return Err((key, "tls_cert and tls_key go together".into()));
        }
        Ok(())
    }
}

/// An IP network in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub addr: Ip,
    /// Prefix length over the 128-bit (IPv4-mapped) address.
    pub prefix: u8,
}

impl Net {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(text: &str) -> Option<Net> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let ip: IpAddr = ip.trim().parse().ok()?;
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32, 96),
            IpAddr::V6(_) => (128, 0),
        };
        let len = len.unwrap_or(max);
        if len > max {
            return None;
        }
        Some(Net {
            addr: Addr::from_ip(ip).0,
            prefix: len + offset,
        })
    }

    pub fn contains(&self, ip: &Ip) -> bool {
        let a = u128::from_be_bytes(self.addr);
        let b = u128::from_be_bytes(*ip);
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        a & mask == b & mask
    }
}

/// A per-port / per-network override of trigger settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// Server ports it applies to (empty: any).
    pub ports: Vec<u16>,
    /// Networks of either endpoint it applies to (empty: any).
    pub nets: Vec<Net>,
    /// The full trigger set for matching connections.
    pub triggers: Triggers,
}

impl Override {
    pub fn matches(&self, server_port: u16, client: &Ip, server: &Ip) -> bool {
        (self.ports.is_empty() || self.ports.contains(&server_port))
            && (self.nets.is_empty()
                || self
                    .nets
                    .iter()
                    .any(|n| n.contains(client) || n.contains(server)))
    }
}

/// A context: a named group of interfaces and/or VLANs (like a firewall's virtual system)
/// whose connections are judged by thresholds of their own and recorded in a log of their
/// own. Context 0 is `default`: every connection no `[[context]]` claims.
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    /// Its name: in the NATS subject, the default log file name, `conntrail stats`.
    pub name: String,
    /// Interfaces it takes connections from (empty: any): the capture interface in `run`,
    /// the capture file's interface name (pcapng) or `replay --interface` in `replay`.
    pub interfaces: Vec<String>,
    /// Outer VLAN ids it takes connections from (empty: any, tagged or not).
    pub vlans: Vec<u16>,
    /// Its log file: empty means `LOG.<name>` beside the main log; a relative path is taken
    /// from the main log's directory.
    pub log: String,
    pub triggers: Triggers,
    /// Its own overrides first, then the global ones, each applied over its `triggers`.
    pub overrides: Vec<Override>,
    /// The ids (see [`Config::interface_id`]) of `interfaces`.
    interface_ids: Vec<u16>,
    /// Where each key was found in the file; `[[context]]` is the entry's header line.
    lines: Vec<(String, usize)>,
}

impl Context {
    /// A context of `name` taking the connections of these interfaces and VLANs, with the
    /// default thresholds and log; see [`Config::add_context`].
    pub fn new(name: &str, interfaces: &[&str], vlans: &[u16]) -> Context {
        Context {
            name: name.to_string(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            vlans: vlans.to_vec(),
            log: String::new(),
            triggers: Triggers::default(),
            overrides: Vec::new(),
            interface_ids: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// The line of `key` in this entry, else of the entry's header, when parsed from a file.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let find = |k: &str| self.lines.iter().find(|(n, _)| n == k).map(|(_, l)| *l);
        find(key).or_else(|| find("[[context]]"))
    }

    /// Whether the membership (name, interfaces, VLANs, log) is the same: what a reload may
    /// not change.
    pub fn same_membership(&self, other: &Context) -> bool {
        self.name == other.name
            && self.interfaces == other.interfaces
            && self.vlans == other.vlans
            && self.log == other.log
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let name = &self.name;
        if !is_subject_token(name) || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err((
                "name",
                format!(
                    "`{name}` is not a context name: start with a letter, then letters, digits,                      - or _ (it names a log file and a NATS subject token)"
                ),
            ));
        }
        if name == DEFAULT_CONTEXT {
            return Err((
                "name",
                "`default` is the context of every connection no [[context]] claims".into(),
            ));
        }
        if self.interfaces.is_empty() && self.vlans.is_empty() {
            return Err((
                "interfaces",
                "give `interfaces`, `vlans` or both: a context with neither would take every                  connection"
                    .into(),
            ));
        }
        for i in &self.interfaces {
            if !is_interface_name(i) {
                return Err(("interfaces", format!("`{i}` is not an interface name")));
            }
        }
        if let Some(v) = self.vlans.iter().find(|v| **v > 4095) {
            return Err(("vlans", format!("VLAN ids go from 0 to 4095, not {v}")));
        }
        Ok(())
    }
}

/// The name of context 0.
pub const DEFAULT_CONTEXT: &str = "default";

fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ' ', '\t'])
        && name != "."
        && name != ".."
}

/// How an AF_XDP socket is attached to its queue: the XDP mode (native = in the driver,
/// generic = on the kernel's socket buffers) and whether frames are DMA'd straight into the
/// UMEM (zero-copy) or copied there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureMode {
    /// Native zero-copy, else native copy, else generic copy: the fastest mode the driver has.
    #[default]
    Auto,
    /// Native (driver) mode only: zero-copy, else copy.
    Native,
    /// Native zero-copy only; an error if the driver cannot.
    ZeroCopy,
    /// Generic (SKB) copy mode only: any interface, slowest.
    Generic,
}

impl CaptureMode {
    /// The text form used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Auto => "auto",
            CaptureMode::Native => "native",
            CaptureMode::ZeroCopy => "zero-copy",
            CaptureMode::Generic => "generic",
        }
    }
}

/// One `[[capture]]` entry: AF_XDP sockets on some receive queues of one interface, one
/// socket and one worker per queue, each worker pinned to its core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capture {
    /// The network interface (as `ip link` names it).
    pub interface: String,
    /// Receive queues, one socket and one worker each.
    pub queues: Vec<u32>,
    /// The core of each queue's worker, in the order of `queues`; empty: not pinned.
    pub cores: Vec<usize>,
    pub mode: CaptureMode,
    /// UMEM frames per socket (`frames * frame_size` bytes are locked in memory).
    pub frames: u32,
    /// Bytes per UMEM frame: 2048 or 4096; a frame holds one received packet.
    pub frame_size: u32,
    /// Back the UMEM with huge pages (they must be reserved: `vm.nr_hugepages`).
    pub huge_pages: bool,
    /// Descriptors in the fill, completion and RX rings (powers of two).
    pub fill_ring: u32,
    pub completion_ring: u32,
    pub rx_ring: u32,
    /// Frames taken from the RX ring at a time.
    pub batch: u32,
    /// Busy polling: microseconds the kernel may spin on the queue per poll; 0 is off.
    pub busy_poll_us: u32,
    /// Where each key was found in the file (for errors found at start, such as an
    /// interface that does not exist); `[[capture]]` is the entry's header line.
    #[serde(skip)]
    pub lines: Vec<(String, usize)>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            interface: String::new(),
            queues: vec![0],
            cores: Vec::new(),
            mode: CaptureMode::Auto,
            frames: 4096,
            frame_size: 4096,
            huge_pages: false,
            fill_ring: 2048,
            completion_ring: 2048,
            rx_ring: 2048,
            batch: 64,
            busy_poll_us: 0,
            lines: Vec::new(),
        }
    }
}

impl Capture {
    /// The line of `key` in this entry, else of the entry's header, when parsed from a file.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let find = |k: &str| self.lines.iter().find(|(n, _)| n == k).map(|(_, l)| *l);
        find(key).or_else(|| find("[[capture]]"))
    }

    /// Bytes of UMEM one socket of this entry registers (and locks in memory).
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.frames) * u64::from(self.frame_size)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let name = &self.interface;
        if name.is_empty() {
            return Err((
                "interface",
                "missing: name the interface to capture on, e.g. interface = \"eth0\"".into(),
            ));
        }
        if !is_interface_name(name) {
            return Err(("interface", format!("`{name}` is not an interface name")));
        }
        if self.queues.is_empty() {
            return Err(("queues", "list at least one receive queue, e.g. [0]".into()));
        }
        for (i, q) in self.queues.iter().enumerate() {
            if self.queues[..i].contains(q) {
                return Err(("queues", format!("queue {q} is listed twice")));
            }
        }
        if !self.cores.is_empty() && self.cores.len() != self.queues.len() {
            return Err((
                "cores",
                format!(
                    "{} cores for {} queues: give one core per queue, or none to leave the \
                     workers unpinned",
                    self.cores.len(),
                    self.queues.len()
                ),
            ));
        }
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return Err((
                "frame_size",
                format!("must be 2048 or 4096, not {}", self.frame_size),
            ));
        }
        for (key, v) in [
            ("fill_ring", self.fill_ring),
            ("completion_ring", self.completion_ring),
            ("rx_ring", self.rx_ring),
        ] {
            if !v.is_power_of_two() || !(64..=65536).contains(&v) {
                return Err((
                    key,
                    format!("must be a power of two from 64 to 65536, not {v}"),
                ));
            }
        }
        if self.batch == 0 || self.batch > self.rx_ring.min(self.fill_ring) || self.batch > 4096 {
            return Err((
                "batch",
                format!(
                    "must be from 1 to the smaller of rx_ring and fill_ring (and at most \
                     4096), not {}",
                    self.batch
                ),
            ));
        }
        if self.frames < self.fill_ring || self.frames > 1 << 22 {
            return Err((
                "frames",
                format!(
                    "must be at least fill_ring ({}) so the fill ring can be kept full, and at \
                     most 4194304; not {}",
                    self.fill_ring, self.frames
                ),
            ));
        }
        if self.busy_poll_us > 1_000_000 {
            return Err((
                "busy_poll_us",
                format!("at most 1000000 microseconds, not {}", self.busy_poll_us),
            ));
        }
        Ok(())
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub table: TableConfig,
    pub timeouts: Timeouts,
    pub ring: RingConfig,
    pub log: LogConfig,
    pub triggers: Triggers,
    pub overrides: Vec<Override>,
    /// Live capture: AF_XDP sockets for `conntrail run` (none by default).
    pub captures: Vec<Capture>,
    /// Export of the records to NATS JetStream (off by default).
    pub export: ExportConfig,
    /// Contexts 1, 2, ... in file order (context 0, `default`, is the rest).
    pub contexts: Vec<Context>,
}

impl Config {
    /// The triggers that apply to a connection of the default context: the first matching
    /// override, else the base.
    pub fn triggers_for(&self, server_port: u16, client: &Ip, server: &Ip) -> &Triggers {
        let (triggers, overrides) = self.thresholds(0);
        overrides
            .iter()
            .find(|o| o.matches(server_port, client, server))
            .map_or(triggers, |o| &o.triggers)
    }

    /// The base triggers and the overrides of `context` (0: default; unknown: default).
    pub fn thresholds(&self, context: u16) -> (&Triggers, &[Override]) {
        match usize::from(context)
            .checked_sub(1)
            .and_then(|i| self.contexts.get(i))
        {
            Some(c) => (&c.triggers, &c.overrides),
            None => (&self.triggers, &self.overrides),
        }
    }

    /// Which triggers of `context` a connection gets: 0 for the base, n for override n-1.
    pub fn override_index(&self, context: u16, server_port: u16, client: &Ip, server: &Ip) -> u8 {
        self.thresholds(context)
            .1
            .iter()
            .position(|o| o.matches(server_port, client, server))
            .map_or(0, |i| u8::try_from(i + 1).unwrap_or(0))
    }

    /// The triggers [`Config::override_index`] chose.
    pub fn triggers_at(&self, context: u16, index: u8) -> &Triggers {
        let (triggers, overrides) = self.thresholds(context);
        usize::from(index)
            .checked_sub(1)
            .and_then(|o| overrides.get(o))
            .map_or(triggers, |o| &o.triggers)
    }

    /// The name of `context`: [`DEFAULT_CONTEXT`] for 0, else its `[[context]]` name (its
    /// number for one this configuration does not have).
    pub fn context_name(&self, context: u16) -> String {
        match usize::from(context).checked_sub(1) {
            None => DEFAULT_CONTEXT.to_string(),
            Some(i) => self
                .contexts
                .get(i)
                .map_or_else(|| context.to_string(), |c| c.name.clone()),
        }
    }

    /// The id of an interface among those the contexts name (1, 2, ...), 0 for any other:
    /// what a source tells its flow table ([`crate::table::FlowTable::set_interface`]).
    pub fn interface_id(&self, name: &str) -> u16 {
        let mut names: Vec<&str> = Vec::new();
        for i in self.contexts.iter().flat_map(|c| &c.interfaces) {
            if !names.contains(&i.as_str()) {
                names.push(i);
            }
        }
        names
            .iter()
            .position(|n| *n == name)
            .map_or(0, |p| u16::try_from(p + 1).unwrap_or(0))
    }

    /// The context of a connection whose first packet came in on interface `interface` (an
    /// [`Config::interface_id`]) with outer VLAN id `vlan`: the first `[[context]]` whose
    /// interfaces and VLANs both take it, else 0 (`default`).
    pub fn context_of(&self, interface: u16, vlan: Option<u16>) -> u16 {
        self.contexts
            .iter()
            .position(|c| {
                (c.interfaces.is_empty() || c.interface_ids.contains(&interface))
                    && (c.vlans.is_empty() || vlan.is_some_and(|v| c.vlans.contains(&v)))
            })
            .map_or(0, |i| u16::try_from(i + 1).unwrap_or(0))
    }

    /// Adds a context (after those there are), with thresholds as given; for configurations
    /// built in code rather than parsed.
    pub fn add_context(&mut self, context: Context) {
        self.contexts.push(context);
        self.resolve_interfaces();
    }

    fn resolve_interfaces(&mut self) {
        let ids: Vec<Vec<u16>> = self
            .contexts
            .iter()
            .map(|c| c.interfaces.iter().map(|i| self.interface_id(i)).collect())
            .collect();
        for (c, ids) in self.contexts.iter_mut().zip(ids) {
            c.interface_ids = ids;
        }
    }

    /// Parses a configuration file's text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                origin: origin.to_string(),
                line,
                message: with_key(text, line, e.message().trim()),
            }
        })?;
        let raw: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            origin: origin.to_string(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_string(),
        })?;
        let err = |key: &str, message: String| ConfigError {
            origin: origin.to_string(),
            line: find_key_line(text, key),
            message: format!("key `{key}`: {message}"),
        };
        let mut cfg = Config {
            table: file.table,
            timeouts: file.timeouts,
            ring: file.ring,
            log: file.log,
            triggers: file.triggers,
            overrides: Vec::new(),
            captures: Vec::new(),
            export: file.export,
            contexts: Vec::new(),
        };
        cfg.validate().map_err(|(key, m)| err(key, m))?;
        cfg.export
            .validate()
            .map_err(|(key, message)| ConfigError {
                origin: origin.to_string(),
                line: find_key_line(text, key),
                message: format!("[export] key `{key}`: {message}"),
            })?;
        cfg.captures = parse_captures(file.captures, text, origin)?;
        let mut global = Vec::new();
        for (i, (o, raw_o)) in file
            .overrides
            .into_iter()
            .zip(raw_entries(&raw, "override"))
            .enumerate()
        {
            global.push(
                OverrideSpec::new(o, raw_o)
                    .map_err(|m| err("nets", format!("override {}: {m}", i + 1)))?,
            );
        }
        cfg.overrides = apply_overrides(&cfg.triggers, &global)
            .map_err(|m| err("triggers", format!("override {m}")))?;
        cfg.contexts = parse_contexts(
            file.contexts,
            &raw_entries(&raw, "context"),
            text,
            origin,
            &cfg.triggers,
            &global,
        )?;
        cfg.resolve_interfaces();
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.table.capacity == 0 {
            return Err(("capacity", "must be at least 1".into()));
        }
        if self.table.points_per_flow < 2 || self.table.points_per_flow > 1024 {
            return Err(("points_per_flow", "must be between 2 and 1024".into()));
        }
        let t = &self.timeouts;
        for (key, v) in [
            ("tcp_syn_s", t.tcp_syn_s),
            ("tcp_established_s", t.tcp_established_s),
            ("tcp_closing_s", t.tcp_closing_s),
            ("tcp_closed_s", t.tcp_closed_s),
            ("udp_s", t.udp_s),
            ("icmp_s", t.icmp_s),
            ("fragment_s", t.fragment_s),
        ] {
            check_duration(v, "seconds", 1.0, false).map_err(|m| (key, m))?;
        }
        if self.ring.bytes < 4096 || self.ring.bytes > MAX_RING_BYTES {
            return Err((
                "bytes",
                format!(
                    "a ring holds from 4096 bytes to {MAX_RING_BYTES} (2 GiB), not {}",
                    self.ring.bytes
                ),
            ));
        }
        if self.ring.dir.is_empty() {
            return Err(("dir", "name the directory of the rings".into()));
        }
        if self.log.rotate_bytes < 4096 {
            return Err(("rotate_bytes", "must be at least 4096".into()));
        }
        let max_total = self.log.max_total_bytes;
        if max_total != 0 && max_total / 2 < self.log.rotate_bytes {
            return Err((
                "max_total_bytes",
                format!(
                    "must be 0 (no cap) or at least twice rotate_bytes ({}), so a closed \
                     segment fits beside the one being written; not {max_total}",
                    self.log.rotate_bytes
                ),
            ));
        }
        self.triggers.validate()
    }
}

/// A configuration error: file, line (when known) and what is wrong with which key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} line {}: {}", self.origin, line, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    table: TableConfig,
    timeouts: Timeouts,
    ring: RingConfig,
    log: LogConfig,
    triggers: Triggers,
    #[serde(rename = "override")]
    overrides: Vec<OverrideFile>,
    #[serde(rename = "capture")]
    captures: Vec<Capture>,
    export: ExportConfig,
    #[serde(rename = "context")]
    contexts: Vec<ContextFile>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ContextFile {
    name: String,
    interfaces: Vec<String>,
    vlans: Vec<u16>,
    log: String,
    triggers: Triggers,
    #[serde(rename = "override")]
    overrides: Vec<OverrideFile>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct OverrideFile {
    ports: Vec<u16>,
    nets: Vec<String>,
    triggers: Triggers,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// A parse error's `message` with the table and key of its `line` in front (`[table] key
/// `capacity`: ...`) when the line holds a `key = value` the message does not name, and
/// with the Rust type names of serde's "expected" part put in words.
fn with_key(text: &str, line: Option<usize>, message: &str) -> String {
    let message = [
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number from 0 to 2^64 - 1"),
        ("expected usize", "expected a whole number from 0"),
        ("expected f64", "expected a number"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, words)| {
        m.replace(rust, words)
    });
    let Some(line) = line else {
        return message;
    };
    let lines: Vec<&str> = text.lines().collect();
    let key = lines
        .get(line.wrapping_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let Some(key) = key else {
        return message;
    };
    if message.contains(&format!("`{key}`")) {
        return message;
    }
    let table = lines
        .get(..line.saturating_sub(1))
        .unwrap_or(&[])
        .iter()
        .rev()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with('['));
    match table {
        Some(table) => format!("{table} key `{key}`: {message}"),
        None => format!("key `{key}`: {message}"),
    }
}

fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// Validates the `[[capture]]` entries and notes where each key sits in the file.
fn parse_captures(
    mut captures: Vec<Capture>,
    text: &str,
    origin: &str,
) -> Result<Vec<Capture>, ConfigError> {
    const KEYS: [&str; 12] = [
        "interface",
        "queues",
        "cores",
        "mode",
        "frames",
        "frame_size",
        "huge_pages",
        "fill_ring",
        "completion_ring",
        "rx_ring",
        "batch",
        "busy_poll_us",
    ];
    let lines = entry_lines(text, "capture", &KEYS);
    for (i, (c, lines)) in captures
        .iter_mut()
        .zip(lines.into_iter().chain(std::iter::repeat_with(Vec::new)))
        .enumerate()
    {
        c.lines = lines;
        let entry_err = |c: &Capture, key: &str, message: String| ConfigError {
            origin: origin.to_string(),
            line: c.line_of(key),
            message: format!("[[capture]] {} key `{key}`: {message}", i + 1),
        };
        c.validate().map_err(|(key, m)| entry_err(c, key, m))?;
    }
    for (i, c) in captures.iter().enumerate() {
        for earlier in &captures[..i] {
            if earlier.interface != c.interface {
                continue;
            }
            if let Some(q) = c.queues.iter().find(|q| earlier.queues.contains(q)) {
                return Err(ConfigError {
                    origin: origin.to_string(),
                    line: c.line_of("queues"),
                    message: format!(
                        "[[capture]] {} key `queues`: queue {q} of {} is already captured by an \
                         earlier entry",
                        i + 1,
                        c.interface
                    ),
                });
            }
        }
    }
    let all_cores: Vec<(usize, usize)> = captures
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.cores.iter().map(move |core| (i, *core)))
        .collect();
    for (n, (i, core)) in all_cores.iter().enumerate() {
        if all_cores[..n].iter().any(|(_, c)| c == core) {
            return Err(ConfigError {
                origin: origin.to_string(),
                line: captures[*i].line_of("cores"),
                message: format!(
                    "[[capture]] {} key `cores`: core {core} is given to two workers; each \
                     worker needs a core of its own",
                    i + 1
                ),
            });
        }
    }
    Ok(captures)
}

/// The `name` array of tables of the raw file (`[[override]]`, `[[context]]`), or none.
fn raw_entries(raw: &toml::Table, name: &str) -> Vec<toml::Value> {
    raw.get(name)
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default()
}

/// An `[[override]]` as written: where it applies and the trigger keys it replaces.
struct OverrideSpec {
    ports: Vec<u16>,
    nets: Vec<Net>,
    /// Its `triggers` table, laid over the triggers of the context it is applied in.
    patch: Option<toml::Value>,
}

impl OverrideSpec {
    fn new(file: OverrideFile, raw: toml::Value) -> Result<OverrideSpec, String> {
        let mut nets = Vec::new();
        for n in &file.nets {
            nets.push(Net::parse(n).ok_or_else(|| format!("`{n}` is not a network"))?);
        }
        Ok(OverrideSpec {
            ports: file.ports,
            nets,
            patch: raw.get("triggers").cloned(),
        })
    }
}

/// `base` with `patch` laid over it.
fn patched(base: &Triggers, patch: Option<&toml::Value>) -> Result<Triggers, String> {
    let Some(patch) = patch else {
        return Ok(base.clone());
    };
    let mut merged = toml::Value::try_from(base).map_err(|e| e.to_string())?;
    merge(&mut merged, patch);
    let triggers: Triggers = merged
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    triggers
        .validate()
        .map_err(|(key, m)| format!("key `{key}`: {m}"))?;
    Ok(triggers)
}

/// The overrides `specs` applied over `base`, in order.
fn apply_overrides(base: &Triggers, specs: &[OverrideSpec]) -> Result<Vec<Override>, String> {
    specs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            Ok(Override {
                ports: o.ports.clone(),
                nets: o.nets.clone(),
                triggers: patched(base, o.patch.as_ref()).map_err(|m| format!("{}: {m}", i + 1))?,
            })
        })
        .collect()
}

/// The lines of the keys of each `[[name]]` entry of `text`: the header as `[[name]]`, then
/// each of `keys` met before the next table header.
fn entry_lines(text: &str, name: &str, keys: &[&str]) -> Vec<Vec<(String, usize)>> {
    let lines: Vec<&str> = text.lines().collect();
    let header = format!("[[{name}]]");
    let mut entries = Vec::new();
    for (h, l) in lines.iter().enumerate() {
        let is_header = l
            .trim_start()
            .strip_prefix("[[")
            .and_then(|r| r.trim_start().strip_prefix(name))
            .is_some_and(|r| r.trim_start().starts_with("]]"));
        if !is_header {
            continue;
        }
        let mut found = vec![(header.clone(), h + 1)];
        for (n, l) in lines.iter().enumerate().skip(h + 1) {
            let l = l.trim_start();
            if l.starts_with('[') {
                break;
            }
            for key in keys {
                if l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
                {
                    found.push((key.to_string(), n + 1));
                }
            }
        }
        entries.push(found);
    }
    entries
}

/// Validates the `[[context]]` entries and builds their thresholds: the global triggers with
/// the context's `triggers` over them, then its own overrides and the global ones over that.
fn parse_contexts(
    files: Vec<ContextFile>,
    raw: &[toml::Value],
    text: &str,
    origin: &str,
    global_triggers: &Triggers,
    global_overrides: &[OverrideSpec],
) -> Result<Vec<Context>, ConfigError> {
    let mut lines = entry_lines(text, "context", &["name", "interfaces", "vlans", "log"]);
    lines.resize(files.len(), Vec::new());
    let mut contexts: Vec<Context> = Vec::new();
    for (i, ((file, raw), lines)) in files.into_iter().zip(raw).zip(lines).enumerate() {
        let mut c = Context {
            name: file.name,
            interfaces: file.interfaces,
            vlans: file.vlans,
            log: file.log,
            triggers: Triggers::default(),
            overrides: Vec::new(),
            interface_ids: Vec::new(),
            lines,
        };
        let entry_err = |c: &Context, key: &str, message: String| ConfigError {
            origin: origin.to_string(),
            line: c.line_of(key),
            message: format!("[[context]] {} key `{key}`: {message}", i + 1),
        };
        c.validate().map_err(|(key, m)| entry_err(&c, key, m))?;
        if let Some(earlier) = contexts.iter().find(|e| e.name == c.name) {
            let m = format!("context `{}` is defined twice", earlier.name);
            return Err(entry_err(&c, "name", m));
        }
        if !c.log.is_empty() && contexts.iter().any(|e| e.log == c.log) {
            let m = format!("`{}` is already the log of another context", c.log);
            return Err(entry_err(&c, "log", m));
        }
        c.triggers = patched(global_triggers, raw.get("triggers"))
            .map_err(|m| entry_err(&c, "triggers", m))?;
        let mut specs = Vec::new();
        let raw_own = raw
            .get("override")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for (j, (o, raw_o)) in file.overrides.into_iter().zip(raw_own).enumerate() {
            specs.push(
                OverrideSpec::new(o, raw_o)
                    .map_err(|m| entry_err(&c, "nets", format!("override {}: {m}", j + 1)))?,
            );
        }
        let mut overrides = apply_overrides(&c.triggers, &specs)
            .map_err(|m| entry_err(&c, "triggers", format!("override {m}")))?;
        overrides.extend(
            apply_overrides(&c.triggers, global_overrides)
                .map_err(|m| entry_err(&c, "triggers", format!("global override {m}")))?,
        );
        if overrides.len() > usize::from(u8::MAX) {
            let m = "more than 255 overrides apply in this context".to_string();
            return Err(entry_err(&c, "triggers", m));
        }
        c.overrides = overrides;
        contexts.push(c);
    }
    Ok(contexts)
}

fn merge(base: &mut toml::Value, patch: &toml::Value) {
    match (base, patch) {
        (toml::Value::Table(b), toml::Value::Table(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_thresholds_become_integers_that_trip_exactly_above_them() {
        let t: Triggers =
            toml::from_str("[latency]\nsyn_synack_ms = 1.5\nsynack_ack_ms = 0\nttfb_ms = 0.0004\n")
                .expect("triggers");
        let l = &t.latency;
        assert_eq!(
            l.syn_synack,
            Limit {
                ns: 1_500_000,
                us: 1_500
            }
        );
        assert!(!l.syn_synack.over(1_500_000) && l.syn_synack.over(1_500_001));
        assert_eq!(l.synack_ack, Limit::OFF);
        assert!(!l.synack_ack.is_on() && !l.synack_ack.over(u64::MAX - 1));
        // 400 ns: a 400 ns measurement is not over it, and the point says 0 us.
        assert_eq!(l.ttfb, Limit { ns: 400, us: 0 });
        assert_eq!(l.stall, Limit::of_ms(5000.0), "the default");
        // Written back and read again, as contexts and overrides do.
        let again: Triggers = toml::Value::try_from(&t)
            .expect("serialises")
            .try_into()
            .expect("reads back");
        assert_eq!(again, t);
    }

    #[test]
    fn documented_default_is_the_default() {
        let cfg = Config::parse(DEFAULT_TOML, "default.toml").expect("default parses");
        assert_eq!(cfg.table, TableConfig::default());
        assert_eq!(cfg.timeouts, Timeouts::default());
        assert_eq!(cfg.ring, RingConfig::default());
        assert_eq!(cfg.log, LogConfig::default());
        assert_eq!(cfg.triggers, Triggers::default());
        assert!(cfg.overrides.is_empty());
        assert!(cfg.captures.is_empty());
        assert_eq!(cfg.export, ExportConfig::default());
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[table]\ncapacity = 10\n\n[triggers.latency]\nsyn_synack = 5\n";
        let e = Config::parse(text, "/etc/conntrail.toml").unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("syn_synack"), "{e}");
        assert!(
            e.to_string().starts_with("/etc/conntrail.toml line 5:"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_bad_value_are_errors() {
        let e = Config::parse("[timeouts]\nudp_s = \"soon\"\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = Config::parse("[timeouts]\nudp_s = -1\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("udp_s"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_table_and_the_key() {
        let e = Config::parse("[table]\ncapacity = \"big\"\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.to_string().starts_with(
                "c.toml line 2: [table] key `capacity`: invalid type: string \"big\", \
                 expected a whole number"
            ),
            "{e}"
        );
        let text = "# rings\n[ring] # shared memory\nbytes = 1.5\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml line 3: [ring] key `bytes`: invalid type: floating point"),
            "{e}"
        );
        assert!(!e.message.contains("u64"), "{e}");
        let e = Config::parse("[[capture]]\ninterface = 7\n", "c.toml").unwrap_err();
        assert!(
            e.message
                .starts_with("[[capture]] key `interface`: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn every_duration_key_is_finite_not_negative_and_at_most_30_days() {
        for (table, key) in [
            ("[triggers.resource]", "max_duration_s"),
            ("[triggers.latency]", "stall_ms"),
            ("[triggers.latency]", "syn_synack_ms"),
            ("[timeouts]", "tcp_syn_s"),
            ("[timeouts]", "fragment_s"),
            ("[export]", "ack_timeout_s"),
        ] {
            let month = if key.ends_with("_ms") {
                "2592000001"
            } else {
                "2592001"
            };
            for bad in ["-1", "nan", "inf", "-inf", month] {
                let text = format!("\n{table}\n{key} = {bad}\n");
                let e = Config::parse(&text, "c.toml").expect_err(&text);
                assert_eq!(e.line, Some(3), "{text}: {e}");
                assert!(e.message.contains(&format!("key `{key}`")), "{text}: {e}");
                assert!(e.message.contains("30 days"), "{text}: {e}");
            }
            let text = format!("{table}\n{key} = 1.5\n");
            Config::parse(&text, "c.toml").expect(&text);
        }
        let cfg = Config::parse("[triggers.resource]\nmax_duration_s = 2592000\n", "c.toml")
            .expect("30 days is allowed");
        assert_eq!(cfg.triggers.resource.max_duration_s, 2_592_000.0);
        // The same rules inside overrides and contexts.
        let text =
            "[[override]]\nports = [443]\n[override.triggers.resource]\nmax_duration_s = -1\n";
        let e = Config::parse(text, "c.toml").expect_err("override");
        assert!(e.message.contains("key `max_duration_s`"), "{e}");
        let text =
            "[[context]]\nname = \"a\"\nvlans = [1]\n[context.triggers.latency]\nttfb_ms = nan\n";
        let e = Config::parse(text, "c.toml").expect_err("context");
        assert!(e.message.contains("key `ttfb_ms`"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn ring_bytes_are_at_most_what_a_ring_can_hold() {
        let cfg = Config::parse("[ring]\nbytes = 2147483648\n", "c.toml").expect("2 GiB");
        assert_eq!(cfg.ring.bytes, MAX_RING_BYTES);
        let e = Config::parse("[ring]\n\nbytes = 2147483649\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.starts_with("key `bytes`: a ring holds"), "{e}");
        let e = Config::parse("[ring]\nbytes = 4095\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("[ring]\ndir = \"\"\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn log_retention_keys_load_and_a_cap_below_two_segments_is_refused() {
        let text = "[log]\nrotate_bytes = 65536\nrotate_age_s = 3600\nmax_total_bytes = 131072\n\
                    min_free_bytes = 0\n";
        let cfg = Config::parse(text, "c.toml").expect("parses");
        assert_eq!(cfg.log.rotate_age_s, 3600);
        assert_eq!(cfg.log.max_total_bytes, 131_072);
        assert_eq!(cfg.log.min_free_bytes, 0);
        let text = "[log]\nrotate_bytes = 65536\n\nmax_total_bytes = 100000\n";
        let e = Config::parse(text, "/etc/conntrail.toml").unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(
            e.to_string()
                .starts_with("/etc/conntrail.toml line 4: key `max_total_bytes`"),
            "{e}"
        );
        let e = Config::parse("[log]\nrotate_age_s = -5\n", "c.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = Config::parse("[log]\nmax_age = 5\n", "c.toml").unwrap_err();
        assert!(e.message.contains("max_age"), "{e}");
    }

    #[test]
    fn override_patches_only_its_keys() {
        let text = r#"
[triggers.latency]
ttfb_ms = 2000

[[override]]
ports = [443]
nets = ["10.0.0.0/8"]
[override.triggers.latency]
syn_synack_ms = 300
"#;
        let cfg = Config::parse(text, "c.toml").expect("parses");
        let o = &cfg.overrides[0];
        assert_eq!(o.triggers.latency.syn_synack_ms, 300.0);
        assert_eq!(o.triggers.latency.ttfb_ms, 2000.0);
        let inside = Net::parse("10.1.2.3").unwrap().addr;
        let outside = Net::parse("192.0.2.1").unwrap().addr;
        assert_eq!(
            cfg.triggers_for(443, &inside, &outside)
                .latency
                .syn_synack_ms,
            300.0
        );
        assert_eq!(
            cfg.triggers_for(80, &inside, &outside)
                .latency
                .syn_synack_ms,
            100.0
        );
        assert_eq!(
            cfg.triggers_for(443, &outside, &outside)
                .latency
                .syn_synack_ms,
            100.0
        );
    }

    #[test]
    fn unknown_key_inside_override_is_an_error() {
        let text = "[[override]]\nports = [53]\n[override.triggers.latency]\nttbf_ms = 5\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(4));
    }

    /// The commented `[[capture]]` example of the default file, uncommented.
    fn documented_capture_example() -> String {
        let start = DEFAULT_TOML
            .find("# [[capture]]")
            .expect("example in default.toml");
        DEFAULT_TOML[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn documented_capture_example_parses_to_the_defaults() {
        let cfg = Config::parse(&documented_capture_example(), "example.toml").expect("parses");
        let c = &cfg.captures[0];
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.cores, vec![1]);
        let defaults = Capture {
            interface: c.interface.clone(),
            cores: c.cores.clone(),
            lines: c.lines.clone(),
            ..Capture::default()
        };
        assert_eq!(*c, defaults);
        assert_eq!(c.line_of("[[capture]]"), Some(1));
        assert_eq!(c.line_of("interface"), Some(2));
    }

    #[test]
    fn capture_errors_name_file_line_and_key() {
        let text = "[table]\ncapacity = 10\n\n[[capture]]\nqueues = [0, 1]\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(
            e.line,
            Some(4),
            "missing interface: the entry's header; {e}"
        );
        assert!(e.message.contains("`interface`"), "{e}");

        let text = "[[capture]]\ninterface = \"eth0\"\nqueues = [0, 1]\ncores = [1]\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("`cores`"), "{e}");

        let text = "[[capture]]\ninterface = \"eth0\"\n\n[[capture]]\ninterface = \"eth1\"\nrx_ring = 1000\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(
            e.to_string()
                .starts_with("c.toml line 6: [[capture]] 2 key `rx_ring`"),
            "{e}"
        );

        let text = "[[capture]]\ninterface = \"eth0\"\nmode = \"fast\"\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");

        let text = "[[capture]]\ninterface = \"eth0\"\nqueue = [0]\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(3), "unknown key; {e}");
    }

    #[test]
    fn captures_may_not_share_a_queue_or_a_core() {
        let text = "[[capture]]\ninterface = \"eth0\"\nqueues = [0, 1]\n\n\
                    [[capture]]\ninterface = \"eth0\"\nqueues = [1]\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("queue 1 of eth0"), "{e}");

        let text = "[[capture]]\ninterface = \"eth0\"\ncores = [1]\n\n\
                    [[capture]]\ninterface = \"eth1\"\ncores = [1]\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("core 1"), "{e}");

        let text = "[[capture]]\ninterface = \"eth0\"\nqueues = [0, 1]\ncores = [0, 1]\n\n\
                    [[capture]]\ninterface = \"eth1\"\n";
        let cfg = Config::parse(text, "c.toml").expect("parses");
        assert_eq!(cfg.captures.len(), 2);
        assert_eq!(cfg.captures[1].queues, vec![0]);
        assert_eq!(cfg.captures[0].umem_bytes(), 16 << 20);
    }

    #[test]
    fn export_errors_name_file_line_and_key() {
        let ok = Config::parse(
            "[export]\nservers = [\"nats://127.0.0.1:4222\", \"tls://n2:4222\"]\nreplicas = 3\n",
            "c.toml",
        )
        .expect("parses");
        assert_eq!(ok.export.servers.len(), 2);
        assert_eq!(ok.export.replicas, 3);
        for (text, line, key) in [
            ("[export]\nstream = \"a.b\"\n", 2, "stream"),
            ("[export]\n\nhost = \"box 1\"\n", 3, "host"),
            ("[export]\nreplicas = 7\n", 2, "replicas"),
            ("[export]\nack_timeout_s = 0\n", 2, "ack_timeout_s"),
            ("[export]\nservers = [\"nats://\"]\n", 2, "servers"),
            ("[export]\ntls_cert = \"c.pem\"\n", 1, "tls_key"),
        ] {
            let e = Config::parse(text, "c.toml").expect_err(text);
            assert!(e.message.contains(&format!("[export] key `{key}`")), "{e}");
            if key != "tls_key" {
                assert_eq!(e.line, Some(line), "{e}");
            }
        }
        let e = Config::parse("[export]\nstreams = \"X\"\n", "c.toml").expect_err("unknown");
        assert_eq!(e.line, Some(2));
        assert!(is_subject_token("box-1_a"));
        assert!(!is_subject_token("box.1") && !is_subject_token("") && !is_subject_token("a>"));
    }

    #[test]
    fn contexts_have_their_own_thresholds_over_the_global_ones() {
        let text = r#"
[triggers.latency]
ttfb_ms = 2000

[[override]]
ports = [443]
[override.triggers.latency]
syn_synack_ms = 300

[[context]]
name = "dmz"
interfaces = ["eth1", "eth2"]
[context.triggers.latency]
stall_ms = 50
[[context.override]]
ports = [53]
[context.override.triggers.latency]
ttfb_ms = 10

[[context]]
name = "lab"
vlans = [100]
interfaces = ["eth2"]
log = "/var/log/lab.log"
"#;
        let cfg = Config::parse(text, "c.toml").expect("parses");
        assert_eq!(cfg.contexts.len(), 2);
        let dmz = &cfg.contexts[0];
        assert_eq!(dmz.triggers.latency.stall_ms, 50.0);
        assert_eq!(dmz.triggers.latency.ttfb_ms, 2000.0, "global key kept");
        // Its own override first, then the global one, both over its triggers.
        assert_eq!(dmz.overrides.len(), 2);
        assert_eq!(dmz.overrides[0].ports, vec![53]);
        assert_eq!(dmz.overrides[0].triggers.latency.ttfb_ms, 10.0);
        assert_eq!(dmz.overrides[0].triggers.latency.stall_ms, 50.0);
        assert_eq!(dmz.overrides[1].triggers.latency.syn_synack_ms, 300.0);
        assert_eq!(dmz.overrides[1].triggers.latency.stall_ms, 50.0);
        assert_eq!(
            cfg.triggers.latency.stall_ms, 5000.0,
            "default context unchanged"
        );
        assert_eq!(cfg.overrides.len(), 1);
        let ip = Net::parse("10.0.0.1").unwrap().addr;
        assert_eq!(
            cfg.triggers_at(1, cfg.override_index(1, 53, &ip, &ip))
                .latency
                .ttfb_ms,
            10.0
        );
        assert_eq!(
            cfg.triggers_at(0, cfg.override_index(0, 53, &ip, &ip))
                .latency
                .ttfb_ms,
            2000.0
        );

        // Membership: interface ids, then interface and VLAN together, first context wins.
        let (eth1, eth2) = (cfg.interface_id("eth1"), cfg.interface_id("eth2"));
        assert_eq!((eth1, eth2, cfg.interface_id("eth9")), (1, 2, 0));
        assert_eq!(cfg.context_of(eth1, None), 1);
        assert_eq!(cfg.context_of(eth2, Some(100)), 1, "dmz comes first");
        assert_eq!(
            cfg.context_of(0, Some(100)),
            0,
            "lab needs eth2 and VLAN 100"
        );
        assert_eq!(cfg.context_of(0, None), 0);
        assert_eq!(cfg.context_name(2), "lab");
        assert_eq!(cfg.context_name(0), "default");
        assert_eq!(cfg.contexts[1].log, "/var/log/lab.log");
    }

    #[test]
    fn context_errors_name_file_line_and_key() {
        for (text, line, key) in [
            ("[[context]]\nname = \"dmz\"\n", 1, "interfaces"),
            ("[[context]]\nname = \"default\"\nvlans = [1]\n", 2, "name"),
            ("[[context]]\nname = \"7up\"\nvlans = [1]\n", 2, "name"),
            ("[[context]]\nname = \"a.b\"\nvlans = [1]\n", 2, "name"),
            ("[[context]]\nname = \"a\"\nvlans = [1, 4096]\n", 3, "vlans"),
            ("[[context]]\nname = \"a\"\ninterfaces = [\"x/y\"]\n", 3, "interfaces"),
            (
                "[[context]]\nname = \"a\"\nvlans = [1]\n\n[[context]]\nname = \"a\"\nvlans = [2]\n",
                6,
                "name",
            ),
            (
                "[[context]]\nname = \"a\"\nvlans = [1]\nlog = \"x\"\n[[context]]\nname = \"b\"\nvlans = [2]\nlog = \"x\"\n",
                8,
                "log",
            ),
        ] {
            let e = Config::parse(text, "c.toml").expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.message.contains(&format!("key `{key}`")), "{text}: {e}");
            assert!(e.message.starts_with("[[context]] "), "{e}");
        }
        let e = Config::parse(
            "[[context]]\nname = \"a\"\nvlans = [1]\n[context.triggers.latency]\nttbf_ms = 1\n",
            "c.toml",
        )
        .expect_err("unknown key");
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn documented_context_example_parses() {
        let start = DEFAULT_TOML
            .find("# [[context]]")
            .expect("example in default.toml");
        let example: String = DEFAULT_TOML[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = Config::parse(&example, "example.toml").expect("parses");
        let c = &cfg.contexts[0];
        assert_eq!(
            (c.name.as_str(), c.vlans.as_slice()),
            ("dmz", &[100, 101][..])
        );
        assert_eq!(c.triggers.latency.ttfb_ms, 300.0);
        assert_eq!(c.line_of("vlans"), Some(4));
    }

    #[test]
    fn nets_parse_and_match() {
        let n = Net::parse("192.168.0.0/16").unwrap();
        assert!(n.contains(&Net::parse("192.168.3.4").unwrap().addr));
        assert!(!n.contains(&Net::parse("192.169.0.1").unwrap().addr));
        let v6 = Net::parse("fd00::/8").unwrap();
        assert!(v6.contains(&Net::parse("fd12::1").unwrap().addr));
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("nonsense").is_none());
    }
}
