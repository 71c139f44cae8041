//! What a run observed and the verdicts on it: per-method call outcomes and latencies, the
//! SLO checks (success rate, p99 by nearest rank over every call), the vote invariant
//! (each accepted vote counted exactly once in polling's results), and the printed report.

use super::scenario::{Method, Slo};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// One load call's outcome: `None` for OK, else the gRPC code name.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    pub latency: Duration,
    pub error: Option<&'static str>,
}

/// Every call of a run.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub calls: Vec<Call>,
}

/// Counts and latencies of the calls an SLO looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub total: usize,
    pub ok: usize,
    pub p99: Duration,
    /// Failures by gRPC code.
    pub errors: BTreeMap<&'static str, usize>,
}

impl Summary {
    pub fn success_rate(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.ok as f64 / self.total as f64
        }
    }
}

impl Observed {
    /// Summary of `method`'s calls (`None`: every call).
    pub fn summary(&self, method: Option<Method>) -> Summary {
        let calls: Vec<&Call> = self
            .calls
            .iter()
            .filter(|c| method.is_none_or(|m| m == c.method))
            .collect();
        let mut latencies: Vec<Duration> = calls.iter().map(|c| c.latency).collect();
        latencies.sort();
        let mut errors = BTreeMap::new();
        for e in calls.iter().filter_map(|c| c.error) {
            *errors.entry(e).or_insert(0) += 1;
        }
        Summary {
            total: calls.len(),
            ok: calls.iter().filter(|c| c.error.is_none()).count(),
            p99: percentile(&latencies, 99),
            errors,
        }
    }
}

/// Nearest-rank percentile of sorted values (zero when there are none).
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// One checked verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What was checked, e.g. `slo GetPoll success rate >= 95.00%`.
    pub name: String,
    pub met: bool,
    /// What was seen.
    pub detail: String,
}

/// The SLO verdicts of `slos` on `observed`.
pub fn slo_verdicts(slos: &[Slo], observed: &Observed) -> Vec<Verdict> {
    let mut out = Vec::new();
    for s in slos {
        let sum = observed.summary(s.method());
        if let Some(min) = s.min_success_rate {
            let rate = sum.success_rate();
            out.push(Verdict {
                name: format!("slo {} success rate >= {:.2}%", s.method, min * 100.0),
                met: sum.total > 0 && rate >= min,
                detail: format!(
                    "{:.2}% of {} calls succeeded{}",
                    rate * 100.0,
                    sum.total,
                    errors_text(&sum.errors)
                ),
            });
        }
        if let Some(max) = s.max_p99 {
            out.push(Verdict {
                name: format!("slo {} p99 <= {max:?}", s.method),
                met: sum.total > 0 && sum.p99 <= max,
                detail: format!("p99 {:?} over {} calls", sum.p99, sum.total),
            });
        }
    }
    out
}

fn errors_text(errors: &BTreeMap<&'static str, usize>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let list: Vec<String> = errors.iter().map(|(c, n)| format!("{c} x{n}")).collect();
    format!(" (failed: {})", list.join(", "))
}

/// Accepted votes per poll and option, and what polling's results say.
pub type Counts = BTreeMap<String, BTreeMap<String, u64>>;

/// Every accepted vote counted exactly once: the results of each poll equal the accepted
/// votes, option by option (a vote lost or counted twice shows as a difference).
pub fn votes_counted_once(accepted: &Counts, results: &Counts, unsettled: usize) -> Verdict {
    let mut diffs = Vec::new();
    let total: u64 = accepted.values().flat_map(|o| o.values()).sum();
    for (poll, options) in accepted.iter().chain(results.iter()) {
        for option in options.keys() {
            let a = accepted.get(poll).and_then(|o| o.get(option)).copied();
            let r = results.get(poll).and_then(|o| o.get(option)).copied();
            if a.unwrap_or(0) != r.unwrap_or(0) {
                let d = format!(
                    "poll {poll} option {option}: {} accepted, {} counted",
                    a.unwrap_or(0),
                    r.unwrap_or(0)
                );
                if !diffs.contains(&d) {
                    diffs.push(d);
                }
            }
        }
    }
    let met = diffs.is_empty() && unsettled == 0;
    let mut detail = format!("{total} accepted votes");
    if unsettled > 0 {
        let _ = write!(detail, "; {unsettled} votes with an unknown outcome");
    }
    if !diffs.is_empty() {
        let _ = write!(detail, "; {}", diffs.join("; "));
    }
    Verdict {
        name: "invariant votes counted exactly once".into(),
        met,
        detail,
    }
}

