//! Riding out transient failures of a saga step: after a failed call, is
//! the step parked and tried again (and when), or does the saga give up and
//! compensate? Pure: the caller passes the clock reading and the jitter, so
//! the rules are tested without time passing.
//!
//! A transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, a mesh fast-fail
//! such as `breaker-open` or `no-endpoints`) parks the step with a backoff
//! that doubles up to [`Policy::max_backoff`]. After a fast-fail the pause
//! is at least [`Policy::fast_fail_backoff`], longer than the mesh breaker's
//! open window, so the next try meets a half-open breaker instead of the
//! same refusal. A `grpc-retry-pushback-ms` from the callee replaces the
//! computed pause. Giving up happens only at the step's deadline (counted
//! from its first failure), on a definite answer, after a few tries of a
//! failure whose cause is unknown, or when the user cancelled.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default pause after the first transient failure; it doubles per try.
pub const DEFAULT_FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Default longest pause between two tries (also caps a pushback).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(20);
/// Default shortest pause after a mesh fast-fail: the mesh breaker stays
/// open 5 s, so waiting 6 s lets the next try reach a half-open breaker.
pub const DEFAULT_FAST_FAIL_BACKOFF: Duration = Duration::from_secs(6);
/// Default time a step may keep failing transiently before the saga
/// compensates.
pub const DEFAULT_STEP_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Default tries of a call whose failure leaves it unknown whether it was
/// processed and whether it is worth retrying (INTERNAL, UNKNOWN, ...).
pub const DEFAULT_DOUBTFUL_ATTEMPTS: u32 = 4;

/// How a failed call failed, as far as trying again goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The callee or the mesh says "not now": worth waiting for.
    Transient {
        /// The mesh refused without trying (`breaker-open`, `no-endpoints`).
        fast_fail: bool,
        /// The callee's `grpc-retry-pushback-ms`.
        pushback: Option<Duration>,
        /// The call may have been processed (DEADLINE_EXCEEDED).
        processed_possibly: bool,
    },
    /// Unknown whether it was processed or will ever succeed: a few tries.
    Doubtful,
}

/// The retry rules of one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub fast_fail_backoff: Duration,
    pub step_deadline: Duration,
    pub doubtful_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            first_backoff: DEFAULT_FIRST_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            fast_fail_backoff: DEFAULT_FAST_FAIL_BACKOFF,
            step_deadline: DEFAULT_STEP_DEADLINE,
            doubtful_attempts: DEFAULT_DOUBTFUL_ATTEMPTS,
        }
    }
}

/// A step waiting to be tried again, persisted with the saga so a restart
/// keeps its deadline and its pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// Failed tries so far.
    pub attempts: u32,
    /// When the first try failed (ms since the epoch).
    pub since_ms: i64,
    /// When the next try is due (ms since the epoch).
    pub retry_at_ms: i64,
    /// Some failed try may have been processed.
    pub processed_possibly: bool,
    /// The last failure, for the step log.
    pub last_error: String,
}

