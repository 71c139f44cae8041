//! A bulkhead counts calls, not response headers: a server-streaming call holds its permit
//! for as long as its stream is open, and gives it back when the stream ends or the client
//! cancels it. Through a real gateway and the polling sidecar (bulkhead of one on its
//! inbound), with a server stream the test holds open between its two messages.

mod gateway_fixture;
mod support;

use bytes::BytesMut;
use gateway_fixture::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;
use support::{CallResult, PATIENCE};

const GATED: &str = "/tally.poll.v1.PollService/Gated";
const AUTHORITY: &str = GATEWAY_HOST;

/// Opens a Gated server stream (request `key`) and returns its body once the first message
/// arrived: the call is in flight at the sidecar from then on.
async fn open_stream(c: &support::Client, auth: &str, key: &str) -> Incoming {
    // Server streaming: one request message, then the request ends.
    let rsp = c
        .start_stream(
            AUTHORITY,
            GATED,
            &[("authorization", auth)],
            &[key.as_bytes()],
        )
        .await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers().get("grpc-status"),
        None,
        "the stream was admitted: {rsp:?}"
    );
    let mut body = rsp.into_body();
    let mut buf = BytesMut::new();
    let first = tokio::time::timeout(PATIENCE, async {
        loop {
            let f = body.frame().await.expect("the stream is open").unwrap();
            if let Ok(d) = f.into_data() {
                buf.extend_from_slice(&d);
                if let Some(m) = support::deframe(&mut buf).into_iter().next() {
                    return m;
                }
            }
        }
    })
    .await
    .expect("first message in time");
    assert_eq!(&first[..], b"first");
    body
}

async fn unary(c: &support::Client, auth: &str) -> CallResult {
    c.call(AUTHORITY, ECHO, &[("authorization", auth)], &[b"x"])
        .await
}

/// Calls until one is served (the permit comes back as the stream's end reaches the sidecar);
/// every refusal meanwhile must be the bulkhead's.
async fn served_once_released(c: &support::Client, auth: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = unary(c, auth).await;
        if r.status() == Some(0) {
            return;
        }
        assert_eq!(r.proxy_error().as_deref(), Some("bulkhead-full"), "{r:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_holds_its_bulkhead_permit_until_it_ends_or_is_cancelled() {
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            polling_inbound: "[inbound.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n",
            ..Extra::default()
        },
    )
    .await;
    let auth = f.bearer("alice");
    let c = support::Client::connect(f.gateway.addr).await;
    // Nothing in flight: a unary call passes.
    assert_eq!(unary(&c, &auth).await.status(), Some(0));

    // 1. A stream past its response headers and first message still holds the one permit.
    let mut body = open_stream(&c, &auth, "bulkhead-end").await;
    for _ in 0..3 {
        let r = unary(&c, &auth).await;
        assert_eq!(
            r.status(),
            Some(8),
            "refused while the stream is open: {r:?}"
        );
        assert_eq!(r.proxy_error().as_deref(), Some("bulkhead-full"));
    }
    // The stream ends normally: its permit comes back.
    gate("bulkhead-end").notify_one();
    let rest = tokio::time::timeout(PATIENCE, async {
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            if let Ok(t) = f.unwrap().into_trailers() {
                trailers = Some(t);
            }
        }
        trailers
    })
    .await
    .expect("the stream ends in time")
    .expect("trailers");
    assert_eq!(rest["grpc-status"], "0");
    served_once_released(&c, &auth).await;

    // 2. A stream the client cancels (drops mid-stream) gives its permit back too.
    let body = open_stream(&c, &auth, "bulkhead-cancel").await;
    let r = unary(&c, &auth).await;
    assert_eq!(r.proxy_error().as_deref(), Some("bulkhead-full"), "{r:?}");
    drop(body); // RST_STREAM(CANCEL) from the client
    served_once_released(&c, &auth).await;
    gate("bulkhead-cancel").notify_one();

    let polling_sidecar = &f._sidecars[0];
    let m = support::metrics(polling_sidecar.admin).await;
    assert!(
        support::metric(&m, "tally_proxy_bulkhead_rejections_total", &[]) >= 4.0,
        "{m}"
    );
}
