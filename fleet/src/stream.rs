//! Reading records back from the stream: every record of the fleet, or of one host and/or
//! one context, in stream order (the order the stream stored them).
//!
//! An ordered pull consumer (ephemeral, no acknowledgements, filtered by subject) delivers
//! the records that are in the stream when it is created; the reader stops after the last
//! of them, so a query always ends even while appliances keep exporting.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use futures_util::StreamExt;

use crate::names::{self, HEADER_HOST, HEADER_LOG};
use crate::{FleetError, Settings};

/// Shortest wait for an answer to the requests that set up a query.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts at creating the consumer of a query.
const CONSUMER_ATTEMPTS: u32 = 8;
/// Longest wait for the next message of a query before giving up.
const NEXT_TIMEOUT: Duration = Duration::from_secs(10);

/// One record read from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// The encoded record (`flowtable::record::codec`), as in the log.
    pub payload: Vec<u8>,
    /// Its subject, `conntrail.records.<host>.<context>`.
    pub subject: String,
    /// Its sequence number in the stream.
    pub sequence: u64,
    /// The appliance that exported it (header `Conntrail-Host`, else the subject's token).
    pub host: String,
    /// The log it came from on that appliance (header `Conntrail-Log`; empty if absent).
    pub log: String,
}

/// The records of a stream that match a subject filter, one at a time (blocking).
pub struct StreamReader {
    runtime: tokio::runtime::Runtime,
    messages: Option<Ordered>,
    /// Messages still to come.
    left: u64,
    servers: String,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("left", &self.left)
            .field("servers", &self.servers)
            .finish()
    }
}

impl StreamReader {
    /// Opens the stream of `settings` on its servers and selects the records of `host` and
    /// `context` (each `None`: all). Fails when no server answers or the stream does not
    /// exist.
    pub fn open(
        settings: &Settings,
        host: Option<&str>,
        context: Option<&str>,
    ) -> Result<StreamReader, FleetError> {
        let runtime = crate::runtime()?;
        let filter = names::filter(host, context);
        let (messages, left) = runtime.block_on(async {
            let client = settings.connect(false).await?;
            let mut js = settings.jetstream(client, 1);
            js.set_timeout(settings.ack_timeout.max(REQUEST_TIMEOUT));
            let stream = js
                .get_stream(&settings.stream)
                .await
                .map_err(|e| settings.server_error(format!("stream {}: {e}", settings.stream)))?;
            // A consumer can be placed on a server that just went down and is not known to
            // be down yet: its creation times out, and the next one goes elsewhere.
            let mut attempt = 1;
            let (consumer, left) = loop {
                let created = async {
                    let mut consumer = stream
                        .create_consumer(OrderedConfig {
                            filter_subject: filter.clone(),
                            deliver_policy: DeliverPolicy::All,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    let left = consumer
                        .info()
                        .await
                        .map_err(|e| e.to_string())?
                        .num_pending;
                    Ok::<_, String>((consumer, left))
                };
                let created = tokio::time::timeout(REQUEST_TIMEOUT, created)
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
                match created {
                    Ok(made) => break made,
                    Err(e) if attempt >= CONSUMER_ATTEMPTS => {
                        return Err(settings.server_error(format!("reading {filter}: {e}")))
                    }
                    Err(e) => {
                        log::info!("reading {filter}: {e}; trying again");
                        attempt += 1;
                    }
                }
            };
            if left == 0 {
                return Ok((None, 0));
            }
            let messages = consumer
                .messages()
                .await
                .map_err(|e| settings.server_error(format!("reading {filter}: {e}")))?;
            Ok::<_, FleetError>((Some(messages), left))
        })?;
        Ok(StreamReader {
            runtime,
            messages,
            left,
            servers: settings.servers_text(),
        })
    }

    fn error(&self, message: String) -> FleetError {
        FleetError::Server {
            servers: self.servers.clone(),
            message,
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // The consumer unsubscribes on drop, which needs the runtime.
        let _entered = self.runtime.enter();
        self.messages.take();
    }
}

impl Iterator for StreamReader {
    type Item = Result<StreamRecord, FleetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let messages = self.messages.as_mut()?;
        let next = self
            .runtime
            .block_on(async { tokio::time::timeout(NEXT_TIMEOUT, messages.next()).await });
        let message = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                self.left = 0;
                return Some(Err(self.error(format!("reading the stream: {e}"))));
            }
            Ok(None) => {
                self.left = 0;
                return Some(Err(self.error("the stream ended early".into())));
            }
            Err(_) => {
                self.left = 0;
                return Some(Err(self.error(format!(
                    "no message for {} s while {} were expected",
                    NEXT_TIMEOUT.as_secs(),
                    self.left
                ))));
            }
        };
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => {
                self.left = 0;
                return Some(Err(self.error(format!("message metadata: {e}"))));
            }
        };
        self.left = pending;
        let subject = message.message.subject.to_string();
        let header = |name: &str| {
            message
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let host = header(HEADER_HOST).unwrap_or_else(|| {
            subject
                .strip_prefix(names::SUBJECT_PREFIX)
                .and_then(|s| s.split('.').nth(1))
                .unwrap_or_default()
                .to_string()
        });
        let log = header(HEADER_LOG).unwrap_or_default();
        Some(Ok(StreamRecord {
            payload: message.message.payload.to_vec(),
            subject,
            sequence,
            host,
            log,
        }))
    }
}
