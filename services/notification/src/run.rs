//! Starting notification (wiring): opens this replica's store, starts its consumer of polling's events
//! on the configured transport (a consumer of its own, named after the
//! instance), connects the projector to the in-process hub, registers health
//! probes, and serves NotificationService plus ConsumerAdminService.

use crate::app::Watches;
use crate::config::Config;
use crate::grpc::NotificationApi;
use crate::hub::Hub;
use crate::projector::Projector;
use std::sync::Arc;
use std::time::Duration;
use tally_api::notification::v1::notification_service_server::NotificationServiceServer;
use tally_chassis::auth::Authenticator;
use tally_chassis::events::{Consumer, ConsumerAdmin, transport};
use tally_chassis::health::HealthHub;

/// The gRPC service name health reports for.
pub const SERVICE_NAME: &str = "tally.notification.v1.NotificationService";
/// The producer whose events feed the watchers.
pub const PRODUCER: &str = "polling";

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("storage: {0}")]
    Storage(#[from] tally_chassis::storage::StoreError),
    #[error(transparent)]
    Outbound(#[from] tally_chassis::outbound::OutboundError),
    #[error("events: {0}")]
    Events(#[from] tally_chassis::events::BusError),
    #[error(transparent)]
    Serve(#[from] tally_chassis::server::ServeError),
}

/// Runs the service until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = tally_chassis::storage::open(&cfg.storage).await?;
    let user_channel = tally_chassis::outbound::channel(&cfg.outbound, "user")?;
    let auth = Authenticator::new(user_channel, cfg.auth.options());

    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    hub.set_dependency("storage", false).await;
    hub.set_dependency("user", false).await;
    let interval = Duration::from_secs(cfg.notification.health_interval_secs);
    let probe_store = store.clone();
    hub.watch("storage", interval, move || {
        let store = probe_store.clone();
        async move { store.ping().await.is_ok() }
    });
    let probe_auth = auth.clone();
    hub.watch("user", interval, move || {
        let auth = probe_auth.clone();
        async move { matches!(auth.refresh_jwks().await, Ok(n) if n > 0) }
    });

    let updates = Hub::new(cfg.notification.broadcast_capacity);
    let name = cfg.consumer_name();
    let source = transport::source(&cfg.event_bus(), &cfg.outbound, PRODUCER).await?;
    let projector = Projector::new(&name, updates.clone(), cfg.notification.log_capacity);
    let consumer = Consumer::new(
        Arc::new(projector),
        store.clone(),
        source,
        cfg.retry.policy(),
    );
    consumer.spawn();
    if cfg.notification.health_max_lag > 0 {
        consumer.watch_health(&hub, cfg.notification.health_max_lag, interval);
    }
    tracing::info!(consumer = %name, "notification consumer started");

    let watches = Watches::new(store, updates, cfg.notification.subscriber_buffer);
    let mut routes = tally_chassis::server::Routes::new();
    routes.add(NotificationServiceServer::new(NotificationApi::new(
        watches, auth,
    )));
    routes.add(ConsumerAdmin::new([consumer]).server());
    tally_chassis::server::serve(&cfg.server, hub, health_server, routes, shutdown).await?;
    Ok(())
}
