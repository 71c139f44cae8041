//! Proxy errors that reach the public edge: through a real gateway process and a real
//! sidecar, a browser-facing caller sees the status, the `tally-proxy-error` reason and the
//! request id, never a SPIFFE identity or an endpoint address.

mod support;

use std::net::SocketAddr;
use support::*;
use tokio::net::TcpListener;

/// A gateway with a public route `test` → service `echo` at `endpoint`.
async fn gateway(pki: &Pki, endpoint: SocketAddr) -> Proxy {
    let id = pki.identity("tally", "gateway");
    let cfg = format!(
        r#"[admin]
listen = "127.0.0.1:0"
{}
[gateway]
listen = "127.0.0.1:0"

[[gateway.routes]]
prefix = "test"
service = "echo"
access = "public"

[services.echo]
endpoints = ["{endpoint}"]
"#,
        id.toml()
    );
    Proxy::start(&cfg).await
}

async fn call(gw: &Proxy, headers: &[(&str, &str)]) -> CallResult {
    Client::connect(gw.gateway.expect("gateway address announced"))
        .await
        .call("gateway.test", PATH, headers, &[b"x"])
        .await
}

#[tokio::test]
async fn a_denied_call_names_no_identity_at_the_edge() {
    init();
    let pki = Pki::new();
    let callee = pki.identity("tally", "echo");
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"127.0.0.1:9\"\n[[inbound.authz]]\nservice = \"test.Echo\"\nallow = [\"spiffe://tally.local/ns/tally/sa/someone-else\"]\n",
        callee.toml()
    );
    let sidecar = Proxy::start(&cfg).await;
    let gw = gateway(&pki, sidecar.inbound.unwrap()).await;
    let r = call(&gw, &[("x-request-id", "req-7")]).await;
    assert_eq!(r.status(), Some(PERMISSION_DENIED), "{r:?}");
    assert_eq!(r.proxy_error().as_deref(), Some("unauthorized"));
    let message = r.header("grpc-message").unwrap_or_default();
    assert!(!message.contains("spiffe"), "{message}");
    // The gateway issued its own request id (the caller is not a trusted proxy), and the
    // message names that one, the id its logs carry.
    let id = r
        .header("x-request-id")
        .expect("the gateway returns its request id");
    assert_ne!(id, "req-7");
    assert_eq!(message, format!("call not allowed (request id {id})"));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_not_named_at_the_edge() {
    init();
    let pki = Pki::new();
    // Accepts connections and drops them: every TLS handshake fails.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    let refuser = tokio::spawn(async move {
        loop {
            let _ = dead.accept().await;
        }
    });
    let gw = gateway(&pki, addr).await;
    let r = call(&gw, &[]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE), "{r:?}");
    assert_eq!(r.proxy_error().as_deref(), Some("connect-failed"));
    let message = r.header("grpc-message").unwrap_or_default();
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!(
        message.starts_with("service unreachable (request id "),
        "{message}"
    );
    refuser.abort();
}
