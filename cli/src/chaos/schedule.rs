//! The fault schedule of a scenario: each fault set at its `at` and cleared at its end,
//! each kill at its `at`, in time order, run against a [`Control`] so the timing is tested
//! with paused time and the I/O lives in the driver.

use super::scenario::Scenario;
use std::time::Duration;

/// One thing the schedule does; indices point into the scenario's faults and kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SetFault(usize),
    ClearFault(usize),
    Kill(usize),
    RotateCert(usize),
}

/// The schedule's steps, by offset from the start of the load (clears first at a tie, so a
/// fault ending when the next one on the same route starts does not erase it).
pub fn timeline(s: &Scenario) -> Vec<(Duration, Action)> {
    let mut steps = Vec::new();
    for (i, f) in s.faults.iter().enumerate() {
        steps.push((f.at, Action::SetFault(i)));
        steps.push((s.fault_end(f), Action::ClearFault(i)));
    }
    for (i, k) in s.kills.iter().enumerate() {
        steps.push((k.at, Action::Kill(i)));
    }
    for (i, r) in s.rotations.iter().enumerate() {
        steps.push((r.at, Action::RotateCert(i)));
    }
    let rank = |a: &Action| match a {
        Action::ClearFault(_) => 0,
        Action::SetFault(_) => 1,
        Action::Kill(_) => 2,
        Action::RotateCert(_) => 3,
    };
    steps.sort_by_key(|(at, a)| (*at, rank(a)));
    steps
}

/// Carries out actions (the admin API and signals in the driver, a log in tests).
pub trait Control {
    /// Does `action`; the answer is a line for the report (an error is reported, not fatal).
    fn apply(&mut self, action: Action) -> impl Future<Output = Result<String, String>> + Send;
}

/// Runs `steps` from `start`, each at its offset; returns one report line per step.
pub async fn run<C: Control>(
    steps: &[(Duration, Action)],
    start: tokio::time::Instant,
    control: &mut C,
) -> Vec<String> {
    let mut log = Vec::new();
    for (at, action) in steps {
        tokio::time::sleep_until(start + *at).await;
        let line = match control.apply(*action).await {
            Ok(l) => l,
            Err(e) => format!("FAILED {e}"),
        };
        log.push(format!("{:>7.1}s  {line}", at.as_secs_f64()));
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn scenario() -> Scenario {
        Scenario::parse(
            "t",
            r#"
name = "t"
[load]
duration = "10s"
rate = { GetPoll = 1 }
[[fault]]
sidecar = "p"
route = "inbound"
at = "5s"
abort_percent = 10
[[fault]]
sidecar = "p"
route = "inbound"
at = "1s"
until = "5s"
delay_percent = 10
delay_ms = 10
[[kill]]
instance = "polling"
signal = "SIGTERM"
at = "3s"
[[rotate_cert]]
instance = "polling-proxy"
at = "3s"
"#,
        )
        .expect("scenario")
    }

    #[test]
    fn steps_in_time_order_with_clears_first() {
        let t = timeline(&scenario());
        let s = Duration::from_secs;
        assert_eq!(
            t,
            [
                (s(1), Action::SetFault(1)),
                (s(3), Action::Kill(0)),
                (s(3), Action::RotateCert(0)),
                (s(5), Action::ClearFault(1)),
                (s(5), Action::SetFault(0)),
                (s(10), Action::ClearFault(0)),
            ]
        );
    }

    struct Recorder {
        start: Instant,
        seen: Vec<(Duration, Action)>,
    }

    impl Control for Recorder {
        async fn apply(&mut self, action: Action) -> Result<String, String> {
            self.seen.push((self.start.elapsed(), action));
            match action {
                Action::Kill(_) => Err("no such instance".into()),
                _ => Ok(format!("{action:?}")),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_step_runs_at_its_offset_and_failures_are_reported() {
        let steps = timeline(&scenario());
        let start = Instant::now();
        let mut r = Recorder {
            start,
            seen: Vec::new(),
        };
        let log = run(&steps, start, &mut r).await;
        assert_eq!(r.seen, steps, "every step at exactly its offset");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(log[0], "    1.0s  SetFault(1)");
        assert_eq!(log[1], "    3.0s  FAILED no such instance");
        assert_eq!(log.len(), 6);
    }
}
