//! Sessions in Redis: `SET key value EX ttl`, so Redis expires them itself and
//! every replica of the user service sees the same sessions.

use super::{Session, SessionError, SessionStore};
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

const PREFIX: &str = "tally:session:";

/// Session adapter over a Redis connection manager (reconnects on its own).
#[derive(Clone)]
pub struct RedisSessions {
    conn: ConnectionManager,
}

fn unavailable(e: redis::RedisError) -> SessionError {
    SessionError::Unavailable(e.to_string())
}

impl RedisSessions {
    /// Connects to `url` (`redis://host:port[/db]`).
    pub async fn connect(url: &str) -> Result<Self, SessionError> {
        let client = redis::Client::open(url)
            .map_err(|e| SessionError::Unavailable(format!("bad redis_url `{url}`: {e}")))?;
        // Fail fast while Redis is down (the default retries for ~10 s per
        // call); the manager keeps reconnecting in the background.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(Self { conn })
    }
}

#[async_trait]
impl SessionStore for RedisSessions {
    async fn create(&self, id: &str, session: &Session, ttl: Duration) -> Result<(), SessionError> {
        let value =
            serde_json::to_string(session).map_err(|e| SessionError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let _: () = conn
            .set_ex(format!("{PREFIX}{id}"), value, ttl.as_secs().max(1))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, SessionError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = conn
            .get(format!("{PREFIX}{id}"))
            .await
            .map_err(unavailable)?;
        value
            .map(|v| serde_json::from_str(&v).map_err(|e| SessionError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn revoke(&self, id: &str) -> Result<bool, SessionError> {
        let mut conn = self.conn.clone();
        let removed: u64 = conn
            .del(format!("{PREFIX}{id}"))
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn ping(&self) -> Result<(), SessionError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
