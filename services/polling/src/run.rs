//! Starting polling (wiring): opens the store, builds the verifier against the user service's
//! outbound address, registers health probes, starts the plan-limits consumer
//! of billing's events (when `[outbound] billing` is set), and serves
//! PollService, the event feed and ConsumerAdminService.

use crate::config::Config;
use crate::entitlements::{Entitlements, PlanLimitsHandler};
use crate::grpc::PollApi;
use crate::store::PollRepository;
use std::sync::Arc;
use std::time::Duration;
use tally_api::poll::v1::poll_service_server::PollServiceServer;
use tally_chassis::health::HealthHub;
use tally_chassis::wiring::{Basics, open_watched};

/// The gRPC service name health reports for.
pub const SERVICE_NAME: &str = "tally.poll.v1.PollService";

pub use tally_chassis::wiring::RunError;

/// Runs the service until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    let interval = Duration::from_secs(cfg.polling.health_interval_secs);
    let Basics { store, auth } =
        open_watched(&cfg.storage, &cfg.outbound, &cfg.auth, &hub, interval).await?;

    let feed = tally_chassis::events::Feed::new(store.clone());
    // With the Redis transport the relay copies the outbox to the stream.
    let _relay = tally_chassis::events::transport::spawn_relay(
        &cfg.events,
        store.clone(),
        crate::events::PRODUCER,
    )
    .await?;
    // Plan limits: consumed from billing's events when billing is configured.
    let mut consumers = Vec::new();
    if cfg.consumes_billing() {
        let source = tally_chassis::events::transport::source(
            &cfg.events,
            &cfg.outbound,
            crate::entitlements::PRODUCER,
        )
        .await?;
        let consumer = tally_chassis::events::Consumer::new(
            Arc::new(PlanLimitsHandler),
            store.clone(),
            source,
            tally_chassis::events::RetryPolicy::default(),
        );
        consumer.spawn();
        tracing::info!(
            consumer = consumer.name(),
            "plan limits follow billing's events"
        );
        consumers.push(consumer);
    } else {
        tracing::info!(
            default_max_open_polls = cfg.polling.default_max_open_polls,
            "no [outbound] billing: every owner gets the default open-poll limit (0 = unlimited)"
        );
    }
    let entitlements = Entitlements::new(store.clone(), cfg.polling.default_max_open_polls);
    let repo = PollRepository::new(
        store,
        cfg.polling.max_write_attempts,
        cfg.polling.local_write_lock,
    );
    let crate::cache::Wired { polls, follower } =
        crate::cache::wire(&cfg.cache, Arc::new(repo), &feed)
            .map_err(|e| RunError::Setup(format!("cache: {e}")))?;
    let api = PollApi::new(
        crate::app::Polls::new(polls, Arc::new(entitlements)),
        auth,
        cfg.polling.default_page_size,
        cfg.polling.max_page_size,
    );
    let mut routes = tally_chassis::server::Routes::new();
    routes.add(PollServiceServer::new(api));
    // Consumers (notification, analytics) follow the outbox through this feed.
    routes.add_feed(&feed);
    // Status, dead letters and replay of the plan-limits consumer (none
    // listed when billing is not configured).
    routes.add(tally_chassis::events::ConsumerAdmin::new(consumers).server());
    let served =
        tally_chassis::server::serve(&cfg.server, hub, health_server, routes, shutdown).await;
    if let Some(follower) = follower {
        follower.abort();
    }
    served?;
    Ok(())
}
