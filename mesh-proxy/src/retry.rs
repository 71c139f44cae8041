//! Retries, opt-in per route, plus transparent retries on every route (outside the policy and
//! its budget) for a call the chosen endpoint never processed (connect failure, REFUSED_STREAM,
//! GOAWAY). Own implementation rather than tower-resilience's `Retry` (which needs
//! `Req: Clone`) because it must: read
//! `grpc-status` from trailers as well as headers (peeking the first response frame), share a
//! per-destination budget, honour `grpc-retry-pushback-ms`, never start an attempt past the
//! call's deadline, and steer the next attempt to another endpoint. Request bodies stream
//! through a replay body that keeps a copy up to a limit; bigger requests are not retried.

use crate::balance::{AvoidEndpoint, ServedBy};
use crate::body::{self, Body, Peeked};
use crate::budget::RetryBudget;
use crate::config::RetryConfig;
use crate::deadline::{Deadline, set_remaining};
use crate::defaults::{RETRY_PEEK_WAIT, TRANSPARENT_RETRIES};
use crate::grpc::{self, Code};
use crate::layer::{Layer, Next};
use crate::metrics::{Metrics, RouteLabels, route as route_labels};
use crate::observe::CallInfo;
use crate::replay::Replay;
use crate::trace;
use crate::{Direction, ProxyError, Req, Rsp};
use http::HeaderMap;
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct Policy {
    pub route: String,
    pub max_attempts: u32,
    pub statuses: Vec<Code>,
    pub idempotent: Vec<String>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub buffer_limit: usize,
    pub budget: RetryBudget,
}

impl Policy {
    pub fn from_config(route: &str, c: &RetryConfig, buffer_limit: usize) -> Self {
        Self {
            route: route.to_string(),
            max_attempts: c.max_attempts,
            statuses: c
                .retryable_statuses
                .iter()
                .filter_map(|s| Code::from_name(s))
                .collect(),
            idempotent: c.idempotent_methods.clone(),
            backoff_base: Duration::from_millis(c.backoff_base_ms),
            backoff_max: Duration::from_millis(c.backoff_max_ms),
            buffer_limit,
            budget: RetryBudget::new(
                c.budget_ratio,
                c.budget_min_per_second,
                Duration::from_millis(c.budget_window_ms),
            ),
        }
    }

    /// `Method`, `pkg.Service/Method` or `*` entries match the request path.
    pub fn is_idempotent(&self, path: &str) -> bool {
        let Some((svc, method)) = grpc::split_path(path) else {
            return false;
        };
        self.idempotent.iter().any(|m| {
            m == "*" || m == method || m.strip_prefix('/').unwrap_or(m) == format!("{svc}/{method}")
        })
    }

    fn retryable(&self, code: Code) -> bool {
        self.statuses.contains(&code)
    }

    /// Exponential backoff with full jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let cap = exp.min(self.backoff_max);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// What `grpc-retry-pushback-ms` says: `None` absent, `Some(None)` "do not retry", `Some(Some(d))` wait d.
pub fn pushback(map: &HeaderMap) -> Option<Option<Duration>> {
    let v = map.get("grpc-retry-pushback-ms")?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis),
    )
}

pub struct RetryLayer {
    policy: Policy,
    metrics: Arc<Metrics>,
    /// Metric labels of this route (retries are an outbound concern).
    labels: RouteLabels,
}

impl RetryLayer {
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Self {
        let labels = route_labels(Direction::Outbound.as_str(), &policy.route);
        Self {
            policy,
            metrics,
            labels,
        }
    }

    fn count_retry(&self, info: Option<&CallInfo>) {
        self.metrics.retries.get_or_create(&self.labels).inc();
        if let Some(i) = info {
            i.add_retry();
        }
    }
}

/// One attempt's outcome, reduced to what the retry decision needs, with its status when
/// known at that point (a streamed response's status comes later, in its trailers).
enum Outcome {
    Done(Result<Rsp, ProxyError>, Option<Code>),
    Retryable {
        status: Code,
        last: Result<Rsp, ProxyError>,
        pushback: Option<Option<Duration>>,
        endpoint: Option<String>,
    },
}

/// An error from one endpoint that never reached its app: another endpoint may do better.
fn endpoint_refused(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::Connect { .. } | ProxyError::Upstream { refused: true, .. }
    )
}

