//! Record encoding: MessagePack, structs as arrays (field order is the format; see
//! `recorder/FORMAT.md`). Encoding is written out by hand for the record's shape: a worker
//! encodes every kept record on its packet path, and going through serde's generic
//! serializer cost several times as much. The bytes are the ones `rmp-serde` gives for the
//! same record (the tests hold the two to that); decoding goes through `rmp-serde`. Encoding
//! writes into a caller-owned buffer that is reused, so a worker encodes without allocating
//! once the buffer has grown to its working size.

use super::{Addr, DirStats, Endpoint, Record};
use crate::point::Point;

/// A record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message holds the decoder's, so the error has no `source`.
    #[error("decoding a record: {0}")]
    Decode(rmp_serde::decode::Error),
}

impl From<rmp_serde::decode::Error> for CodecError {
    fn from(e: rmp_serde::decode::Error) -> CodecError {
        CodecError::Decode(e)
    }
}

/// Encodes `rec` into `buf` (cleared first).
pub fn encode(rec: &Record<'_>, buf: &mut Vec<u8>) {
    // Room for any record of this many VLANs and points (a value takes at most 9 bytes, an
    // address 18, the history 25); should that ever fall short, the writer has counted what
    // it needed and the record is written again into that much.
    let room = 272 + 4 * rec.vlans.len() + 20 * rec.points.len();
    buf.resize(room, 0);
    let len = write(rec, buf);
    if len > room {
        buf.resize(len, 0);
        write(rec, buf);
    }
    buf.truncate(len);
}

/// Writes `rec` at the start of `out` and returns its length; bytes past the end of `out`
/// are counted, not written.
fn write(rec: &Record<'_>, out: &mut [u8]) -> usize {
    let mut w = Writer { out, at: 0 };
    w.array(22);
    w.uint(rec.id);
    w.uint(u64::from(rec.worker));
    w.uint(u64::from(rec.context));
    w.uint(rec.proto as u64);
    w.uint(u64::from(rec.ip_version));
    w.endpoint(&rec.client);
    w.endpoint(&rec.server);
    w.put(&[if rec.midstream { TRUE } else { FALSE }]);
    w.array(rec.vlans.len());
    for v in rec.vlans.iter() {
        w.uint(u64::from(*v));
    }
    w.uint(rec.start_ns);
    w.uint(rec.end_ns);
    w.dir_stats(&rec.c2s);
    w.dir_stats(&rec.s2c);
    w.uint(rec.close_reason as u64);
    w.uint(rec.conn_state as u64);
    w.str(rec.history.as_str().as_bytes());
    w.uint(u64::from(rec.flags.0));
    w.option(rec.irregular_point.map(u64::from));
    let l = &rec.latency;
    w.array(4);
    for v in [l.syn_synack_ns, l.synack_ack_ns, l.ttfb_ns, l.max_stall_ns] {
        w.option(v);
    }
    w.array(rec.points.len());
    for p in rec.points.iter() {
        w.point(p);
    }
    w.uint(u64::from(rec.points_dropped));
    w.uint(u64::from(rec.icmp_type_code));
    w.at
}

const NIL: u8 = 0xc0;
const FALSE: u8 = 0xc2;
const TRUE: u8 = 0xc3;

