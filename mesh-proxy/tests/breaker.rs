//! The per-endpoint circuit breaker and the per-route bulkhead, through a real sidecar pair.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

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
