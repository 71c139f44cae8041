//! Per-endpoint circuit breaker: closed (traffic flows) → open (fast-fail) after consecutive
//! failures or a failure rate over the last `window` calls → half-open (one probe) → closed on
//! success. Own implementation rather than tower-resilience's breaker because gRPC outcomes
//! arrive in trailers at the end of the stream, after the response future has resolved, and the
//! balancer must be able to ask "may this endpoint take a call?" before choosing it.
//!
//! A half-open probe is judged by its response head ([`Breaker::on_response_head`]): a call
//! whose headers arrive without a status (the endpoint accepted it and is answering) closes the
//! breaker at once. Waiting for the end of the stream instead would let a long server stream as
//! the probe keep every other call refused for as long as the stream stays open.

use crate::config::BreakerConfig;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

struct Inner {
    state: State,
    open_until: Instant,
    probing: bool,
    consecutive: u32,
    window: VecDeque<bool>,
}

pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    gauge: Gauge,
    opens: Counter,
    name: String,
}

/// Whether an admitted call is the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, gauge: Gauge, opens: Counter, name: String) -> Self {
        gauge.set(0);
        Self {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                open_until: Instant::now(),
                probing: false,
                consecutive: 0,
                window: VecDeque::new(),
            }),
            gauge,
            opens,
            name,
        }
    }

    fn set_state(&self, g: &mut Inner, s: State) {
        if g.state != s {
            tracing::info!(endpoint = %self.name, from = ?g.state, to = ?s, "circuit breaker state change");
        }
        g.state = s;
        self.gauge.set(s.gauge());
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    /// True when a call could be admitted now (without claiming it).
    pub fn available(&self) -> bool {
        let g = self.inner.lock();
        match g.state {
            State::Closed => true,
            State::Open => Instant::now() >= g.open_until,
            State::HalfOpen => !g.probing,
        }
    }

    /// Claims admission for one call.
    pub fn try_acquire(&self) -> Option<Admission> {
        let mut g = self.inner.lock();
        match g.state {
            State::Closed => Some(Admission::Normal),
            State::Open if Instant::now() >= g.open_until => {
                self.set_state(&mut g, State::HalfOpen);
                g.probing = true;
                Some(Admission::Probe)
            }
            State::Open => None,
            State::HalfOpen if !g.probing => {
                g.probing = true;
                Some(Admission::Probe)
            }
            State::HalfOpen => None,
        }
    }

    /// Judges a half-open probe by its response head: HTTP 200 with no `grpc-status` in the
    /// headers (not a trailers-only answer) means the endpoint took the call, so the breaker
    /// closes now. Returns the admission under which the call's end is to be recorded:
    /// `Normal` once the probe is settled (its end then counts like any closed-state call).
    pub fn on_response_head(
        &self,
        admission: Admission,
        status: http::StatusCode,
        has_grpc_status: bool,
    ) -> Admission {
        if admission != Admission::Probe || status != http::StatusCode::OK || has_grpc_status {
            return admission;
        }
        let mut g = self.inner.lock();
        if g.state == State::HalfOpen {
            g.probing = false;
            g.consecutive = 0;
            g.window.clear();
            self.set_state(&mut g, State::Closed);
        }
        Admission::Normal
    }

    fn open(&self, g: &mut Inner) {
        g.open_until = Instant::now() + Duration::from_millis(self.cfg.open_ms);
        g.probing = false;
        g.consecutive = 0;
        g.window.clear();
        self.set_state(g, State::Open);
        self.opens.inc();
    }

    /// Records a call's outcome: `Some(true)` failure, `Some(false)` success, `None` neutral
    /// (cancelled by the caller, says nothing about the endpoint).
    pub fn record(&self, admission: Admission, failed: Option<bool>) {
        let mut g = self.inner.lock();
        match (g.state, admission) {
            (State::HalfOpen, Admission::Probe) => match failed {
                Some(true) => self.open(&mut g),
                Some(false) => {
                    g.probing = false;
                    g.consecutive = 0;
                    g.window.clear();
                    self.set_state(&mut g, State::Closed);
                }
                None => g.probing = false,
            },
            (State::Closed, _) => {
                let Some(failed) = failed else { return };
                g.consecutive = if failed { g.consecutive + 1 } else { 0 };
                g.window.push_back(failed);
                while g.window.len() > self.cfg.window as usize {
                    g.window.pop_front();
                }
                let n = g.window.len();
                let failures = g.window.iter().filter(|f| **f).count();
                let rate_trips = n >= self.cfg.min_calls.max(1) as usize
                    && failures as f64 / n as f64 >= self.cfg.failure_rate;
                if g.consecutive >= self.cfg.consecutive_failures || rate_trips {
                    self.open(&mut g);
                }
            }
            // Late results from calls admitted before the state changed.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(consecutive: u32) -> Breaker {
        let cfg = BreakerConfig {
            consecutive_failures: consecutive,
            failure_rate: 1.0,
            window: 100,
            min_calls: 100,
            open_ms: 1000,
        };
        Breaker::new(cfg, Gauge::default(), Counter::default(), "t".into())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let b = breaker(3);
        for _ in 0..3 {
            let a = b.try_acquire().unwrap();
            b.record(a, Some(true));
        }
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.try_acquire(), Some(Admission::Probe));
        assert!(b.try_acquire().is_none(), "only one probe");
        b.record(Admission::Probe, Some(true));
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_millis(1001)).await;
        let a = b.try_acquire().unwrap();
        b.record(a, Some(false));
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_probe_is_judged_by_its_head_not_its_end() {
        let b = breaker(1);
        b.record(Admission::Normal, Some(true));
        tokio::time::advance(Duration::from_millis(1000)).await;
        let probe = b.try_acquire().unwrap();
        assert_eq!(probe, Admission::Probe);
        // Headers of a long server stream arrive: the endpoint is serving.
        let after = b.on_response_head(probe, http::StatusCode::OK, false);
        assert_eq!(after, Admission::Normal);
        assert_eq!(b.state(), State::Closed);
        // While the stream stays open (an hour), every other call is admitted.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..10 {
            assert_eq!(b.try_acquire(), Some(Admission::Normal));
        }
        // The stream's end later counts as an ordinary call.
        b.record(after, None);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_answered_trailers_only_or_not_ok_still_waits_for_its_end() {
        let b = breaker(1);
        b.record(Admission::Normal, Some(true));
        tokio::time::advance(Duration::from_millis(1000)).await;
        let probe = b.try_acquire().unwrap();
        for (status, has_grpc_status) in [
            (http::StatusCode::OK, true),
            (http::StatusCode::SERVICE_UNAVAILABLE, false),
        ] {
            assert_eq!(
                b.on_response_head(probe, status, has_grpc_status),
                Admission::Probe
            );
            assert_eq!(b.state(), State::HalfOpen);
            assert!(b.try_acquire().is_none(), "still one probe");
        }
        b.record(probe, Some(true));
        assert_eq!(b.state(), State::Open);
        // A normal call's head changes nothing.
        assert_eq!(
            b.on_response_head(Admission::Normal, http::StatusCode::OK, false),
            Admission::Normal
        );
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_trips() {
        let cfg = BreakerConfig {
            consecutive_failures: 100,
            failure_rate: 0.5,
            window: 4,
            min_calls: 4,
            open_ms: 1000,
        };
        let b = Breaker::new(cfg, Gauge::default(), Counter::default(), "t".into());
        for f in [true, false, true, false] {
            b.record(Admission::Normal, Some(f));
        }
        assert_eq!(b.state(), State::Open);
    }
    #[tokio::test(start_paused = true)]
    async fn neutral_outcomes_count_neither_way() {
        let b = breaker(2);
        b.record(Admission::Normal, Some(true));
        for _ in 0..10 {
            b.record(Admission::Normal, None);
        }
        assert_eq!(
            b.state(),
            State::Closed,
            "neutral calls do not add failures"
        );
        b.record(Admission::Normal, Some(true));
        assert_eq!(b.state(), State::Open, "nor do they reset the streak");
        // A neutral probe result frees the probe slot without deciding anything.
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(b.try_acquire(), Some(Admission::Probe));
        b.record(Admission::Probe, None);
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.available());
        assert_eq!(b.try_acquire(), Some(Admission::Probe));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_count() {
        let b = breaker(3);
        for f in [true, true, false, true, true] {
            b.record(Admission::Normal, Some(f));
        }
        assert_eq!(b.state(), State::Closed);
        b.record(Admission::Normal, Some(true));
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn open_time_is_exact_and_late_results_are_ignored() {
        let b = breaker(1);
        b.record(Admission::Normal, Some(true));
        assert_eq!(b.state(), State::Open);
        assert!(!b.available());
        // Results of calls admitted before the breaker opened change nothing.
        b.record(Admission::Normal, Some(false));
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.available());
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.available());
    }

    #[tokio::test(start_paused = true)]
    async fn gauge_and_open_count_follow_the_state() {
        let cfg = BreakerConfig {
            consecutive_failures: 1,
            failure_rate: 1.0,
            window: 10,
            min_calls: 10,
            open_ms: 1000,
        };
        let (gauge, opens) = (Gauge::default(), Counter::default());
        let b = Breaker::new(cfg, gauge.clone(), opens.clone(), "t".into());
        assert_eq!(gauge.get(), 0);
        b.record(Admission::Normal, Some(true));
        assert_eq!((gauge.get(), opens.get()), (1, 1));
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(b.try_acquire(), Some(Admission::Probe));
        assert_eq!(gauge.get(), 2);
        b.record(Admission::Probe, Some(true));
        assert_eq!((gauge.get(), opens.get()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_needs_min_calls_and_rolls_over_the_window() {
        let cfg = BreakerConfig {
            consecutive_failures: 100,
            failure_rate: 0.75,
            window: 4,
            min_calls: 4,
            open_ms: 1000,
        };
        let b = Breaker::new(cfg, Gauge::default(), Counter::default(), "t".into());
        for f in [true, true, false] {
            b.record(Admission::Normal, Some(f));
        }
        assert_eq!(b.state(), State::Closed, "2/3 failed, but under min_calls");
        // The early failures roll out of the four-call window, so they never add up to 3/4.
        for f in [false, false, false, true, true] {
            b.record(Admission::Normal, Some(f));
            assert_eq!(b.state(), State::Closed);
        }
        b.record(Admission::Normal, Some(true));
        assert_eq!(b.state(), State::Open, "3 of the last 4 failed");
    }
}
