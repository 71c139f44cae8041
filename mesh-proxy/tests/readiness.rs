//! Readiness that reflects upstreams, against a real `tally-proxy` process:
//! `/ready` answers once the proxy listens, `/ready/upstreams` only while
//! the local service it fronts accepts connections.

mod support;

use support::*;

#[tokio::test]
async fn ready_upstreams_follows_the_local_app() {
    // The "local app": a listener this test holds open, then closes.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind app");
    let app_addr = app.local_addr().expect("app addr");
    let pki = Pki::new();
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{app_addr}\"\n",
        pki.identity("test", "app").toml()
    ))
    .await;

    let (status, body) = admin(proxy.admin, "GET", "/ready/upstreams", "").await;
    assert_eq!(status, 200, "app listening: {body}");

    drop(app);
    let (status, body) = admin(proxy.admin, "GET", "/ready/upstreams", "").await;
    assert_eq!(status, 503, "app gone: {body}");
    assert!(body.contains("local_app"), "{body}");
    let (status, _) = admin(proxy.admin, "GET", "/ready", "").await;
    assert_eq!(status, 200, "/ready still means listening");
}
