//! IP fragment accounting: a fragmented datagram counts once, on the frame that completes it,
//! in the flow of its first fragment (as tshark's reassembly counts it).
//!
//! [`FragTable`] does not reassemble bytes. It tracks, per datagram (source, destination,
//! identification, protocol), which fragment offsets were seen, how many bytes arrived, the
//! datagram's length (known once the last fragment, the one without "more fragments", is in)
//! and the transport header of the first fragment. When every byte is in, the completing frame
//! is returned as a [`Packet`] carrying the first fragment's transport header, for the flow
//! table to count with that frame's length.
//!
//! All memory is allocated in [`FragTable::new`]; `feed` never allocates. The table holds at
//! most `capacity` datagrams: when it is full the oldest is dropped ([`FragTable::evicted_full`]),
//! and datagrams still incomplete `timeout_ns` after their first fragment are dropped when the
//! next fragment arrives ([`FragTable::expired`]).
//!
//! ```
//! use flowtable::frag::FragTable;
//! use flowtable::packet::{parse, LinkType, L4};
//!
//! // A UDP datagram (8-byte header, 16 payload bytes) in two IPv4 fragments of 16 and 8 bytes.
//! let first = [
//!     0x45, 0, 0, 36, 0, 7, 0x20, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
//!     0x13, 0x88, 0, 53, 0, 24, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
//! ];
//! let last = [
//!     0x45, 0, 0, 28, 0, 7, 0, 2, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
//!     9, 10, 11, 12, 13, 14, 15, 16,
//! ];
//! let mut frags = FragTable::new(64, 30_000_000_000);
//! let first = parse(LinkType::RawIp, &first).expect("first fragment");
//! let last = parse(LinkType::RawIp, &last).expect("last fragment");
//! assert_eq!(frags.feed(&first, 1), None);
//! let whole = frags.feed(&last, 2).expect("complete");
//! assert!(matches!(whole.l4, L4::Udp { dport: 53, payload_len: 16, .. }));
//! ```

use hashbrown::HashMap;

use crate::packet::{Ip, Packet, L4};

/// Fragment offsets remembered per datagram for duplicate detection. Datagrams cut into more
/// pieces are still counted, but their further fragments are not checked for duplicates.
const MAX_FRAGMENTS: usize = 64;

/// "No slot" in the age-ordered list.
const NIL: u32 = u32::MAX;

/// Identifies the fragments of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey {
    src: Ip,
    dst: Ip,
    id: u32,
    proto: u8,
}

/// What is known of one datagram under reassembly.
#[derive(Clone, Copy)]
struct Datagram {
    key: FragKey,
    /// Time of its first-seen fragment; it expires `timeout_ns` later.
    first_seen_ns: u64,
    /// Bytes of IP payload received in non-duplicate fragments.
    received: u32,
    /// Length of the whole datagram's IP payload, once the last fragment is in.
    total: Option<u32>,
    /// Transport header of the fragment at offset 0 (payload slice empty), and that
    /// fragment's length.
    first: Option<(L4<'static>, u32)>,
    /// Offsets (in 8-byte units) of the fragments seen.
    offsets: [u16; MAX_FRAGMENTS],
    offset_count: u8,
    /// Neighbours in the list ordered by `first_seen_ns` (insertion order).
    older: u32,
    newer: u32,
}

impl Datagram {
    const VACANT: Datagram = Datagram {
        key: FragKey {
            src: [0; 16],
            dst: [0; 16],
            id: 0,
            proto: 0,
        },
        first_seen_ns: 0,
        received: 0,
        total: None,
        first: None,
        offsets: [0; MAX_FRAGMENTS],
        offset_count: 0,
        older: NIL,
        newer: NIL,
    };