/// What to do after a failed try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again at `retry_at_ms`; the subscription stays pending.
    Park(Parked),
    /// Stop trying: compensate.
    GiveUp {
        reason: String,
        processed_possibly: bool,
    },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Policy {
    /// The longest pause [`Policy::decide`] ever asks for.
    pub fn longest_pause(&self) -> Duration {
        self.max_backoff.max(self.fast_fail_backoff)
    }

    /// The pause before try `attempts + 1`, `jitter` in `0.0..=1.0` spreading
    /// it over its upper half (so parked sagas do not retry in lockstep).
    fn backoff(&self, attempts: u32, failure: &Failure, jitter: f64) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let base = doubled.min(self.max_backoff);
        let spread = base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        match failure {
            Failure::Transient {
                pushback: Some(p), ..
            } => (*p).min(self.max_backoff),
            Failure::Transient {
                fast_fail: true, ..
            } => spread.max(self.fast_fail_backoff),
            _ => spread,
        }
    }

    /// Decides after a failed try at `now_ms`. `previous` is the step's park
    /// so far (none on its first failure).
    pub fn decide(
        &self,
        previous: Option<&Parked>,
        failure: &Failure,
        error: &str,
        now_ms: i64,
        jitter: f64,
        cancel_requested: bool,
    ) -> Decision {
        let attempts = previous.map_or(0, |p| p.attempts).saturating_add(1);
        let since_ms = previous.map_or(now_ms, |p| p.since_ms);
        let processed_possibly = previous.is_some_and(|p| p.processed_possibly)
            || match failure {
                Failure::Transient {
                    processed_possibly, ..
                } => *processed_possibly,
                Failure::Doubtful => true,
            };
        let give_up = |why: String| Decision::GiveUp {
            reason: format!("{why}; {attempts} tries failed, last: {error}"),
            processed_possibly,
        };
        if cancel_requested {
            return give_up("cancelled while the step was retried".into());
        }
        if matches!(failure, Failure::Doubtful) && attempts >= self.doubtful_attempts {
            return give_up(format!("no clear answer after {attempts} tries"));
        }
        let deadline_ms = since_ms.saturating_add(ms(self.step_deadline));
        if now_ms >= deadline_ms {
            return give_up(format!(
                "still failing after the step deadline of {} s",
                self.step_deadline.as_secs()
            ));
        }
        // The last try happens at the deadline, not after it.
        let retry_at_ms = now_ms
            .saturating_add(ms(self.backoff(attempts, failure, jitter)))
            .min(deadline_ms);
        Decision::Park(Parked {
            attempts,
            since_ms,
            retry_at_ms,
            processed_possibly,
            last_error: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_000_000;

    fn unavailable() -> Failure {
        Failure::Transient {
            fast_fail: false,
            pushback: None,
            processed_possibly: false,
        }
    }

    fn fast_fail() -> Failure {
        Failure::Transient {
            fast_fail: true,
            pushback: None,
            processed_possibly: false,
        }
    }

    fn park(d: Decision) -> Parked {
        match d {
            Decision::Park(p) => p,
            other => panic!("expected a park, got {other:?}"),
        }
    }

    #[test]
    fn transient_failures_park_with_doubling_backoff_up_to_the_cap() {
        let policy = Policy::default();
        let mut prev: Option<Parked> = None;
        let mut now = T0;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            let p = park(policy.decide(prev.as_ref(), &unavailable(), "down", now, 1.0, false));
            pauses.push(p.retry_at_ms - now);
            now = p.retry_at_ms;
            prev = Some(p);
        }
        assert_eq!(
            pauses,
            [
                200, 400, 800, 1_600, 3_200, 6_400, 12_800, 20_000, 20_000, 20_000
            ]
        );
        let last = prev.expect("parked");
        assert_eq!(last.attempts, 10);
        assert_eq!(
            last.since_ms, T0,
            "the deadline counts from the first failure"
        );
        assert!(!last.processed_possibly);
    }

    #[test]
    fn jitter_spreads_over_the_upper_half() {
        let policy = Policy::default();
        let low = park(policy.decide(None, &unavailable(), "down", T0, 0.0, false));
        let high = park(policy.decide(None, &unavailable(), "down", T0, 1.0, false));
        assert_eq!(low.retry_at_ms - T0, 100);
        assert_eq!(high.retry_at_ms - T0, 200);
    }

    #[test]
    fn a_fast_fail_waits_out_the_breaker_open_window() {
        let policy = Policy::default();
        let p = park(policy.decide(None, &fast_fail(), "breaker-open", T0, 0.0, false));
        assert_eq!(p.retry_at_ms - T0, 6_000);
        assert!(Duration::from_millis(6_000) > Duration::from_secs(5));
    }

    #[test]
    fn pushback_replaces_the_backoff_within_the_cap() {
        let policy = Policy::default();
        let push = |ms| Failure::Transient {
            fast_fail: true,
            pushback: Some(Duration::from_millis(ms)),
            processed_possibly: false,
        };
        let p = park(policy.decide(None, &push(1_500), "busy", T0, 0.0, false));
        assert_eq!(
            p.retry_at_ms - T0,
            1_500,
            "pushback wins over the fast-fail floor"
        );
        let p = park(policy.decide(None, &push(600_000), "busy", T0, 0.0, false));
        assert_eq!(p.retry_at_ms - T0, 20_000, "capped by max_backoff");
    }

    #[test]
    fn gives_up_only_at_the_step_deadline_with_a_last_try_there() {
        let policy = Policy {
            step_deadline: Duration::from_secs(60),
            ..Policy::default()
        };
        let mut prev = park(policy.decide(None, &unavailable(), "down", T0, 1.0, false));
        let mut now = prev.retry_at_ms;
        loop {
            match policy.decide(Some(&prev), &unavailable(), "down", now, 1.0, false) {
                Decision::Park(p) => {
                    assert!(p.retry_at_ms <= T0 + 60_000, "no try after the deadline");
                    now = p.retry_at_ms;
                    prev = p;
                }
                Decision::GiveUp {
                    reason,
                    processed_possibly,
                } => {
                    assert_eq!(now, T0 + 60_000, "the last try is at the deadline");
                    assert!(reason.contains("step deadline of 60 s"), "{reason}");
                    assert!(reason.contains("last: down"), "{reason}");
                    assert!(!processed_possibly);
                    return;
                }
            }
        }
    }

    #[test]
    fn a_timeout_marks_the_step_possibly_processed_for_good() {
        let policy = Policy::default();
        let timeout = Failure::Transient {
            fast_fail: false,
            pushback: None,
            processed_possibly: true,
        };
        let p = park(policy.decide(None, &timeout, "deadline", T0, 1.0, false));
        assert!(p.processed_possibly);
        let p = park(policy.decide(Some(&p), &unavailable(), "down", T0 + 200, 1.0, false));
        assert!(p.processed_possibly, "an earlier timeout is not forgotten");
        match policy.decide(Some(&p), &unavailable(), "down", T0 + 400_000, 1.0, false) {
            Decision::GiveUp {
                processed_possibly, ..
            } => assert!(processed_possibly),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn doubtful_failures_get_a_few_tries_only() {
        let policy = Policy::default();
        let mut prev = None;
        for _ in 1..DEFAULT_DOUBTFUL_ATTEMPTS {
            prev = Some(park(policy.decide(
                prev.as_ref(),
                &Failure::Doubtful,
                "internal",
                T0,
                1.0,
                false,
            )));
        }
        assert!(matches!(
            policy.decide(
                prev.as_ref(),
                &Failure::Doubtful,
                "internal",
                T0,
                1.0,
                false
            ),
            Decision::GiveUp {
                processed_possibly: true,
                ..
            }
        ));
    }

    #[test]
    fn a_cancel_stops_the_retries() {
        let policy = Policy::default();
        match policy.decide(None, &unavailable(), "down", T0, 1.0, true) {
            Decision::GiveUp { reason, .. } => assert!(reason.contains("cancelled"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_longest_pause_covers_every_decision() {
        let policy = Policy::default();
        assert_eq!(policy.longest_pause(), DEFAULT_MAX_BACKOFF);
        let slow_breaker = Policy {
            fast_fail_backoff: Duration::from_secs(40),
            ..Policy::default()
        };
        assert_eq!(slow_breaker.longest_pause(), Duration::from_secs(40));
    }
}
