//! Reading the records the fleet exported to NATS JetStream (the `fleet` crate does the
//! work): `--nats` for `query` (the whole fleet's records), `show` and `diff` (records named
//! `HOST:LOG` and `HOST:LOG:ID`). Exporting is the engine's business.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flowtable::config::Config;
use flowtable::record::Record;

/// `--nats` and its companions, for `show` and `diff`: records named `HOST:LOG` (and
/// `HOST:LOG:ID`) are read from the stream.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StreamArgs {
    /// Read the records from NATS JetStream (server URLs, comma-separated) instead of local
    /// logs; logs are then named HOST:LOG, as `query --nats` prints them.
    #[arg(long, value_name = "URL[,URL...]")]
    pub nats: Option<String>,
    /// The stream (default: `[export] stream` of --config, else CONNTRAIL).
    #[arg(long, requires = "nats")]
    pub stream: Option<String>,
    /// Configuration file whose `[export]` section gives the stream, credentials and TLS.
    #[arg(long = "config", requires = "nats", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--nats` and its companions for `query`: the records of the whole fleet, or of one host
/// or context.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FleetArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Only the records of this appliance (its `[export] host`).
    #[arg(long, requires = "nats")]
    pub host: Option<String>,
    /// Only the records of this context (`default` until contexts exist).
    #[arg(long, requires = "nats")]
    pub context: Option<String>,
}

pub fn split_servers(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {name}"))?;
    Ok(Config::parse(&text, &name)?)
}

/// The settings for `cfg` with the servers of the command line (if given); `None` when
/// there is no server at all (export off).
pub fn settings(cfg: &Config, servers: Option<&str>) -> Result<Option<fleet::Settings>> {
    let contexts = cfg.contexts.iter().map(|c| c.name.clone()).collect();
    let mut cfg = cfg.export.clone();
    if let Some(urls) = servers {
        cfg.servers = split_servers(urls);
        anyhow::ensure!(!cfg.servers.is_empty(), "no NATS server URL in `{urls}`");
    }
    if cfg.servers.is_empty() {
        return Ok(None);
    }
    let settings = fleet::Settings {
        contexts,
        ..fleet::Settings::from_config(&cfg)
    };
    settings.check()?;
    Ok(Some(settings))
}

/// One record read from the stream, decoded, with where it came from.
pub struct FleetRecord {
    pub record: Record<'static>,
    /// The appliance, and the log on it (`HOST:LOG:ID` names the record).
    pub host: String,
    pub log: String,
    /// Sequence number in the stream.
    pub sequence: u64,
}

/// The records of the stream selected by `args` (`--nats` given), in stream order; a
/// message that does not decode is an `Err` describing it (reported and skipped like a
/// damaged place of a log).
pub fn fleet_records(
    args: &FleetArgs,
) -> Result<impl Iterator<Item = std::result::Result<FleetRecord, String>>> {
    stream_records(&args.stream, args.host.as_deref(), args.context.as_deref())
}

fn stream_records(
    args: &StreamArgs,
    host: Option<&str>,
    context: Option<&str>,
) -> Result<impl Iterator<Item = std::result::Result<FleetRecord, String>>> {
    let mut cfg = load_config(args.config.as_deref())?;
    if let Some(stream) = &args.stream {
        cfg.export.stream = stream.clone();
    }
    let settings =
        settings(&cfg, args.nats.as_deref())?.context("no NATS server: give --nats URL")?;
    let reader = fleet::StreamReader::open(&settings, host, context)?;
    let stream = settings.stream;
    Ok(reader.map(move |item| {
        let message = item.map_err(|e| e.to_string())?;
        let record = flowtable::record::codec::decode(&message.payload).map_err(|e| {
            format!(
                "stream {stream} message {} ({}): undecodable record: {e}",
                message.sequence, message.subject
            )
        })?;
        Ok(FleetRecord {
            record,
            host: message.host,
            log: message.log,
            sequence: message.sequence,
        })
    }))
}

/// The records of one appliance's log in the stream, named `HOST:LOG` as `query --nats`
/// prints it, in the form [`crate::logs::Records`] gives a local log's.
pub fn log_records(
    args: &StreamArgs,
    origin: &Path,
) -> Result<impl Iterator<Item = crate::logs::Item>> {
    let origin = origin.to_string_lossy().into_owned();
    let Some((host, log)) = origin.split_once(':') else {
        anyhow::bail!("`{origin}`: with --nats, name a log HOST:LOG (as query --nats prints it)");
    };
    let (host, log) = (host.to_string(), log.to_string());
    let records = stream_records(args, Some(&host), None)?;
    Ok(records.filter_map(move |item| match item {
        Ok(r) if r.log == log => Some(Ok(r.record)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    }))
}

/// The record named `HOST:LOG:ID`, read from the stream; messages that do not decode go to
/// `damage`.
pub fn load_record(
    args: &StreamArgs,
    at: &crate::logs::RecordRef,
    mut damage: impl FnMut(&str),
) -> Result<Record<'static>> {
    for item in log_records(args, &at.log)? {
        match item {
            Ok(rec) if rec.id == at.id => return Ok(rec),
            Ok(_) => {}
            Err(e) => damage(&e),
        }
    }
    anyhow::bail!(
        "{}: no record with id {} in the stream",
        at.log.display(),
        at.id
    )
}
