//! The cache port in Redis. Keys (all under the configured prefix):
//! - `<kind>:<poll_id>`: a cached read (`poll` or `results`), with a TTL;
//! - `gen:<poll_id>`: the poll's generation, a token unique per change
//!   (Redis `TIME` plus a counter), kept twice the entry TTL;
//! - `gen-seq`: the counter; `checkpoint`: the event position applied.
//!
//! Each step is one Lua script, so it is atomic in Redis: a lookup that
//! misses creates the generation when there is none and returns it as the
//! ticket; a fill writes only while the generation equals the ticket (an
//! absent generation never equals one); an invalidation replaces the
//! generation and deletes the entries. Scripts are sent with EVALSHA (and
//! loaded on first use) by the `redis` crate's `Script`.
//!
//! Use a Redis without persistence (or with an fsync'd AOF): a snapshot
//! restored after a restart could bring back entries whose invalidation
//! came after the snapshot. A single instance is assumed (the scripts touch
//! keys of different hash slots).

use super::{CacheError, CacheKey, FillTicket, Kind, Lookup, PollCache};
use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Connection attempts the manager makes per call before giving up.
const RECONNECT_RETRIES: usize = 1;
/// Longest pause between reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(200);

const LOOKUP: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
local g = redis.call('GET', KEYS[2])
if not g then
  local t = redis.call('TIME')
  g = t[1] .. '.' .. t[2] .. '-' .. redis.call('INCR', KEYS[3])
  redis.call('SET', KEYS[2], g, 'PX', ARGV[1])
end
return {0, g}
"#;

const FILL: &str = r#"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

const INVALIDATE: &str = r#"
local t = redis.call('TIME')
redis.call('SET', KEYS[1], t[1] .. '.' .. t[2] .. '-' .. redis.call('INCR', KEYS[2]), 'PX', ARGV[1])
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"#;

const CHECKPOINT: &str = r#"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"#;

static LOOKUP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOOKUP));
static FILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FILL));
static INVALIDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(INVALIDATE));
static CHECKPOINT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CHECKPOINT));

/// The cache port over one Redis.
pub struct RedisCache {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    ttl: Duration,
    call_timeout: Duration,
}

fn unavailable(e: redis::RedisError) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisCache {
    /// A cache at `url`; connects on first use, so polling starts while
    /// Redis is down (reads then go to the store).
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        call_timeout: Duration,
    ) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)
            .map_err(|e| CacheError::Unavailable(format!("bad cache.url `{url}`: {e}")))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_string(),
            ttl,
            call_timeout,
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, CacheError> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY)
            .set_connection_timeout(Some(self.call_timeout))
            .set_response_timeout(Some(self.call_timeout));
        let conn = self
            .conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .map_err(unavailable)?;
        Ok(conn.clone())
    }

    fn entry_key(&self, kind: Kind, poll_id: &str) -> String {
        format!("{}{}:{poll_id}", self.prefix, kind.segment())
    }

    fn gen_key(&self, poll_id: &str) -> String {
        format!("{}gen:{poll_id}", self.prefix)
    }

    fn seq_key(&self) -> String {
        format!("{}gen-seq", self.prefix)
    }

    fn checkpoint_key(&self) -> String {
        format!("{}checkpoint", self.prefix)
    }

    /// Generations outlive the entries they guard.
    fn gen_ttl(&self) -> u64 {
        millis(self.ttl).saturating_mul(2)
    }
}

#[async_trait]
impl PollCache for RedisCache {
    async fn lookup(&self, key: &CacheKey) -> Result<Lookup, CacheError> {
        let mut conn = self.conn().await?;
        let (found, bytes): (i64, Vec<u8>) = LOOKUP_SCRIPT
            .key(self.entry_key(key.kind, &key.poll_id))
            .key(self.gen_key(&key.poll_id))
            .key(self.seq_key())
            .arg(self.gen_ttl())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if found == 1 {
            return Ok(Lookup::Hit(bytes));
        }
        String::from_utf8(bytes)
            .map(|g| Lookup::Miss(FillTicket(g)))
            .map_err(|e| CacheError::Protocol(format!("generation is not text: {e}")))
    }

    async fn fill(
        &self,
        key: &CacheKey,
        ticket: &FillTicket,
        value: &[u8],
    ) -> Result<bool, CacheError> {
        let mut conn = self.conn().await?;
        let stored: i64 = FILL_SCRIPT
            .key(self.entry_key(key.kind, &key.poll_id))
            .key(self.gen_key(&key.poll_id))
            .arg(&ticket.0)
            .arg(value)
            .arg(millis(self.ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(stored == 1)
    }

    async fn invalidate(&self, poll_id: &str) -> Result<(), CacheError> {
        let mut conn = self.conn().await?;
        let mut invocation = INVALIDATE_SCRIPT.key(self.gen_key(poll_id));
        invocation.key(self.seq_key());
        for kind in Kind::ALL {
            invocation.key(self.entry_key(kind, poll_id));
        }
        let _: i64 = invocation
            .arg(self.gen_ttl())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn checkpoint(&self) -> Result<Option<u64>, CacheError> {
        let mut conn = self.conn().await?;
        let value: Option<u64> = redis::cmd("GET")
            .arg(self.checkpoint_key())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(value)
    }

    async fn record_checkpoint(&self, position: u64) -> Result<(), CacheError> {
        let mut conn = self.conn().await?;
        let _: i64 = CHECKPOINT_SCRIPT
            .key(self.checkpoint_key())
            .arg(position)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
