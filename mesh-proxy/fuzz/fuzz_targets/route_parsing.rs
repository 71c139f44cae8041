//! Path and authority parsing on the routing path: `:path` split into gRPC
//! service and method, `:authority` into its host. Never panics; a split path
//! gives back pieces of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::grpc::split_path;
use tally_proxy::route::host_of;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((service, method)) = split_path(text) {
        assert!(text.contains(service) && text.contains(method));
    }
    if let Some(host) = host_of(text) {
        assert!(text.contains(host));
    }
});
