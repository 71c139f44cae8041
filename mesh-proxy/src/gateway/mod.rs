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
use std::time::Duration;

impl Gateway {
    /// Builds the gateway over `outbound` (the same stack the outbound listener serves).
    /// Starts the JWKS refresh, so call it inside the runtime.
    pub fn new(cfg: &GatewayConfig, outbound: ListenerService, metrics: Arc<Metrics>) -> Self {
        let verifier = cfg.auth.as_ref().map(|a| {
            let source: Box<dyn auth::JwksSource> = match (&a.jwks_service, &a.jwks_file) {
                (Some(service), _) => Box::new(auth::ServiceJwks {
                    outbound: outbound.clone(),
                    service: service.clone(),
                }),
                (None, Some(path)) => Box::new(auth::FileJwks(path.clone())),
                // Validation requires one of the two; with neither, every token is refused.
                (None, None) => Box::new(auth::FileJwks(std::path::PathBuf::new())),
            };
            let v = auth::Verifier::new(a, source);
            v.spawn_refresh(
                (a.jwks_refresh_ms > 0).then(|| Duration::from_millis(a.jwks_refresh_ms)),
            );
            v
        });
        Gateway::from_parts(service::Inner {
            outbound,
            routes: routes::RouteTable::new(&cfg.routes),
            verifier,
            limiter: ratelimit::RateLimiter::new(&cfg.rate_limit),
            cors: cors::Cors::new(&cfg.cors),
            metrics,
            bounds: cfg.bounds(),
            trusted_proxies: cfg.rate_limit.trusted_proxies.clone(),
        })
    }
}