/// The report: the load per method, the event log, then each verdict.
pub fn render(name: &str, observed: &Observed, events: &[String], verdicts: &[Verdict]) -> String {
    let mut out = format!("chaos scenario: {name}\nload:\n");
    for m in Method::ALL {
        let s = observed.summary(Some(m));
        if s.total == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<17} {:>6} calls  {:>7.2}% ok  p99 {:?}{}",
            m.name(),
            s.total,
            s.success_rate() * 100.0,
            s.p99,
            errors_text(&s.errors)
        );
    }
    if !events.is_empty() {
        out.push_str("events:\n");
        for e in events {
            let _ = writeln!(out, "  {e}");
        }
    }
    out.push_str("verdicts:\n");
    for v in verdicts {
        let mark = if v.met { "MET    " } else { "NOT MET" };
        let _ = writeln!(out, "  {mark} {}: {}", v.name, v.detail);
    }
    let failed = verdicts.iter().filter(|v| !v.met).count();
    let _ = writeln!(
        out,
        "{} of {} verdicts met",
        verdicts.len() - failed,
        verdicts.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: Method, ms: u64, error: Option<&'static str>) -> Call {
        Call {
            method,
            latency: Duration::from_millis(ms),
            error,
        }
    }

    fn slo(method: &str, rate: Option<f64>, p99_ms: Option<u64>) -> Slo {
        Slo {
            method: method.into(),
            min_success_rate: rate,
            max_p99: p99_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn nearest_rank_percentile() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..10], 99), Duration::from_millis(10));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 99), Duration::ZERO);
    }

    #[test]
    fn slos_are_met_or_not_per_method_and_overall() {
        let mut obs = Observed::default();
        for i in 0..98 {
            obs.calls.push(call(Method::GetPoll, 10 + i % 5, None));
        }
        obs.calls
            .push(call(Method::GetPoll, 900, Some("UNAVAILABLE")));
        obs.calls
            .push(call(Method::GetPoll, 20, Some("UNAVAILABLE")));
        obs.calls.push(call(Method::CastVote, 30, None));
        let v = slo_verdicts(
            &[
                slo("GetPoll", Some(0.98), Some(50)),
                slo("GetPoll", Some(0.99), None),
                slo("CastVote", Some(1.0), Some(30)),
                slo("all", None, Some(10)),
                slo("GetResults", Some(0.5), None),
            ],
            &obs,
        );
        let met: Vec<(&str, bool)> = v.iter().map(|v| (v.name.as_str(), v.met)).collect();
        assert_eq!(
            met,
            [
                ("slo GetPoll success rate >= 98.00%", true),
                ("slo GetPoll p99 <= 50ms", true),
                ("slo GetPoll success rate >= 99.00%", false),
                ("slo CastVote success rate >= 100.00%", true),
                ("slo CastVote p99 <= 30ms", true),
                ("slo all p99 <= 10ms", false),
                ("slo GetResults success rate >= 50.00%", false),
            ]
        );
        assert!(v[2].detail.contains("UNAVAILABLE x2"), "{}", v[2].detail);
        assert!(v[6].detail.contains("of 0 calls"), "no calls is not a pass");
    }

    fn counts(rows: &[(&str, &str, u64)]) -> Counts {
        let mut c = Counts::new();
        for (p, o, n) in rows {
            c.entry(p.to_string())
                .or_default()
                .insert(o.to_string(), *n);
        }
        c
    }

    #[test]
    fn votes_lost_or_doubled_or_unsettled_break_the_invariant() {
        let accepted = counts(&[("p1", "a", 3), ("p1", "b", 1), ("p2", "a", 2)]);
        let same = counts(&[
            ("p1", "a", 3),
            ("p1", "b", 1),
            ("p2", "a", 2),
            ("p2", "b", 0),
        ]);
        let v = votes_counted_once(&accepted, &same, 0);
        assert!(v.met, "{v:?}");
        assert_eq!(v.detail, "6 accepted votes");
        let doubled = counts(&[("p1", "a", 4), ("p1", "b", 1), ("p2", "a", 2)]);
        let v = votes_counted_once(&accepted, &doubled, 0);
        assert!(!v.met);
        assert!(
            v.detail.contains("poll p1 option a: 3 accepted, 4 counted"),
            "{}",
            v.detail
        );
        let lost = counts(&[("p1", "a", 3), ("p1", "b", 1)]);
        let v = votes_counted_once(&accepted, &lost, 0);
        assert!(
            v.detail.contains("poll p2 option a: 2 accepted, 0 counted"),
            "{}",
            v.detail
        );
        let unknown = counts(&[("p1", "a", 3), ("p1", "b", 2), ("p2", "a", 2)]);
        let v = votes_counted_once(&accepted, &unknown, 0);
        assert!(!v.met, "a vote counted that was never accepted");
        let v = votes_counted_once(&accepted, &same, 2);
        assert!(!v.met && v.detail.contains("2 votes with an unknown outcome"));
    }

    #[test]
    fn the_report_names_each_verdict() {
        let mut obs = Observed::default();
        obs.calls.push(call(Method::GetResults, 5, None));
        let verdicts = [
            Verdict {
                name: "slo all p99 <= 1ms".into(),
                met: false,
                detail: "p99 5ms over 1 calls".into(),
            },
            Verdict {
                name: "invariant votes counted exactly once".into(),
                met: true,
                detail: "0 accepted votes".into(),
            },
        ];
        let r = render("t", &obs, &["2.0s set fault".into()], &verdicts);
        assert!(r.contains("GetResults"), "{r}");
        assert!(!r.contains("GetPoll"), "{r}");
        assert!(r.contains("NOT MET slo all p99 <= 1ms: p99 5ms"), "{r}");
        assert!(
            r.contains("MET     invariant votes counted exactly once"),
            "{r}"
        );
        assert!(r.contains("2.0s set fault"), "{r}");
        assert!(r.ends_with("1 of 2 verdicts met\n"), "{r}");
    }
}
