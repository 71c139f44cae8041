//! Load balancing, outlier ejection and draining endpoints, through real sidecars.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

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
