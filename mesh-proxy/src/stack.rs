//! The two stacks, composed in one readable place. Read each top to bottom as the path a call
//! takes; every line is one concern (each layer is written as `layer` describes).

use crate::authz::{AuthzLayer, Policy as AuthzPolicy};
use crate::balance::{Balance, ClientSettings, Pool};
use crate::bulkhead::BulkheadLayer;
use crate::config::Config;
use crate::deadline::DeadlineLayer;
use crate::error::respond::ErrorsLayer;
use crate::faults::{FaultLayer, FaultStore, INBOUND_ROUTE};
use crate::forward::Forward;
use crate::layer::{self, Layers, Tower};
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::retry::{Policy as RetryPolicy, RetryLayer};
use crate::route::Router;
use crate::split::{Split, SplitStore};
use crate::transport::ClientTransport;
use crate::{BoxService, Direction, ListenerService};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What the stacks share with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub faults: FaultStore,
    pub client_transport: Arc<dyn ClientTransport>,
    /// Live stable/canary weights of the targets with a `[services.<name>.canary]`.
    pub splits: SplitStore,
}

/// A config time in milliseconds where 0 means "none".
fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Local app → proxy → the target service's inbound sidecars.
pub fn outbound(cfg: &Config, shared: &Shared) -> ListenerService {
    use Direction::Outbound;
    let settings = ClientSettings::from_limits(&cfg.limits);
    let metrics = &shared.metrics;
    let mut routes: HashMap<String, BoxService> = HashMap::new();
    for (name, svc) in &cfg.services {
        let pool_of = |s: &crate::config::ServiceConfig| {
            Balance::new(Pool::new(
                name,
                s,
                &cfg.target_identity(name),
                shared.client_transport.clone(),
                &settings,
                metrics.clone(),
            ))
        };
        // With a canary: two balancers, and the split picks one per call by weight.
        let balance: BoxService = match &svc.canary {
            None => BoxService::new(Tower(pool_of(svc))),
            Some(c) => {
                let canary = crate::config::ServiceConfig {
                    endpoints: c.endpoints.clone(),
                    ..svc.clone()
                };
                let weight = shared.splits.register(name, c.weight);
                BoxService::new(Split::new(
                    Tower(pool_of(svc)),
                    Tower(pool_of(&canary)),
                    weight,
                ))
            }
        };
        let retry = RetryPolicy::from_config(name, &svc.retry, cfg.limits.max_retry_buffer_bytes);
        let (limit, queue) = (svc.bulkhead.max_concurrent, svc.bulkhead.max_queue);
        let route = Layers::new()
            .push(DeadlineLayer::new(
                millis(svc.timeout_ms),
                millis(svc.stream_idle_timeout_ms),
            ))
            .push(RetryLayer::new(retry, metrics.clone()))
            .push(FaultLayer::new(
                shared.faults.clone(),
                name,
                Outbound,
                metrics.clone(),
            ))
            .push(BulkheadLayer::new(
                limit,
                queue,
                name,
                Outbound,
                metrics.clone(),
            ))
            .over(balance);
        routes.insert(name.to_ascii_lowercase(), BoxService::new(route));
    }
    let stack = Layers::new()
        .push(ObserveLayer::new(Outbound, metrics.clone()))
        .push(crate::trace::TraceLayer::new(Outbound))
        .push(ErrorsLayer::new(Outbound))
        .over(Router::new(routes));
    ListenerService::new(layer::Service::new(stack))
}

/// Another sidecar (mTLS, identity already verified by the listener) → proxy → local app.
pub fn inbound(cfg: &Config, shared: &Shared) -> Option<ListenerService> {
    use Direction::Inbound;
    let inb = cfg.inbound.as_ref()?;
    let settings = ClientSettings::from_limits(&cfg.limits);
    let metrics = &shared.metrics;
    let (limit, queue) = (inb.bulkhead.max_concurrent, inb.bulkhead.max_queue);
    let stack = Layers::new()
        .push(ObserveLayer::new(Inbound, metrics.clone()))
        .push(crate::trace::TraceLayer::new(Inbound))
        .push(ErrorsLayer::new(Inbound))
        .push(AuthzLayer::new(
            AuthzPolicy::new(inb.authz.clone()),
            metrics.clone(),
        ))
        .push(BulkheadLayer::new(
            limit,
            queue,
            INBOUND_ROUTE,
            Inbound,
            metrics.clone(),
        ))
        .push(FaultLayer::new(
            shared.faults.clone(),
            INBOUND_ROUTE,
            Inbound,
            metrics.clone(),
        ))
        .over(Forward::new(
            inb.local_app,
            &settings,
            cfg.limits.max_retry_buffer_bytes,
        ));
    Some(ListenerService::new(layer::Service::new(stack)))
}
