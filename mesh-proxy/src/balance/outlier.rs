//! Outlier ejection over one service's endpoints (Envoy's `consecutive_5xx` detector): an
//! endpoint with too many consecutive failures leaves the load balancer for
//! `base_ejection_time × times ejected` (capped), with one floor rule: never eject more than
//! `max_ejection_percent` of the set (but at least one may go), and always keep one endpoint.

use crate::config::OutlierConfig;
use crate::defaults as d;
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    consecutive: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    returned_at: Option<Instant>,
}

/// Whether an endpoint may be picked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    Ejected,
    /// Its ejection just ended: available again (worth a log line).
    Returned,
}

/// What one recorded failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Nothing,
    /// Ejected for this long.
    Ejected(Duration),
    /// Would have been ejected, but the floor rule kept it.
    FloorReached {
        ejected: usize,
        limit: usize,
    },
}

pub struct Outliers {
    consecutive_5xx: u32,
    interval: Duration,
    base_ejection_time: Duration,
    max_ejection_percent: u32,
    states: Vec<Mutex<State>>,
}

impl Outliers {
    /// Detector for `n` endpoints, addressed by index.
    pub fn new(cfg: &OutlierConfig, n: usize) -> Self {
        Self {
            consecutive_5xx: cfg.consecutive_5xx,
            interval: Duration::from_millis(cfg.interval_ms),
            base_ejection_time: Duration::from_millis(cfg.base_ejection_time_ms),
            max_ejection_percent: cfg.max_ejection_percent,
            states: (0..n).map(|_| Mutex::new(State::default())).collect(),
        }
    }

    /// Checks (and updates) endpoint `i`'s ejection at `now`.
    pub fn availability(&self, i: usize, now: Instant) -> Availability {
        let Some(m) = self.states.get(i) else {
            return Availability::Available;
        };
        let mut o = m.lock();
        match o.ejected_until {
            Some(t) if now < t => Availability::Ejected,
            Some(_) => {
                o.ejected_until = None;
                o.consecutive = 0;
                o.returned_at = Some(now);
                Availability::Returned
            }
            None => {
                // Envoy-style decay: each healthy interval after a return forgives one ejection,
                // counted from the clock rather than from how often the endpoint is looked at
                // (the balancer samples a few endpoints per call, not all of them).
                if let Some(r) = o.returned_at
                    && o.times_ejected > 0
                {
                    let interval_ns = self.interval.as_nanos().max(1);
                    let passed = now.duration_since(r).as_nanos() / interval_ns;
                    let forgiven = u32::try_from(passed)
                        .unwrap_or(u32::MAX)
                        .min(o.times_ejected);
                    if forgiven > 0 {
                        o.times_ejected -= forgiven;
                        o.returned_at = Some(r + self.interval.saturating_mul(forgiven));
                    }
                }
                Availability::Available
            }
        }
    }

    /// Records one classified call of endpoint `i` (`failed`: it counts against the endpoint).
    pub fn record(&self, i: usize, failed: bool, now: Instant) -> Recorded {
        let Some(m) = self.states.get(i) else {
            return Recorded::Nothing;
        };
        {
            let mut o = m.lock();
            if !failed {
                o.consecutive = 0;
                return Recorded::Nothing;
            }
            o.consecutive += 1;
            if o.consecutive < self.consecutive_5xx || o.ejected_until.is_some() {
                return Recorded::Nothing;
            }
        }
        let n = self.states.len();
        let ejected = self
            .states
            .iter()
            .filter(|s| s.lock().ejected_until.is_some_and(|t| t > now))
            .count();
        let by_percent = ((n as u64 * u64::from(self.max_ejection_percent)) / 100).max(1) as usize;
        let limit = by_percent.min(n.saturating_sub(1));
        let mut o = m.lock();
        o.consecutive = 0;
        if ejected >= limit {
            return Recorded::FloorReached { ejected, limit };
        }
        o.times_ejected += 1;
        let max =
            Duration::from_millis(d::OUTLIER_MAX_EJECTION_TIME_MS).max(self.base_ejection_time);
        let time = self
            .base_ejection_time
            .saturating_mul(o.times_ejected)
            .min(max);
        o.ejected_until = Some(now + time);
        Recorded::Ejected(time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: percent,
        }
    }

    fn fail(o: &Outliers, i: usize, times: u32) -> Recorded {
        let mut last = Recorded::Nothing;
        for _ in 0..times {
            last = o.record(i, true, Instant::now());
        }
        last
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_base_time_then_return() {
        let o = Outliers::new(&cfg(100), 3);
        assert_eq!(fail(&o, 0, 2), Recorded::Nothing);
        // A success in between resets the count.
        o.record(0, false, Instant::now());
        assert_eq!(fail(&o, 0, 2), Recorded::Nothing);
        assert_eq!(fail(&o, 0, 1), Recorded::Ejected(Duration::from_secs(30)));
        assert_eq!(o.availability(0, Instant::now()), Availability::Ejected);
        assert_eq!(o.availability(1, Instant::now()), Availability::Available);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        assert_eq!(o.availability(0, Instant::now()), Availability::Available);
    }

    #[tokio::test(start_paused = true)]
    async fn repeat_ejections_grow_and_healthy_intervals_forgive() {
        let o = Outliers::new(&cfg(100), 2);
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        // Two healthy intervals forgive both earlier ejections.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(o.availability(0, Instant::now()), Availability::Available);
        }
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_intervals_forgive_even_when_the_endpoint_is_looked_at_rarely() {
        let o = Outliers::new(&cfg(100), 2);
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        // One look after 1.5 intervals forgives one ejection, the next look half an interval
        // later the second: the clock counts, not the number of looks.
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Available);
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        // Twenty seconds without a look forgive both ejections at once.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Available);
        assert_eq!(fail(&o, 0, 3), Recorded::Ejected(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn floor_rule_caps_by_percent_but_lets_one_go() {
        // 10 % of 4 endpoints rounds down to 0, yet one may be ejected.
        let o = Outliers::new(&cfg(10), 4);
        assert!(matches!(fail(&o, 0, 3), Recorded::Ejected(_)));
        assert_eq!(
            fail(&o, 1, 3),
            Recorded::FloorReached {
                ejected: 1,
                limit: 1
            }
        );
        assert_eq!(o.availability(1, Instant::now()), Availability::Available);
        // 50 % of 4: two may go, not three.
        let o = Outliers::new(&cfg(50), 4);
        assert!(matches!(fail(&o, 0, 3), Recorded::Ejected(_)));
        assert!(matches!(fail(&o, 1, 3), Recorded::Ejected(_)));
        assert_eq!(
            fail(&o, 2, 3),
            Recorded::FloorReached {
                ejected: 2,
                limit: 2
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn floor_rule_always_keeps_one_endpoint() {
        let o = Outliers::new(&cfg(100), 1);
        assert_eq!(
            fail(&o, 0, 3),
            Recorded::FloorReached {
                ejected: 0,
                limit: 0
            }
        );
        let o = Outliers::new(&cfg(100), 2);
        assert!(matches!(fail(&o, 0, 3), Recorded::Ejected(_)));
        assert!(matches!(fail(&o, 1, 3), Recorded::FloorReached { .. }));
        // Once the first returns, the second may go.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(o.availability(0, Instant::now()), Availability::Returned);
        assert!(matches!(fail(&o, 1, 3), Recorded::Ejected(_)));
    }
}
