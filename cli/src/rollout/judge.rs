//! The rollout's one decision: given what the canary and the stable version did, is the
//! canary worse than allowed, fine, or not yet judgeable?

use super::metrics::Evidence;
use std::time::Duration;

/// Canary calls needed before its error rate or latency can be judged.
pub const DEFAULT_MIN_CALLS: u64 = 10;
/// The canary's error rate may exceed the stable one's by at most this much (absolute).
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 0.05;
/// The canary's p99 may be at most this many times the stable one's. Above 2 because the
/// proxy's latency buckets double: a ratio of 2 is one bucket of noise.
pub const DEFAULT_MAX_P99_RATIO: f64 = 3.0;
/// A p99 difference smaller than this is never a breach (fast calls jitter by whole buckets).
pub const DEFAULT_P99_SLACK: Duration = Duration::from_millis(50);

/// The limits a canary must stay within.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Thresholds {
    pub min_calls: u64,
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
    pub p99_slack_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_calls: DEFAULT_MIN_CALLS,
            max_error_rate_increase: DEFAULT_MAX_ERROR_RATE_INCREASE,
            max_p99_ratio: DEFAULT_MAX_P99_RATIO,
            p99_slack_ms: DEFAULT_P99_SLACK.as_secs_f64() * 1000.0,
        }
    }
}

/// The verdict on a canary at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fewer than `min_calls` canary calls so far.
    TooFewCalls,
    Healthy,
    /// Worse than allowed; the reason names the numbers.
    Breach(String),
}

/// Judges `canary` (this step) against `stable` (since the rollout started).
pub fn judge(canary: &Evidence, stable: &Evidence, t: &Thresholds) -> Verdict {
    if canary.calls < t.min_calls {
        return Verdict::TooFewCalls;
    }
    let (c, s) = (canary.error_rate(), stable.error_rate());
    if c > s + t.max_error_rate_increase {
        return Verdict::Breach(format!(
            "error rate {:.1}% ({}/{}) against stable {:.1}% (allowed +{:.1} points)",
            c * 100.0,
            canary.errors,
            canary.calls,
            s * 100.0,
            t.max_error_rate_increase * 100.0
        ));
    }
    if let (Some(cp), Some(sp)) = (canary.p99_ms, stable.p99_ms)
        && cp > sp * t.max_p99_ratio
        && cp - sp > t.p99_slack_ms
    {
        return Verdict::Breach(format!(
            "p99 {cp:.1} ms against stable {sp:.1} ms (allowed {}x)",
            t.max_p99_ratio
        ));
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(calls: u64, errors: u64, p99_ms: Option<f64>) -> Evidence {
        Evidence {
            calls,
            errors,
            p99_ms,
        }
    }

    #[test]
    fn too_few_calls_are_not_judged() {
        let t = Thresholds::default();
        assert_eq!(
            judge(&ev(9, 9, None), &ev(100, 0, None), &t),
            Verdict::TooFewCalls
        );
    }

    #[test]
    fn errors_above_the_stable_rate_plus_the_allowance_breach() {
        let t = Thresholds::default();
        let stable = ev(1000, 10, Some(4.0));
        assert_eq!(judge(&ev(100, 5, Some(4.0)), &stable, &t), Verdict::Healthy);
        let v = judge(&ev(100, 7, Some(4.0)), &stable, &t);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("error rate 7.0%")),
            "{v:?}"
        );
    }

    #[test]
    fn latency_breaches_only_beyond_ratio_and_slack() {
        let t = Thresholds::default();
        let stable = ev(1000, 0, Some(8.0));
        // 4x but only 24 ms slower: within the slack.
        assert_eq!(judge(&ev(50, 0, Some(32.0)), &stable, &t), Verdict::Healthy);
        let v = judge(&ev(50, 0, Some(256.0)), &stable, &t);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("p99 256.0 ms")),
            "{v:?}"
        );
        // No stable latency yet (no stable calls): latency cannot be compared.
        assert_eq!(
            judge(&ev(50, 0, Some(256.0)), &ev(0, 0, None), &t),
            Verdict::Healthy
        );
    }
}
