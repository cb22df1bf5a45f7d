//! The fleet: every appliance ships the records of its log to a NATS JetStream stream, and
//! the forensic commands read the whole fleet's records back from it.
//!
//! **Owns**: the names of records in the stream ([`names`]: subject
//! `conntrail.records.<host>.<context>`, the `Nats-Msg-Id` that makes JetStream store each
//! record once, headers); following a log while it is written ([`tail`]); the exporter
//! thread that publishes every frame of the log, waits for the stream's acknowledgements
//! and persists how far it got ([`exporter`], [`position`]); reading records back with a
//! subject filter ([`stream`]).
//!
//! **Never does**: sit on the workers' or the recorder's path. The log is the source of
//! truth: the exporter reads it like any reader, from its own thread, so a slow or absent
//! server costs the engine nothing, and what was not acknowledged is sent again from the log
//! (at-least-once delivery; the message ids make storage exactly-once within the stream's
//! duplicate window). It never writes the log and never decodes more than a record's id
//! and context on the way out.
//!
//! ```no_run
//! use std::time::Duration;
//! use flowtable::config::ExportConfig;
//!
//! let mut cfg = ExportConfig::default();
//! cfg.servers = vec!["nats://127.0.0.1:4222".into()];
//! let settings = fleet::Settings::from_config(&cfg);
//! let exporter = fleet::Exporter::spawn(settings, "tracker.log".as_ref(), fleet::Start::Existing)
//!     .expect("thread");
//! let report = exporter.finish(Duration::from_secs(30)).expect("export");
//! println!("{} sent, {} pending", report.sent, report.pending);
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use flowtable::config::ExportConfig;

pub mod exporter;
pub mod names;
pub mod position;
pub mod stream;
pub mod tail;

pub use exporter::{Exporter, Report, Start};
pub use position::Position;
pub use stream::{StreamReader, StreamRecord};

/// Errors of the fleet crate.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The settings cannot be used (a server URL that does not parse, a credentials file
    /// that cannot be read).
    #[error("{0}")]
    Settings(String),
    /// The servers could not be reached or did not answer in time.
    #[error("NATS {servers}: {message}")]
    Server {
        /// The servers tried.
        servers: String,
        /// What failed.
        message: String,
    },
    /// The log to export never appeared.
    #[error("log {}: not created", .0.display())]
    NoLog(PathBuf),
    /// The exporter thread could not be started or died.
    #[error("export thread: {0}")]
    Thread(String),
}

/// Where and how to export: [`ExportConfig`] with the defaults resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Server URLs.
    pub servers: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// This appliance's subject token.
    pub host: String,
    /// Replicas of the stream when it is created.
    pub replicas: usize,
    /// Duplicate window of the stream when it is created.
    pub duplicate_window: Duration,
    /// How long to wait for an acknowledgement (or any answer of the server).
    pub ack_timeout: Duration,
    /// NATS credentials file.
    pub credentials: Option<PathBuf>,
    /// Require TLS.
    pub tls: bool,
    /// CA of the servers' certificates.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The names of contexts 1, 2, ... (the `[[context]]` entries): the subject's last token.
    pub contexts: Vec<String>,
}

impl Settings {
    /// The settings of an `[export]` section (validated by the configuration parser); an
    /// empty `host` becomes [`names::default_host`].
    pub fn from_config(cfg: &ExportConfig) -> Settings {
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        Settings {
            servers: cfg.servers.clone(),
            stream: cfg.stream.clone(),
            host: if cfg.host.is_empty() {
                names::default_host()
            } else {
                cfg.host.clone()
            },
            replicas: cfg.replicas as usize,
            duplicate_window: Duration::from_secs_f64(cfg.duplicate_window_s),
            ack_timeout: Duration::from_secs_f64(cfg.ack_timeout_s),
            credentials: path(&cfg.credentials),
            tls: cfg.tls,
            tls_ca: path(&cfg.tls_ca),
            tls_client: path(&cfg.tls_cert).zip(path(&cfg.tls_key)),
            contexts: Vec::new(),
        }
    }

    /// The servers, comma-separated, for messages.
    pub fn servers_text(&self) -> String {
        self.servers.join(",")
    }

    fn server_error(&self, message: impl std::fmt::Display) -> FleetError {
        FleetError::Server {
            servers: self.servers_text(),
            message: message.to_string(),
        }
    }

    /// Checks what can be checked before connecting: at least one server, every URL
    /// parses, and the credentials and TLS files exist.
    pub fn check(&self) -> Result<(), FleetError> {
        self.addresses()?;
        let client = self.tls_client.iter().flat_map(|(cert, key)| [cert, key]);
        for file in self.credentials.iter().chain(&self.tls_ca).chain(client) {
            if !file.is_file() {
                return Err(FleetError::Settings(format!(
                    "{}: no such file (from [export])",
                    file.display()
                )));
            }
        }
        Ok(())
    }

    fn addresses(&self) -> Result<Vec<async_nats::ServerAddr>, FleetError> {
        if self.servers.is_empty() {
            return Err(FleetError::Settings("no NATS server given".into()));
        }
        self.servers
            .iter()
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| FleetError::Settings(format!("NATS server `{s}`: {e}")))
            })
            .collect()
    }

    /// A client for these servers. `in_background`: return at once and connect (and
    /// reconnect) in the background; otherwise fail when no server answers.
    async fn connect(&self, in_background: bool) -> Result<async_nats::Client, FleetError> {
        let addrs = self.addresses()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("conntrail {}", self.host))
            .connection_timeout(self.ack_timeout.max(Duration::from_secs(1)))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.min(10) as u64)
            });
        if let Some(creds) = &self.credentials {
            options = options.credentials_file(creds).await.map_err(|e| {
                FleetError::Settings(format!("credentials file {}: {e}", creds.display()))
            })?;
        }
        if self.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if in_background {
            options = options.retry_on_initial_connect();
        }
        options
            .connect(addrs)
            .await
            .map_err(|e| self.server_error(e))
    }

    /// A JetStream context whose requests and acknowledgements wait `ack_timeout`.
    fn jetstream(
        &self,
        client: async_nats::Client,
        in_flight: usize,
    ) -> async_nats::jetstream::Context {
        async_nats::jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            .ack_timeout(self.ack_timeout)
            .max_ack_inflight(in_flight)
            .backpressure_on_inflight(true)
            .build(client)
    }
}

/// A tokio runtime on the current thread, for the blocking faces of this crate.
fn runtime() -> Result<tokio::runtime::Runtime, FleetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FleetError::Thread(format!("starting the I/O runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_connecting() {
        let mut cfg = ExportConfig::default();
        assert!(Settings::from_config(&cfg).check().is_err(), "no server");
        cfg.servers = vec!["nats://127.0.0.1:4222".into(), "tls://n2:4222".into()];
        let settings = Settings::from_config(&cfg);
        assert!(settings.check().is_ok());
        assert!(!settings.host.is_empty(), "the host name by default");
        cfg.credentials = "/nonexistent/conntrail.creds".into();
        let e = Settings::from_config(&cfg)
            .check()
            .expect_err("missing file");
        assert!(
            e.to_string().contains("/nonexistent/conntrail.creds"),
            "{e}"
        );
        cfg.credentials.clear();
        cfg.servers = vec!["nats://host:port".into()];
        assert!(Settings::from_config(&cfg).check().is_err(), "bad port");
    }
}