async fn classify(
    result: Result<Rsp, ProxyError>,
    policy: &Policy,
    retries_enabled: bool,
    idempotent: bool,
    replay: &Replay,
) -> Outcome {
    match result {
        Err(e) => {
            let endpoint = match &e {
                ProxyError::Connect { endpoint, .. } | ProxyError::Upstream { endpoint, .. } => {
                    Some(endpoint.clone())
                }
                _ => None,
            };
            // Without a policy, only the transparent retries (in `call`) apply.
            let retry = retries_enabled
                && (e.never_reached_app() || (idempotent && policy.retryable(e.code())));
            if retry {
                Outcome::Retryable {
                    status: e.code(),
                    last: Err(e),
                    pushback: None,
                    endpoint,
                }
            } else {
                let code = e.code();
                Outcome::Done(Err(e), Some(code))
            }
        }
        Ok(rsp) => {
            let endpoint = rsp.extensions().get::<ServedBy>().map(|s| s.0.clone());
            if !idempotent {
                let code = body::immediate_status(&rsp);
                return Outcome::Done(Ok(rsp), code);
            }
            let (status, push, rsp) = if let Some(code) = body::immediate_status(&rsp) {
                let push = pushback(rsp.headers());
                (Some(code), push, rsp)
            } else {
                let (parts, b) = rsp.into_parts();
                let (peeked, b) = peek_first(b, replay).await;
                let rsp = Rsp::from_parts(parts, b);
                match peeked {
                    Some(Peeked::Trailers(t)) => (grpc::status_of(&t), pushback(&t), rsp),
                    _ => (None, None, rsp),
                }
            };
            match status {
                Some(code) if policy.retryable(code) => Outcome::Retryable {
                    status: code,
                    last: Ok(rsp),
                    pushback: push,
                    endpoint,
                },
                code => Outcome::Done(Ok(rsp), code),
            }
        }
    }
}

/// Reads the first response frame (to find a status sent in trailers) if it arrives within a
/// short wait, or at any time once the caller's request is complete. An interactive stream,
/// whose caller may wait for the response before sending more, is not held up longer than the
/// wait; `None` means "not peeked".
async fn peek_first(mut b: Body, replay: &Replay) -> (Option<Peeked>, Body) {
    let wait = tokio::time::sleep(RETRY_PEEK_WAIT);
    tokio::pin!(wait);
    let first = tokio::select! {
        f = b.frame() => f,
        _ = replay.wait_complete() => b.frame().await,
        _ = &mut wait => return (None, b),
    };
    let (peeked, b) = body::unread(first, b);
    (Some(peeked), b)
}

/// What the retry layer does after an attempt, as the hop span's event says it.
#[derive(Clone, Copy)]
enum Then {
    Done,
    Retry(Duration),
    Transparent,
    GiveUp(&'static str),
}

/// The outcome of an attempt in a span event: the proxy error's reason, the status, or
/// `streaming` when the status will come later in the trailers.
fn outcome_label(result: &Result<Rsp, ProxyError>, status: Option<Code>) -> &'static str {
    match (result, status) {
        (Err(e), _) => e.reason(),
        (Ok(_), Some(c)) => c.name(),
        (Ok(_), None) => "streaming",
    }
}

/// Adds one `retry attempt` event to the hop span, when it is recorded.
fn attempt_event(ext: &http::Extensions, attempt: u32, outcome: &'static str, then: Then) {
    trace::event(ext, trace::names::ATTEMPT, || {
        let (next, backoff, why) = match then {
            Then::Done => ("done", Duration::ZERO, ""),
            Then::Retry(d) => ("retry", d, ""),
            Then::Transparent => ("retry", Duration::ZERO, "never-processed"),
            Then::GiveUp(why) => ("give-up", Duration::ZERO, why),
        };
        let mut kv = vec![
            KeyValue::new("attempt", i64::from(attempt)),
            KeyValue::new("outcome", outcome),
            KeyValue::new("next", next),
            KeyValue::new(
                "backoff_ms",
                i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX),
            ),
        ];
        if !why.is_empty() {
            kv.push(KeyValue::new("reason", why));
        }
        kv
    });
}

impl<N: Next<Error = ProxyError>> Layer<N> for RetryLayer {
    type Error = ProxyError;