    /// Records a fragment offset; `false` when a fragment at that offset was already seen.
    fn note_offset(&mut self, offset: u32) -> bool {
        let unit = u16::try_from(offset / 8).unwrap_or(u16::MAX);
        let seen = self
            .offsets
            .get(..usize::from(self.offset_count))
            .unwrap_or(&[]);
        if seen.contains(&unit) {
            return false;
        }
        if let Some(slot) = self.offsets.get_mut(usize::from(self.offset_count)) {
            *slot = unit;
            self.offset_count += 1;
        }
        true
    }
}

/// Fixed-size table of datagrams under reassembly.
pub struct FragTable {
    /// Datagram key to its slot.
    index: HashMap<FragKey, u32>,
    slots: Vec<Datagram>,
    /// Slots not in use.
    free: Vec<u32>,
    /// Ends of the list of slots in use, oldest first.
    oldest: u32,
    newest: u32,
    timeout_ns: u64,
    expired: u64,
    evicted_full: u64,
}

impl FragTable {
    /// A table for `capacity` datagrams (at least one) in reassembly at once; an incomplete
    /// datagram is dropped `timeout_ns` after its first-seen fragment.
    pub fn new(capacity: usize, timeout_ns: u64) -> FragTable {
        // Slot numbers are u32 and NIL is reserved.
        let capacity = capacity.clamp(1, (NIL - 1) as usize);
        FragTable {
            // Twice the entries ever held, so removals can only lead to rehashing in place,
            // never to growing.
            index: HashMap::with_capacity(2 * capacity + 2),
            slots: vec![Datagram::VACANT; capacity],
            free: (0..capacity as u32).rev().collect(),
            oldest: NIL,
            newest: NIL,
            timeout_ns,
            expired: 0,
            evicted_full: 0,
        }
    }

    /// Feeds a packet whose `fragment` is `Some` (others are ignored and give `None`).
    ///
    /// Returns the packet the flow table should count for this frame when it completes a
    /// datagram: the addresses, VLANs, TTL and fragment of `pkt`, and as `l4` the first
    /// fragment's transport header with an empty payload slice and the payload length of the
    /// whole datagram (TCP: reassembled transport length minus the TCP header; UDP: from the
    /// UDP header; ICMP: after the 8-byte ICMP header, `quoted` as parsed from the first
    /// fragment). Returns `None` while the datagram is incomplete, and for a fragment at an
    /// offset already seen.
    pub fn feed(&mut self, pkt: &Packet<'_>, ts_ns: u64) -> Option<Packet<'static>> {
        let frag = pkt.fragment?;
        self.expire(ts_ns);
        let key = FragKey {
            src: pkt.src,
            dst: pkt.dst,
            id: frag.id,
            proto: frag.proto,
        };
        let idx = match self.index.get(&key) {
            Some(&idx) => idx,
            None => self.insert(key, ts_ns),
        };
        let datagram = self.slots.get_mut(idx as usize)?;
        if !datagram.note_offset(frag.offset) {
            return None;
        }
        datagram.received = datagram.received.saturating_add(frag.len);
        if !frag.more {
            datagram.total = Some(frag.offset.saturating_add(frag.len));
        }
        if frag.offset == 0 {
            datagram.first = Some((without_payload(pkt.l4), frag.len));
        }
        let total = datagram.total?;
        let (first, first_len) = datagram.first?;
        if datagram.received < total {
            return None;
        }
        self.remove(idx);
        Some(Packet {
            ip_version: pkt.ip_version,
            src: pkt.src,
            dst: pkt.dst,
            ttl: pkt.ttl,
            vlans: pkt.vlans,
            vlan_count: pkt.vlan_count,
            mpls_labels: pkt.mpls_labels,
            tunnelled: pkt.tunnelled,
            fragment: pkt.fragment,
            l4: whole_datagram(first, first_len, total),
        })
    }

    /// Datagrams dropped because they were still incomplete `timeout_ns` after their first
    /// fragment.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Datagrams dropped to make room because the table was full.
    pub fn evicted_full(&self) -> u64 {
        self.evicted_full
    }

    /// Datagrams currently in reassembly.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No datagram is in reassembly.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Drops the datagrams first seen more than `timeout_ns` before `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        while let Some(oldest) = self.slots.get(self.oldest as usize) {
            if now_ns.saturating_sub(oldest.first_seen_ns) <= self.timeout_ns {
                break;
            }
            self.remove(self.oldest);
            self.expired += 1;
        }
    }

