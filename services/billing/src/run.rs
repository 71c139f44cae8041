//! Starting billing: open the store, build the payment client and the saga
//! orchestrator, register health checks, resume unfinished sagas and keep
//! sweeping for them, then serve BillingService and billing's outbox as its
//! event feed.

use crate::app::{BillingError, Clock, Orchestrator, Tuning};
use crate::config::BillingConfig;
use crate::grpc::BillingApi;
use crate::payment::GrpcPayment;
use crate::store::Records;
use std::sync::Arc;
use std::time::Duration;
use tally_api::billing::v1::billing_service_server::BillingServiceServer;
use tally_chassis::auth::{AuthOptions, Authenticator};
use tally_chassis::health::HealthHub;
use tally_chassis::{outbound, server, storage};
use tonic_health::pb::health_check_response::ServingStatus;

/// Fully-qualified name of the service, for health.
pub const SERVICE_NAME: &str = "tally.billing.v1.BillingService";
/// The payment service whose health billing follows.
const PAYMENT_SERVICE: &str = "tally.payment.v1.PaymentService";
/// How often health probes the store.
const STORAGE_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How often health probes the payment service.
const PAYMENT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Deadline of one payment health probe.
const PAYMENT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] storage::StoreError),
    /// An outbound address is missing or invalid.
    #[error(transparent)]
    Outbound(#[from] outbound::OutboundError),
    /// Sagas left unfinished by an earlier run could not be resumed.
    #[error("resuming sagas: {0}")]
    Resume(#[from] BillingError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Runs the service until `shutdown` resolves.
pub async fn run(
    cfg: BillingConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    if let Some(point) = &cfg.crash_after {
        tracing::warn!(
            point,
            "crash_after is set: the process will abort there (testing only)"
        );
    }
    let store = storage::open(&cfg.storage).await?;
    let records = Records::new(store.clone());
    // Billing's outbox, served as its event feed for consumers (user, polling).
    let feed = tally_chassis::events::feed::Feed::new(store);
    let payment_channel = outbound::channel(&cfg.outbound, "payment")?;
    let user_channel = outbound::channel(&cfg.outbound, "user")?;
    let payment = GrpcPayment::new(
        payment_channel.clone(),
        Duration::from_millis(cfg.saga.payment_timeout_ms),
    );
    let orchestrator = Orchestrator::new(
        records.clone(),
        Arc::new(payment),
        Tuning {
            payment_attempts: cfg.saga.payment_attempts,
            retry_backoff: Duration::from_millis(cfg.saga.retry_backoff_ms),
            start_wait: Duration::from_millis(cfg.saga.start_wait_ms),
            crash_after: cfg.crash_after.clone(),
            ride_out: cfg.saga.ride_out(),
            clock: Clock::System,
        },
    );
    let auth = Authenticator::new(user_channel, AuthOptions::default());

    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    let probe = records.clone();
    hub.watch("storage", STORAGE_HEALTH_INTERVAL, move || {
        let probe = probe.clone();
        async move { probe.ping().await }
    });
    let health_channel = payment_channel;
    hub.watch("payment", PAYMENT_HEALTH_INTERVAL, move || {
        let mut client = tonic_health::pb::health_client::HealthClient::new(health_channel.clone());
        async move {
            let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: PAYMENT_SERVICE.into(),
            });
            req.set_timeout(PAYMENT_HEALTH_TIMEOUT);
            matches!(
                client.check(req).await.map(|r| r.into_inner().status),
                Ok(s) if s == ServingStatus::Serving as i32
            )
        }
    });

    // Resume every unfinished saga now, then sweep periodically for sagas
    // whose step had to wait (e.g. a refund while payment was down).
    let resumed = orchestrator.resume_all().await?;
    tracing::info!(resumed, "unfinished sagas resumed");
    let sweeper = orchestrator.clone();
    let interval = Duration::from_secs(cfg.saga.resume_interval_secs);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = sweeper.resume_all().await {
                tracing::warn!(error = %e, "resume sweep failed");
            }
        }
    });

    let mut routes = server::Routes::new();
    routes.add(BillingServiceServer::new(BillingApi::new(
        orchestrator,
        auth,
    )));
    routes.add_feed(&feed);
    server::serve(&cfg.server, hub, health_server, routes, shutdown).await?;
    Ok(())
}
