//! Which worker a replayed frame goes to: both directions of a connection, and every
//! fragment of a datagram, meet on one worker.

use flowtable::key::{FlowKey, KeyKind};
use flowtable::packet::{parse, LinkType, L4};

/// Decides which worker a frame goes to: a symmetric hash of its flow key, so both
/// directions of a connection meet on one worker. Fragments of one datagram follow its first
/// fragment (remembered in a small direct-mapped table), so they meet too.
pub struct Spreader {
    workers: u64,
    /// (tag, worker) of recent first fragments, indexed by tag.
    first_fragments: Box<[(u64, u32)]>,
}

impl Spreader {
    const FRAGMENT_SLOTS: usize = 4096;

    pub fn new(workers: usize) -> Spreader {
        Spreader {
            workers: workers as u64,
            first_fragments: vec![(0, 0); Spreader::FRAGMENT_SLOTS].into_boxed_slice(),
        }
    }

    /// The worker for `frame`, a frame of link type `link` (inlined: with one worker it is
    /// a compare on the reader's path).
    #[inline]
    pub fn worker_for(&mut self, link: LinkType, frame: &[u8]) -> usize {
        if self.workers == 1 {
            return 0;
        }
        // Most frames: the key from the raw bytes, without the full parse (a plain TCP
        // segment is never a fragment, an ICMP error or a tunnel).
        if let Some((key, _)) = FlowKey::of_plain_tcp_frame(link, frame) {
            return (key.spread_hash() % self.workers) as usize;
        }
        let Ok(pkt) = parse(link, frame) else {
            // Malformed frames are counted by worker 0.
            return 0;
        };
        let (pair, _) = FlowKey::from_endpoints(0, pkt.src, 0, pkt.dst, 0, KeyKind::Ports);
        let by_pair = (pair.spread_hash() % self.workers) as usize;
        let key = match pkt.l4 {
            L4::Icmp {
                quoted: Some(q), ..
            } => Some(
                FlowKey::from_endpoints(q.proto, q.src, q.sport, q.dst, q.dport, KeyKind::Ports).0,
            ),
            _ => FlowKey::of(&pkt).map(|(k, _)| k),
        };
        let by_key = key.map(|k| (k.spread_hash() % self.workers) as usize);
        let Some(frag) = pkt.fragment else {
            return by_key.unwrap_or(by_pair);
        };
        let tag = pair.spread_hash()
            ^ (u64::from(frag.id) << 8 | u64::from(frag.proto)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = (tag % Spreader::FRAGMENT_SLOTS as u64) as usize;
        match by_key {
            Some(w) if frag.offset == 0 => {
                self.first_fragments[slot] = (tag, w as u32);
                w
            }
            _ => match self.first_fragments[slot] {
                (t, w) if t == tag => w as usize,
                _ => by_pair,
            },
        }
    }
}