    /// Takes a slot for a new datagram (dropping the oldest when full) and returns it.
    fn insert(&mut self, key: FragKey, ts_ns: u64) -> u32 {
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.evicted_full += 1;
                let oldest = self.oldest;
                self.remove(oldest);
                self.free.pop().unwrap_or(oldest)
            }
        };
        if let Some(newest) = self.slots.get_mut(self.newest as usize) {
            newest.newer = idx;
        } else {
            self.oldest = idx;
        }
        if let Some(slot) = self.slots.get_mut(idx as usize) {
            *slot = Datagram {
                key,
                first_seen_ns: ts_ns,
                older: self.newest,
                ..Datagram::VACANT
            };
        }
        self.newest = idx;
        self.index.insert(key, idx);
        idx
    }

    /// Frees a slot in use.
    fn remove(&mut self, idx: u32) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let (key, older, newer) = (slot.key, slot.older, slot.newer);
        *slot = Datagram::VACANT;
        match self.slots.get_mut(older as usize) {
            Some(o) => o.newer = newer,
            None => self.oldest = newer,
        }
        match self.slots.get_mut(newer as usize) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
        self.index.remove(&key);
        self.free.push(idx);
    }
}

/// A transport header kept beyond the frame it came from.
fn without_payload(l4: L4<'_>) -> L4<'static> {
    match l4 {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            wscale,
            payload_len,
            payload: _,
        } => L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            wscale,
            payload_len,
            payload: &[],
        },
        L4::Udp {
            sport,
            dport,
            payload_len,
            payload: _,
        } => L4::Udp {
            sport,
            dport,
            payload_len,
            payload: &[],
        },
        L4::Icmp {
            v6,
            icmp_type,
            code,
            echo_id,
            quoted,
            payload_len,
        } => L4::Icmp {
            v6,
            icmp_type,
            code,
            echo_id,
            quoted,
            payload_len,
        },
        L4::Fragment => L4::Fragment,
        L4::Other { proto } => L4::Other { proto },
    }
}

