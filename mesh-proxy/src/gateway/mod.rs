//! Gateway mode: a browser-facing listener in front of the outbound stack, and the trust
//! boundary between the internet and the mesh. It speaks gRPC-Web (compatible with Envoy's
//! `grpc_web` filter) and plain gRPC, answers CORS, drops mesh-internal headers and issues
//! request ids, routes by gRPC package/service to `[services.<name>]`, checks access tokens
//! at the edge, rate limits per principal or IP and then globally, and bounds connections and
//! request bodies in time and size. Everything past the edge (retries, breakers, balancing,
//! mTLS to the inbound sidecars) is the outbound stack, reused as it is.

pub(crate) mod auth;
pub mod config;
pub(crate) mod cors;
pub(crate) mod edge;
pub(crate) mod errors;
pub(crate) mod grpc_web;
pub(crate) mod listener;
pub(crate) mod ratelimit;
pub mod request_body;
pub(crate) mod routes;
pub(crate) mod service;

use crate::ListenerService;
use crate::metrics::Metrics;
use config::GatewayConfig;
pub(crate) use service::Gateway;
use std::sync::Arc;

impl Gateway {
    /// Builds the gateway over `outbound` (the same stack the outbound listener serves).
    /// Starts the JWKS refresh, so call it inside the runtime.
    pub fn new(cfg: &GatewayConfig, outbound: ListenerService, metrics: Arc<Metrics>) -> Self {
        let auth = auth::EdgeAuth::new(cfg.auth.as_ref(), &outbound);
        crate::audit::spawn_refusal_flusher();
        Gateway::from_parts(service::Inner {
            outbound,
            routes: routes::RouteTable::new(&cfg.routes),
            auth,
            limiter: ratelimit::RateLimiter::new(&cfg.rate_limit),
            cors: cors::Cors::new(&cfg.cors),
            metrics,
            bounds: cfg.bounds(),
            trusted_proxies: cfg.rate_limit.trusted_proxies.clone(),
        })
    }
}
