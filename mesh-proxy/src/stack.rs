//! The two stacks, composed in one readable place. Read each top to bottom as the path a call
//! takes; every line is one concern.

use crate::authz::{AuthzLayer, Policy as AuthzPolicy};
use crate::balance::{Balance, ClientSettings, Pool};
use crate::bulkhead::BulkheadLayer;
use crate::config::Config;
use crate::deadline::DeadlineLayer;
use crate::errors::ErrorsLayer;
use crate::faults::{FaultLayer, FaultStore, INBOUND_ROUTE};
use crate::forward::Forward;
use crate::metrics::Metrics;
use crate::observe::{Direction, ObserveLayer};
use crate::retry::{Policy as RetryPolicy, RetryLayer};
use crate::route::Router;
use crate::transport::ClientTransport;
use crate::{BoxService, ListenerService};
use std::collections::HashMap;
use std::sync::Arc;
use tower::ServiceBuilder;

/// What the stacks share with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub faults: FaultStore,
    pub client_transport: Arc<dyn ClientTransport>,
}

/// Local app → proxy → the target service's inbound sidecars.
pub fn outbound(cfg: &Config, shared: &Shared) -> ListenerService {
    let settings = ClientSettings::from_limits(&cfg.limits);
    let mut routes: HashMap<String, BoxService> = HashMap::new();
    for (name, svc) in &cfg.services {
        let pool = Pool::new(
            name,
            svc,
            &cfg.target_identity(name),
            shared.client_transport.clone(),
            &settings,
            shared.metrics.clone(),
        );
        let route = ServiceBuilder::new()
            .layer(DeadlineLayer::new(
                svc.timeout_ms,
                svc.stream_idle_timeout_ms,
            ))
            .layer(RetryLayer::new(
                RetryPolicy::from_config(name, &svc.retry, cfg.limits.max_retry_buffer_bytes),
                shared.metrics.clone(),
            ))
            .layer(FaultLayer::new(
                shared.faults.clone(),
                name,
                "outbound",
                shared.metrics.clone(),
            ))
            .layer(BulkheadLayer::new(
                svc.bulkhead.max_concurrent,
                svc.bulkhead.max_queue,
                name,
                "outbound",
                shared.metrics.clone(),
            ))
            .service(Balance::new(pool));
        routes.insert(name.to_ascii_lowercase(), BoxService::new(route));
    }
    ListenerService::new(
        ServiceBuilder::new()
            .layer(ObserveLayer::new(
                Direction::Outbound,
                shared.metrics.clone(),
            ))
            .layer(ErrorsLayer)
            .service(Router::new(routes)),
    )
}

/// Another sidecar (mTLS, identity already verified by the listener) → proxy → local app.
pub fn inbound(cfg: &Config, shared: &Shared) -> Option<ListenerService> {
    let inb = cfg.inbound.as_ref()?;
    let settings = ClientSettings::from_limits(&cfg.limits);
    Some(ListenerService::new(
        ServiceBuilder::new()
            .layer(ObserveLayer::new(
                Direction::Inbound,
                shared.metrics.clone(),
            ))
            .layer(ErrorsLayer)
            .layer(AuthzLayer::new(
                AuthzPolicy::new(inb.authz.clone()),
                shared.metrics.clone(),
            ))
            .layer(BulkheadLayer::new(
                inb.bulkhead.max_concurrent,
                inb.bulkhead.max_queue,
                INBOUND_ROUTE,
                "inbound",
                shared.metrics.clone(),
            ))
            .layer(FaultLayer::new(
                shared.faults.clone(),
                INBOUND_ROUTE,
                "inbound",
                shared.metrics.clone(),
            ))
            .service(Forward::new(
                inb.local_app,
                &settings,
                cfg.limits.max_retry_buffer_bytes,
            )),
    ))
}
