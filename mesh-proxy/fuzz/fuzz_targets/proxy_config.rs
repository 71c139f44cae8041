//! The proxy's TOML config: parsing and validation never panic, whatever the
//! file holds; a bad file is an error that names it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse("fuzz.toml", text) {
        let _ = cfg.validate("fuzz.toml");
    }
});
