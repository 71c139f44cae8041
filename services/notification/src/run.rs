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
use tally_chassis::events::{Consumer, ConsumerAdmin, transport};
use tally_chassis::health::HealthHub;
use tally_chassis::wiring::{Basics, open_watched};

/// The gRPC service name health reports for.
pub const SERVICE_NAME: &str = "tally.notification.v1.NotificationService";
/// The producer whose events feed the watchers.
pub const PRODUCER: &str = "polling";

pub use tally_chassis::wiring::RunError;

/// Runs the service until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    let interval = Duration::from_secs(cfg.notification.health_interval_secs);
    let Basics { store, auth } =
        open_watched(&cfg.storage, &cfg.outbound, &cfg.auth, &hub, interval).await?;

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
