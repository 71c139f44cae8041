//! The start of `run` that the store-backed services verifying callers share
//! (analytics, notification, polling): open the configured store, build the
//! caller verifier against the user service, and keep both under health
//! watch; plus the failures of such a `run`.

use crate::auth::Authenticator;
use crate::config::{AuthSettings, OutboundSettings, StorageSettings};
use crate::health::HealthHub;
use crate::storage::Store;
use std::sync::Arc;
use std::time::Duration;

/// The health dependency name of the service's store.
pub const STORAGE_DEPENDENCY: &str = "storage";
/// The health dependency name of the user service (token keys).
pub const USER_DEPENDENCY: &str = "user";
/// The outbound target the verifier fetches signing keys from.
pub const USER_TARGET: &str = "user";

/// A failure to start or run a service.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StoreError),
    /// An outbound address is missing or invalid.
    #[error(transparent)]
    Outbound(#[from] crate::outbound::OutboundError),
    /// The event transport could not start.
    #[error("events: {0}")]
    Events(#[from] crate::events::BusError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    /// A part of the service's own could not start (the message names it).
    #[error("{0}")]
    Setup(String),
}

/// The store and the caller verifier, both watched by the health hub.
pub struct Basics {
    /// The store chosen by `[storage]`.
    pub store: Arc<dyn Store>,
    /// Verifies access tokens and API keys against the user service.
    pub auth: Authenticator,
}

/// Opens the store and the verifier, marks both dependencies down until their
/// first probe, and probes them every `interval`: the store with a ping, the
/// user service by fetching at least one signing key.
pub async fn open_watched(
    storage: &StorageSettings,
    outbound: &OutboundSettings,
    auth: &AuthSettings,
    hub: &HealthHub,
    interval: Duration,
) -> Result<Basics, RunError> {
    let store = crate::storage::open(storage).await?;
    let user_channel = crate::outbound::channel(outbound, USER_TARGET)?;
    let auth = Authenticator::new(user_channel, auth.options());

    // Not serving until the first probes say otherwise.
    hub.set_dependency(STORAGE_DEPENDENCY, false).await;
    hub.set_dependency(USER_DEPENDENCY, false).await;
    let probe_store = store.clone();
    hub.watch(STORAGE_DEPENDENCY, interval, move || {
        let store = probe_store.clone();
        async move { store.ping().await.is_ok() }
    });
    let probe_auth = auth.clone();
    hub.watch(USER_DEPENDENCY, interval, move || {
        let auth = probe_auth.clone();
        async move { matches!(auth.refresh_jwks().await, Ok(n) if n > 0) }
    });
    Ok(Basics { store, auth })
}
