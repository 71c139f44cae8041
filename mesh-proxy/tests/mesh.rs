//! Behaviour of a real sidecar pair (caller's outbound → mTLS → callee's inbound → upstream),
//! one test per behaviour, over real processes and sockets.

mod support;

use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;

const OK: u16 = 0;
const DEADLINE_EXCEEDED: u16 = 4;
const NOT_FOUND: u16 = 5;
const PERMISSION_DENIED: u16 = 7;
const RESOURCE_EXHAUSTED: u16 = 8;
const UNAVAILABLE: u16 = 14;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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

#[tokio::test]
async fn unknown_service_gets_unavailable_no_route() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let r = mesh.client().await.call("nosuch", PATH, &[], &[b"x"]).await;
    assert_eq!(r.http_status, 200);
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("no-route"));
    // `echo:80` and `echo.ns.svc` route to `echo`.
    let r = mesh
        .client()
        .await
        .call("echo:80", PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK));
}

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

const RETRY: &str = r#"
[services.echo.retry]
max_attempts = 3
idempotent_methods = ["Call"]
backoff_base_ms = 5
backoff_max_ms = 20
"#;

#[tokio::test]
async fn retries_idempotent_unavailable_from_headers_and_trailers() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], RETRY, "").await;
    let r = mesh
        .call(&[("x-test-key", "k1"), ("x-test-fail-times", "2")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(up.calls(), 3);
    // Status in real trailers (not trailers-only) is retried too.
    let r = mesh
        .call(
            &[
                ("x-test-key", "k2"),
                ("x-test-fail-times", "1"),
                ("x-test-fail-in-trailers", "1"),
            ],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(up.calls(), 5);
    // Never more than max_attempts.
    let r = mesh
        .call(
            &[("x-test-key", "k3"), ("x-test-fail-times", "10")],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(up.calls(), 8);
    let m = metrics(mesh.caller.admin).await;
    assert_eq!(
        metric(&m, "tally_proxy_retries_total", &["route=\"echo\""]),
        5.0,
        "{m}"
    );
}

#[tokio::test]
async fn non_idempotent_and_non_retryable_calls_are_not_retried() {
    init();
    let up = Upstream::start("a").await;
    let no_breaker = format!(
        "{RETRY}\n[services.echo.breaker]\nconsecutive_failures = 1000\nmin_calls = 100000\n"
    );
    let mesh = Mesh::start(&[&up], &no_breaker, "").await;
    let r = mesh
        .client()
        .await
        .call(
            SVC,
            "/test.Echo/Write",
            &[("x-test-key", "w"), ("x-test-fail-times", "1")],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(up.calls(), 1);
    let r = mesh.call(&[("x-test-status", "13")], &[b"x"]).await;
    assert_eq!(r.status(), Some(13));
    assert_eq!(up.calls(), 2);
    // A server pushback of -1 means "do not retry".
    let r = mesh
        .call(
            &[("x-test-status", "14"), ("x-test-pushback-ms", "-1")],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(up.calls(), 3);
    // A pushback value is honoured as the delay, then retried.
    let r = mesh
        .call(
            &[("x-test-status", "14"), ("x-test-pushback-ms", "10")],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(up.calls(), 6);
}

#[tokio::test]
async fn retry_budget_stops_amplification() {
    init();
    let up = Upstream::start("a").await;
    let cfg = r#"
[services.echo.retry]
max_attempts = 5
idempotent_methods = ["*"]
backoff_base_ms = 1
backoff_max_ms = 2
budget_ratio = 0.2
budget_min_per_second = 0
[services.echo.breaker]
consecutive_failures = 100000
min_calls = 100000
"#;
    let mesh = Mesh::start(&[&up], cfg, "").await;
    let client = mesh.client().await;
    let n = 40;
    for _ in 0..n {
        let r = client
            .call(SVC, PATH, &[("x-test-status", "14")], &[b"x"])
            .await;
        assert_eq!(r.status(), Some(UNAVAILABLE));
    }
    // Without a budget this would be 5 × 40 = 200 upstream calls.
    let calls = up.calls();
    assert!(
        calls >= n && calls <= n + n / 5 + 1,
        "upstream saw {calls} calls"
    );
    let m = metrics(mesh.caller.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_retry_budget_exhausted_total",
            &["route=\"echo\""]
        ) > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_probes_and_closes() {
    init();
    let up = Upstream::start("a").await;
    let cfg = r#"
[services.echo.breaker]
consecutive_failures = 3
open_ms = 1000
"#;
    let mesh = Mesh::start(&[&up], cfg, "").await;
    let client = mesh.client().await;
    up.fail_all.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let r = client.call(SVC, PATH, &[], &[b"x"]).await;
        assert_eq!(r.status(), Some(UNAVAILABLE));
        assert_eq!(r.proxy_error(), None, "failure came from upstream");
    }
    let r = client.call(SVC, PATH, &[], &[b"x"]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("breaker-open"));
    assert_eq!(
        up.calls(),
        3,
        "open breaker fails fast without calling upstream"
    );
    let m = metrics(mesh.caller.admin).await;
    assert_eq!(
        metric(&m, "tally_proxy_breaker_state", &["route=\"echo\""]),
        1.0,
        "{m}"
    );
    assert!(metric(&m, "tally_proxy_breaker_opens_total", &["route=\"echo\""]) >= 1.0);
    // Upstream recovers; after open_ms one probe goes through and closes the breaker.
    up.fail_all.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = client.call(SVC, PATH, &[], &[b"x"]).await;
        if r.status() == Some(OK) {
            break;
        }
        assert_eq!(r.proxy_error().as_deref(), Some("breaker-open"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metrics(mesh.caller.admin).await;
    assert_eq!(
        metric(&m, "tally_proxy_breaker_state", &["route=\"echo\""]),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn bulkhead_rejects_beyond_concurrency_and_queue() {
    init();
    let up = Upstream::start("a").await;
    let cfg = r#"
[services.echo.bulkhead]
max_concurrent = 1
max_queue = 1
"#;
    let mesh = Mesh::start(&[&up], cfg, "").await;
    let client = mesh.client().await;
    // Capacity is one running + one queued: of five concurrent slow calls, three are
    // refused at once and two stay in flight.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.call(
                SVC,
                PATH,
                &[("x-test-delay-ms", "60000"), ("grpc-timeout", "90S")],
                &[b"x"],
            )
            .await
        }));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while calls.iter().filter(|c| c.is_finished()).count() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls were not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut refused = 0;
    let mut pending = Vec::new();
    for c in calls {
        if c.is_finished() {
            let r = c.await.unwrap();
            assert_eq!(r.status(), Some(RESOURCE_EXHAUSTED), "{r:?}");
            assert_eq!(r.proxy_error().as_deref(), Some("bulkhead-full"));
            refused += 1;
        } else {
            pending.push(c);
        }
    }
    assert_eq!(refused, 3);
    let m = metrics(mesh.caller.admin).await;
    assert_eq!(
        metric(
            &m,
            "tally_proxy_bulkhead_rejections_total",
            &["route=\"echo\""]
        ),
        3.0
    );
    for p in pending {
        p.abort();
    }
}

#[tokio::test]
async fn load_spreads_over_endpoints_and_failing_endpoint_is_avoided() {
    init();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let cfg = r#"
[services.echo.breaker]
consecutive_failures = 1000
min_calls = 100000
"#;
    let mesh = Mesh::start(&[&a, &b], cfg, "").await;
    let client = mesh.client().await;
    // Concurrent load: in-flight calls make the busier endpoint cost more, so both are used.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.call(SVC, PATH, &[("x-test-delay-ms", "50")], &[b"x"])
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status(), Some(OK));
    }
    assert!(
        a.calls() > 0 && b.calls() > 0,
        "a={} b={}",
        a.calls(),
        b.calls()
    );
    // b starts failing fast: failures count as slow in the load estimate, so b is avoided.
    b.fail_all.store(true, Ordering::SeqCst);
    let before = b.calls();
    let mut failures = 0;
    for _ in 0..30 {
        if client.call(SVC, PATH, &[], &[b"x"]).await.status() != Some(OK) {
            failures += 1;
        }
    }
    assert!(failures <= 2, "{failures} calls failed");
    assert!(b.calls() - before <= 2);
}

#[tokio::test]
async fn outlier_is_ejected_and_returns() {
    init();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // No failure penalty and an estimate that forgets at once: the balancer keeps picking b,
    // so only outlier ejection keeps traffic off it.
    let cfg = r#"
[services.echo.breaker]
consecutive_failures = 1000
min_calls = 100000
[services.echo.outlier]
consecutive_5xx = 3
base_ejection_time_ms = 1500
max_ejection_percent = 50
[services.echo.load_balancer]
failure_penalty_ms = 0
decay_ms = 1
"#;
    let mesh = Mesh::start(&[&a, &b], cfg, "").await;
    let client = mesh.client().await;
    b.fail_all.store(true, Ordering::SeqCst);
    let mut failures = 0;
    for _ in 0..60 {
        if client.call(SVC, PATH, &[], &[b"x"]).await.status() != Some(OK) {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "exactly consecutive_5xx failures before ejection"
    );
    assert_eq!(b.calls(), 3);
    let m = metrics(mesh.caller.admin).await;
    let b_ep = mesh.callees[1].inbound.unwrap().to_string();
    assert_eq!(
        metric(
            &m,
            "tally_proxy_outlier_ejections_total",
            &[&format!("endpoint=\"{b_ep}\"")]
        ),
        1.0,
        "{m}"
    );
    // After the ejection time, b is tried again.
    b.fail_all.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while b.calls() == 3 {
        assert_eq!(
            client.call(SVC, PATH, &[], &[b"x"]).await.status(),
            Some(OK)
        );
        assert!(tokio::time::Instant::now() < deadline, "b never returned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ejection_floor_keeps_the_last_endpoint() {
    init();
    let a = Upstream::start("a").await;
    let cfg = r#"
[services.echo.outlier]
consecutive_5xx = 2
[services.echo.breaker]
consecutive_failures = 1000
min_calls = 100000
"#;
    let mesh = Mesh::start(&[&a], cfg, "").await;
    a.fail_all.store(true, Ordering::SeqCst);
    for _ in 0..6 {
        let r = mesh.call(&[], &[b"x"]).await;
        assert_eq!(r.status(), Some(UNAVAILABLE));
        assert_eq!(r.proxy_error(), None, "the only endpoint is still called");
    }
    assert_eq!(a.calls(), 6);
    let m = metrics(mesh.caller.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_outlier_ejection_floor_total",
            &["route=\"echo\""]
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn faults_from_config_admin_and_headers() {
    init();
    let up = Upstream::start("a").await;
    let cfg = r#"
[services.echo.faults]
abort_percent = 100
abort_grpc_status = 8
"#;
    let mesh = Mesh::start(&[&up], cfg, "").await;
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(RESOURCE_EXHAUSTED));
    assert_eq!(r.proxy_error().as_deref(), Some("fault-abort"));
    assert_eq!(up.calls(), 0);
    // Runtime change through the admin API: no config faults, header faults allowed.
    let (status, body) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"allow_header_faults": true}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, current) = admin(mesh.caller.admin, "GET", "/faults", "").await;
    assert!(
        current.contains("\"allow_header_faults\": true"),
        "{current}"
    );
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
    // Envoy's fault headers.
    let r = mesh
        .call(&[("x-envoy-fault-abort-grpc-request", "9")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(9));
    let r = mesh
        .call(&[("x-envoy-fault-abort-request", "503")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    let r = mesh
        .call(
            &[
                ("x-envoy-fault-abort-grpc-request", "9"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(OK));
    // A 5 s injected delay against a 300 ms deadline.
    let r = mesh
        .call(
            &[
                ("x-envoy-fault-delay-request", "5000"),
                ("grpc-timeout", "300m"),
            ],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(DEADLINE_EXCEEDED));
    // Reset: the stream is reset, the proxy keeps serving.
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"reset_percent": 100}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let r = mesh.call(&[], &[b"x"]).await;
    assert!(r.error.is_some(), "{r:?}");
    // Headers are ignored when the route does not allow them; bad settings are refused.
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let r = mesh
        .call(&[("x-envoy-fault-abort-grpc-request", "9")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK));
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"abort_percent": 300}}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "nope", "faults": {}}"#,
    )
    .await;
    assert_eq!(status, 404);
    let m = metrics(mesh.caller.admin).await;
    assert!(
        metric(&m, "tally_proxy_faults_injected_total", &["kind=\"abort\""]) >= 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn authorization_allows_listed_callers_and_denies_others() {
    init();
    let up = Upstream::start("a").await;
    let inbound = r#"
[[inbound.authz]]
service = "test.Echo"
allow = ["spiffe://tally.local/ns/test/sa/someone-else"]
[[inbound.authz]]
service = "test.Echo"
method = "Call"
allow = ["spiffe://tally.local/ns/test/sa/client"]
"#;
    let mesh = Mesh::start(&[&up], "", inbound).await;
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(OK));
    let r = mesh
        .client()
        .await
        .call(SVC, "/test.Echo/Secret", &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(PERMISSION_DENIED));
    assert_eq!(r.proxy_error().as_deref(), Some("unauthorized"));
    let r = mesh
        .client()
        .await
        .call(SVC, "/other.Service/Call", &[], &[b"x"])
        .await;
    assert_eq!(
        r.status(),
        Some(PERMISSION_DENIED),
        "default deny when a policy exists"
    );
    assert_eq!(up.calls(), 1);
    let m = metrics(mesh.callees[0].admin).await;
    let caller = format!("caller=\"{}\"", mesh.client_id);
    assert_eq!(
        metric(&m, "tally_proxy_authz_denied_total", &[&caller]),
        2.0,
        "{m}"
    );
}

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(
        &[&up],
        "identity = \"spiffe://tally.local/ns/test/sa/not-echo\"",
        "",
    )
    .await;
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("connect-failed"));
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn metrics_report_calls_latency_callers_and_certificates() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    for _ in 0..3 {
        assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
    }
    assert_eq!(
        mesh.call(&[("x-test-status", "5")], &[b"x"]).await.status(),
        Some(NOT_FOUND)
    );
    let m = metrics(mesh.caller.admin).await;
    let ok = [
        "direction=\"outbound\"",
        "route=\"echo\"",
        "grpc_status=\"OK\"",
    ];
    assert_eq!(metric(&m, "tally_proxy_requests_total", &ok), 3.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "tally_proxy_requests_total",
            &["grpc_status=\"NOT_FOUND\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "tally_proxy_request_duration_seconds_count",
            &["route=\"echo\""]
        ),
        4.0
    );
    assert!(metric(&m, "tally_proxy_cert_expiry_timestamp_seconds", &[]) > 1.0e9);
    assert!(m.contains("tally_proxy_breaker_state{"));
    let m = metrics(mesh.callees[0].admin).await;
    let caller = format!("caller=\"{}\"", mesh.client_id);
    assert_eq!(
        metric(
            &m,
            "tally_proxy_requests_total",
            &["direction=\"inbound\"", "route=\"test.Echo\"", &caller]
        ),
        4.0,
        "{m}"
    );
    let (status, cfg) = admin(mesh.caller.admin, "GET", "/config", "").await;
    assert_eq!(status, 200);
    assert!(cfg.contains("\"echo\""), "{cfg}");
    assert_eq!(admin(mesh.caller.admin, "GET", "/live", "").await.0, 200);
}

#[tokio::test]
async fn garbage_on_every_port_never_kills_the_proxy() {
    init();
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], "", "").await;
    let inbound = mesh.callees[0].inbound.unwrap();
    let targets = [
        mesh.caller.outbound.unwrap(),
        mesh.caller.admin,
        inbound,
        mesh.callees[0].admin,
    ];
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x01\x00\x00\x00\x00\x00garbage".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect(),
        b"\x16\x03\x01\x00\x05hello".to_vec(),
        vec![],
    ];
    for t in targets {
        for p in &payloads {
            let mut s = tokio::net::TcpStream::connect(t).await.unwrap();
            let _ = s.write_all(p).await;
            let _ = s.shutdown().await;
        }
    }
    // Plaintext HTTP/2 straight to the mTLS port is refused.
    let plain = Client::connect_lenient(inbound).await;
    assert!(
        plain.is_none()
            || plain
                .unwrap()
                .call(SVC, PATH, &[], &[b"x"])
                .await
                .status()
                .is_none()
    );
    // Half-open connections that never speak stay harmless.
    let _idle: Vec<_> =
        futures::future::join_all(targets.iter().map(|t| tokio::net::TcpStream::connect(*t))).await;
    assert!(mesh.caller.is_running() && mesh.callees[0].is_running());
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
    let m = metrics(mesh.callees[0].admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_tls_handshake_failures_total",
            &["direction=\"inbound\""]
        ) >= 4.0,
        "{m}"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused_cleanly() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let huge = "v".repeat(64 * 1024);
    let r = mesh.call(&[("x-huge", &huge)], &[b"x"]).await;
    assert_ne!(r.status(), Some(OK), "{r:?}");
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
}

#[tokio::test]
async fn burst_of_cancelled_streams_does_not_break_the_listener() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    for _ in 0..5 {
        let mut opened = Vec::new();
        for _ in 0..50 {
            opened.push(client.open(SVC, PATH, &[("x-test-delay-ms", "5000")]));
        }
        // Dropping the futures cancels every stream at once (RST_STREAM burst).
        let _ = tokio::time::timeout(Duration::from_millis(20), futures::future::join_all(opened))
            .await;
    }
    // The listener keeps serving new connections. (A call racing the burst's aftermath may
    // still fail once, so poll until one succeeds rather than asserting on the first.)
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let fresh = mesh.client().await;
        let r = fresh.call(SVC, PATH, &[], &[b"x"]).await;
        if r.status() == Some(OK) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.user]\nendpoints = []\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services.user.endpoints") && err.contains("fix:"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits() {
    init();
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    let in_flight = tokio::spawn(async move {
        client
            .call(SVC, PATH, &[("x-test-delay-ms", "1500")], &[b"x"])
            .await
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while up.calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "call never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = mesh.caller.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status(),
        Some(OK),
        "in-flight call finished during drain: {r:?}"
    );
    while mesh.caller.is_running() {
        assert!(tokio::time::Instant::now() < deadline, "proxy did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mesh.caller.exit_code(), Some(0));
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    // A caller sidecar whose identity comes from a different mesh root.
    let other = Pki::new();
    let intruder = other.identity("test", "client");
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"{}\"]\n",
        intruder.toml(),
        mesh.callees[0].inbound.unwrap()
    );
    let rogue = Proxy::start(&cfg).await;
    let r = Client::connect(rogue.outbound.unwrap())
        .await
        .call(SVC, PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("connect-failed"));
    assert_eq!(up.calls(), 0);
    let m = metrics(mesh.callees[0].admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_tls_handshake_failures_total",
            &["direction=\"inbound\""]
        ) >= 1.0,
        "{m}"
    );
    // The legitimate caller still gets through.
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
}

#[tokio::test]
async fn certificates_rotate_under_load_without_failed_calls() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let before = metric(
        &metrics(mesh.caller.admin).await,
        "tally_proxy_cert_expiry_timestamp_seconds",
        &[],
    );
    let client = mesh.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = tokio::spawn(async move {
        let (mut total, mut failed) = (0, 0);
        while !stop2.load(Ordering::SeqCst) {
            total += 1;
            if client.call(SVC, PATH, &[], &[b"x"]).await.status() != Some(OK) {
                failed += 1;
            }
        }
        (total, failed)
    });
    // Re-issue both workloads' certificates (longer-lived, so the expiry gauge moves) while
    // calls flow; new connections pick up the new files.
    let callee = tally_certs::SpiffeId::local("test", SVC).unwrap();
    let client_id = tally_certs::SpiffeId::local("test", "client").unwrap();
    for i in 0..4u64 {
        for id in [&callee, &client_id] {
            let issued = mesh
                .pki
                .ca
                .issue(id, Duration::from_secs(7200 + 60 * i))
                .unwrap();
            tally_certs::write_workload(&mesh.pki.dir.path().join("test"), id, &issued).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (total, failed) = load.await.unwrap();
    assert!(total > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {total} calls failed during rotation"
    );
    // A new sidecar-to-sidecar connection, made with the rotated files on both sides, works.
    let dir = mesh.pki.dir.path();
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[identity]\nbundle = {:?}\ncert = {:?}\nkey = {:?}\nnamespace = \"test\"\nservice = \"client\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"{}\"]\n",
        dir.join("bundle.pem"),
        dir.join("test/client.pem"),
        dir.join("test/client-key.pem"),
        mesh.callees[0].inbound.unwrap()
    );
    let second = Proxy::start(&cfg).await;
    let r = Client::connect(second.outbound.unwrap())
        .await
        .call(SVC, PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK), "{r:?}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let after = metric(
            &metrics(mesh.caller.admin).await,
            "tally_proxy_cert_expiry_timestamp_seconds",
            &[],
        );
        if after > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expiry gauge never followed the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn listener_connection_limit_is_enforced() {
    init();
    let up = Upstream::start("a").await;
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n[services.echo]\nendpoints = [\"{}\"]\n",
        up.addr
    );
    // Plaintext caller straight to the upstream (no [identity]): only the limit matters here.
    let proxy = Proxy::start(&cfg).await;
    let out = proxy.outbound.unwrap();
    let a = Client::connect(out).await;
    let b = Client::connect(out).await;
    assert_eq!(a.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(OK));
    assert_eq!(b.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(OK));
    // A third connection is closed at once.
    let third = Client::connect_lenient(out).await;
    if let Some(c) = third {
        assert!(c.call(SVC, PATH, &[], &[b"x"]).await.status().is_none());
    }
    let m = metrics(proxy.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_connections_rejected_total",
            &["direction=\"outbound\""]
        ) >= 1.0,
        "{m}"
    );
    drop(a);
    assert_eq!(b.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(OK));
}

