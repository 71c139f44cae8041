//! The rollout loop: set a weight, read the evidence every interval, judge, and go on,
//! promote or roll back. The proxies are behind [`Control`], so the loop's timing (step
//! time, the wait for enough canary calls, how soon a breach is acted on) is tested with
//! paused time against a scripted canary.

use super::judge::{Thresholds, Verdict, judge};
use super::metrics::Reading;
use super::record::{Record, State, Step};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// A step that has not seen `min_calls` canary calls after this many step times (and at
/// least [`MIN_EVIDENCE_WAIT`]) is rolled back: a canary that gets no traffic cannot be judged.
pub const NO_EVIDENCE_FACTOR: u32 = 3;
/// The shortest wait for enough canary calls, whatever the step time.
pub const MIN_EVIDENCE_WAIT: Duration = Duration::from_secs(60);

/// What the loop does to and reads from the proxies.
pub trait Control {
    /// Sets the canary's weight on every caller.
    fn set_weight(&mut self, weight: u8) -> impl Future<Output = Result<(), String>> + Send;
    /// The canary instances' summed inbound reading.
    fn canary(&mut self) -> impl Future<Output = Result<Reading, String>> + Send;
    /// The stable instances' summed inbound reading.
    fn stable(&mut self) -> impl Future<Output = Result<Reading, String>> + Send;
    /// Called after every reading (saves the record, prints progress).
    fn progress(&mut self, record: &Record, line: Option<String>);
}

/// The pacing of a rollout.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<u8>,
    pub step_time: Duration,
    pub interval: Duration,
    pub thresholds: Thresholds,
}

/// Runs the steps; the record ends promoted or rolled back (with the weight set back to 0).
pub async fn run<C: Control>(c: &mut C, plan: &Plan, rec: &mut Record) {
    if let Err(reason) = steps(c, plan, rec).await {
        let undone = c.set_weight(0).await;
        let reason = match undone {
            Ok(()) => reason,
            Err(e) => format!("{reason}; setting the weight back to 0 failed too: {e}"),
        };
        let weight = rec.steps.last().map(|s| s.weight).unwrap_or(0);
        rec.finish(State::RolledBack, Some(reason.clone()));
        c.progress(rec, Some(format!("rolled back at {weight}%: {reason}")));
        return;
    }
    rec.finish(State::Promoted, None);
    c.progress(rec, Some("promoted, the canary takes every call".into()));
}

