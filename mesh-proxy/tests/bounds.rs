//! Bounds on what a peer can make a mesh listener hold, and config bounds: a connection that
//! completes its handshake but never sends the HTTP/2 preface is closed after
//! `limits.http2_preface_timeout_ms`; duplicate endpoints are refused at start.

mod support;

use std::time::Duration;
use support::*;
use tally_proxy::config::{Config, IdentityConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE_TIMEOUT_MS: u64 = 300;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn preface_timeouts(m: &str, direction: &str) -> f64 {
    metric(
        m,
        "tally_proxy_http2_preface_timeouts_total",
        &[&format!("direction=\"{direction}\"")],
    )
}

/// Reads until the peer closes; fails the test if it stays open for `PATIENCE`.
async fn closed_by_peer(io: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open");
}

#[tokio::test]
async fn mtls_connection_without_preface_is_closed() {
    init();
    let pki = Pki::new();
    let callee = pki.identity("test", "echo");
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[limits]\nhttp2_preface_timeout_ms = {PREFACE_TIMEOUT_MS}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"127.0.0.1:9\"\n",
        callee.toml()
    ))
    .await;
    let me = pki.identity("test", "client");
    let transports = tally_proxy::transport::tls::build(
        &IdentityConfig {
            bundle: me.bundle.clone(),
            cert: me.cert.clone(),
            key: me.key.clone(),
            namespace: me.namespace.clone(),
            service: me.service.clone(),
        },
        5_000,
    )
    .unwrap();
    let tcp = TcpStream::connect(proxy.inbound.unwrap()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut tls = transports
        .client
        .connect(tcp, &callee.spiffe())
        .await
        .expect("the handshake itself succeeds");
    // Handshake done; now idle without the preface.
    closed_by_peer(&mut tls).await;
    assert!(started.elapsed() >= Duration::from_millis(PREFACE_TIMEOUT_MS));
    let m = metrics(proxy.admin).await;
    assert_eq!(preface_timeouts(&m, "inbound"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "tally_proxy_tls_handshake_failures_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn partial_preface_is_closed_and_a_slow_but_complete_one_is_not() {
    init();
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\nhttp2_preface_timeout_ms = {PREFACE_TIMEOUT_MS}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"127.0.0.1:9\"]\n"
    ))
    .await;
    let addr = proxy.outbound.unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_by_peer(&mut tcp).await;
    let m = metrics(proxy.admin).await;
    assert_eq!(preface_timeouts(&m, "outbound"), 1.0, "{m}");
    // A client that connects, idles shorter than the timeout, then speaks HTTP/2 is served
    // past the timeout.
    let client = Client::connect(addr).await;
    tokio::time::sleep(Duration::from_millis(PREFACE_TIMEOUT_MS * 2)).await;
    let r = client.call("nope", PATH, &[], &[b"x"]).await;
    assert_eq!(r.proxy_error().as_deref(), Some("no-route"), "{r:?}");
    let m = metrics(proxy.admin).await;
    assert_eq!(preface_timeouts(&m, "outbound"), 1.0, "{m}");
}

#[test]
fn duplicate_endpoints_are_refused() {
    let text = "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"127.0.0.1:4143\", \"127.0.0.1:4144\", \"127.0.0.1:4143\"]\n[services.echo.retry]\nmax_attempts = 3\n";
    let cfg = Config::parse("t.toml", text).unwrap();
    let e = cfg.validate("t.toml").unwrap_err().to_string();
    assert!(e.contains("services.echo.endpoints"), "{e}");
    assert!(e.contains("127.0.0.1:4143` is listed twice"), "{e}");
}

#[test]
fn failure_matcher_is_validated() {
    let base = "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"127.0.0.1:4143\"]\n[services.echo.failure]\n";
    let ok = Config::parse("t.toml", &format!("{base}on = [\"connect-failure\", \"5xx\"]\ngrpc_statuses = [\"UNAVAILABLE\", \"INTERNAL\"]\nhttp_statuses = [500]\n")).unwrap();
    ok.validate("t.toml").unwrap();
    let bad = Config::parse(
        "t.toml",
        &format!("{base}grpc_statuses = [\"INVALID_ARGUMENT\"]\n"),
    )
    .unwrap();
    let e = bad.validate("t.toml").unwrap_err().to_string();
    assert!(e.contains("services.echo.failure.grpc_statuses"), "{e}");
    assert!(e.contains("describes the request"), "{e}");
    let defaults = Config::parse("t.toml", base).unwrap();
    let f = &defaults.services["echo"].failure;
    assert_eq!(
        f.on,
        ["connect-failure", "reset", "timeout", "gateway-error"]
    );
    assert_eq!(f.grpc_statuses, ["UNAVAILABLE"]);
}