/// The first fragment's transport header with the payload length of the whole datagram,
/// whose IP payload is `total` bytes; the first fragment held `first_len` of them.
fn whole_datagram(first: L4<'static>, first_len: u32, total: u32) -> L4<'static> {
    match first {
        L4::Tcp {
            payload_len,
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            wscale,
            payload,
        } => {
            let header_len = first_len.saturating_sub(payload_len);
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                wscale,
                payload_len: total.saturating_sub(header_len),
                payload,
            }
        }
        L4::Icmp {
            v6,
            icmp_type,
            code,
            echo_id,
            quoted,
            payload_len: _,
        } => L4::Icmp {
            v6,
            icmp_type,
            code,
            echo_id,
            quoted,
            payload_len: total.saturating_sub(8),
        },
        // UDP: the length is the UDP header's already.
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{parse, Fragment, LinkType};

    const SECOND: u64 = 1_000_000_000;

    fn ipv4_fragment(proto: u8, id: u16, payload: &[u8], more: bool, offset: u16) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let flags_offset = (offset / 8) | if more { 0x2000 } else { 0 };
        let mut v = vec![0x45, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&flags_offset.to_be_bytes());
        v.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        v.extend_from_slice(payload);
        v
    }

    fn udp(payload_len: usize) -> Vec<u8> {
        let mut v = vec![0x13, 0x88, 0, 53];
        v.extend_from_slice(&(8 + payload_len as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.resize(8 + payload_len, 0xab);
        v
    }

    /// The frames of one IPv4 datagram cut into pieces of `piece` bytes (a multiple of 8).
    fn fragments(proto: u8, id: u16, datagram: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let pieces: Vec<&[u8]> = datagram.chunks(piece).collect();
        let n = pieces.len();
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| ipv4_fragment(proto, id, p, i + 1 < n, (i * piece) as u16))
            .collect()
    }

    fn feed(table: &mut FragTable, frame: &[u8], ts_ns: u64) -> Option<Packet<'static>> {
        let pkt = parse(LinkType::RawIp, frame).expect("fragment parses");
        assert!(pkt.fragment.is_some());
        table.feed(&pkt, ts_ns)
    }

    #[test]
    fn in_order_completes_on_last_fragment() {
        let frames = fragments(17, 1, &udp(3000), 1480);
        assert_eq!(frames.len(), 3);
        let mut table = FragTable::new(16, 30 * SECOND);
        assert_eq!(feed(&mut table, &frames[0], 1), None);
        assert_eq!(feed(&mut table, &frames[1], 2), None);
        let whole = feed(&mut table, &frames[2], 3).expect("complete");
        assert_eq!(
            whole.l4,
            L4::Udp {
                sport: 5000,
                dport: 53,
                payload_len: 3000,
                payload: &[],
            }
        );
        assert_eq!(
            whole.fragment,
            Some(Fragment {
                id: 1,
                offset: 2960,
                more: false,
                len: 48,
                proto: 17
            })
        );
        assert_eq!((whole.ttl, whole.ip_version), (64, 4));
        assert!(table.is_empty());
    }

    #[test]
    fn reverse_order_completes_on_first_fragment() {
        let frames = fragments(17, 2, &udp(3000), 1480);
        let mut table = FragTable::new(16, 30 * SECOND);
        assert_eq!(feed(&mut table, &frames[2], 1), None);
        assert_eq!(feed(&mut table, &frames[1], 2), None);
        let whole = feed(&mut table, &frames[0], 3).expect("complete");
        assert!(matches!(
            whole.l4,
            L4::Udp {
                payload_len: 3000,
                ..
            }
        ));
        assert_eq!(whole.fragment.map(|f| f.offset), Some(0));
    }

    #[test]
    fn duplicate_fragment_counts_nothing() {
        let frames = fragments(17, 3, &udp(2000), 1000);
        let mut table = FragTable::new(16, 30 * SECOND);
        assert_eq!(feed(&mut table, &frames[0], 1), None);
        assert_eq!(feed(&mut table, &frames[0], 2), None, "duplicate first");
        assert_eq!(feed(&mut table, &frames[1], 3), None);
        assert_eq!(feed(&mut table, &frames[1], 4), None, "duplicate middle");
        assert!(feed(&mut table, &frames[2], 5).is_some());
        assert!(table.is_empty());
    }

    #[test]
    fn first_fragment_never_seen_never_completes() {
        let frames = fragments(17, 4, &udp(2000), 1000);
        let mut table = FragTable::new(16, 30 * SECOND);
        assert_eq!(feed(&mut table, &frames[1], 1), None);
        assert_eq!(feed(&mut table, &frames[2], 2), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn incomplete_datagrams_time_out() {
        let frames = fragments(17, 5, &udp(2000), 1000);
        let mut table = FragTable::new(16, 30 * SECOND);
        assert_eq!(feed(&mut table, &frames[0], 0), None);
        assert_eq!(feed(&mut table, &frames[1], 10 * SECOND), None);
        // The rest arrives too late: the datagram was dropped, so it never completes.
        assert_eq!(feed(&mut table, &frames[2], 31 * SECOND), None);
        assert_eq!(table.expired(), 1);
        assert_eq!(table.len(), 1, "the late fragment starts a new datagram");

        // Within the timeout it completes.
        let frames = fragments(17, 6, &udp(2000), 1000);
        assert_eq!(feed(&mut table, &frames[0], 40 * SECOND), None);
        assert!(feed(&mut table, &frames[1], 50 * SECOND).is_none());
        assert!(feed(&mut table, &frames[2], 69 * SECOND).is_some());
    }

    #[test]
    fn full_table_drops_the_oldest() {
        let mut table = FragTable::new(2, 30 * SECOND);
        let a = fragments(17, 10, &udp(2000), 1000);
        let b = fragments(17, 11, &udp(2000), 1000);
        let c = fragments(17, 12, &udp(2000), 1000);
        assert_eq!(feed(&mut table, &a[0], 1), None);
        assert_eq!(feed(&mut table, &b[0], 2), None);
        assert_eq!(feed(&mut table, &c[0], 3), None);
        assert_eq!((table.evicted_full(), table.len()), (1, 2));
        // `a` was dropped; `b` and `c` complete.
        assert_eq!(feed(&mut table, &a[1], 4), None);
        assert_eq!(feed(&mut table, &a[2], 5), None);
        assert_eq!(table.evicted_full(), 2, "a's rest pushed b out");
        assert!(feed(&mut table, &c[1], 6).is_none());
        assert!(feed(&mut table, &c[2], 7).is_some());
        assert_eq!(table.expired(), 0);
    }

    #[test]
    fn no_allocation_growth_under_churn() {
        let mut table = FragTable::new(8, SECOND);
        let bytes = table.index.allocation_size();
        let mut completed = 0;
        for id in 0..5000u16 {
            let frames = fragments(17, id, &udp(100), 56);
            // Leave every third datagram incomplete, so the table fills up and evicts.
            let upto = if id % 3 == 0 { 1 } else { frames.len() };
            for frame in &frames[..upto] {
                completed += usize::from(feed(&mut table, frame, u64::from(id) * 1000).is_some());
            }
            assert!(table.len() <= 8);
        }
        assert_eq!(completed, 5000 - 1667);
        assert_eq!(table.index.allocation_size(), bytes);
        assert!(table.evicted_full() > 0);
    }

    #[test]
    fn tcp_payload_len_covers_the_whole_datagram() {
        // A 32-byte TCP header (with options) and 2000 payload bytes.
        let mut segment = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 2, 0x80, 0x18, 1, 0];
        segment.extend_from_slice(&[0, 0, 0, 0, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        segment.resize(32 + 2000, 0x55);
        let frames = fragments(6, 7, &segment, 1480);
        let mut table = FragTable::new(16, 30 * SECOND);
        assert_eq!(feed(&mut table, &frames[1], 1), None);
        let whole = feed(&mut table, &frames[0], 2).expect("complete");
        match whole.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                payload_len,
                payload,
                ..
            } => {
                assert_eq!((sport, dport, seq), (40000, 80, 1));
                assert_eq!(payload_len, 2000);
                assert!(payload.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn icmp_payload_len_covers_the_whole_datagram() {
        let mut echo = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        echo.resize(8 + 3000, 0);
        let frames = fragments(1, 8, &echo, 1480);
        let mut table = FragTable::new(16, 30 * SECOND);
        let mut whole = None;
        for frame in &frames {
            whole = feed(&mut table, frame, 1);
        }
        assert!(matches!(
            whole.expect("complete").l4,
            L4::Icmp {
                echo_id: Some(0x1234),
                payload_len: 3000,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_fragments() {
        let datagram = udp(100);
        let frame = |offset: usize, more: bool, part: &[u8]| -> Vec<u8> {
            let mut v = vec![0x60, 0, 0, 0];
            v.extend_from_slice(&(8 + part.len() as u16).to_be_bytes());
            v.extend_from_slice(&[44, 64]);
            v.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            v.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            v.extend_from_slice(&[17, 0]);
            v.extend_from_slice(&(offset as u16 | u16::from(more)).to_be_bytes());
            v.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
            v.extend_from_slice(part);
            v
        };
        let (head, tail) = datagram.split_at(64);
        let first = frame(0, true, head);
        let last = frame(64, false, tail);
        let mut table = FragTable::new(16, 30 * SECOND);
        let first = parse(LinkType::RawIpv6, &first).expect("first");
        let last = parse(LinkType::RawIpv6, &last).expect("last");
        assert_eq!(table.feed(&last, 1), None);
        let whole = table.feed(&first, 2).expect("complete");
        assert_eq!(whole.ip_version, 6);
        assert!(matches!(
            whole.l4,
            L4::Udp {
                sport: 5000,
                payload_len: 100,
                ..
            }
        ));
        assert_eq!(whole.fragment.map(|f| f.id), Some(0x0bad_cafe));
    }

    #[test]
    fn datagrams_are_kept_apart_by_id_and_protocol() {
        let mut segment = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x10, 1, 0];
        segment.resize(2500, 0);
        let a = fragments(17, 20, &udp(2492), 1000);
        let b = fragments(17, 21, &udp(2492), 1000);
        let c = fragments(6, 20, &segment, 1000);
        let mut table = FragTable::new(16, 30 * SECOND);
        for i in 0..2 {
            for frames in [&a, &b, &c] {
                assert_eq!(feed(&mut table, &frames[i], 1), None);
            }
        }
        assert_eq!(table.len(), 3);
        assert!(matches!(
            feed(&mut table, &c[2], 2).map(|p| p.l4),
            Some(L4::Tcp { .. })
        ));
        assert!(matches!(
            feed(&mut table, &b[2], 2).map(|p| p.l4),
            Some(L4::Udp { .. })
        ));
        assert!(matches!(
            feed(&mut table, &a[2], 2).map(|p| p.l4),
            Some(L4::Udp { .. })
        ));
    }

    #[test]
    fn unfragmented_packets_are_ignored() {
        let frame = ipv4_fragment(17, 1, &udp(10), false, 0);
        let pkt = parse(LinkType::RawIp, &frame).expect("parses");
        let mut table = FragTable::new(4, SECOND);
        assert_eq!(table.feed(&pkt, 1), None);
        assert!(table.is_empty());
    }
}
