//! Starting the service: open the store and session store, load or create
//! the signing-key ring (and keep it refreshed), wire the application,
//! register health checks, serve UserService, UserAdminService and the outbox
//! as `EventFeedService` (plus the Redis relay when `[events] transport =
//! "redis"`).

use crate::adapters::password::Argon2Hasher;
use crate::adapters::sessions::TimeLimitedSessions;
use crate::adapters::store::StoreRepository;
use crate::app::{Lifetimes, UserApp};
use crate::config::Config;
use crate::grpc::UserGrpc;
use crate::keys::KeyRotation;
use std::sync::Arc;
use std::time::Duration;
use tally_chassis::health::HealthHub;
use tally_chassis::session::SessionStore;

/// Fully-qualified name of the service, for health.
pub const SERVICE_NAME: &str = "tally.user.v1.UserService";
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const REDIS_CONNECT_ATTEMPTS: u32 = 15;
/// Longest a session-store call may take before the RPC fails UNAVAILABLE.
const SESSION_CALL_LIMIT: Duration = Duration::from_secs(3);

/// A failure to start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] tally_chassis::storage::StoreError),
    /// The session store (embedded or Redis) could not be opened.
    #[error("sessions: {0}")]
    Sessions(#[from] tally_chassis::session::SessionError),
    /// A storage port failed while preparing the signing keys.
    #[error("{0}")]
    Port(#[from] crate::ports::PortError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] tally_chassis::server::ServeError),
    /// The outbox relay to the event transport could not start.
    #[error("events: {0}")]
    Events(#[from] tally_chassis::events::BusError),
    /// The signing keys could not be loaded or rotated.
    #[error("signing keys: {0}")]
    Keys(#[from] crate::app::AppError),
    /// The admin token file could not be read or created.
    #[error(transparent)]
    AdminToken(#[from] crate::admin::AdminTokenError),
}

/// Runs the service until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let store = tally_chassis::storage::open(&config.storage).await?;
    let sessions = open_sessions(&config, store.clone()).await?;
    let repo = Arc::new(StoreRepository::new(store.clone()));

    let admin_token = match &config.user.admin_token_file {
        Some(path) => Some(crate::admin::load_or_create_token(path)?),
        None => None,
    };
    let every = match config.user.signing_key_rotation_secs {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let keys =
        Arc::new(KeyRotation::start(repo.clone(), config.user.signing_key_overlap(), every).await?);
    let signer = keys.signer();
    tracing::info!(kid = signer.active_kid(), "access-token signing key loaded");
    let refresher = keys.clone().spawn_refresher();

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hasher = Argon2Hasher::new(cores * 2).await?;
    let app = Arc::new(UserApp::new(
        repo.clone(),
        repo,
        sessions.clone(),
        Arc::new(hasher),
        signer,
        Lifetimes {
            session: Duration::from_secs(config.user.session_ttl_secs),
            access_token: Duration::from_secs(config.user.access_token_ttl_secs),
        },
        config.user.login_throttle.policy(),
    ));

    let (hub, health_server) = HealthHub::new(&[SERVICE_NAME]);
    let probe = store.clone();
    hub.watch("storage", HEALTH_INTERVAL, move || {
        let s = probe.clone();
        async move { s.ping().await.is_ok() }
    });
    // The session store (Redis, or the embedded one): its health is also
    // `tally_dependency_up{dependency="sessions"}` on `/metrics`.
    let probe = sessions.clone();
    hub.watch("sessions", HEALTH_INTERVAL, move || {
        let s = probe.clone();
        async move { s.ping().await.is_ok() }
    });

    // Consumers follow UserRegistered through the feed (embedded transport);
    // with Redis the relay copies the outbox to the stream as well.
    let feed = tally_chassis::events::Feed::new(store.clone());
    let _relay = tally_chassis::events::transport::spawn_relay(
        &config.events,
        store.clone(),
        crate::app::PRODUCER,
    )
    .await?;

    let mut routes = tally_chassis::server::Routes::new();
    let proxies = config.user.login_throttle.trusted_proxies.clone();
    routes.add(UserGrpc::new(app, proxies).into_server());
    routes.add(crate::admin::UserAdminGrpc::new(keys, admin_token).into_server());
    routes.add_feed(&feed);
    let served =
        tally_chassis::server::serve(&config.server, hub, health_server, routes, shutdown).await;
    refresher.abort();
    served?;
    Ok(())
}

/// The configured session store; Redis gets a few attempts, since it may
/// still be starting alongside this service.
async fn open_sessions(
    config: &Config,
    store: Arc<dyn tally_chassis::storage::Store>,
) -> Result<Arc<dyn SessionStore>, RunError> {
    let url = config.user.redis_url.as_deref();
    let mut attempt = 1;
    loop {
        match tally_chassis::session::open(url, store.clone()).await {
            Ok(s) => return Ok(Arc::new(TimeLimitedSessions::new(s, SESSION_CALL_LIMIT))),
            Err(e) if attempt < REDIS_CONNECT_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "session store not reachable yet; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
