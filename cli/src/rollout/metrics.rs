//! What a rollout reads from a sidecar's `/metrics`: calls, server-side errors and the
//! latency histogram of its inbound direction, summed over routes and callers, and the
//! difference between two readings (calls, error rate, p99).
//!
//! Hand-parsed: the proxy's own Prometheus text needs three metric families and nothing
//! of a full exposition-format parser.

use std::collections::BTreeMap;

/// The proxy's call counter (labels `direction`, `route`, `caller`, `grpc_status`).
const REQUESTS: &str = "tally_proxy_requests_total";
/// The proxy's call duration histogram buckets (labels `direction`, `route`, `le`).
const DURATION_BUCKET: &str = "tally_proxy_request_duration_seconds_bucket";
/// The side of the sidecar the instance's callers reach.
const INBOUND: &str = "inbound";
/// Statuses that say the instance failed, not the caller: client errors (INVALID_ARGUMENT,
/// NOT_FOUND, PERMISSION_DENIED, ...) never count against a canary.
pub const SERVER_ERRORS: &[&str] = &[
    "UNKNOWN",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "DEADLINE_EXCEEDED",
    "RESET",
];

/// One reading of one or more sidecars, inbound only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub calls: u64,
    pub errors: u64,
    /// Cumulative bucket counts by upper bound in seconds (`+Inf` as infinity).
    pub buckets: BTreeMap<Bound, u64>,
}

/// A histogram bucket bound, ordered as a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound(pub f64);

impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What happened between two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub calls: u64,
    pub errors: u64,
    /// 99th percentile as the upper bound of its bucket, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl Evidence {
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

/// `name{a="b",...} value` → (name, labels, value); `None` for comments and other shapes.
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        map.insert(k.trim(), v.trim_end_matches('"'));
    }
    Some((name, map, value))
}

impl Reading {
    /// Parses one sidecar's `/metrics` text.
    pub fn parse(text: &str) -> Self {
        let mut r = Reading::default();
        for (name, labels, value) in text.lines().filter_map(sample) {
            if labels.get("direction") != Some(&INBOUND) {
                continue;
            }
            let v = value as u64;
            if name == REQUESTS {
                r.calls += v;
                if labels
                    .get("grpc_status")
                    .is_some_and(|s| SERVER_ERRORS.contains(s))
                {
                    r.errors += v;
                }
            } else if name == DURATION_BUCKET {
                let le = match labels.get("le") {
                    Some(&"+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *r.buckets.entry(Bound(le)).or_default() += v;
            }
        }
        r
    }

    /// The sum of several sidecars' readings.
    pub fn sum(readings: impl IntoIterator<Item = Reading>) -> Self {
        let mut total = Reading::default();
        for r in readings {
            total.calls += r.calls;
            total.errors += r.errors;
            for (b, n) in r.buckets {
                *total.buckets.entry(b).or_default() += n;
            }
        }
        total
    }

    /// What happened since `earlier` (counters only grow; a restart reads as zero).
    pub fn since(&self, earlier: &Reading) -> Evidence {
        let calls = self.calls.saturating_sub(earlier.calls);
        let errors = self.errors.saturating_sub(earlier.errors);
        let delta: Vec<(Bound, u64)> = self
            .buckets
            .iter()
            .map(|(b, n)| {
                (
                    *b,
                    n.saturating_sub(earlier.buckets.get(b).copied().unwrap_or(0)),
                )
            })
            .collect();
        let total = delta.last().map(|(_, n)| *n).unwrap_or(0);
        let p99_ms = (total > 0)
            .then(|| {
                let want = (total as f64 * 0.99).ceil() as u64;
                delta
                    .iter()
                    .find(|(_, n)| *n >= want)
                    .map(|(b, _)| b.0 * 1000.0)
            })
            .flatten();
        Evidence {
            calls,
            errors,
            p99_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ok: u64, unavailable: u64, denied: u64, fast: u64, slow: u64) -> String {
        format!(
            "# HELP tally_proxy_requests Calls\n\
             tally_proxy_requests_total{{direction=\"inbound\",route=\"r\",caller=\"c\",grpc_status=\"OK\"}} {ok}\n\
             tally_proxy_requests_total{{direction=\"inbound\",route=\"r\",caller=\"c\",grpc_status=\"UNAVAILABLE\"}} {unavailable}\n\
             tally_proxy_requests_total{{direction=\"inbound\",route=\"r\",caller=\"c\",grpc_status=\"PERMISSION_DENIED\"}} {denied}\n\
             tally_proxy_requests_total{{direction=\"outbound\",route=\"r\",caller=\"c\",grpc_status=\"UNAVAILABLE\"}} 999\n\
             tally_proxy_request_duration_seconds_bucket{{direction=\"inbound\",route=\"r\",le=\"0.001\"}} {fast}\n\
             tally_proxy_request_duration_seconds_bucket{{direction=\"inbound\",route=\"r\",le=\"0.512\"}} {}\n\
             tally_proxy_request_duration_seconds_bucket{{direction=\"inbound\",route=\"r\",le=\"+Inf\"}} {}\n",
            fast + slow,
            fast + slow
        )
    }

    #[test]
    fn inbound_calls_server_errors_and_p99_between_two_readings() {
        let a = Reading::parse(&text(10, 0, 5, 15, 0));
        assert_eq!((a.calls, a.errors), (15, 0));
        let b = Reading::parse(&text(110, 10, 25, 130, 10));
        let e = b.since(&a);
        assert_eq!(
            (e.calls, e.errors),
            (130, 10),
            "client errors are calls, not errors"
        );
        assert!((e.error_rate() - 10.0 / 130.0).abs() < 1e-9);
        // 115 fast and 10 slow new calls: the 99th percentile is in the 512 ms bucket.
        assert_eq!(e.p99_ms, Some(512.0));
        let c = Reading::parse(&text(110, 10, 25, 230, 10));
        assert_eq!(c.since(&b).p99_ms, Some(1.0), "only fast calls since b");
        assert_eq!(b.since(&b).p99_ms, None, "no calls, no percentile");
    }

    #[test]
    fn readings_add_up_and_a_restart_reads_as_zero() {
        let a = Reading::parse(&text(1, 1, 0, 2, 0));
        let s = Reading::sum([a.clone(), a.clone()]);
        assert_eq!((s.calls, s.errors), (4, 2));
        assert_eq!(Reading::default().since(&s).calls, 0);
    }
}
