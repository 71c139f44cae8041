//! A response stream that breaks midway, anywhere behind a sidecar, reaches the caller as gRPC
//! trailers with a status and a `tally-proxy-error` reason, never as a stream reset (as
//! linkerd2-proxy does), through a real sidecar pair.

mod support;

use bytes::BytesMut;
use support::*;

#[tokio::test]
async fn upstream_app_failing_midway_ends_the_stream_with_trailers() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    let (tx, rsp) = client.open(SVC, PATH, &[("x-test-fail-on", "fail")]).await;
    let (parts, mut body) = rsp.into_parts();
    assert_eq!(parts.status, 200);
    // Headers and a message made it through both sidecars before the failure.
    let mut buf = BytesMut::new();
    tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
    let got = next_message(&mut body, &mut buf).await.expect("echo");
    assert_eq!(&got[..], b"first");
    // The app now resets its response stream.
    tx.send(bytes::Bytes::from_static(b"fail")).await.unwrap();
    let rest = read_response(http::Response::from_parts(parts, body)).await;
    // The stream ended normally, with trailers saying what happened.
    assert_eq!(rest.error, None, "{rest:?}");
    assert_eq!(rest.trailer("grpc-status"), Some(UNAVAILABLE.to_string()));
    assert_eq!(
        rest.trailer("tally-proxy-error").as_deref(),
        Some("local-app-unavailable")
    );
    assert!(rest.trailer("grpc-message").is_some(), "{rest:?}");
    assert_eq!(up.calls(), 1);
    drop(tx);
}

#[tokio::test]
async fn callee_sidecar_dying_midway_ends_the_stream_with_trailers() {
    init();
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    let (tx, rsp) = client.open(SVC, PATH, &[]).await;
    let (parts, mut body) = rsp.into_parts();
    assert_eq!(parts.status, 200);
    let mut buf = BytesMut::new();
    tx.send(bytes::Bytes::from_static(b"first")).await.unwrap();
    let got = next_message(&mut body, &mut buf).await.expect("echo");
    assert_eq!(&got[..], b"first");
    // The callee's sidecar process dies with the stream open: its connection drops.
    mesh.callees.clear();
    let rest = read_response(http::Response::from_parts(parts, body)).await;
    assert_eq!(rest.error, None, "{rest:?}");
    assert_eq!(rest.status(), Some(UNAVAILABLE), "{rest:?}");
    assert_eq!(rest.proxy_error().as_deref(), Some("upstream-failed"));
    drop(tx);
}