/// Err(reason) on the first breach or failure.
async fn steps<C: Control>(c: &mut C, plan: &Plan, rec: &mut Record) -> Result<(), String> {
    let stable_start = c.stable().await?;
    for &weight in &plan.steps {
        rec.steps.push(Step::new(weight));
        c.set_weight(weight).await?;
        c.progress(rec, Some(format!("{weight}% of calls to the canary")));
        let canary_start = c.canary().await?;
        let began = Instant::now();
        let give_up = (plan.step_time * NO_EVIDENCE_FACTOR).max(MIN_EVIDENCE_WAIT);
        loop {
            tokio::time::sleep(plan.interval).await;
            let canary = c.canary().await?.since(&canary_start);
            let stable = c.stable().await?.since(&stable_start);
            let verdict = judge(&canary, &stable, &plan.thresholds);
            let elapsed = began.elapsed();
            rec.observe(canary, stable, &verdict, elapsed);
            c.progress(rec, None);
            match verdict {
                Verdict::Breach(reason) => return Err(reason),
                Verdict::Healthy if elapsed >= plan.step_time => break,
                Verdict::TooFewCalls if elapsed >= give_up => {
                    return Err(format!(
                        "only {} canary calls in {elapsed:.0?} (need {})",
                        canary.calls, plan.thresholds.min_calls
                    ));
                }
                _ => {}
            }
        }
        c.progress(rec, Some(format!("{weight}% healthy")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted platform: `rate` calls a second, split by the weight; the canary fails
    /// every call when `faulty`. Readings advance with (paused) time.
    struct Fake {
        weight: u8,
        weights: Vec<u8>,
        rate: u64,
        faulty: bool,
        last: Instant,
        canary: Reading,
        stable: Reading,
        failed_user_calls: u64,
    }

    impl Fake {
        fn new(rate: u64, faulty: bool) -> Self {
            Self {
                weight: 0,
                weights: Vec::new(),
                rate,
                faulty,
                last: Instant::now(),
                canary: Reading::default(),
                stable: Reading::default(),
                failed_user_calls: 0,
            }
        }

        /// Moves the counters on by the calls made since the last look.
        fn advance(&mut self) {
            let ms = self.last.elapsed().as_millis() as u64;
            self.last = Instant::now();
            let calls = self.rate * ms / 1000;
            let to_canary = calls * u64::from(self.weight) / 100;
            self.canary.calls += to_canary;
            if self.faulty {
                self.canary.errors += to_canary;
                self.failed_user_calls += to_canary;
            }
            self.stable.calls += calls - to_canary;
        }
    }

    impl Control for Fake {
        async fn set_weight(&mut self, weight: u8) -> Result<(), String> {
            self.advance();
            self.weight = weight;
            self.weights.push(weight);
            Ok(())
        }
        async fn canary(&mut self) -> Result<Reading, String> {
            self.advance();
            Ok(self.canary.clone())
        }
        async fn stable(&mut self) -> Result<Reading, String> {
            self.advance();
            Ok(self.stable.clone())
        }
        fn progress(&mut self, _record: &Record, _line: Option<String>) {}
    }

    fn plan() -> Plan {
        Plan {
            steps: vec![5, 25, 50, 100],
            step_time: Duration::from_secs(30),
            interval: Duration::from_secs(1),
            thresholds: Thresholds::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_canary_goes_through_every_step_for_its_step_time() {
        let mut fake = Fake::new(100, false);
        let mut rec = Record::new("svc", Thresholds::default());
        let began = Instant::now();
        run(&mut fake, &plan(), &mut rec).await;
        assert_eq!(rec.state, State::Promoted, "{:?}", rec.reason);
        assert_eq!(fake.weights, [5, 25, 50, 100]);
        let took = began.elapsed();
        assert!(
            took >= Duration::from_secs(120) && took <= Duration::from_secs(125),
            "{took:?}"
        );
        assert_eq!(rec.steps.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_faulty_canary_is_rolled_back_as_soon_as_it_can_be_judged() {
        let mut fake = Fake::new(100, true);
        let mut rec = Record::new("svc", Thresholds::default());
        let began = Instant::now();
        run(&mut fake, &plan(), &mut rec).await;
        assert_eq!(rec.state, State::RolledBack);
        assert_eq!(fake.weights, [5, 0], "back to 0 from the first step");
        // 5 canary calls a second: 10 calls (min_calls) after 2 s, judged at that reading.
        assert_eq!(began.elapsed(), Duration::from_secs(2));
        assert_eq!(fake.failed_user_calls, Thresholds::default().min_calls);
        assert!(
            rec.reason
                .as_deref()
                .is_some_and(|r| r.contains("error rate")),
            "{:?}",
            rec.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_canary_without_traffic_is_rolled_back_after_the_evidence_wait() {
        let mut fake = Fake::new(0, false);
        let mut rec = Record::new("svc", Thresholds::default());
        let began = Instant::now();
        run(&mut fake, &plan(), &mut rec).await;
        assert_eq!(rec.state, State::RolledBack);
        assert_eq!(fake.weights, [5, 0]);
        let give_up = (plan().step_time * NO_EVIDENCE_FACTOR).max(MIN_EVIDENCE_WAIT);
        assert_eq!(began.elapsed(), give_up);
        assert!(
            rec.reason
                .as_deref()
                .is_some_and(|r| r.contains("only 0 canary calls")),
            "{:?}",
            rec.reason
        );
    }
}
