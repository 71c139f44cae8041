//! Metrics and access logs of real sidecars.

mod support;

use std::time::Duration;
use support::*;

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
