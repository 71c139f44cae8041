//! Property tests: header parsing never panics and stays within bounds, and random HTTP/2
//! frames thrown at a running proxy never take it down.

mod support;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use std::time::Duration;
use tally_proxy::faults::{
    H_ABORT_GRPC, H_ABORT_HTTP, H_ABORT_PCT, H_DELAY, H_DELAY_PCT, header_faults,
};
use tally_proxy::grpc::{self, Code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            m.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
        }
    }
    m
}

proptest! {
    #[test]
    fn grpc_timeout_parser_never_panics(s in "\\PC{0,12}") {
        let _ = grpc::parse_timeout(&s);
    }

    #[test]
    fn valid_grpc_timeouts_parse_and_round_trip(n in 0u64..100_000_000, unit in "[HMSmun]") {
        let d = grpc::parse_timeout(&format!("{n}{unit}")).expect("valid");
        let again = grpc::parse_timeout(&grpc::encode_timeout(d)).expect("encoded is valid");
        prop_assert!(again <= d);
        // Re-encoding loses at most one unit of the coarsest scale that fits 8 digits.
        prop_assert!(d - again < Duration::from_secs(3600));
    }

    #[test]
    fn fault_headers_stay_in_bounds(
        abort in "[ -~]{0,8}", http in "[ -~]{0,5}", apct in "[ -~]{0,8}",
        delay in "[ -~]{0,10}", dpct in "[ -~]{0,8}", cap in -50.0f64..200.0,
    ) {
        let h = headers(&[
            (H_ABORT_GRPC, abort), (H_ABORT_HTTP, http), (H_ABORT_PCT, apct),
            (H_DELAY, delay), (H_DELAY_PCT, dpct),
        ]);
        let f = header_faults(&h, cap);
        let cap = cap.clamp(0.0, 100.0);
        prop_assert!(f.abort_percent >= 0.0 && f.abort_percent <= cap);
        prop_assert!(f.delay_percent >= 0.0 && f.delay_percent <= cap);
        prop_assert!(f.abort != Some(Code::Ok));
        if f.abort.is_none() { prop_assert_eq!(f.abort_percent, 0.0); }
    }

    #[test]
    fn status_and_path_parsing_never_panic(v in "[ -~]{0,12}", p in "\\PC{0,40}") {
        let h = headers(&[("grpc-status", v)]);
        if let Some(c) = grpc::status_of(&h) {
            prop_assert!(c.as_u16() <= 16);
        }
        if let Some((s, m)) = grpc::split_path(&p) {
            prop_assert!(!s.is_empty() && !m.is_empty() && !m.contains('/'));
        }
        let _ = tally_proxy::route::host_of(&p);
        let _ = grpc::encode_message(&p);
    }
}

/// One HTTP/2 frame with arbitrary type, flags, stream id and payload.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..12,
        any::<u8>(),
        0u32..8,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(ty, flags, stream, payload)| {
            let len = payload.len() as u32;
            let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(&payload);
            f
        })
}

#[test]
fn random_http2_frames_never_take_the_proxy_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut proxy = rt.block_on(support::Proxy::start(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"127.0.0.1:9\"]\n",
    ));
    let outbound = proxy.outbound.unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &proptest::collection::vec(frame_strategy(), 1..12),
            |frames| {
                rt.block_on(async {
                    let mut s = tokio::net::TcpStream::connect(outbound).await.unwrap();
                    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                    for f in &frames {
                        bytes.extend_from_slice(f);
                    }
                    let _ = s.write_all(&bytes).await;
                    // Read whatever the proxy answers (SETTINGS, GOAWAY, ...) until it closes or goes quiet.
                    let mut buf = [0u8; 4096];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                    }
                });
                Ok(())
            },
        )
        .unwrap();
    assert!(proxy.is_running(), "proxy died");
    // Still serving: a well-formed call gets a proper gRPC answer (the endpoint is down).
    let r = rt.block_on(async {
        let c = support::Client::connect(outbound).await;
        c.call("echo", "/test.Echo/Call", &[], &[b"x"]).await
    });
    assert_eq!(r.status(), Some(14));
    assert_eq!(r.proxy_error().as_deref(), Some("connect-failed"));
}
