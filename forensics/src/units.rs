//! How values are written for people: durations, times, endpoints, and a record's counters
//! and latencies in one line each. Every read command writes them through here, so a
//! microsecond is `us` and a time is UTC everywhere. Depends on nothing of the read side.

use flowtable::record::{icmp_type_name, Addr, DirStats, Proto, Record};

/// ` (type 8 code 0, echo request)` for an ICMP record, else nothing.
pub fn icmp_text(rec: &Record<'_>) -> String {
    match rec.icmp() {
        Some((icmp_type, code)) => match icmp_type_name(rec.ip_version == 6, icmp_type) {
            Some(name) => format!(" (type {icmp_type} code {code}, {name})"),
            None => format!(" (type {icmp_type} code {code})"),
        },
        None => String::new(),
    }
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

pub fn opt_duration(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_string(), duration_text)
}

/// The latencies of a record in one line: the handshake's two only for TCP.
pub fn latency_text(rec: &Record<'_>) -> String {
    let l = &rec.latency;
    let rest = format!(
        "first response byte {}, largest stall {}",
        opt_duration(l.ttfb_ns),
        opt_duration(l.max_stall_ns)
    );
    if rec.proto != Proto::Tcp {
        return rest;
    }
    format!(
        "syn->syn-ack {}, syn-ack->ack {}, {rest}",
        opt_duration(l.syn_synack_ns),
        opt_duration(l.synack_ack_ns),
    )
}

/// A direction's counters in one line: the retransmission, order, dup-ACK and window
/// counters only for TCP.
pub fn dir_text(proto: Proto, d: &DirStats) -> String {
    let sizes = format!("{} pkts, {} bytes ({} payload)", d.pkts, d.bytes, d.payload);
    if proto != Proto::Tcp {
        return sizes;
    }
    format!(
        "{sizes}; retrans {}, out-of-order {}, dup-ack {}, zero-window {}",
        d.retrans, d.out_of_order, d.dup_ack, d.zero_window
    )
}

/// A duration for a sentence: `3.1 ms`, `212 ms`, `3.0 s`, `281 us`.
pub fn short_duration(ns: u64) -> String {
    let (v, unit) = if ns < 1_000 {
        return format!("{ns} ns");
    } else if ns < 1_000_000 {
        (ns as f64 / 1e3, "us")
    } else if ns < 1_000_000_000 {
        (ns as f64 / 1e6, "ms")
    } else {
        (ns as f64 / 1e9, "s")
    };
    if v < 9.95 || (v < 99.95 && unit != "us") {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

pub fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    #[test]
    fn sentence_durations_keep_three_figures() {
        assert_eq!(short_duration(281_400), "281 us");
        assert_eq!(short_duration(3_140_000), "3.1 ms");
        assert_eq!(short_duration(212_000_000), "212 ms");
        assert_eq!(short_duration(3_000_000_000), "3.0 s");
    }
}
