//! Unit tests of the pool: one classification moving breaker, outlier ejection and EWMA,
//! and P2C never picking an endpoint that is ejected or breaker-open.

use super::*;
use crate::config::Config;
use crate::grpc::Code;

/// A pool over `n` endpoints (never dialled: these tests drive `pick` and `finish` only).
fn pool(n: usize) -> Arc<Pool> {
    let endpoints: Vec<String> = (1..=n).map(|i| format!("\"127.0.0.1:{i}\"")).collect();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.t]\nendpoints = [{}]\n[services.t.breaker]\nconsecutive_failures = 3\nmin_calls = 1000\n[services.t.outlier]\nconsecutive_5xx = 5\nmax_ejection_percent = 50\n",
        endpoints.join(", ")
    );
    let cfg = Config::parse("t.toml", &text).unwrap();
    cfg.validate("t.toml").unwrap();
    Pool::new(
        "t",
        &cfg.services["t"],
        "spiffe://tally.local/ns/t/sa/t",
        Arc::new(crate::transport::plaintext::Plaintext),
        &ClientSettings::from_limits(&cfg.limits),
        Metrics::new(),
    )
}

/// One call through `pool`: pick (avoiding `avoid`), then finish with `signal`.
fn call(pool: &Pool, avoid: Option<&str>, signal: Signal) -> Result<String, ProxyError> {
    let (ep, adm) = pool.pick(avoid)?;
    ep.in_flight.fetch_add(1, Ordering::Relaxed);
    pool.finish(&ep, adm, signal);
    Ok(ep.addr.clone())
}

/// Drives endpoint `addr` only (by avoiding the others when there are two).
fn fail_on(pool: &Pool, addr: &str, other: &str, signal: Signal, times: usize) {
    for _ in 0..times {
        let (ep, adm) = pool.pick(Some(other)).unwrap();
        assert_eq!(ep.addr, addr);
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        pool.finish(&ep, adm, signal);
    }
}

#[tokio::test(start_paused = true)]
async fn request_answers_never_trip_anything_endpoint_signals_do() {
    let p = pool(2);
    let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
    for code in [
        Code::InvalidArgument,
        Code::Internal,
        Code::Unknown,
        Code::DataLoss,
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::ResourceExhausted,
    ] {
        fail_on(&p, a, b, Signal::Grpc(code), 20);
    }
    let e = &p.endpoints[0];
    assert_eq!(e.breaker.state(), crate::breaker::State::Closed);
    assert_eq!(
        e.ewma.estimate_ns(),
        Duration::from_millis(30).as_nanos() as f64,
        "no failure penalty either"
    );
    fail_on(&p, a, b, Signal::Grpc(Code::Unavailable), 3);
    assert_eq!(e.breaker.state(), crate::breaker::State::Open);
    assert!(
        e.ewma.estimate_ns() >= Duration::from_secs(1).as_nanos() as f64,
        "the failure penalty counts"
    );
    // While its breaker is open the endpoint is never picked, even when asked to avoid the other.
    for _ in 0..50 {
        assert_eq!(call(&p, Some(b), Signal::Grpc(Code::Ok)).unwrap(), b);
    }
}

