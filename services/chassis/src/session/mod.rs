//! The session port: login sessions with a time to live, revocable at logout.
//!
//! Two adapters: the embedded one keeps sessions in the service's own store
//! (the default, nothing else to run); the Redis one is used when `redis_url`
//! is configured, so sessions are shared by every replica and expire in Redis.
//! Redis calls go through [`resilient::ResilientSessions`] (deadline, retried
//! reads, circuit breaker, bulkhead).

pub mod embedded;
pub mod redis;
pub mod resilient;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What a session token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user signed in.
    pub user_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; the session is gone after this.
    pub expires_at: i64,
}

/// Session store failures.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The backend cannot be used right now.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A stored session could not be decoded.
    #[error("corrupt session record: {0}")]
    Corrupt(String),
}

impl From<SessionError> for tonic::Status {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            SessionError::Corrupt(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Sessions keyed by an id derived from the token (never the token itself).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores `session` under `id` for `ttl`.
    async fn create(&self, id: &str, session: &Session, ttl: Duration) -> Result<(), SessionError>;
    /// The live session, or `None` when unknown, expired or revoked.
    async fn get(&self, id: &str) -> Result<Option<Session>, SessionError>;
    /// Revokes the session; true when it existed.
    async fn revoke(&self, id: &str) -> Result<bool, SessionError>;
    /// Checks the backend is usable, for health.
    async fn ping(&self) -> Result<(), SessionError>;
}

/// Name of the Redis session client in metrics.
pub const REDIS_CLIENT: &str = "redis-sessions";

/// Redis when `redis_url` is set, else the embedded adapter over `store`.
pub async fn open(
    redis_url: Option<&str>,
    store: Arc<dyn crate::storage::Store>,
) -> Result<Arc<dyn SessionStore>, SessionError> {
    match redis_url {
        Some(url) => {
            let redis: Arc<dyn SessionStore> = Arc::new(redis::RedisSessions::connect(url).await?);
            let settings = crate::resilience::Settings::default();
            let guarded = resilient::ResilientSessions::new(REDIS_CLIENT, redis, &settings)
                .map_err(|e| SessionError::Unavailable(e.to_string()))?;
            Ok(Arc::new(guarded))
        }
        None => Ok(Arc::new(embedded::EmbeddedSessions::new(store))),
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
