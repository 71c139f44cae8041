//! Deadlines and stream idle timeouts, through a real sidecar pair.

mod support;

use bytes::BytesMut;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn deadline_is_honoured_propagated_and_defaulted() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "timeout_ms = 400", "").await;
    // The caller's deadline travels upstream, shortened by the time already spent.
    let r = mesh.call(&[("grpc-timeout", "20S")], &[b"x"]).await;
    assert_eq!(r.status(), Some(OK));
    let sent = r
        .header("x-echo-timeout")
        .expect("grpc-timeout reached upstream");
    let d = tally_proxy::grpc::parse_timeout(&sent).unwrap();
    assert!(d <= Duration::from_secs(20) && d > Duration::ZERO, "{sent}");
    // Expiry → DEADLINE_EXCEEDED from the proxy.
    let r = mesh
        .call(
            &[("grpc-timeout", "200m"), ("x-test-delay-ms", "10000")],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(DEADLINE_EXCEEDED));
    assert_eq!(r.proxy_error().as_deref(), Some("deadline-exceeded"));
    // No header: the route default (400 ms) applies.
    let r = mesh.call(&[("x-test-delay-ms", "10000")], &[b"x"]).await;
    assert_eq!(r.status(), Some(DEADLINE_EXCEEDED));
    let r = mesh.call(&[], &[b"x"]).await;
    assert!(
        r.header("x-echo-timeout").is_some(),
        "route default travels upstream"
    );
}

#[tokio::test]
async fn deadline_ends_a_stream_midway() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    let (tx, rsp) = client.open(SVC, PATH, &[("grpc-timeout", "1S")]).await;
    let (parts, mut body) = rsp.into_parts();
    let mut buf = BytesMut::new();
    tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
    assert!(next_message(&mut body, &mut buf).await.is_some());
    // Keep the stream open past the deadline: the proxy ends it with DEADLINE_EXCEEDED trailers.
    let rest = read_response(http::Response::from_parts(parts, body)).await;
    drop(tx);
    assert_eq!(
        rest.trailer("grpc-status").as_deref(),
        Some("4"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn idle_streams_end_after_the_route_idle_timeout() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "stream_idle_timeout_ms = 500", "").await;
    let client = mesh.client().await;
    let (tx, rsp) = client.open(SVC, PATH, &[]).await;
    let (parts, mut body) = rsp.into_parts();
    let mut buf = BytesMut::new();
    tx.send(bytes::Bytes::from_static(b"hello")).await.unwrap();
    assert!(next_message(&mut body, &mut buf).await.is_some());
    // Then silence in both directions: the proxy ends the stream.
    let rest = read_response(http::Response::from_parts(parts, body)).await;
    drop(tx);
    assert_eq!(
        rest.trailer("grpc-status").as_deref(),
        Some("4"),
        "{rest:?}"
    );
    assert_eq!(
        rest.trailer("tally-proxy-error").as_deref(),
        Some("stream-idle-timeout")
    );
}