#[tokio::test]
async fn inbound_faults_change_at_runtime() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let (status, body) = admin(
        mesh.callees[0].admin,
        "PUT",
        "/faults",
        r#"{"route": "inbound", "faults": {"abort_percent": 100, "abort_grpc_status": 10}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(10));
    assert_eq!(r.proxy_error().as_deref(), Some("fault-abort"));
    assert_eq!(up.calls(), 0);
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

#[tokio::test]
async fn draining_endpoint_sends_goaway_and_calls_move_to_the_other() {
    init();
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // No retry policy: calls the draining endpoint refuses unprocessed are retried transparently.
    let cfg = "[services.echo.load_balancer]\ndecay_ms = 1\n";
    let mut mesh = Mesh::start(&[&a, &b], cfg, "").await;
    let client = mesh.client().await;
    // Warm both sidecar connections.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while a.calls() == 0 || b.calls() == 0 {
        assert_eq!(
            client.call(SVC, PATH, &[], &[b"x"]).await.status(),
            Some(OK)
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "both endpoints never used"
        );
    }
    // Stop b's sidecar (GOAWAY, drain, exit) while calls keep flowing.
    let pid = mesh.callees[1].pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut failed = Vec::new();
    for _ in 0..100 {
        let r = client.call(SVC, PATH, &[], &[b"x"]).await;
        if r.status() != Some(OK) {
            failed.push(r);
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    while mesh.callees[1].is_running() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's sidecar did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            client.call(SVC, PATH, &[], &[b"x"]).await.status(),
            Some(OK)
        );
    }
}

