//! Gateway mode: a browser-facing listener in front of the outbound stack, and the trust
//! boundary between the internet and the mesh. It speaks gRPC-Web (compatible with Envoy's
//! `grpc_web` filter) and plain gRPC, answers CORS, drops mesh-internal headers and issues
//! request ids, routes by gRPC package/service to `[services.<name>]`, checks access tokens
//! at the edge, rate limits per principal or IP and then globally, and bounds connections and
//! request bodies in time and size. Everything past the edge (retries, breakers, balancing,
//! mTLS to the inbound sidecars) is the outbound stack, reused as it is.

pub mod auth;
pub mod config;
pub mod cors;
pub mod edge;
pub mod errors;
pub mod grpc_web;
pub mod listener;
pub mod ratelimit;
pub mod request_body;
pub mod routes;
pub mod service;

use crate::ListenerService;
use crate::metrics::Metrics;
use config::GatewayConfig;
pub use service::Gateway;
use std::sync::Arc;

impl Gateway {
    /// Builds the gateway over `outbound` (the same stack the outbound listener serves).
    /// Starts the JWKS refresh, so call it inside the runtime.
    pub fn new(cfg: &GatewayConfig, outbound: ListenerService, metrics: Arc<Metrics>) -> Self {
        let auth = auth::EdgeAuth::new(cfg.auth.as_ref(), &outbound);
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
