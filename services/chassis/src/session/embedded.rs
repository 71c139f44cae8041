//! Sessions in the service's own embedded store; expiry is checked on read.

use super::{Session, SessionError, SessionStore, now_unix};
use crate::storage::{Store, StoreError, WriteBatch, decode, encode};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

const TABLE: &str = "sessions";
const PARTITION: &str = "s";

/// Session adapter over a [`Store`].
pub struct EmbeddedSessions {
    store: Arc<dyn Store>,
}

impl EmbeddedSessions {
    /// Sessions kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn map(e: StoreError) -> SessionError {
    match e {
        StoreError::Corrupt(m) => SessionError::Corrupt(m),
        other => SessionError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl SessionStore for EmbeddedSessions {
    async fn create(
        &self,
        id: &str,
        session: &Session,
        _ttl: Duration,
    ) -> Result<(), SessionError> {
        let mut b = WriteBatch::new();
        b.put(TABLE, PARTITION, id, encode(session).map_err(map)?);
        self.store.commit(b).await.map_err(map)
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, SessionError> {
        let Some(bytes) = self.store.get(TABLE, PARTITION, id).await.map_err(map)? else {
            return Ok(None);
        };
        let session: Session = decode(&bytes).map_err(map)?;
        if session.expires_at <= now_unix() {
            return Ok(None);
        }
        Ok(Some(session))
    }

    async fn revoke(&self, id: &str) -> Result<bool, SessionError> {
        let existed = self.get(id).await?.is_some();
        let mut b = WriteBatch::new();
        b.delete(TABLE, PARTITION, id);
        self.store.commit(b).await.map_err(map)?;
        Ok(existed)
    }

    async fn ping(&self) -> Result<(), SessionError> {
        self.store.ping().await.map_err(map)
    }
}
