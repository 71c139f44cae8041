//! Peak-EWMA round-trip estimate of one endpoint: a slower observation takes effect at once,
//! faster ones blend in with an exponential decay, and the estimate decays while the endpoint
//! is idle so that one that was slow or failing is tried again eventually.

use crate::config::LoadBalancerConfig;
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

struct State {
    estimate_ns: f64,
    updated: Instant,
}

pub struct PeakEwma {
    decay: Duration,
    failure_penalty: Duration,
    state: Mutex<State>,
}

impl PeakEwma {
    /// `decay` is the time constant; a zero decay is treated as 1 ms.
    pub fn new(default_rtt: Duration, decay: Duration, failure_penalty: Duration) -> Self {
        Self {
            decay: decay.max(Duration::from_millis(1)),
            failure_penalty,
            state: Mutex::new(State {
                estimate_ns: default_rtt.as_nanos() as f64,
                updated: Instant::now(),
            }),
        }
    }

    pub fn from_config(lb: &LoadBalancerConfig) -> Self {
        Self::new(
            Duration::from_millis(lb.default_rtt_ms),
            Duration::from_millis(lb.decay_ms),
            Duration::from_millis(lb.failure_penalty_ms),
        )
    }

    fn weight(&self, elapsed: Duration) -> f64 {
        (-(elapsed.as_nanos() as f64) / self.decay.as_nanos() as f64).exp()
    }

    /// Records one round trip.
    pub fn observe(&self, rtt: Duration) {
        let rtt_ns = rtt.as_nanos() as f64;
        let now = Instant::now();
        let mut s = self.state.lock();
        if rtt_ns > s.estimate_ns {
            s.estimate_ns = rtt_ns;
        } else {
            let w = self.weight(now.duration_since(s.updated));
            s.estimate_ns = s.estimate_ns * w + rtt_ns * (1.0 - w);
        }
        s.updated = now;
    }

    /// Records a call classified as an endpoint failure: it counts as at least the failure
    /// penalty, so a fast-failing endpoint never looks cheap. A zero penalty records nothing.
    pub fn observe_failure(&self) {
        if !self.failure_penalty.is_zero() {
            self.observe(self.failure_penalty);
        }
    }

    /// The current estimate in nanoseconds, decayed for the time since the last observation.
    pub fn estimate_ns(&self) -> f64 {
        let s = self.state.lock();
        s.estimate_ns * self.weight(s.updated.elapsed())
    }

    /// Load estimate: the RTT estimate times the calls in flight plus one.
    pub fn cost(&self, in_flight: usize) -> f64 {
        self.estimate_ns() * (in_flight as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1_000_000.0;

    fn ewma() -> PeakEwma {
        PeakEwma::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_default_and_peaks_at_once() {
        let e = ewma();
        assert_eq!(e.estimate_ns(), 30.0 * MS);
        e.observe(Duration::from_millis(200));
        assert_eq!(e.estimate_ns(), 200.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn faster_observations_blend_by_elapsed_time() {
        let e = ewma();
        e.observe(Duration::from_millis(200));
        // One time constant later: weight e^-1 on the old estimate (which also decayed).
        tokio::time::advance(Duration::from_secs(10)).await;
        e.observe(Duration::from_millis(10));
        let w = (-1.0f64).exp();
        let expected = 200.0 * MS * w + 10.0 * MS * (1.0 - w);
        assert!(
            (e.estimate_ns() - expected).abs() < 1.0,
            "{}",
            e.estimate_ns()
        );
        // Observations with no time in between barely move it.
        let before = e.estimate_ns();
        e.observe(Duration::from_millis(1));
        assert!((e.estimate_ns() - before).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_estimate_decays() {
        let e = ewma();
        e.observe(Duration::from_millis(500));
        tokio::time::advance(Duration::from_secs(20)).await;
        let expected = 500.0 * MS * (-2.0f64).exp();
        assert!((e.estimate_ns() - expected).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_cost_the_penalty_and_in_flight_multiplies() {
        let e = ewma();
        e.observe_failure();
        assert_eq!(e.estimate_ns(), 1000.0 * MS);
        assert_eq!(e.cost(0), 1000.0 * MS);
        assert_eq!(e.cost(3), 4000.0 * MS);
        let no_penalty = PeakEwma::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::ZERO,
        );
        no_penalty.observe_failure();
        assert_eq!(
            no_penalty.estimate_ns(),
            30.0 * MS,
            "a zero penalty changes nothing"
        );
    }
}
