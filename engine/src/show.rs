//! `conntrail show`: the log decoded as human text (one block per record) or JSON Lines.
//!
//! The JSON form is a contract other tools rely on (see README): field names and units do
//! not change without a format version bump.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use flowtable::point::Severity;
use flowtable::record::{Addr, DirStats, Endpoint, Record};
use serde_json::{json, Value};

/// Arguments of `conntrail show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The log (its rotated segments are read too).
    pub log: PathBuf,
    /// Only these records.
    pub ids: Vec<u64>,
    /// JSON Lines, one object per record.
    #[arg(long)]
    pub json: bool,
    /// JSON with Elastic Common Schema field names.
    #[arg(long)]
    pub ecs: bool,
}

pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (log, json) = (args.log, args.json || args.ecs);
    let records = crate::logs::Records::open(&[log])?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut damaged = 0u64;
    for item in records {
        match item {
            Ok(rec) if !args.ids.is_empty() && !args.ids.contains(&rec.id) => {}
            Ok(rec) => {
                let written = if json {
                    writeln!(
                        out,
                        "{}",
                        if args.ecs {
                            crate::ecs::to_ecs(&rec)
                        } else {
                            to_json(&rec)
                        }
                    )
                } else {
                    write_text(&mut out, &rec)
                };
                if let Err(e) = written {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
            }
            Err(damage) => {
                damaged += 1;
                eprintln!("conntrail: damaged log: {damage}");
            }
        }
    }
    if let Err(e) = out.flush() {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(if damaged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One record as the `show --json` object.
pub fn to_json(rec: &Record<'_>) -> Value {
    let ep = |e: &Endpoint| json!({"ip": e.ip.to_string(), "port": e.port});
    let dir = |d: &DirStats| {
        json!({
            "pkts": d.pkts, "bytes": d.bytes, "payload": d.payload, "retrans": d.retrans,
            "out_of_order": d.out_of_order, "dup_ack": d.dup_ack, "zero_window": d.zero_window,
        })
    };
    let points: Vec<Value> = rec
        .points
        .iter()
        .map(|p| {
            json!({
                "t_ns": p.t_ns, "kind": p.kind.as_str(), "dir": p.dir.as_str(),
                "severity": p.severity.as_str(), "arg": p.arg,
            })
        })
        .collect();
    json!({
        "id": rec.id,
        "worker": rec.worker,
        "context": rec.context,
        "proto": rec.proto.as_str(),
        "ip_version": rec.ip_version,
        "client": ep(&rec.client),
        "server": ep(&rec.server),
        "midstream": rec.midstream,
        "vlans": rec.vlans.as_ref(),
        "start_ns": rec.start_ns,
        "end_ns": rec.end_ns,
        "duration_ns": rec.duration_ns(),
        "c2s": dir(&rec.c2s),
        "s2c": dir(&rec.s2c),
        "close_reason": rec.close_reason.as_str(),
        "conn_state": rec.conn_state.as_str(),
        "history": rec.history.as_str(),
        "flags": rec.flags.names().collect::<Vec<_>>(),
        "irregular_point": rec.irregular_point,
        "latency_ns": {
            "syn_synack": rec.latency.syn_synack_ns,
            "synack_ack": rec.latency.synack_ack_ns,
            "ttfb": rec.latency.ttfb_ns,
            "max_stall": rec.latency.max_stall_ns,
        },
        "points": points,
        "points_dropped": rec.points_dropped,
    })
}

/// `a.b.c.d:port`, `[v6]:port`, or the bare address for port 0 (ICMP).
pub fn endpoint_text(ip: Addr, port: u16) -> String {
    match (ip.to_ip(), port) {
        (a, 0) => a.to_string(),
        (std::net::IpAddr::V6(a), p) => format!("[{a}]:{p}"),
        (a, p) => format!("{a}:{p}"),
    }
}

/// Nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SS.nnnnnnnnn UTC`.
pub fn utc_text(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{frac:09} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Nanoseconds since the epoch as RFC 3339 (`2024-01-01T00:00:00.000000001Z`).
pub fn rfc3339(ns: u64) -> String {
    let t = utc_text(ns);
    // `YYYY-MM-DD HH:MM:SS.nnnnnnnnn UTC` -> `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
    format!("{}Z", t.trim_end_matches(" UTC").replacen(' ', "T", 1))
}

/// A duration in the unit that reads best.
pub fn duration_text(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.3} ms", ns as f64 / 1e6)
    } else {
        format!("{:.3} s", ns as f64 / 1e9)
    }
}

fn opt_duration(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_string(), duration_text)
}

fn dir_text(d: &DirStats) -> String {
    format!(
        "{} pkts, {} bytes ({} payload); retrans {}, out-of-order {}, dup-ack {}, zero-window {}",
        d.pkts, d.bytes, d.payload, d.retrans, d.out_of_order, d.dup_ack, d.zero_window
    )
}

/// Writes one record as a human-readable block.
pub fn write_text(out: &mut impl Write, rec: &Record<'_>) -> std::io::Result<()> {
    writeln!(
        out,
        "record {} {} {} -> {}: {} ({})",
        rec.id,
        rec.proto.as_str(),
        endpoint_text(rec.client.ip, rec.client.port),
        endpoint_text(rec.server.ip, rec.server.port),
        rec.close_reason.in_words(),
        rec.close_reason.as_str()
    )?;
    let flags: Vec<&str> = rec.flags.names().collect();
    let mut extra = String::new();
    if !rec.vlans.is_empty() {
        let v: Vec<String> = rec.vlans.iter().map(u16::to_string).collect();
        extra.push_str(&format!(", vlan {}", v.join("/")));
    }
    if rec.midstream {
        extra.push_str(", picked up mid-stream");
    }
    writeln!(
        out,
        "  start {}, duration {}, worker {}{}",
        utc_text(rec.start_ns),
        duration_text(rec.duration_ns()),
        rec.worker,
        extra
    )?;
    if rec.conn_state.as_str().is_empty() {
        writeln!(out, "  flags {}", flags.join(","))?;
    } else {
        writeln!(
            out,
            "  state {}, history {}, flags {}",
            rec.conn_state.as_str(),
            rec.history.as_str(),
            flags.join(",")
        )?;
    }
    writeln!(out, "  c2s {}", dir_text(&rec.c2s))?;
    writeln!(out, "  s2c {}", dir_text(&rec.s2c))?;
    let l = &rec.latency;
    writeln!(
        out,
        "  latency syn->syn-ack {}, syn-ack->ack {}, first response byte {}, largest stall {}",
        opt_duration(l.syn_synack_ns),
        opt_duration(l.synack_ack_ns),
        opt_duration(l.ttfb_ns),
        opt_duration(l.max_stall_ns)
    )?;
    writeln!(
        out,
        "  tracking points ({} kept, {} dropped):",
        rec.points.len(),
        rec.points_dropped
    )?;
    for (i, p) in rec.points.iter().enumerate() {
        let mark = if rec.irregular_point == Some(i as u16) {
            ">>"
        } else {
            "  "
        };
        let sev = match p.severity {
            Severity::Info => "",
            Severity::Warn => " [warn]",
            Severity::Error => " [error]",
        };
        writeln!(
            out,
            "  {mark} +{:>14}  {}  {}{} {}",
            duration_text(p.t_ns),
            p.dir.as_str(),
            p.kind.as_str(),
            sev,
            point_arg_text(p.kind, p.arg)
        )?;
    }
    writeln!(out)
}

fn point_arg_text(kind: flowtable::point::PointKind, arg: u32) -> String {
    use flowtable::point::PointKind as K;
    match kind {
        K::SynAck | K::HandshakeDone if arg > 0 => {
            format!("({})", duration_text(u64::from(arg) * 1000))
        }
        K::Threshold => format!("(over the {} threshold)", duration_text(u64::from(arg) * 1000)),
        K::FirstData if arg > 0 => format!("(after {})", duration_text(u64::from(arg) * 1000)),
        K::TlsAlert if arg == 0xffff => "(encrypted)".to_string(),
        K::TlsAlert => format!("(level {}, description {})", arg >> 8, arg & 0xff),
        K::IcmpError => format!("(type {}, code {})", arg >> 8, arg & 0xff),
        K::TlsServerHello => format!("(version 0x{arg:04x})"),
        K::TlsClientHello => format!("(sni hash {arg:08x})"),
        K::Retransmission | K::OutOfOrder => format!("(seq {arg})"),
        K::Truncated => format!("({arg} points dropped here)"),
        K::TtlChange => format!("(ttl {arg})"),
        K::VlanChange => format!("(vlan {arg})"),
        K::SynRetransmission => format!("(SYN #{arg})"),
        K::BadFlags => format!("(flags 0x{arg:02x})"),
        K::DupAck => format!("({arg} in a row)"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00.000000000 UTC");
        assert_eq!(
            utc_text(1_704_067_200_000_000_001),
            "2024-01-01 00:00:00.000000001 UTC"
        );
        assert_eq!(
            utc_text(951_782_400_000_000_000),
            "2000-02-29 00:00:00.000000000 UTC"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text(999), "999 ns");
        assert_eq!(duration_text(212_000_000), "212.000 ms");
        assert_eq!(duration_text(3_100_000_000), "3.100 s");
    }
}