#[tokio::test]
async fn silent_connections_are_closed_and_free_their_slot() {
    init();
    let up = Upstream::start("a").await;
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\ntls_handshake_timeout_ms = 300\n[outbound]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\n[services.echo]\nendpoints = [\"{}\"]\n",
        up.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let out = proxy.outbound.unwrap();
    // Takes the only slot and says nothing.
    let _silent = tokio::net::TcpStream::connect(out).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(c) = Client::connect_lenient(out).await
            && c.call(SVC, PATH, &[], &[b"x"]).await.status() == Some(OK)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_structured_access_log_line_per_call() {
    init();
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("proxy.log");
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"{}\"]\n[services.echo.retry]\nmax_attempts = 3\nidempotent_methods = [\"*\"]\nbackoff_base_ms = 1\nbackoff_max_ms = 2\n",
        up.addr
    );
    let proxy = Proxy::start_logging(&cfg, Some(&log)).await;
    let client = Client::connect(proxy.outbound.unwrap()).await;
    assert_eq!(
        client.call(SVC, PATH, &[], &[b"x"]).await.status(),
        Some(OK)
    );
    let r = client
        .call(
            SVC,
            PATH,
            &[("x-test-key", "k"), ("x-test-fail-times", "1")],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(OK));
    assert_eq!(
        client
            .call(SVC, PATH, &[("x-test-status", "5")], &[b"x"])
            .await
            .status(),
        Some(NOT_FOUND)
    );
    // Lines are written when calls end; wait until all three are there.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "tally_proxy::access")
            .collect();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "access log lines missing: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let f = |i: usize, k: &str| lines[i]["fields"][k].clone();
    assert_eq!(f(0, "grpc_status"), "OK");
    assert_eq!(f(0, "route"), "echo");
    assert_eq!(f(0, "caller"), "local");
    assert_eq!(f(0, "retries"), 0);
    assert!(f(0, "duration_ms").as_f64().is_some());
    assert_eq!(f(1, "retries"), 1);
    assert_eq!(f(2, "grpc_status"), "NOT_FOUND");
}
