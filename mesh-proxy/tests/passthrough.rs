//! Calls through a real sidecar pair (caller's outbound → mTLS → callee's inbound → upstream)
//! arrive as they were sent: metadata, trailers, identity, large and streaming messages,
//! and the upstream's own errors.

mod support;

use bytes::BytesMut;
use support::*;

#[tokio::test]
async fn unary_passes_through_with_metadata_trailers_and_identity() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let r = mesh.call(&[("x-meta", "hello-meta")], &[b"ping"]).await;
    assert_eq!(r.error, None);
    assert_eq!(r.http_status, 200);
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(r.messages, vec![bytes::Bytes::from_static(b"ping")]);
    assert_eq!(r.header("x-echo-meta").as_deref(), Some("hello-meta"));
    assert_eq!(r.trailer("x-trailer-echo").as_deref(), Some("hello-meta"));
    assert_eq!(r.header("x-upstream").as_deref(), Some("a"));
    // The callee's sidecar tells its app who called, from the verified client certificate.
    assert_eq!(r.header("x-echo-peer"), Some(mesh.client_id.clone()));
    assert_eq!(r.proxy_error(), None);
}

#[tokio::test]
async fn caller_cannot_forge_its_identity_header() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let forged = "spiffe://tally.local/ns/test/sa/admin";
    let r = mesh
        .call(&[("x-tally-peer-spiffe-id", forged)], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK));
    assert_eq!(r.header("x-echo-peer"), Some(mesh.client_id.clone()));
}

#[tokio::test]
async fn large_messages_and_client_streaming_pass_through() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = mesh.call(&[], &[b"one", &big, b"three"]).await;
    assert_eq!(r.status(), Some(OK), "{:?}", r.error);
    assert_eq!(r.messages.len(), 3);
    assert_eq!(&r.messages[1][..], &big[..]);
    assert_eq!(&r.messages[2][..], b"three");
}

#[tokio::test]
async fn server_streaming_passes_through() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let r = mesh.call(&[("x-test-repeat", "50")], &[b"tick"]).await;
    assert_eq!(r.status(), Some(OK));
    assert_eq!(r.messages.len(), 50);
}

async fn bidi_roundtrips(mesh: &Mesh) {
    let client = mesh.client().await;
    let (tx, rsp) = client.open(SVC, PATH, &[]).await;
    let (parts, mut body) = rsp.into_parts();
    assert_eq!(parts.status, 200);
    let mut buf = BytesMut::new();
    // Each reply arrives before the next request is sent: nothing is buffered end to end.
    for i in 0..5 {
        let msg = format!("msg-{i}");
        tx.send(bytes::Bytes::from(msg.clone())).await.unwrap();
        let got = next_message(&mut body, &mut buf).await.expect("echo");
        assert_eq!(got, msg.as_bytes());
    }
    drop(tx);
    let rest = read_response(http::Response::from_parts(parts, body)).await;
    assert_eq!(rest.status(), Some(OK));
}

#[tokio::test]
async fn bidi_streaming_is_interactive() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    bidi_roundtrips(&mesh).await;
}

#[tokio::test]
async fn bidi_streaming_stays_interactive_on_a_retrying_route() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], RETRY, "").await;
    bidi_roundtrips(&mesh).await;
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let r = mesh.call(&[("x-test-status", "5")], &[b"x"]).await;
    assert_eq!(r.status(), Some(NOT_FOUND));
    assert_eq!(
        r.header("grpc-message").as_deref(),
        Some("from test upstream")
    );
    assert_eq!(r.proxy_error(), None);
    let r = mesh
        .call(&[("x-test-status-in-trailers", "9")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(9));
}
