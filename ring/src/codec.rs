//! Record encoding: MessagePack via rmp-serde, structs as arrays (field order is the format;
//! see `recorder/FORMAT.md`). Encoding writes into a caller-owned buffer that is reused, so a
//! worker encodes without allocating once the buffer has grown to its working size.

use flowtable::record::Record;

/// A record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding a record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding a record: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes `rec` into `buf` (cleared first).
pub fn encode(rec: &Record<'_>, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    buf.clear();
    rmp_serde::encode::write(buf, rec)?;
    Ok(())
}

/// The context of an encoded record, read from its first fields (id, worker, context)
/// without decoding the rest: what the recorder routes each record to its context's log by.
/// `None` when the bytes do not start like a record.
pub fn peek_context(bytes: &[u8]) -> Option<u16> {
    let mut rest = bytes;
    rmp::decode::read_array_len(&mut rest).ok()?;
    let _id: u64 = rmp::decode::read_int(&mut rest).ok()?;
    let _worker: u16 = rmp::decode::read_int(&mut rest).ok()?;
    rmp::decode::read_int(&mut rest).ok()
}

/// Decodes one record from a frame's payload.
pub fn decode(bytes: &[u8]) -> Result<Record<'static>, CodecError> {
    let rec: Record<'_> = rmp_serde::from_slice(bytes)?;
    Ok(rec.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable::point::{Dir, Point, PointKind, Severity};
    use flowtable::record::{
        Addr, CloseReason, ConnState, DirStats, Endpoint, Flags, History, Latency, Proto,
    };
    use std::borrow::Cow;
    use std::net::IpAddr;

    fn sample() -> Record<'static> {
        let ip = |s: &str| Addr::from_ip(s.parse::<IpAddr>().expect("ip"));
        let mut history = History::default();
        for b in b"ShAdDaFf" {
            history.push(*b);
        }
        Record {
            id: 42,
            worker: 1,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 6,
            client: Endpoint {
                ip: ip("fd00::1"),
                port: 40000,
            },
            server: Endpoint {
                ip: ip("192.0.2.7"),
                port: 443,
            },
            midstream: false,
            vlans: Cow::Owned(vec![10, 20]),
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_001_000_000_000,
            c2s: DirStats {
                pkts: 5,
                bytes: 600,
                payload: 300,
                retrans: 1,
                ..Default::default()
            },
            s2c: DirStats {
                pkts: 4,
                bytes: 4000,
                payload: 3700,
                zero_window: 2,
                ..Default::default()
            },
            close_reason: CloseReason::TcpRstServer,
            conn_state: ConnState::RSTR,
            history,
            flags: Flags::ERROR,
            irregular_point: Some(1),
            latency: Latency {
                syn_synack_ns: Some(1500),
                ttfb_ns: None,
                ..Default::default()
            },
            points: Cow::Owned(vec![
                Point {
                    t_ns: 0,
                    kind: PointKind::Syn,
                    dir: Dir::C2s,
                    severity: Severity::Info,
                    arg: 0,
                },
                Point {
                    t_ns: 9,
                    kind: PointKind::Rst,
                    dir: Dir::S2c,
                    severity: Severity::Error,
                    arg: 7,
                },
            ]),
            points_dropped: 3,
            icmp_type_code: 0,
        }
    }

    #[test]
    fn the_context_is_read_without_decoding_the_record() {
        let mut buf = Vec::new();
        for (id, context) in [(0u64, 0u16), (42, 3), (u64::MAX, 300), (1 << 40, u16::MAX)] {
            let rec = Record {
                id,
                context,
                ..sample()
            };
            encode(&rec, &mut buf).expect("encodes");
            assert_eq!(peek_context(&buf), Some(context));
        }
        assert_eq!(peek_context(&buf[..2]), None);
        assert_eq!(peek_context(b"\xc0garbage"), None);
        assert_eq!(peek_context(&[]), None);
    }

    #[test]
    fn round_trip() {
        let rec = sample();
        let mut buf = Vec::new();
        encode(&rec, &mut buf).expect("encodes");
        assert_eq!(decode(&buf).expect("decodes"), rec);
        assert!(buf.len() < 200, "record is {} bytes", buf.len());
    }

    #[test]
    fn truncated_or_garbage_is_an_error() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).expect("encodes");
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "prefix {n} decoded");
        }
        assert!(decode(b"\xc1\xc1\xc1").is_err());
    }
}