#[tokio::test(start_paused = true)]
async fn connect_failures_and_resets_count_refusals_and_cancels_do_not() {
    let p = pool(2);
    let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
    fail_on(&p, a, b, Signal::RefusedStream, 10);
    fail_on(&p, a, b, Signal::Neutral, 10);
    fail_on(&p, a, b, Signal::ResetDuringResponse, 10);
    assert_eq!(
        p.endpoints[0].breaker.state(),
        crate::breaker::State::Closed
    );
    fail_on(&p, a, b, Signal::ConnectFailure, 2);
    fail_on(&p, a, b, Signal::Reset, 1);
    assert_eq!(p.endpoints[0].breaker.state(), crate::breaker::State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_breakers_everywhere_fail_fast_then_probe() {
    let p = pool(2);
    let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
    fail_on(&p, a, b, Signal::Timeout, 3);
    fail_on(&p, b, a, Signal::Http(503), 3);
    assert!(matches!(
        call(&p, None, Signal::Grpc(Code::Ok)),
        Err(ProxyError::BreakerOpen(_))
    ));
    tokio::time::advance(Duration::from_millis(crate::defaults::BREAKER_OPEN_MS)).await;
    // Half-open: one probe each; successes close them.
    assert_eq!(call(&p, Some(b), Signal::Grpc(Code::Ok)).unwrap(), a);
    assert_eq!(call(&p, Some(a), Signal::Grpc(Code::Ok)).unwrap(), b);
    for e in &p.endpoints {
        assert_eq!(e.breaker.state(), crate::breaker::State::Closed);
    }
}

#[tokio::test(start_paused = true)]
async fn ejected_endpoints_are_not_picked_and_the_floor_keeps_one() {
    let p = pool(2);
    let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
    // Five connect failures on `a` (its breaker opens after three; the outlier detector sees all).
    for _ in 0..5 {
        let ep = p.endpoints[0].clone();
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        p.finish(&ep, Admission::Normal, Signal::ConnectFailure);
    }
    // Past the breaker's open time (half-open, a probe would be allowed), still ejected.
    tokio::time::advance(Duration::from_millis(crate::defaults::BREAKER_OPEN_MS)).await;
    assert!(p.endpoints[0].breaker.available());
    for _ in 0..50 {
        assert_eq!(call(&p, None, Signal::Grpc(Code::Ok)).unwrap(), b);
    }
    // The floor: with one of two ejected (50 %), the other is never ejected.
    for _ in 0..5 {
        let ep = p.endpoints[1].clone();
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        p.finish(&ep, Admission::Normal, Signal::ConnectFailure);
    }
    assert!(matches!(
        p.outliers.availability(1, Instant::now()),
        Availability::Available
    ));
    let m = p.metrics.encode();
    assert!(
        m.contains(
            "tally_proxy_outlier_ejection_floor_total{direction=\"outbound\",route=\"t\"} 1"
        ),
        "{m}"
    );
    assert_eq!(p.endpoints[0].addr, a);
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_cheaper_endpoint() {
    let p = pool(2);
    // Endpoint 1 answered slowly once: peak-EWMA makes it dear at once.
    p.endpoints[0].ewma.observe(Duration::from_millis(500));
    for _ in 0..50 {
        assert_eq!(
            call(&p, None, Signal::Grpc(Code::Ok)).unwrap(),
            "127.0.0.1:2"
        );
    }
    // In-flight calls add to the cost: 20 calls in flight on endpoint 2 outweigh the RTT.
    p.endpoints[1].in_flight.fetch_add(20, Ordering::Relaxed);
    assert_eq!(
        call(&p, None, Signal::Grpc(Code::Ok)).unwrap(),
        "127.0.0.1:1"
    );
}

/// Opens the breakers of every endpoint of `p` but those at `keep` (three connect failures each).
fn open_breakers_except(p: &Pool, keep: &[usize]) {
    for (k, ep) in p.endpoints.iter().enumerate() {
        if keep.contains(&k) {
            continue;
        }
        for _ in 0..3 {
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            p.finish(ep, Admission::Normal, Signal::ConnectFailure);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_single_endpoint_takes_every_call_even_when_asked_to_avoid_it() {
    let p = pool(1);
    for _ in 0..1000 {
        assert_eq!(
            call(&p, None, Signal::Grpc(Code::Ok)).unwrap(),
            "127.0.0.1:1"
        );
    }
    for _ in 0..10 {
        let addr = call(&p, Some("127.0.0.1:1"), Signal::Grpc(Code::Ok)).unwrap();
        assert_eq!(addr, "127.0.0.1:1");
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_pool_spreads_calls_and_never_picks_the_avoided_endpoint() {
    let p = pool(1000);
    let avoid = "127.0.0.1:7";
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        seen.insert(call(&p, None, Signal::Grpc(Code::Ok)).unwrap());
    }
    for _ in 0..3000 {
        let addr = call(&p, Some(avoid), Signal::Grpc(Code::Ok)).unwrap();
        assert_ne!(addr, avoid);
        seen.insert(addr);
    }
    // 4000 picks of two among 999: nearly every endpoint is drawn at least once.
    assert!(seen.len() > 950, "{} endpoints picked", seen.len());
}

#[tokio::test(start_paused = true)]
async fn a_large_pool_with_few_usable_endpoints_still_finds_them() {
    let p = pool(1000);
    open_breakers_except(&p, &[10, 500]);
    let (a, b) = ("127.0.0.1:11", "127.0.0.1:501");
    for _ in 0..200 {
        let addr = call(&p, None, Signal::Grpc(Code::Ok)).unwrap();
        assert!(addr == a || addr == b, "{addr}");
    }
    // Only one left that is not avoided: it is found; avoiding the last one leaves it in.
    for _ in 0..50 {
        assert_eq!(call(&p, Some(a), Signal::Grpc(Code::Ok)).unwrap(), b);
    }
    open_breakers_except(&p, &[10]);
    for _ in 0..50 {
        assert_eq!(call(&p, Some(a), Signal::Grpc(Code::Ok)).unwrap(), a);
    }
    open_breakers_except(&p, &[]);
    assert!(matches!(
        call(&p, None, Signal::Grpc(Code::Ok)),
        Err(ProxyError::BreakerOpen(_))
    ));
}

#[test]
fn duplicates_are_found() {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(duplicate_endpoint(&v(&["a:1", "b:1"])), None);
    assert_eq!(duplicate_endpoint(&v(&["a:1", "b:1", "A:1"])), Some("A:1"));
}

#[test]
fn signals_from_ends() {
    assert_eq!(
        end_signal(Some(503), End::Status(Code::Unavailable)),
        Signal::Http(503)
    );
    assert_eq!(
        end_signal(None, End::Status(Code::InvalidArgument)),
        Signal::Grpc(Code::InvalidArgument)
    );
    assert_eq!(end_signal(None, End::Error), Signal::ResetDuringResponse);
    assert_eq!(end_signal(None, End::Dropped), Signal::Neutral);
    assert_eq!(error_signal(&ProxyError::Cancelled), Signal::Neutral);
}
