//! Prometheus metrics of the proxy, one registry, encoded as text by the admin listener.
//! Every label value comes from a bounded set: route labels are configured service names (or
//! `other`), so no request can add a series.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The label value for anything not in the configured set.
pub(crate) const OTHER: &str = "other";
/// Inbound gRPC service names learned from traffic when no authz rule names any (first come);
/// later names are `other`.
pub const MAX_LEARNED_ROUTE_LABELS: usize = 16;
/// Caller identities learned from traffic besides those the authz rules name; later ones
/// are `other`. Callers are certificate holders, so this only guards against a noisy CA.
pub(crate) const MAX_LEARNED_CALLER_LABELS: usize = 64;

/// A bounded set of label values: the configured ones, plus up to `learn` values seen first.
#[derive(Debug, Default)]
pub(crate) struct LabelSet {
    fixed: BTreeSet<String>,
    learned: Mutex<BTreeSet<String>>,
    learn: usize,
}

impl LabelSet {
    pub(crate) fn new(fixed: impl IntoIterator<Item = String>, learn: usize) -> Self {
        Self {
            fixed: fixed.into_iter().collect(),
            learned: Mutex::new(BTreeSet::new()),
            learn,
        }
    }

    /// The configured values.
    pub(crate) fn fixed(&self) -> impl Iterator<Item = &str> {
        self.fixed.iter().map(String::as_str)
    }

