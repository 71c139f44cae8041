//! A real gRPC implementation on both ends: a tonic client calls a tonic server (the standard
//! health service, unary `Check` and server-streaming `Watch`) through a sidecar pair with mTLS.

mod support;

use support::*;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn tonic_client_and_server_through_the_mesh() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("tally.Test", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The "upstream" of the mesh fixture is unused here: point the callee at the tonic app.
    let pki = Pki::new();
    let callee_id = pki.identity("test", "health");
    let client_id = pki.identity("test", "client");
    let callee = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{app_addr}\"\n",
        callee_id.toml()
    ))
    .await;
    let caller = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.health]\nendpoints = [\"{}\"]\n",
        client_id.toml(),
        callee.inbound.unwrap()
    ))
    .await;

    // The app dials its sidecar but names the target service as the origin (`:authority`).
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", caller.outbound.unwrap()))
            .unwrap()
            .origin("http://health".parse().unwrap())
            .connect()
            .await
            .unwrap();
    let mut client = HealthClient::new(channel);

    let rsp = client
        .check(HealthCheckRequest {
            service: "tally.Test".into(),
        })
        .await
        .unwrap();
    assert_eq!(rsp.into_inner().status, WireStatus::Serving as i32);

    // An application error status passes through with its code and message.
    let err = client
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.metadata().get("tally-proxy-error").is_none());

    // Server streaming: updates arrive as the server sends them.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "tally.Test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, WireStatus::Serving as i32);
    reporter
        .set_service_status("tally.Test", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status, WireStatus::NotServing as i32);

    // A proxy-made error reaches tonic as a proper status.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", caller.outbound.unwrap()))
            .unwrap()
            .origin("http://unknown-service".parse().unwrap())
            .connect()
            .await
            .unwrap();
    let err = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        err.metadata()
            .get("tally-proxy-error")
            .and_then(|v| v.to_str().ok()),
        Some("no-route")
    );
}
