//! The packet parser and the flow table behind it: a sequence of frames, each parsed and
//! (when it parses) processed by a small table whose records are encoded and decoded again.
//!
//! Input: one byte choosing the link type, then frames as `[len: u8][len bytes]`.
#![no_main]

use flowtable::config::Config;
use flowtable::packet::{parse, LinkType};
use flowtable::table::{FlowTable, RecordMode};
use libfuzzer_sys::fuzz_target;

const LINKS: [LinkType; 8] = [
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::RawIp,
    LinkType::RawIpv4,
    LinkType::RawIpv6,
    LinkType::Null,
    LinkType::Loop,
];

fuzz_target!(|input: &[u8]| {
    let Some((&link, mut rest)) = input.split_first() else {
        return;
    };
    let link = LINKS[usize::from(link) % LINKS.len()];
    let mut cfg = Config::default();
    cfg.table.capacity = 8;
    cfg.table.points_per_flow = 4;
    cfg.table.fragments = 4;
    let mut table = FlowTable::new(&cfg, 1);
    table.set_mode(RecordMode::All);
    let mut buf = Vec::new();
    let mut emit = |rec: &flowtable::record::Record<'_>| {
        flowtable::record::codec::encode(rec, &mut buf);
        let back = flowtable::record::codec::decode(&buf).expect("an encoded record decodes");
        assert_eq!(&back, rec);
    };
    let mut ts_ns = 1_000_000_000u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        ts_ns += 1_000_000 * (len % 7 * len % 5) as u64;
        if let Ok(pkt) = parse(link, frame) {
            table.process(&pkt, ts_ns, frame.len() as u32, &mut emit);
        } else {
            table.tick(ts_ns, &mut emit);
        }
    }
    table.shutdown(&mut emit);
});
