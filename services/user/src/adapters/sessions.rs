//! A time limit around the session store, so a slow or unreachable backend
//! (the Redis client retries reconnects for several seconds by itself)
//! turns into a prompt UNAVAILABLE instead of holding the caller.

use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tally_chassis::session::{Session, SessionError, SessionStore};

/// Wraps a [`SessionStore`], failing any call that takes longer than `limit`.
pub struct TimeLimitedSessions {
    inner: Arc<dyn SessionStore>,
    limit: Duration,
}

impl TimeLimitedSessions {
    pub fn new(inner: Arc<dyn SessionStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        tokio::time::timeout(self.limit, f)
            .await
            .unwrap_or_else(|_| {
                Err(SessionError::Unavailable(format!(
                    "{what} did not finish within {:?}",
                    self.limit
                )))
            })
    }
}

#[async_trait]
impl SessionStore for TimeLimitedSessions {
    async fn create(&self, id: &str, session: &Session, ttl: Duration) -> Result<(), SessionError> {
        self.bounded("session create", self.inner.create(id, session, ttl))
            .await
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, SessionError> {
        self.bounded("session lookup", self.inner.get(id)).await
    }

    async fn revoke(&self, id: &str) -> Result<bool, SessionError> {
        self.bounded("session revoke", self.inner.revoke(id)).await
    }

    async fn ping(&self) -> Result<(), SessionError> {
        self.bounded("session store ping", self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_chassis::session::SessionStore;

    /// A backend that never answers.
    struct Stuck;

    #[async_trait]
    impl SessionStore for Stuck {
        async fn create(&self, _: &str, _: &Session, _: Duration) -> Result<(), SessionError> {
            std::future::pending().await
        }
        async fn get(&self, _: &str) -> Result<Option<Session>, SessionError> {
            std::future::pending().await
        }
        async fn revoke(&self, _: &str) -> Result<bool, SessionError> {
            std::future::pending().await
        }
        async fn ping(&self) -> Result<(), SessionError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_stuck_backend_becomes_unavailable() {
        let s = TimeLimitedSessions::new(Arc::new(Stuck), Duration::from_millis(50));
        let sess = Session {
            user_id: "u".into(),
            created_at: 0,
            expires_at: 10,
        };
        assert!(matches!(
            s.get("x").await,
            Err(SessionError::Unavailable(_))
        ));
        assert!(matches!(
            s.create("x", &sess, Duration::from_secs(1)).await,
            Err(SessionError::Unavailable(_))
        ));
        assert!(matches!(
            s.revoke("x").await,
            Err(SessionError::Unavailable(_))
        ));
        assert!(matches!(s.ping().await, Err(SessionError::Unavailable(_))));
    }

    #[tokio::test]
    async fn answers_within_the_limit_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            tally_chassis::storage::embedded::EmbeddedStore::open(&dir.path().join("s.redb"))
                .await
                .unwrap();
        let inner = tally_chassis::session::open(None, Arc::new(store))
            .await
            .unwrap();
        let s = TimeLimitedSessions::new(inner, Duration::from_secs(30));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let sess = Session {
            user_id: "u".into(),
            created_at: now,
            expires_at: now + 60,
        };
        s.create("id", &sess, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.get("id").await.unwrap(), Some(sess));
        assert!(s.revoke("id").await.unwrap());
        assert_eq!(s.get("id").await.unwrap(), None);
    }
}
