//! Elastic Common Schema output (`--ecs`): the same records under ECS field names, for SIEM
//! ingestion.

use flowtable::record::Record;
use serde_json::{json, Value};

/// One record as an ECS document.
pub fn to_ecs(rec: &Record<'_>) -> Value {
    let flags: Vec<&str> = rec.flags.names().collect();
    json!({
        "@timestamp": crate::show::rfc3339(rec.start_ns),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection", "end"],
            "start": crate::show::rfc3339(rec.start_ns),
            "end": crate::show::rfc3339(rec.end_ns),
            "duration": rec.duration_ns(),
            "reason": rec.close_reason.as_str(),
            "id": rec.id.to_string(),
        },
        "source": {
            "ip": rec.client.ip.to_string(),
            "port": rec.client.port,
            "packets": rec.c2s.pkts,
            "bytes": rec.c2s.bytes,
        },
        "destination": {
            "ip": rec.server.ip.to_string(),
            "port": rec.server.port,
            "packets": rec.s2c.pkts,
            "bytes": rec.s2c.bytes,
        },
        "network": {
            "transport": rec.proto.as_str(),
            "type": if rec.ip_version == 6 { "ipv6" } else { "ipv4" },
            "packets": rec.c2s.pkts + rec.s2c.pkts,
            "bytes": rec.c2s.bytes + rec.s2c.bytes,
            "vlan": rec.vlans.first().map(|v| json!({"id": v.to_string()})),
        },
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
