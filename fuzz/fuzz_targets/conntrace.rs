//! The conntrace JSON reader: any bytes give messages and reported problems, never a panic.
#![no_main]

use forensics::proxy_log::{read_from, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut messages = 0u64;
    let mut invalid = 0u64;
    let summary = read_from(input, "fuzz.jsonl", |event| match event {
        Event::Message(_) => messages += 1,
        Event::Invalid(e) => {
            invalid += 1;
            assert!(!e.to_string().is_empty());
        }
    });
    if let Ok(summary) = summary {
        assert_eq!(summary.messages, messages);
        assert_eq!(summary.invalid, invalid);
    }
});
