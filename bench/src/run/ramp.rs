//! The open-loop maximum-throughput search (`--ramp`): geometric rate steps until one fails,
//! then bisection between the last passing and the first failing rate.

use crate::load::{PhaseResult, Target, Workload, run_phase};
use std::time::Duration;

/// The maximum-throughput search: geometric steps up until a step fails, then a few
/// bisection steps between the last good and the first failed rate.
#[derive(Debug, Clone)]
pub struct RampOptions {
    /// Run the search at all.
    pub enabled: bool,
    /// Calls per second of the first step.
    pub start_rate: f64,
    /// Rate multiplier from one step to the next while steps pass.
    pub factor: f64,
    /// Length of each step.
    pub step: Duration,
    /// Most geometric steps before the search stops.
    pub max_steps: u32,
    /// Bisection steps between the last passing and the first failing rate.
    pub refine_steps: u32,
    /// A step fails when its p99 is above this.
    pub p99_limit_ms: f64,
    /// A step fails when it achieves less than this fraction of its target rate.
    pub min_achieved: f64,
    /// Repetitions of a failing step before it counts as failed.
    pub step_retries: u32,
}

/// One step of the throughput search.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Step {
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) p99_ms: f64,
    pub(crate) failed: u64,
    pub(crate) passed: bool,
}

fn step_of(r: &PhaseResult, ramp: &RampOptions) -> Step {
    let achieved = r.achieved_rate();
    let p99 = r.quantile_ms(0.99);
    // More than 0.1 % failed calls, too little throughput, or a p99 past the limit.
    let passed = r.ok > 0
        && r.failed() * 1_000 <= r.scheduled
        && achieved >= ramp.min_achieved * r.target_rate
        && p99 <= ramp.p99_limit_ms;
    Step {
        target_rate: r.target_rate,
        achieved_rate: achieved,
        p99_ms: p99,
        failed: r.failed(),
        passed,
    }
}

pub(super) async fn ramp(
    target: &Target,
    ramp: &RampOptions,
    call_timeout: Duration,
) -> (Vec<Step>, Option<f64>, bool) {
    let mut steps = Vec::new();
    let mut best: Option<f64> = None;
    let mut good_rate: Option<f64> = None;
    let mut bad_rate: Option<f64> = None;
    let mut rate = ramp.start_rate;
    let mut record = |step: Step, best: &mut Option<f64>| {
        if step.passed {
            *best = Some(best.map_or(step.achieved_rate, |b: f64| b.max(step.achieved_rate)));
        }
        steps.push(step);
    };
    for _ in 0..ramp.max_steps {
        let passed = run_step(target, ramp, rate, call_timeout, &mut record, &mut best).await;
        if passed {
            good_rate = Some(rate);
            rate *= ramp.factor;
        } else {
            bad_rate = Some(rate);
            break;
        }
    }
    let capped = bad_rate.is_none();
    if let (Some(mut good), Some(mut bad)) = (good_rate, bad_rate) {
        for _ in 0..ramp.refine_steps {
            let mid = (good * bad).sqrt();
            if run_step(target, ramp, mid, call_timeout, &mut record, &mut best).await {
                good = mid;
            } else {
                bad = mid;
            }
        }
    }
    (steps, best, capped)
}

/// Runs one step at `rate`; a failing step is repeated up to `ramp.step_retries` times,
/// so a burst of noise from other processes on the machine does not end the search
/// (a saturated setup fails every repetition).
async fn run_step(
    target: &Target,
    ramp: &RampOptions,
    rate: f64,
    call_timeout: Duration,
    record: &mut impl FnMut(Step, &mut Option<f64>),
    best: &mut Option<f64>,
) -> bool {
    for _ in 0..=ramp.step_retries {
        let r = run_phase(target, Workload::Unary, rate, ramp.step, call_timeout).await;
        let step = step_of(&r, ramp);
        let passed = step.passed;
        record(step, best);
        settle().await;
        if passed {
            return true;
        }
    }
    false
}

/// A pause between steps so the backlog of an overloaded step is gone.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