/// MessagePack values, each in its shortest form (as `rmp` writes them), written at `at`.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        if let Some(to) = self.out.get_mut(self.at..end) {
            to.copy_from_slice(bytes);
        }
        self.at = end;
    }

    #[inline(always)]
    fn uint(&mut self, v: u64) {
        if v < 0x80 {
            self.put(&[v as u8]);
        } else {
            self.wide_uint(v);
        }
    }

    fn wide_uint(&mut self, v: u64) {
        if let Ok(v) = u8::try_from(v) {
            self.put(&[0xcc, v]);
        } else if let Ok(v) = u16::try_from(v) {
            let [a, b] = v.to_be_bytes();
            self.put(&[0xcd, a, b]);
        } else if let Ok(v) = u32::try_from(v) {
            let [a, b, c, d] = v.to_be_bytes();
            self.put(&[0xce, a, b, c, d]);
        } else {
            self.put(&[0xcf]);
            self.put(&v.to_be_bytes());
        }
    }

    fn option(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.uint(v),
            None => self.put(&[NIL]),
        }
    }

    fn array(&mut self, len: usize) {
        if len < 16 {
            self.put(&[0x90 | len as u8]);
        } else if let Ok(len) = u16::try_from(len) {
            let [a, b] = len.to_be_bytes();
            self.put(&[0xdc, a, b]);
        } else {
            let [a, b, c, d] = (len as u32).to_be_bytes();
            self.put(&[0xdd, a, b, c, d]);
        }
    }

    /// A history: at most [`super::History::CAP`] (24) bytes, so a fixstr.
    fn str(&mut self, s: &[u8]) {
        debug_assert!(s.len() < 32);
        self.put(&[0xa0 | s.len() as u8]);
        self.put(s);
    }

    fn endpoint(&mut self, e: &Endpoint) {
        self.array(2);
        self.addr(e.ip);
        self.uint(u64::from(e.port));
    }

    /// A bin 8 of the address's [`Addr::wire_bytes`].
    fn addr(&mut self, a: Addr) {
        let bytes = a.wire_bytes();
        self.put(&[0xc4, bytes.len() as u8]);
        self.put(bytes);
    }

    fn dir_stats(&mut self, s: &DirStats) {
        self.array(7);
        for v in [s.pkts, s.bytes, s.payload] {
            self.uint(v);
        }
        for v in [s.retrans, s.out_of_order, s.dup_ack, s.zero_window] {
            self.uint(u64::from(v));
        }
    }

    fn point(&mut self, p: &Point) {
        self.array(5);
        self.uint(p.t_ns);
        // Kind, direction and severity are below 128: one byte each.
        self.put(&[p.kind as u8, p.dir as u8, p.severity as u8]);
        self.uint(u64::from(p.arg));
    }
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
    use crate::point::{Dir, Point, PointKind, Severity};
    use crate::record::{
        Addr, CloseReason, ConnState, DirStats, Endpoint, Flags, History, Latency, Proto,
    };
    use proptest::prelude::*;
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
            encode(&rec, &mut buf);
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
        encode(&rec, &mut buf);
        assert_eq!(decode(&buf).expect("decodes"), rec);
        assert!(buf.len() < 200, "record is {} bytes", buf.len());
    }

    /// Any number, every magnitude equally likely, the MessagePack size boundaries often.
    fn num() -> impl Strategy<Value = u64> {
        prop_oneof![
            (any::<u64>(), 0u32..64).prop_map(|(v, shift)| v >> shift),
            prop::sample::select(vec![
                0,
                0x7f,
                0x80,
                0xff,
                0x100,
                0xffff,
                0x1_0000,
                0xffff_ffff,
                0x1_0000_0000,
                u64::MAX,
            ]),
        ]
    }

    /// A small enum from its discriminant, the way the log decodes it.
    fn variant<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        count: u8,
    ) -> impl Strategy<Value = T> {
        (0..count).prop_map(|d| rmp_serde::from_slice(&[d]).expect("a discriminant"))
    }

    fn addr() -> impl Strategy<Value = Addr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|v4| Addr::from_ip(IpAddr::from(v4))),
            any::<[u8; 16]>().prop_map(Addr),
            // Near the IPv4-mapped prefix without being on it.
            (any::<[u8; 4]>(), 0usize..12, any::<u8>()).prop_map(|(v4, at, b)| {
                let mut a = Addr::from_ip(IpAddr::from(v4)).0;
                a[at] = b;
                Addr(a)
            }),
        ]
    }

    fn dir_stats() -> impl Strategy<Value = DirStats> {
        (num(), num(), num(), [num(), num(), num(), num()]).prop_map(|(pkts, bytes, payload, n)| {
            DirStats {
                pkts,
                bytes,
                payload,
                retrans: n[0] as u32,
                out_of_order: n[1] as u32,
                dup_ack: n[2] as u32,
                zero_window: n[3] as u32,
            }
        })
    }

    fn point() -> impl Strategy<Value = Point> {
        (num(), variant(28), variant(2), variant(3), num()).prop_map(
            |(t_ns, kind, dir, severity, arg)| Point {
                t_ns,
                kind,
                dir,
                severity,
                arg: arg as u32,
            },
        )
    }

    fn record() -> impl Strategy<Value = Record<'static>> {
        let ids = (
            num(),
            num(),
            num(),
            variant(3),
            prop::sample::select(vec![4u8, 6]),
        );
        let ends = ((addr(), num()), (addr(), num()), any::<bool>());
        let times = (
            prop::collection::vec(num(), 0..20),
            num(),
            num(),
            dir_stats(),
            dir_stats(),
        );
        let how = (
            variant(8),
            variant(14),
            prop::collection::vec(b'A'..=b'z', 0..=History::CAP),
            num(),
            prop::option::of(num()),
            [
                prop::option::of(num()),
                prop::option::of(num()),
                prop::option::of(num()),
                prop::option::of(num()),
            ],
        );
        let trail = (prop::collection::vec(point(), 0..40), num(), num());
        (ids, ends, times, how, trail).prop_map(
            |(
                (id, worker, context, proto, ip_version),
                ((client, cport), (server, sport), midstream),
                (vlans, start_ns, end_ns, c2s, s2c),
                (close_reason, conn_state, letters, flags, irregular, l),
                (points, dropped, icmp),
            )| {
                let mut history = History::default();
                for b in letters {
                    history.push(b);
                }
                Record {
                    id,
                    worker: worker as u16,
                    context: context as u16,
                    proto,
                    ip_version,
                    client: Endpoint {
                        ip: client,
                        port: cport as u16,
                    },
                    server: Endpoint {
                        ip: server,
                        port: sport as u16,
                    },
                    midstream,
                    vlans: Cow::Owned(vlans.into_iter().map(|v| v as u16).collect()),
                    start_ns,
                    end_ns,
                    c2s,
                    s2c,
                    close_reason,
                    conn_state,
                    history,
                    flags: Flags(flags as u8),
                    irregular_point: irregular.map(|i| i as u16),
                    latency: Latency {
                        syn_synack_ns: l[0],
                        synack_ack_ns: l[1],
                        ttfb_ns: l[2],
                        max_stall_ns: l[3],
                    },
                    points: Cow::Owned(points),
                    points_dropped: dropped as u32,
                    icmp_type_code: icmp as u16,
                }
            },
        )
    }

    proptest! {
        /// The hand-written encoder gives the bytes serde's MessagePack serializer gives for
        /// the same record (the format as it was defined), and the record decodes back.
        #[test]
        fn encodes_as_rmp_serde_does(rec in record()) {
            let mut buf = vec![0xee; 3];
            encode(&rec, &mut buf);
            let reference = rmp_serde::to_vec(&rec).expect("serde encodes");
            prop_assert_eq!(&buf, &reference);
            prop_assert_eq!(decode(&buf).expect("decodes"), rec);
        }

        /// Written into too little room, the writer writes only the values that fit, where
        /// they belong, and says how much it needed: `encode` then writes the record again
        /// into that much.
        #[test]
        fn short_room_counts_what_it_needs(rec in record(), room in 0usize..300) {
            let mut full = Vec::new();
            encode(&rec, &mut full);
            let mut out = vec![0xee; room];
            let needed = write(&rec, &mut out);
            prop_assert_eq!(needed, full.len());
            for (i, (o, f)) in out.iter().zip(&full).enumerate() {
                prop_assert!(o == f || *o == 0xee, "byte {} is {:#x}, not {:#x}", i, o, f);
            }
        }
    }

    #[test]
    fn truncated_or_garbage_is_an_error() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "prefix {n} decoded");
        }
        assert!(decode(b"\xc1\xc1\xc1").is_err());
    }
}
