//! A restarting app costs latency, not errors: while the local app refuses connections, the
//! inbound sidecar holds a call and reconnects until the app listens again (the call never
//! reached the app, so sending it later is always safe). Through a real sidecar pair with mTLS.

mod support;

use prost::Message;
use std::time::Duration;
use support::*;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

const OK: u16 = 0;
const CHECK: &str = "/grpc.health.v1.Health/Check";
/// How long the app is down: far longer than the few quick reconnects a call got before.
const APP_DOWN: Duration = Duration::from_secs(1);

/// Serves the standard health service on `addr` (the app coming back after its restart).
async fn start_app(addr: std::net::SocketAddr) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("tally.Test", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind app");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
}

#[tokio::test]
async fn a_call_to_an_app_that_is_restarting_is_held_until_it_listens() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app: std::net::SocketAddr = format!("127.0.0.1:{}", tally_testkit::free_port())
        .parse()
        .expect("addr");
    let pki = Pki::new();
    let callee = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{app}\"\n",
        pki.identity("test", "health").toml()
    ))
    .await;
    let caller = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.health]\nendpoints = [\"{}\"]\n",
        pki.identity("test", "client").toml(),
        callee.inbound.expect("inbound")
    ))
    .await;
    let client = Client::connect(caller.outbound.expect("outbound")).await;
    let request = HealthCheckRequest {
        service: "tally.Test".into(),
    }
    .encode_to_vec();

    // The app is down when the call starts, and comes back while it is in flight.
    let call = tokio::spawn(async move {
        client
            .call("health", CHECK, &[("grpc-timeout", "10S")], &[&request])
            .await
    });
    tokio::time::sleep(APP_DOWN).await;
    assert!(
        !call.is_finished(),
        "the call was not held: {:?}",
        call.await
    );
    start_app(app).await;
    let r = call.await.expect("call task");
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(r.proxy_error(), None, "{r:?}");
}
