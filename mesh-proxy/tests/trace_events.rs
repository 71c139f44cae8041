//! What the proxy's spans say, read back from a real OTLP receiver: a retried call's hop
//! span has one event per attempt plus the breaker's and the bulkhead's decisions, and the
//! gateway's span holds authentication and rate limiting, so a refused call shows in a
//! trace; the gateway's authentication refusals are audited, capped per second.

mod gateway_fixture;
mod support;

use gateway_fixture::{ECHO, Mode, web_call};
use support::*;
use tally_testkit::otlp::{Receiver, attr, events};

const HOP: &str = "outbound test.Echo/Call";
const ATTEMPT: &str = "retry attempt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_has_one_span_event_per_attempt_and_each_decision() {
    init();
    let rx = Receiver::start().await;
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(
        &[&up],
        &format!("{RETRY}{}", rx.telemetry("caller")),
        &rx.telemetry("callee"),
    )
    .await;
    let r = mesh
        .call(&[("x-test-key", "k"), ("x-test-fail-times", "2")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(up.calls(), 3);

    let span = rx.wait("caller", HOP).await;
    let attempts = events(&span, ATTEMPT);
    let seen: Vec<(String, String, String)> = attempts
        .iter()
        .map(|e| (attr(e, "attempt"), attr(e, "outcome"), attr(e, "next")))
        .collect();
    assert_eq!(
        seen,
        [
            ("1".into(), "UNAVAILABLE".into(), "retry".into()),
            ("2".into(), "UNAVAILABLE".into(), "retry".into()),
            ("3".into(), "streaming".into(), "done".into()),
        ],
        "{span:?}"
    );
    for e in &attempts[..2] {
        let backoff: u64 = attr(e, "backoff_ms").parse().expect("backoff_ms");
        assert!(backoff <= 20, "backoff within backoff_max_ms: {backoff}");
    }
    // Each attempt passed the bulkhead and a closed breaker, though the call succeeded.
    let breaker = events(&span, "breaker");
    assert_eq!(breaker.len(), 3, "{span:?}");
    assert!(
        breaker
            .iter()
            .all(|e| attr(e, "decision") == "admitted" && attr(e, "state") == "closed")
    );
    let bulkhead = events(&span, "bulkhead");
    assert_eq!(bulkhead.len(), 3, "{span:?}");
    assert!(bulkhead.iter().all(|e| attr(e, "decision") == "admitted"));
    assert!(bulkhead.iter().all(|e| attr(e, "in_flight") == "0"));
    // The callee's inbound hop records its own bulkhead decision.
    let inbound = rx.wait("callee", "inbound test.Echo/Call").await;
    let b = events(&inbound, "bulkhead");
    assert_eq!(b.len(), 1, "{inbound:?}");
    assert_eq!(attr(b[0], "decision"), "admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_is_a_rejected_decision_in_the_span() {
    init();
    let rx = Receiver::start().await;
    let up = Upstream::start("a").await;
    let extra = format!(
        "[services.echo.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n{}",
        rx.telemetry("caller")
    );
    let mesh = Mesh::start(&[&up], &extra, "").await;
    // One call holds the only slot (its response waits 2 s) while a second is refused.
    let slow = {
        let client = mesh.client().await;
        tokio::spawn(async move {
            client
                .call(SVC, PATH, &[("x-test-delay-ms", "2000")], &[b"x"])
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while up.calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow call never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = mesh.call(&[("x-meta", "refused")], &[b"y"]).await;
    assert_eq!(r.status(), Some(RESOURCE_EXHAUSTED), "{r:?}");
    assert_eq!(slow.await.expect("slow call").status(), Some(OK));

    let s = rx
        .wait_for("span with a rejected bulkhead decision", |spans| {
            spans
                .iter()
                .find(|s| {
                    s.span.name == HOP
                        && events(&s.span, "bulkhead")
                            .iter()
                            .any(|e| attr(e, "decision") == "rejected")
                })
                .cloned()
        })
        .await;
    let e = events(&s.span, "bulkhead");
    assert_eq!(attr(e[0], "in_flight"), "1", "{:?}", s.span);
    // Refused before any endpoint was picked: no breaker decision.
    assert!(events(&s.span, "breaker").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_is_a_rejected_decision_in_the_span() {
    init();
    let rx = Receiver::start().await;
    let up = Upstream::start("a").await;
    let extra = format!(
        "[services.echo.breaker]\nconsecutive_failures = 1\nopen_ms = 60000\n{}",
        rx.telemetry("caller")
    );
    let mesh = Mesh::start(&[&up], &extra, "").await;
    up.fail_all.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE), "{r:?}");
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.proxy_error().as_deref(), Some("breaker-open"), "{r:?}");
    assert_eq!(up.calls(), 1, "the open breaker kept the second call away");

    let decisions = rx
        .wait_for("two breaker decisions", |spans| {
            let decisions: Vec<(String, String)> = spans
                .iter()
                .flat_map(|s| {
                    events(&s.span, "breaker")
                        .into_iter()
                        .map(|e| (attr(e, "decision"), attr(e, "state")))
                        .collect::<Vec<_>>()
                })
                .collect();
            (decisions.len() == 2).then_some(decisions)
        })
        .await;
    assert!(decisions.contains(&("admitted".into(), "closed".into())));
    assert!(
        decisions.contains(&("rejected".into(), "open".into())),
        "{decisions:?}"
    );
}

/// A gateway (no upstream reachable) exporting to `rx` and auditing to `log`.
async fn gateway(rx: &Receiver, log: &std::path::Path, rate_limit: &str) -> (Proxy, Pki) {
    let pki = Pki::new();
    let dir = log.parent().expect("dir");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).expect("jwks");
    let cfg = format!(
        r#"[admin]
listen = "127.0.0.1:0"
audit_file = "{log}"
{identity}
[gateway]
listen = "127.0.0.1:0"

[gateway.auth]
jwks_file = "{jwks}"

[gateway.rate_limit]
{rate_limit}

[[gateway.routes]]
prefix = "tally.poll.v1"
service = "polling"

[[gateway.routes]]
prefix = "tally.user.v1.UserService/Login"
service = "user"
access = "public"

[services.polling]
endpoints = ["127.0.0.1:9"]

[services.user]
endpoints = ["127.0.0.1:9"]
{telemetry}"#,
        log = log.display(),
        identity = pki.identity("tally", "gateway").toml(),
        jwks = jwks.display(),
        telemetry = rx.telemetry("tally-gateway"),
    );
    (Proxy::start(&cfg).await, pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_gateway_call_shows_in_its_trace_and_in_the_audit_log() {
    init();
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("gateway-audit.log");
    let (gw, _pki) = gateway(&rx, &log, gateway_fixture::NO_LIMITS).await;
    let addr = gw.gateway.expect("gateway");
    let r = web_call(addr, ECHO, &[], &[b"x"], Mode::Binary).await;
    assert_eq!(r.status(), Some(16), "UNAUTHENTICATED: {r:?}");

    let name = format!("gateway {}", ECHO.trim_start_matches('/'));
    let span = rx.wait("tally-gateway", &name).await;
    let auth = events(&span, "authenticate");
    assert_eq!(auth.len(), 1, "{span:?}");
    assert_eq!(attr(auth[0], "outcome"), "refused");
    assert_eq!(attr(auth[0], "reason"), "missing");
    // Failed attempts spend the IP's bucket: that decision is in the span too.
    let limit = events(&span, "rate limit");
    assert_eq!(attr(limit[0], "outcome"), "admitted", "{span:?}");
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(2),
        "error status: {span:?}"
    );

    // A path no route knows does not name a span: the caller's text stays out of it.
    let r = web_call(
        addr,
        "/made.up.Service/Anything",
        &[],
        &[b"x"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(12), "UNIMPLEMENTED: {r:?}");
    let unrouted = rx.wait("tally-gateway", "gateway unrouted").await;
    assert!(unrouted.status.as_ref().is_some_and(|s| s.code == 2));
    assert!(
        rx.spans().iter().all(|s| !s.span.name.contains("made.up")),
        "{:?}",
        rx.spans()
    );

    let last = tally_audit::verify(&log)
        .expect("the chain verifies")
        .expect("an entry");
    assert_eq!(last.event.action, "gateway.authn");
    assert_eq!(last.event.actor, "ip:127.0.0.1");
    assert_eq!(last.event.target, ECHO);
    assert_eq!(last.event.outcome, "refused");
    assert!(
        last.event.detail.contains("reason=missing")
            && last.event.detail.contains("credential=none"),
        "{last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_audited_within_the_cap_and_counted() {
    init();
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("gateway-audit.log");
    let (gw, _pki) = gateway(&rx, &log, gateway_fixture::NO_LIMITS).await;
    let addr = gw.gateway.expect("gateway");
    const FLOOD: usize = 200;
    // In waves of 20 concurrent calls, as fast as the gateway answers.
    let started = tokio::time::Instant::now();
    for _ in 0..FLOOD / 20 {
        let calls = (0..20).map(|_| async {
            web_call(
                addr,
                ECHO,
                &[("authorization", "Bearer not-a-token")],
                &[b"x"],
                Mode::Binary,
            )
            .await
            .status()
        });
        let statuses = futures::future::join_all(calls).await;
        assert!(statuses.iter().all(|s| *s == Some(16)), "{statuses:?}");
    }
    let took = started.elapsed();
    // The flood touched at most this many one-second windows, each writing at most 20.
    let windows = took.as_secs() + 2;

    // The flusher writes the suppressed count within a window or two.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let entries = tally_audit::entries_after(&log, 0).expect("the chain verifies");
        let refusals = entries
            .iter()
            .filter(|e| e.event.action == "gateway.authn")
            .count() as u64;
        let suppressed: u64 = entries
            .iter()
            .filter(|e| e.event.action == "gateway.authn.suppressed")
            .map(|e| {
                e.event
                    .detail
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("count first")
            })
            .sum();
        if refusals + suppressed == FLOOD as u64 {
            assert!(
                refusals <= 20 * windows,
                "{refusals} written in {took:?}: over 20 a second"
            );
            if took < std::time::Duration::from_secs(5) {
                assert!(suppressed > 0, "{refusals} written in {took:?}");
            }
            let bad = entries
                .iter()
                .find(|e| e.event.action == "gateway.authn")
                .expect("one written");
            assert!(bad.event.detail.contains("credential=bearer"), "{bad:?}");
            assert!(!bad.event.detail.contains("not-a-token"), "no secrets");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{refusals} written + {suppressed} suppressed != {FLOOD}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_gateway_call_shows_in_its_trace() {
    init();
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("gateway-audit.log");
    let limits = "per_client_per_second = 0.001\nper_client_burst = 1\nglobal_per_second = 10000.0\nglobal_burst = 10000\n";
    let (gw, _pki) = gateway(&rx, &log, limits).await;
    let addr = gw.gateway.expect("gateway");
    let login = "/tally.user.v1.UserService/Login";
    let first = web_call(addr, login, &[], &[b"x"], Mode::Binary).await;
    assert_ne!(
        first.status(),
        Some(8),
        "the first call is admitted: {first:?}"
    );
    let second = web_call(addr, login, &[], &[b"x"], Mode::Binary).await;
    assert_eq!(second.status(), Some(8), "RESOURCE_EXHAUSTED: {second:?}");

    let name = format!("gateway {}", login.trim_start_matches('/'));
    let spans = rx
        .wait_for("two gateway spans", |spans| {
            let named: Vec<_> = spans
                .iter()
                .filter(|s| s.span.name == name)
                .cloned()
                .collect();
            (named.len() == 2).then_some(named)
        })
        .await;
    let outcomes: Vec<String> = spans
        .iter()
        .flat_map(|s| {
            events(&s.span, "rate limit")
                .into_iter()
                .map(|e| attr(e, "outcome"))
        })
        .collect();
    assert!(outcomes.contains(&"admitted".to_string()), "{outcomes:?}");
    assert!(outcomes.contains(&"limited".to_string()), "{outcomes:?}");
    // The admitted call's outbound hop is a child of its gateway span.
    let admitted = spans
        .iter()
        .find(|s| {
            events(&s.span, "rate limit")
                .iter()
                .any(|e| attr(e, "outcome") == "admitted")
        })
        .expect("admitted");
    let hop = rx
        .wait(
            "tally-gateway",
            &format!("outbound {}", login.trim_start_matches('/')),
        )
        .await;
    assert_eq!(hop.parent_span_id, admitted.span.span_id);
    assert_eq!(hop.trace_id, admitted.span.trace_id);
}
