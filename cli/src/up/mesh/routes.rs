//! How a caller's sidecar treats calls to each target service ([`ROUTES`]:
//! route deadlines and the read methods the mesh may retry), as the
//! `[services.<target>]` tables of `tally-proxy`'s config.

use super::super::platform::ConfigContext;
use std::collections::BTreeMap;
use tally_proxy::config::{RetryConfig, ServiceConfig};

/// Default deadline of a unary call that carries no `grpc-timeout`.
pub const UNARY_ROUTE_TIMEOUT_MS: u64 = 10_000;
/// Attempts (first included) for methods a route marks idempotent.
pub const READ_ATTEMPTS: u32 = 3;
/// The one status the mesh retries: the endpoint was not there to answer.
const RETRYABLE_STATUS: &str = "UNAVAILABLE";

/// How a caller's sidecar treats calls to one target service.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub target: &'static str,
    /// Deadline for calls without `grpc-timeout`; 0 = none (streams).
    pub timeout_ms: u64,
    /// Methods retried on UNAVAILABLE (up to [`READ_ATTEMPTS`]), as
    /// `pkg.Service/Method`. Only reads: a call that may have changed
    /// something is never repeated by the mesh.
    pub idempotent: &'static [&'static str],
}

/// Outbound routes. Everything else (circuit breaker per endpoint, outlier
/// ejection, P2C load balancing over the target's replicas, bulkhead) uses
/// the proxy's defaults, listed in mesh-proxy/README.md.
pub const ROUTES: &[Route] = &[
    Route {
        target: "user",
        timeout_ms: UNARY_ROUTE_TIMEOUT_MS,
        idempotent: &[
            "tally.user.v1.UserService/GetJwks",
            "tally.user.v1.UserService/VerifyApiKey",
        ],
    },
    // Event feeds: `Subscribe` is a long-lived stream (no route deadline);
    // opening it again from the same cursor is safe, as is `GetHead`, and so
    // are the poll reads (a vote is never repeated by the mesh).
    Route {
        target: "polling",
        timeout_ms: 0,
        idempotent: &[
            "tally.events.v1.EventFeedService/Subscribe",
            "tally.events.v1.EventFeedService/GetHead",
            "tally.poll.v1.PollService/GetPoll",
            "tally.poll.v1.PollService/GetResults",
            "tally.poll.v1.PollService/ListPolls",
        ],
    },
    Route {
        target: "billing",
        timeout_ms: 0,
        idempotent: &[
            "tally.events.v1.EventFeedService/Subscribe",
            "tally.events.v1.EventFeedService/GetHead",
        ],
    },
    // Charge and Refund carry idempotency keys, but billing's saga already
    // retries them with its own backoff and budget; the mesh adding attempts
    // would multiply them. Reads and the health check are retried.
    Route {
        target: "payment",
        timeout_ms: UNARY_ROUTE_TIMEOUT_MS,
        idempotent: &[
            "tally.payment.v1.PaymentService/GetCharge",
            "tally.payment.v1.PaymentService/ListCharges",
            "grpc.health.v1.Health/Check",
        ],
    },
];

/// The route for `target` (no retries and no deadline when unlisted).
pub fn route(target: &str) -> Route {
    ROUTES
        .iter()
        .find(|r| r.target == target)
        .copied()
        .unwrap_or(Route {
            target: "",
            timeout_ms: 0,
            idempotent: &[],
        })
}

/// The `[services.<target>]` table for `target` at `endpoints`: its
/// [`route`], and the proxy's defaults for everything else.
pub fn service_config(target: &str, endpoints: Vec<String>) -> ServiceConfig {
    let r = route(target);
    let mut s = ServiceConfig::new(endpoints);
    s.timeout_ms = r.timeout_ms;
    s.retry = RetryConfig {
        max_attempts: if r.idempotent.is_empty() {
            1
        } else {
            READ_ATTEMPTS
        },
        retryable_statuses: vec![RETRYABLE_STATUS.into()],
        idempotent_methods: r.idempotent.iter().map(|m| (*m).into()).collect(),
        ..RetryConfig::default()
    };
    s
}

/// A `[services.<target>]` table per target in `ctx.endpoints`.
pub fn service_configs(ctx: &ConfigContext<'_>) -> BTreeMap<String, ServiceConfig> {
    ctx.endpoints
        .iter()
        .map(|(target, eps)| {
            let eps = eps.iter().map(|a| a.to_string()).collect();
            (target.clone(), service_config(target, eps))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::mesh::test_plan::{plan, proxy};

    #[test]
    fn payment_writes_are_never_retried_by_the_mesh() {
        let plan = plan();
        let billing = proxy(&plan, "billing-proxy");
        let payment = &billing.services["payment"];
        for m in &payment.retry.idempotent_methods {
            assert!(
                !m.ends_with("/Charge") && !m.ends_with("/Refund") && m != "*",
                "{m}"
            );
        }
        for r in ROUTES {
            for m in r.idempotent {
                assert!(m.contains('/'), "{m}: use pkg.Service/Method");
            }
        }
    }

    #[test]
    fn poll_reads_are_retried_and_poll_writes_never() {
        let polling = route("polling").idempotent;
        assert!(polling.contains(&"tally.poll.v1.PollService/GetResults"));
        for w in ["CastVote", "CreatePoll", "ClosePoll"] {
            assert!(!polling.iter().any(|m| m.ends_with(w)), "{w}");
        }
    }

    #[test]
    fn unlisted_targets_get_no_retries_and_no_deadline() {
        let s = service_config("nobody", vec!["127.0.0.1:1".into()]);
        assert_eq!((s.timeout_ms, s.retry.max_attempts), (0, 1));
        assert!(s.retry.idempotent_methods.is_empty());
        let user = service_config("user", vec!["127.0.0.1:1".into()]);
        assert_eq!(user.retry.max_attempts, READ_ATTEMPTS);
        assert_eq!(user.retry.retryable_statuses, ["UNAVAILABLE"]);
        // Everything tally up does not set is the proxy's own default.
        assert_eq!(
            user.retry.budget_ratio,
            tally_proxy::config::RetryConfig::default().budget_ratio
        );
    }
}