    /// `value` itself when known (or learnable), else [`OTHER`].
    pub(crate) fn get(&self, value: &str) -> String {
        if self.fixed.contains(value) {
            return value.to_string();
        }
        if self.learn == 0 {
            return OTHER.to_string();
        }
        let mut learned = self.learned.lock();
        if learned.contains(value) {
            return value.to_string();
        }
        if learned.len() < self.learn {
            learned.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

/// Where route and caller label values may come from, fixed at start from the config.
#[derive(Debug, Default)]
pub(crate) struct LabelPolicy {
    /// Outbound: configured target service names.
    pub(crate) outbound: LabelSet,
    /// Inbound: gRPC services the authz rules name.
    pub(crate) inbound: LabelSet,
    /// Inbound callers: identities the authz rules name.
    pub(crate) callers: LabelSet,
}

impl LabelPolicy {
    pub(crate) fn from_config(cfg: &crate::config::Config) -> Self {
        let rules = cfg.inbound.as_ref().map_or(&[][..], |i| &i.authz[..]);
        let services: BTreeSet<String> = rules
            .iter()
            .filter(|r| r.service != "*")
            .map(|r| r.service.clone())
            .collect();
        let learn_routes = if services.is_empty() {
            MAX_LEARNED_ROUTE_LABELS
        } else {
            0
        };
        let callers = rules
            .iter()
            .flat_map(|r| r.allow.iter())
            .filter(|a| *a != "*")
            .cloned();
        Self {
            outbound: LabelSet::new(cfg.services.keys().map(|k| k.to_ascii_lowercase()), 0),
            inbound: LabelSet::new(services, learn_routes),
            callers: LabelSet::new(callers, MAX_LEARNED_CALLER_LABELS),
        }
    }

    /// The outbound route label for a target host, resolved as the router does
    /// (`user`, `user.tally.svc` → `user`).
    #[cfg(test)]
    pub(crate) fn outbound_route(&self, host: &str) -> String {
        let first = host.split('.').next().unwrap_or(host);
        for candidate in [host, first] {
            let v = self.outbound.get(candidate);
            if v != OTHER {
                return v;
            }
        }
        OTHER.to_string()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) direction: String,
    pub(crate) route: String,
    pub(crate) caller: String,
    pub(crate) grpc_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) direction: String,
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub(crate) route: String,
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    pub(crate) route: String,
    pub(crate) endpoint: String,
    /// A failure kind name (`connect-failure`, `reset`, ...) or `grpc-<STATUS>` / `http-<code>`.
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub(crate) direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DenyLabels {
    pub(crate) route: String,
    pub(crate) caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FaultLabels {
    pub(crate) direction: String,
    pub(crate) route: String,
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GatewayLabels {
    pub(crate) route: String,
    pub(crate) grpc_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ScopeLabels {
    pub(crate) scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

pub(crate) struct Metrics {
    registry: Registry,
    /// Where route and caller label values may come from.
    pub(crate) labels: LabelPolicy,
    pub(crate) requests: Family<CallLabels, Counter>,
    pub(crate) latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub(crate) retries: Family<RouteLabels, Counter>,
    pub(crate) retry_budget_exhausted: Family<RouteLabels, Counter>,
    pub(crate) breaker_state: Family<EndpointLabels, Gauge>,
    pub(crate) breaker_opens: Family<EndpointLabels, Counter>,
    pub(crate) bulkhead_rejections: Family<RouteLabels, Counter>,
    pub(crate) outlier_ejections: Family<EndpointLabels, Counter>,
    pub(crate) outlier_ejection_floor: Family<RouteLabels, Counter>,
    pub(crate) endpoint_failures: Family<FailureLabels, Counter>,
    pub(crate) tls_handshake_failures: Family<DirectionLabels, Counter>,
    pub(crate) connections_rejected: Family<DirectionLabels, Counter>,
    pub(crate) preface_timeouts: Family<DirectionLabels, Counter>,
    pub(crate) panics: Family<DirectionLabels, Counter>,
    pub(crate) cert_expiry: Gauge,
    pub(crate) authz_denied: Family<DenyLabels, Counter>,
    pub(crate) faults: Family<FaultLabels, Counter>,
    pub(crate) gateway_requests: Family<GatewayLabels, Counter>,
    pub(crate) gateway_rate_limited: Family<ScopeLabels, Counter>,
    pub(crate) gateway_auth_failures: Family<ReasonLabels, Counter>,
}

impl Metrics {
    /// Metrics whose route labels come from `cfg`'s services and authz rules.
    pub(crate) fn for_config(cfg: &crate::config::Config) -> Arc<Self> {
        Self::with_labels(LabelPolicy::from_config(cfg))
    }

    /// Metrics with no configured route names (every route label is `other`).
    #[cfg(test)]
    pub(crate) fn new() -> Arc<Self> {
        Self::with_labels(LabelPolicy::default())
    }

    pub(crate) fn with_labels(labels: LabelPolicy) -> Arc<Self> {
        let mut registry = Registry::with_prefix("tally_proxy");
        let requests = Family::<CallLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let retries = Family::<RouteLabels, Counter>::default();
        let retry_budget_exhausted = Family::<RouteLabels, Counter>::default();
        let breaker_state = Family::<EndpointLabels, Gauge>::default();
        let breaker_opens = Family::<EndpointLabels, Counter>::default();
        let bulkhead_rejections = Family::<RouteLabels, Counter>::default();
        let outlier_ejections = Family::<EndpointLabels, Counter>::default();
        let outlier_ejection_floor = Family::<RouteLabels, Counter>::default();
        let tls_handshake_failures = Family::<DirectionLabels, Counter>::default();
        let connections_rejected = Family::<DirectionLabels, Counter>::default();
        let cert_expiry = Gauge::default();
        let endpoint_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "endpoint_failures",
            "Call outcomes classified as endpoint failures (they move breaker, ejection and EWMA), by kind",
            endpoint_failures.clone(),
        );
        let preface_timeouts = Family::<DirectionLabels, Counter>::default();
        let panics = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "http2_preface_timeouts",
            "Connections closed for not sending the HTTP/2 preface in time after the handshake",
            preface_timeouts.clone(),
        );
        registry.register(
            "panics",
            "Panics caught in connection tasks and call handlers (the task ends, the proxy keeps serving)",
            panics.clone(),
        );
        let authz_denied = Family::<DenyLabels, Counter>::default();
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register(
            "requests",
            "Calls by direction, route, caller and final gRPC status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Call duration until the end of the response stream",
            latency.clone(),
        );
        registry.register("retries", "Retry attempts made", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries skipped because the route's retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        registry.register(
            "breaker_state",
            "Per-endpoint circuit breaker: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_opens",
            "Times an endpoint's breaker opened",
            breaker_opens.clone(),
        );
        registry.register(
            "bulkhead_rejections",
            "Calls refused because a bulkhead and its queue were full",
            bulkhead_rejections.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Times an endpoint was ejected as an outlier",
            outlier_ejections.clone(),
        );
        registry.register(
            "outlier_ejection_floor",
            "Ejections skipped by the max_ejection_percent / keep-one floor rule",
            outlier_ejection_floor.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections closed because the listener was at max_connections",
            connections_rejected.clone(),
        );
        registry.register(
            "cert_expiry_timestamp_seconds",
            "Unix time when the workload certificate expires (0 without TLS)",
            cert_expiry.clone(),
        );
        registry.register(
            "authz_denied",
            "Calls denied by inbound authorization",
            authz_denied.clone(),
        );
        registry.register("faults_injected", "Injected faults by kind", faults.clone());
        let gateway_requests = Family::<GatewayLabels, Counter>::default();
        let gateway_rate_limited = Family::<ScopeLabels, Counter>::default();
        let gateway_auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Gateway calls by route (configured prefix) and final gRPC status",
            gateway_requests.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Gateway calls refused by a rate limit (scope: client or global)",
            gateway_rate_limited.clone(),
        );
        registry.register(
            "gateway_auth_failures",
            "Gateway calls refused by edge authentication, by reason",
            gateway_auth_failures.clone(),
        );
        Arc::new(Self {
            registry,
            labels,
            requests,
            latency,
            retries,
            retry_budget_exhausted,
            breaker_state,
            breaker_opens,
            bulkhead_rejections,
            outlier_ejections,
            outlier_ejection_floor,
            endpoint_failures,
            tls_handshake_failures,
            connections_rejected,
            preface_timeouts,
            panics,
            cert_expiry,
            authz_denied,
            faults,
            gateway_requests,
            gateway_rate_limited,
            gateway_auth_failures,
        })
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub(crate) fn route(direction: &str, route: &str) -> RouteLabels {
    RouteLabels {
        direction: direction.to_string(),
        route: route.to_string(),
    }
}

pub(crate) fn endpoint(route: &str, endpoint: &str) -> EndpointLabels {
    EndpointLabels {
        route: route.to_string(),
        endpoint: endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_bounded() {
        let s = LabelSet::new(["a".to_string()], 2);
        assert_eq!(s.get("a"), "a");
        assert_eq!(s.get("x"), "x");
        assert_eq!(s.get("y"), "y");
        assert_eq!(s.get("z"), OTHER);
        assert_eq!(s.get("x"), "x");
        let fixed = LabelSet::new(["a".to_string()], 0);
        assert_eq!(fixed.get("b"), OTHER);
    }

    #[test]
    fn outbound_routes_resolve_like_the_router() {
        let p = LabelPolicy {
            outbound: LabelSet::new(["user".to_string()], 0),
            ..LabelPolicy::default()
        };
        assert_eq!(p.outbound_route("user"), "user");
        assert_eq!(p.outbound_route("user.tally.svc"), "user");
        assert_eq!(p.outbound_route("junk123"), OTHER);
    }
}
