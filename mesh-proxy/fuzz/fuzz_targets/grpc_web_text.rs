//! The gRPC-Web text (base64) request decoder: never panics, and decoding
//! what the standard encoder produced gives back the original bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::gateway::request_body::decode_text;

fuzz_target!(|data: &[u8]| {
    let _ = decode_text(data);
    let encoded = base64_encode(data);
    let decoded = decode_text(encoded.as_bytes()).expect("standard base64 decodes");
    assert_eq!(&decoded[..], data);
});

/// Standard padded base64, written out so the target checks the decoder
/// against an independent encoder.
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
