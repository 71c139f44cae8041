//! Breaker poisoning: answers that describe the request (a malformed message that tonic answers
//! with INTERNAL, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) must never open a circuit
//! breaker or eject an endpoint, whoever sends them; signals about the endpoint (UNAVAILABLE,
//! a dead endpoint) still must. Through a real sidecar pair with mTLS.

mod support;

use prost::Message;
use support::*;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

const OK: u16 = 0;
const UNAVAILABLE: u16 = 14;
/// Strict settings so that a handful of counted failures would open the breaker or eject.
const STRICT: &str = "[services.{svc}.breaker]\nconsecutive_failures = 3\nmin_calls = 4\nwindow = 10\nfailure_rate = 0.5\nopen_ms = 60000\n[services.{svc}.outlier]\nconsecutive_5xx = 3\n";
const ATTACK: usize = 60;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn strict(svc: &str) -> String {
    STRICT.replace("{svc}", svc)
}

fn breaker_opens(m: &str, route: &str) -> f64 {
    metric(
        m,
        "tally_proxy_breaker_opens_total",
        &[&format!("route=\"{route}\"")],
    )
}

/// A tonic app (the standard health service) behind a callee sidecar, and a caller sidecar
/// with strict breaker and outlier settings for it.
async fn tonic_mesh() -> (Proxy, Proxy, Pki) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("tally.Test", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let pki = Pki::new();
    let callee = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{app}\"\n",
        pki.identity("test", "health").toml()
    ))
    .await;
    let caller = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.health]\nendpoints = [\"{}\"]\n{}",
        pki.identity("test", "client").toml(),
        callee.inbound.unwrap(),
        strict("health")
    ))
    .await;
    (caller, callee, pki)
}

const CHECK: &str = "/grpc.health.v1.Health/Check";

fn check(service: &str) -> Vec<u8> {
    HealthCheckRequest {
        service: service.into(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn undecodable_messages_answered_internal_do_not_open_the_breaker() {
    init();
    let (caller, _callee, _pki) = tonic_mesh().await;
    let client = Client::connect(caller.outbound.unwrap()).await;
    assert_eq!(
        client
            .call("health", CHECK, &[], &[&check("tally.Test")])
            .await
            .status(),
        Some(OK)
    );
    // Field 1 with a length far past the end: tonic cannot decode it and answers INTERNAL.
    let garbage: &[u8] = &[0x0a, 0xff, 0xff, 0x01, 0x02];
    for i in 0..ATTACK {
        let r = client.call("health", CHECK, &[], &[garbage]).await;
        assert_eq!(r.status(), Some(13), "call {i}: {r:?}");
        assert_eq!(
            r.proxy_error(),
            None,
            "call {i} was answered by the app: {r:?}"
        );
        // NOT_FOUND for an unknown service: also about the request.
        let r = client.call("health", CHECK, &[], &[&check("nope")]).await;
        assert_eq!(r.status(), Some(5), "call {i}: {r:?}");
    }
    let r = client
        .call("health", CHECK, &[], &[&check("tally.Test")])
        .await;
    assert_eq!(r.status(), Some(OK), "the next good call is served: {r:?}");
    let m = metrics(caller.admin).await;
    assert_eq!(breaker_opens(&m, "health"), 0.0, "{m}");
    assert_eq!(
        metric(&m, "tally_proxy_outlier_ejections_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "tally_proxy_outlier_ejection_floor_total", &[]),
        0.0,
        "not even an attempted ejection: {m}"
    );
}

#[tokio::test]
async fn request_statuses_do_not_open_the_breaker_but_unavailable_does() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], &strict(SVC), "").await;
    let client = mesh.client().await;
    // INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN,
    // DATA_LOSS, UNAUTHENTICATED, as trailers-only answers and in trailers.
    for i in 0..ATTACK / 6 {
        for code in ["3", "5", "7", "8", "13", "2", "15", "16"] {
            for how in ["x-test-status", "x-test-status-in-trailers"] {
                let r = client.call(SVC, PATH, &[(how, code)], &[b"x"]).await;
                assert_eq!(
                    r.status().map(|s| s.to_string()).as_deref(),
                    Some(code),
                    "round {i}: {r:?}"
                );
                assert_eq!(r.proxy_error(), None, "round {i}, {how} {code}: {r:?}");
            }
        }
    }
    let r = client.call(SVC, PATH, &[], &[b"x"]).await;
    assert_eq!(r.status(), Some(OK), "the next good call is served: {r:?}");
    let m = metrics(mesh.caller.admin).await;
    assert_eq!(breaker_opens(&m, SVC), 0.0, "{m}");
    let served = up.calls();

    // UNAVAILABLE from the app is about the endpoint: three of them open the breaker.
    for _ in 0..3 {
        let r = client
            .call(SVC, PATH, &[("x-test-status", "14")], &[b"x"])
            .await;
        assert_eq!(r.status(), Some(UNAVAILABLE));
        assert_eq!(r.proxy_error(), None);
    }
    let r = client.call(SVC, PATH, &[], &[b"x"]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("breaker-open"), "{r:?}");
    assert_eq!(up.calls(), served + 3, "the open breaker fails fast");
    let m = metrics(mesh.caller.admin).await;
    assert_eq!(breaker_opens(&m, SVC), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "tally_proxy_endpoint_failures_total",
            &["kind=\"grpc-UNAVAILABLE\""]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "tally_proxy_endpoint_failures_total", &[]),
        3.0,
        "nothing else counted: {m}"
    );
}

#[tokio::test]
async fn a_dead_endpoint_still_opens_the_breaker() {
    init();
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], &strict(SVC), "").await;
    let client = mesh.client().await;
    assert_eq!(
        client.call(SVC, PATH, &[], &[b"x"]).await.status(),
        Some(OK)
    );
    // The callee sidecar dies: its port refuses connections.
    drop(mesh.callees.pop());
    let mut reasons = Vec::new();
    for _ in 0..10 {
        let r = client.call(SVC, PATH, &[], &[b"x"]).await;
        assert_eq!(r.status(), Some(UNAVAILABLE), "{r:?}");
        reasons.push(r.proxy_error().unwrap_or_default());
        if reasons.last().is_some_and(|r| r == "breaker-open") {
            break;
        }
    }
    assert_eq!(
        reasons.last().map(String::as_str),
        Some("breaker-open"),
        "{reasons:?}"
    );
    let m = metrics(mesh.caller.admin).await;
    assert!(breaker_opens(&m, SVC) >= 1.0, "{m}");
    // At most the first failure can be the pooled connection breaking; then connects fail.
    assert!(
        metric(
            &m,
            "tally_proxy_endpoint_failures_total",
            &["kind=\"connect-failure\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "tally_proxy_endpoint_failures_total", &[]) >= 3.0,
        "{m}"
    );
}
