//! Starting payment: open the store, build the ledger and the use cases,
//! register health, serve PaymentService.

use crate::app::Payments;
use crate::config::PaymentConfig;
use crate::grpc::PaymentApi;
use crate::store::Ledger;
use std::sync::Arc;
use std::time::Duration;
use tally_api::payment::v1::payment_service_server::PaymentServiceServer;
use tally_chassis::health::HealthHub;
use tally_chassis::{server, storage};

/// Fully-qualified name of the service, for health.
pub const SERVICE_NAME: &str = "tally.payment.v1.PaymentService";
/// How often health probes the store.
const STORAGE_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] storage::StoreError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Runs the service until `shutdown` resolves.
pub async fn run(
    cfg: PaymentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = storage::open(&cfg.storage).await?;
    if cfg.payment.outage || cfg.payment.decline_rate > 0.0 || cfg.payment.allow_fault_headers {
        tracing::warn!(faults = ?cfg.payment, "fault injection is on");
    }
    let app = Arc::new(Payments::new(Ledger::new(store), cfg.payment.clone()));
    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    let probe = app.clone();
    hub.watch("storage", STORAGE_HEALTH_INTERVAL, move || {
        let probe = probe.clone();
        async move { probe.ping().await }
    });
    let mut routes = server::Routes::new();
    routes.add(PaymentServiceServer::new(PaymentApi::new(app)));
    server::serve(&cfg.server, hub, health_server, routes, shutdown).await?;
    Ok(())
}
