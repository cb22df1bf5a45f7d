//! Subjects, message ids and headers: how a record is named in the stream.

use std::path::Path;

use flowtable::config::is_subject_token;

/// Every subject the exporter publishes on starts with this; the stream it creates takes
/// `conntrail.records.>`.
pub const SUBJECT_PREFIX: &str = "conntrail.records";

/// Header: the appliance that wrote the record (the `<host>` of the subject).
pub const HEADER_HOST: &str = "Conntrail-Host";
/// Header: the log's base path on that appliance.
pub const HEADER_LOG: &str = "Conntrail-Log";
/// Header: the creation time of the log's base file (ns since the epoch): with the path it
/// tells one log from a later one written at the same place.
pub const HEADER_LOG_CREATED: &str = "Conntrail-Log-Created";
/// Header: the record's id in its log.
pub const HEADER_RECORD: &str = "Conntrail-Record";

/// The subject token of a record's context: `default` for context 0, the name of
/// `[[context]]` n for context n (`contexts` lists their names in order), its number for a
/// context the configuration does not have.
pub fn context_token(contexts: &[String], context: u16) -> String {
    match usize::from(context).checked_sub(1) {
        None => flowtable::config::DEFAULT_CONTEXT.to_string(),
        Some(i) => contexts
            .get(i)
            .cloned()
            .unwrap_or_else(|| context.to_string()),
    }
}

/// `conntrail.records.<host>.<context>`.
pub fn subject(host: &str, contexts: &[String], context: u16) -> String {
    format!(
        "{SUBJECT_PREFIX}.{host}.{}",
        context_token(contexts, context)
    )
}

/// The subject filter for reading: one host and/or one context, or all of them.
pub fn filter(host: Option<&str>, context: Option<&str>) -> String {
    match (host, context) {
        (None, None) => format!("{SUBJECT_PREFIX}.>"),
        (h, c) => format!("{SUBJECT_PREFIX}.{}.{}", h.unwrap_or("*"), c.unwrap_or("*")),
    }
}

/// The `Nats-Msg-Id` of a record: host, log (file name and creation time), record id and
/// the CRC32 of its payload, `box1:tracker.log@1763940000123456789:281474976710657:9a3bc1d5`.
///
/// The same frame sent twice (a lost acknowledgement, a restart from the persisted
/// position, a frame the recorder wrote twice after a crash) has the same id, so JetStream
/// stores it once within its duplicate window. The checksum keeps two different records
/// apart even if they share an id (records recovered from a crashed run's rings carry that
/// run's ids into the next log).
pub fn message_id(host: &str, log: &Path, log_created_ns: u64, record_id: u64, crc: u32) -> String {
    let name = log
        .file_name()
        .map_or_else(|| log.to_string_lossy(), |n| n.to_string_lossy());
    format!("{host}:{name}@{log_created_ns}:{record_id}:{crc:08x}")
}

/// This machine's name as a subject token: the kernel's host name with every character a
/// token cannot hold (`.`, `*`, `>`, white space, ...) replaced by `_`; `localhost` when it
/// cannot be read.
pub fn default_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let token: String = name
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            let mut buf = [0u8; 4];
            if is_subject_token(c.encode_utf8(&mut buf)) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "localhost".to_string()
    } else {
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let contexts = ["dmz".to_string(), "lab".to_string()];
        assert_eq!(
            subject("box1", &contexts, 0),
            "conntrail.records.box1.default"
        );
        assert_eq!(subject("box1", &contexts, 2), "conntrail.records.box1.lab");
        assert_eq!(subject("box1", &contexts, 7), "conntrail.records.box1.7");
        assert_eq!(filter(None, None), "conntrail.records.>");
        assert_eq!(filter(Some("b"), None), "conntrail.records.b.*");
        assert_eq!(filter(None, Some("default")), "conntrail.records.*.default");
        assert_eq!(
            message_id("b", Path::new("/var/log/t.log"), 12, 34, 0xab),
            "b:t.log@12:34:000000ab"
        );
        let host = default_host();
        assert!(is_subject_token(&host), "{host}");
    }
}
