//! `grpc-timeout` parsing: never panics, and whatever it accepts round-trips
//! through the encoder to a value no longer than the one parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::grpc::{encode_timeout, parse_timeout};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(d) = parse_timeout(text) {
        let encoded = encode_timeout(d);
        let again = parse_timeout(&encoded).expect("the encoder's output parses");
        assert!(again <= d, "{text:?} -> {d:?} -> {encoded} -> {again:?}");
    }
});
