//! Retries (opt-in per route) and the retry budget, through a real sidecar pair.

mod support;

use support::*;

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
