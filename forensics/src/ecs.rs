//! Elastic Common Schema output (`--ecs`): the same records under ECS field names, for SIEM
//! ingestion.
//!
//! The client is `source`, the server `destination` (ECS: the side that initiated the
//! connection is the source); `source.bytes`/`packets` count what the client sent. What ECS
//! has no field for (conn_state, history, flags, latencies) is under `conntrail`.

use flowtable::record::{Proto, Record};
use serde_json::{json, Value};

/// The ECS version whose field names this mapping follows.
pub const ECS_VERSION: &str = "8.11.0";

/// `network.transport` and `network.iana_number` (ICMPv6 is `ipv6-icmp`, 58).
fn transport(rec: &Record<'_>) -> (&'static str, &'static str) {
    match (rec.proto, rec.ip_version) {
        (Proto::Tcp, _) => ("tcp", "6"),
        (Proto::Udp, _) => ("udp", "17"),
        (Proto::Icmp, 6) => ("ipv6-icmp", "58"),
        (Proto::Icmp, _) => ("icmp", "1"),
    }
}

/// One record as an ECS document.
pub fn to_ecs(rec: &Record<'_>) -> Value {
    let flags: Vec<&str> = rec.flags.names().collect();
    let (transport, iana_number) = transport(rec);
    let (client, server) = (rec.client.ip.to_string(), rec.server.ip.to_string());
    json!({
        "@timestamp": crate::units::rfc3339(rec.start_ns),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection", "end"],
            "start": crate::units::rfc3339(rec.start_ns),
            "end": crate::units::rfc3339(rec.end_ns),
            "duration": rec.duration_ns(),
            "reason": rec.close_reason.as_str(),
            "id": rec.id.to_string(),
        },
        "source": {
            "ip": client,
            "port": rec.client.port,
            "packets": rec.c2s.pkts,
            "bytes": rec.c2s.bytes,
        },
        "destination": {
            "ip": server,
            "port": rec.server.port,
            "packets": rec.s2c.pkts,
            "bytes": rec.s2c.bytes,
        },
        "network": {
            "transport": transport,
            "iana_number": iana_number,
            "type": if rec.ip_version == 6 { "ipv6" } else { "ipv4" },
            "packets": rec.c2s.pkts + rec.s2c.pkts,
            "bytes": rec.c2s.bytes + rec.s2c.bytes,
            "vlan": rec.vlans.first().map(|v| json!({"id": v.to_string()})),
        },
        "related": {"ip": if client == server { vec![client] } else { vec![client, server] }},
        "conntrail": {
            "conn_state": rec.conn_state.as_str(),
            "history": rec.history.as_str(),
            "flags": flags,
            "irregular_point": rec.irregular_point,
            "worker": rec.worker,
            "latency_ns": {
                "syn_synack": rec.latency.syn_synack_ns,
                "synack_ack": rec.latency.synack_ack_ns,
                "ttfb": rec.latency.ttfb_ns,
                "max_stall": rec.latency.max_stall_ns,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::point::{Dir, Point, PointKind, Severity};
    use flowtable::record::{
        Addr, CloseReason, ConnState, DirStats, Endpoint, Flags, History, Latency,
    };
    use std::borrow::Cow;

    const POINTS: [Point; 1] = [Point {
        t_ns: 0,
        kind: PointKind::Start,
        dir: Dir::C2s,
        severity: Severity::Info,
        arg: 0,
    }];

    /// An ICMPv6 echo between two hosts.
    fn echo6() -> Record<'static> {
        let ip = |s: &str| Addr::from_ip(s.parse().expect("ip"));
        Record {
            id: 3,
            worker: 0,
            context: 0,
            proto: Proto::Icmp,
            ip_version: 6,
            client: Endpoint {
                ip: ip("2001:db8::1"),
                port: 0,
            },
            server: Endpoint {
                ip: ip("2001:db8::2"),
                port: 0,
            },
            midstream: false,
            vlans: Cow::Owned(vec![20]),
            start_ns: 1_704_067_200_000_000_000,
            end_ns: 1_704_067_201_000_000_000,
            c2s: DirStats {
                pkts: 1,
                bytes: 118,
                ..DirStats::default()
            },
            s2c: DirStats {
                pkts: 1,
                bytes: 118,
                ..DirStats::default()
            },
            close_reason: CloseReason::AgedOut,
            conn_state: ConnState::None,
            history: History::default(),
            flags: Flags::ALL,
            irregular_point: None,
            latency: Latency::default(),
            points: Cow::Borrowed(&POINTS),
            points_dropped: 0,
            icmp_type_code: 128 << 8,
        }
    }

    #[test]
    fn icmpv6_is_ipv6_icmp_and_both_ends_are_related() {
        let doc = to_ecs(&echo6());
        assert_eq!(doc["network"]["transport"], "ipv6-icmp");
        assert_eq!(doc["network"]["iana_number"], "58");
        assert_eq!(doc["network"]["type"], "ipv6");
        assert_eq!(doc["network"]["vlan"]["id"], "20");
        assert_eq!(doc["related"]["ip"], json!(["2001:db8::1", "2001:db8::2"]));
        assert_eq!(doc["source"]["ip"], "2001:db8::1");
        assert_eq!(doc["event"]["duration"], 1_000_000_000u64);
        assert_eq!(doc["@timestamp"], "2024-01-01T00:00:00.000000000Z");
        assert_eq!(doc["ecs"]["version"], ECS_VERSION);
    }
}