    async fn handle(&self, req: Req, next: &N) -> Result<Rsp, ProxyError> {
        let policy = &self.policy;
        let (parts, b) = req.into_parts();
        let replay = Replay::new(b, policy.buffer_limit);
        policy.budget.deposit();
        let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
        let info = parts.extensions.get::<CallInfo>().cloned();
        let retries_enabled = policy.max_attempts > 1;
        let idempotent = retries_enabled && policy.is_idempotent(parts.uri.path());
        let max_attempts = policy.max_attempts.max(1);
        let mut attempt = 1u32;
        // Every attempt, transparent ones included, as the span events number them.
        let mut tries = 0u32;
        let mut transparent_left = TRANSPARENT_RETRIES;
        let mut avoid: Option<String> = None;
        let ext = &parts.extensions;
        loop {
            tries += 1;
            let mut req = Req::from_parts(parts.clone(), replay.body().boxed_unsync());
            if let Some(d) = deadline {
                set_remaining(&mut req, d)?;
            }
            if let Some(a) = avoid.take() {
                req.extensions_mut().insert(AvoidEndpoint(a));
            }
            let result = next.call(req).await;
            // An endpoint refused the call unprocessed (connect failure, REFUSED_STREAM, a
            // stream above its GOAWAY's last stream id): send it again at once, preferably
            // elsewhere, on every route and outside the retry budget.
            if let Err(
                e @ (ProxyError::Connect { endpoint, .. } | ProxyError::Upstream { endpoint, .. }),
            ) = &result
                && endpoint_refused(e)
                && transparent_left > 0
                && replay.is_replayable()
            {
                tracing::debug!(route = %policy.route, error = %e, "endpoint refused the call unprocessed; sending it again");
                attempt_event(ext, tries, e.reason(), Then::Transparent);
                transparent_left -= 1;
                avoid = Some(endpoint.clone());
                self.count_retry(info.as_ref());
                continue;
            }
            let (last, status, push, endpoint) =
                match classify(result, policy, retries_enabled, idempotent, &replay).await {
                    Outcome::Done(r, status) => {
                        attempt_event(ext, tries, outcome_label(&r, status), Then::Done);
                        return r;
                    }
                    Outcome::Retryable {
                        status,
                        last,
                        pushback,
                        endpoint,
                    } => (last, status, pushback, endpoint),
                };
            let outcome = outcome_label(&last, Some(status));
            let give_up = |why| {
                attempt_event(ext, tries, outcome, Then::GiveUp(why));
            };
            if attempt >= max_attempts {
                give_up("max-attempts");
                return last;
            }
            if !replay.is_replayable() {
                give_up("body-too-large");
                return last;
            }
            let delay = match push {
                Some(None) => {
                    give_up("pushback");
                    return last;
                }
                Some(Some(d)) => d,
                None => policy.backoff(attempt),
            };
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                give_up("deadline");
                return last;
            }
            if !policy.budget.withdraw() {
                self.metrics
                    .retry_budget_exhausted
                    .get_or_create(&self.labels)
                    .inc();
                tracing::debug!(route = %policy.route, "retry budget exhausted");
                give_up("budget");
                return last;
            }
            attempt_event(ext, tries, outcome, Then::Retry(delay));
            self.count_retry(info.as_ref());
            drop(last);
            tokio::time::sleep(delay).await;
            attempt += 1;
            avoid = endpoint;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(idem: &[&str]) -> Policy {
        let c = RetryConfig {
            idempotent_methods: idem.iter().map(|s| s.to_string()).collect(),
            max_attempts: 3,
            ..RetryConfig::default()
        };
        Policy::from_config("r", &c, 1024)
    }

    #[test]
    fn idempotency_matching() {
        assert!(policy(&["GetPoll"]).is_idempotent("/tally.poll.v1.PollService/GetPoll"));
        assert!(
            policy(&["tally.poll.v1.PollService/GetPoll"])
                .is_idempotent("/tally.poll.v1.PollService/GetPoll")
        );
        assert!(policy(&["*"]).is_idempotent("/a.B/C"));
        assert!(!policy(&["GetPoll"]).is_idempotent("/tally.poll.v1.PollService/CastVote"));
        assert!(!policy(&["*"]).is_idempotent("garbage"));
    }

    #[test]
    fn pushback_values() {
        let mut h = HeaderMap::new();
        assert_eq!(pushback(&h), None);
        h.insert("grpc-retry-pushback-ms", "15".parse().unwrap());
        assert_eq!(pushback(&h), Some(Some(Duration::from_millis(15))));
        h.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(pushback(&h), Some(None));
    }

    #[test]
    fn backoff_is_capped() {
        let p = policy(&[]);
        for a in 1..40 {
            assert!(p.backoff(a) <= p.backoff_max);
        }
    }
}
