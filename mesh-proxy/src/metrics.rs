//! Prometheus metrics of the proxy, one registry, encoded as text by the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub direction: String,
    pub route: String,
    pub caller: String,
    pub grpc_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub route: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    pub route: String,
    pub caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub direction: String,
    pub route: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub route: String,
    pub grpc_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<CallLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<RouteLabels, Counter>,
    pub retry_budget_exhausted: Family<RouteLabels, Counter>,
    pub breaker_state: Family<EndpointLabels, Gauge>,
    pub breaker_opens: Family<EndpointLabels, Counter>,
    pub bulkhead_rejections: Family<RouteLabels, Counter>,
    pub outlier_ejections: Family<EndpointLabels, Counter>,
    pub outlier_ejection_floor: Family<RouteLabels, Counter>,
    pub tls_handshake_failures: Family<DirectionLabels, Counter>,
    pub connections_rejected: Family<DirectionLabels, Counter>,
    pub cert_expiry: Gauge,
    pub authz_denied: Family<DenyLabels, Counter>,
    pub faults: Family<FaultLabels, Counter>,
    pub gateway_requests: Family<GatewayLabels, Counter>,
    pub gateway_rate_limited: Family<ScopeLabels, Counter>,
    pub gateway_auth_failures: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
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
            requests,
            latency,
            retries,
            retry_budget_exhausted,
            breaker_state,
            breaker_opens,
            bulkhead_rejections,
            outlier_ejections,
            outlier_ejection_floor,
            tls_handshake_failures,
            connections_rejected,
            cert_expiry,
            authz_denied,
            faults,
            gateway_requests,
            gateway_rate_limited,
            gateway_auth_failures,
        })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub fn route(direction: &str, route: &str) -> RouteLabels {
    RouteLabels {
        direction: direction.to_string(),
        route: route.to_string(),
    }
}

pub fn endpoint(route: &str, endpoint: &str) -> EndpointLabels {
    EndpointLabels {
        route: route.to_string(),
        endpoint: endpoint.to_string(),
    }
}
