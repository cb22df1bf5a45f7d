//! Contexts at run time: where each context's log is, how a log is opened (its retention),
//! the recorder's routing of records to them, and the logs of an engine opened together.
//!
//! A connection's context is chosen by its flow table from the interface and outer VLAN of
//! its first packet (`[[context]]` in the configuration); the record carries its number, and
//! the recorder, which never decodes records, reads that number from the front of each one
//! ([`flowtable::record::codec::peek_context`]) to pick the log. Context 0 (`default`) writes to the log
//! given on the command line; context `NAME` to its `log` key, by default `LOG.NAME` beside
//! it (a name starts with a letter, so it never looks like a rotated segment `LOG.N`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use flowtable::config::Config;
use flowtable::table::TableCounters;
use recorder::thread::Logs;
use recorder::writer::{LogWriter, Retention};

/// Environment variable: a pause in microseconds after every record the recorder appends.
/// It makes records pile up in the rings so crash tests can kill the engine while records
/// are in flight; never set it in operation.
pub const RECORDER_DELAY_ENV: &str = "CONNTRAIL_RECORDER_DELAY_US";

/// The retention the `[log]` section of a configuration asks for (0 switches a limit off).
pub fn retention(log: &flowtable::config::LogConfig) -> Retention {
    Retention {
        rotate_bytes: log.rotate_bytes,
        rotate_age: (log.rotate_age_s > 0).then(|| Duration::from_secs(log.rotate_age_s)),
        max_total_bytes: (log.max_total_bytes > 0).then_some(log.max_total_bytes),
        min_free_bytes: log.min_free_bytes,
    }
}

/// Opens the log at `path` with the `[log]` retention of `cfg` (and the recorder delay of
/// [`RECORDER_DELAY_ENV`] when set): a new log replacing any there, or with `resume` the
/// existing one continued after its last intact record.
pub fn create_log(cfg: &Config, path: &Path, resume: bool) -> Result<LogWriter> {
    let retention = retention(&cfg.log);
    let mut writer = if resume {
        LogWriter::resume(path, retention)
    } else {
        LogWriter::create_with(path, retention)
    }
    // The writer's errors name the log.
    .map_err(anyhow::Error::from)?;
    if let Ok(us) = std::env::var(RECORDER_DELAY_ENV) {
        let us: u64 = us
            .parse()
            .with_context(|| format!("{RECORDER_DELAY_ENV}={us} is not a number of us"))?;
        writer.set_append_delay(Some(Duration::from_micros(us)));
    }
    Ok(writer)
}

/// What one context's log received in a run.
#[derive(Clone, Debug, Default)]
pub struct ContextSummary {
    pub name: String,
    pub log: PathBuf,
    pub records: u64,
}

/// What each context's log (at `logs`, in context order) got: `written[i]` records.
pub fn summaries(cfg: &Config, logs: Vec<PathBuf>, written: &[u64]) -> Vec<ContextSummary> {
    logs.into_iter()
        .zip(written)
        .enumerate()
        .map(|(i, (log, records))| ContextSummary {
            name: cfg.context_name(u16::try_from(i).unwrap_or(u16::MAX)),
            log,
            records: *records,
        })
        .collect()
}

/// The summary lines of a run about its contexts (one per context, when there are more than
/// `default`) and its IP fragments (when datagrams were dropped incomplete), from the
/// contexts and the workers' tables.
pub fn summary_lines(contexts: &[ContextSummary], tables: &[&TableCounters]) -> Vec<String> {
    let mut lines = Vec::new();
    if contexts.len() > 1 {
        for c in contexts {
            lines.push(format!(
                "context {}: {} records in {}",
                c.name,
                c.records,
                c.log.display()
            ));
        }
    }
    let evicted: u64 = tables.iter().map(|t| t.fragments_evicted).sum();
    let expired: u64 = tables.iter().map(|t| t.fragments_expired).sum();
    if evicted + expired > 0 {
        lines.push(format!(
            "fragments: {} incomplete datagrams dropped ({evicted} for a full fragment table, \
             {expired} timed out)",
            evicted + expired
        ));
    }
    lines
}

/// The log of every context, in context order: `main` for the default context, then each
/// `[[context]]`'s. Fails when two contexts would share a file.
pub fn log_paths(cfg: &Config, main: &Path) -> Result<Vec<PathBuf>> {
    let dir = main.parent().unwrap_or(Path::new(""));
    let mut paths = vec![main.to_path_buf()];
    for c in &cfg.contexts {
        let path = if c.log.is_empty() {
            let mut name = main.as_os_str().to_os_string();
            name.push(".");
            name.push(&c.name);
            PathBuf::from(name)
        } else {
            dir.join(&c.log)
        };
        if let Some(other) = paths.iter().position(|p| same_file(p, &path)) {
            bail!(
                "context `{}` would write to {}, the log of context `{}`: give it a `log` of \
                 its own",
                c.name,
                path.display(),
                cfg.context_name(u16::try_from(other).unwrap_or(0)),
            );
        }
        paths.push(path);
    }
    Ok(paths)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::path::absolute(a), std::path::absolute(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The log index of a record: its context (what [`Logs::routed`] and recovery route by).
/// A payload that does not start like a record goes to the default context's log.
pub fn route(payload: &[u8]) -> usize {
    flowtable::record::codec::peek_context(payload).map_or(0, usize::from)
}

/// Opens the logs at `paths` (from [`log_paths`]) for the recorder: each replaced, or
/// continued when `resume` says so for it (a log a recovery just completed).
pub fn open_logs(cfg: &Config, paths: &[PathBuf], resume: impl Fn(&Path) -> bool) -> Result<Logs> {
    let mut writers = Vec::with_capacity(paths.len());
    for path in paths {
        writers.push(create_log(cfg, path, resume(path))?);
    }
    let mut writers = writers.into_iter();
    let Some(first) = writers.next() else {
        bail!("no log to write");
    };
    Ok(if paths.len() == 1 {
        Logs::one(first)
    } else {
        Logs::routed(first, writers.collect(), route)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::config::Context;

    #[test]
    fn context_logs_sit_beside_the_main_log_unless_named() {
        let mut cfg = Config::default();
        cfg.add_context(Context::new("dmz", &["eth1"], &[]));
        let mut lab = Context::new("lab", &[], &[100]);
        lab.log = "lab/records.log".into();
        cfg.add_context(lab);
        let paths = log_paths(&cfg, Path::new("/var/log/conntrail/box.log")).expect("paths");
        assert_eq!(
            paths,
            [
                "/var/log/conntrail/box.log",
                "/var/log/conntrail/box.log.dmz",
                "/var/log/conntrail/lab/records.log"
            ]
            .map(PathBuf::from)
        );
        let mut clash = Context::new("web", &["eth2"], &[]);
        clash.log = "box.log".into();
        cfg.add_context(clash);
        let e = log_paths(&cfg, Path::new("/var/log/conntrail/box.log")).unwrap_err();
        assert!(e.to_string().contains("context `default`"), "{e}");
    }
}
