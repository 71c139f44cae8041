//! Starting analytics (wiring): opens the store, builds the verifier against the user service,
//! starts the read-model consumer on the configured event transport, registers
//! health probes (store, user service, consumer lag), and serves
//! AnalyticsService plus ConsumerAdminService.

use crate::app::Queries;
use crate::config::Config;
use crate::grpc::AnalyticsApi;
use crate::projector::Projector;
use std::sync::Arc;
use std::time::Duration;
use tally_api::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use tally_chassis::events::{Consumer, ConsumerAdmin, transport};
use tally_chassis::health::HealthHub;
use tally_chassis::wiring::{Basics, open_watched};

/// The gRPC service name health reports for.
pub const SERVICE_NAME: &str = "tally.analytics.v1.AnalyticsService";
/// The producer whose events build the read model.
pub const PRODUCER: &str = "polling";

pub use tally_chassis::wiring::RunError;

/// Runs the service until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    let interval = Duration::from_secs(cfg.analytics.health_interval_secs);
    let Basics { store, auth } =
        open_watched(&cfg.storage, &cfg.outbound, &cfg.auth, &hub, interval).await?;

    let name = cfg.consumer_name();
    let source = transport::source(&cfg.event_bus(), &cfg.outbound, PRODUCER).await?;
    let projector = Projector::new(&name, cfg.analytics.reject_questions.clone());
    let consumer = Consumer::new(
        Arc::new(projector),
        store.clone(),
        source,
        cfg.retry.policy(),
    );
    consumer.spawn();
    if cfg.analytics.health_max_lag > 0 {
        consumer.watch_health(&hub, cfg.analytics.health_max_lag, interval);
    }
    tracing::info!(consumer = %name, "analytics read model consumer started");

    let queries = Queries::new(
        Arc::new(crate::store::StoreReadModel::new(store)),
        cfg.analytics.default_page_size,
        cfg.analytics.max_page_size,
    );
    let mut routes = tally_chassis::server::Routes::new();
    routes.add(AnalyticsServiceServer::new(AnalyticsApi::new(
        queries, auth,
    )));
    routes.add(ConsumerAdmin::new([consumer]).server());
    tally_chassis::server::serve(&cfg.server, hub, health_server, routes, shutdown).await?;
    Ok(())
}
