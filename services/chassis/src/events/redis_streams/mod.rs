//! The Redis Streams transport: one stream per producer
//! (`<prefix><producer>`, e.g. `tally:events:polling`), written by the
//! [`Relay`](crate::events::relay::Relay) through [`RedisPublisher`] and read
//! by consumers through [`RedisSource`].
//!
//! * Entry ids are `<outbox offset>-0`, so positions are the producer's
//!   offsets on this transport too, and an entry cannot be added twice
//!   (the publisher skips offsets the stream already holds).
//! * Fields: `type`, `aggregate`, `envelope` (the encoded `EventEnvelope`).
//! * Each consumer is a consumer group named after it (`XGROUP CREATE ..
//!   MKSTREAM`, created at the consumer's durable offset); each process is a
//!   group member (`instance`, default `<hostname>-<pid>`; set it to a stable
//!   name per replica so a restarted replica takes back its own pending
//!   entries at once).
//! * Reading: first the member's own pending entries (`XREADGROUP .. 0`), then
//!   new ones (`XREADGROUP .. >` with `BLOCK`); every `claim_idle_ms / 2` it
//!   takes over entries another member left pending for longer than
//!   `claim_idle_ms` (`XAUTOCLAIM`): that member died. Entries are `XACK`ed
//!   after the consumer's own transaction committed.
//! * Retention: `XADD MAXLEN ~ max_len` (default 100 000 entries per producer).
//!   A consumer that falls further behind than that loses the trimmed entries
//!   on this transport (they stay in the producer's outbox; replay through the
//!   embedded feed recovers them). Size `max_len` for the longest outage to ride out.
//!
//! [`publisher`] writes entries (for the relay); [`source`] reads them through
//! consumer groups; this module holds the settings and the entry-id mapping.

mod publisher;
mod source;

pub use publisher::RedisPublisher;
pub use source::RedisSource;

use crate::events::bus::BusError;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamRangeReply;
use serde::Deserialize;
use std::time::Duration;

const BUFFER: usize = 64;
const READ_COUNT: usize = 64;

/// Redis Streams settings (a `[events.redis]`-style config section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSettings {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Stream key prefix; the producer's name is appended.
    #[serde(default = "default_prefix")]
    pub stream_prefix: String,
    /// Approximate maximum entries kept per stream (`XADD MAXLEN ~`).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Pending entries idle longer than this are claimed from their (dead) owner.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// How long one `XREADGROUP` blocks waiting for new entries.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// This process's member name within consumer groups.
    #[serde(default)]
    pub instance: Option<String>,
}

fn default_prefix() -> String {
    "tally:events:".to_string()
}
fn default_max_len() -> usize {
    100_000
}
fn default_claim_idle_ms() -> u64 {
    30_000
}
fn default_block_ms() -> u64 {
    1_000
}

impl RedisStreamSettings {
    /// Settings with defaults for everything but the URL.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            stream_prefix: default_prefix(),
            max_len: default_max_len(),
            claim_idle_ms: default_claim_idle_ms(),
            block_ms: default_block_ms(),
            instance: None,
        }
    }

    /// The stream key of `producer`.
    pub fn stream(&self, producer: &str) -> String {
        format!("{}{producer}", self.stream_prefix)
    }

    /// Validation issues, keys prefixed with `prefix`.
    pub fn issues(&self, prefix: &str) -> Vec<crate::config::Issue> {
        let mut out = Vec::new();
        if redis::Client::open(self.url.as_str()).is_err() {
            out.push(crate::config::Issue::new(
                format!("{prefix}.url"),
                format!("`{}` is not a Redis URL", self.url),
                "write it as `redis://host:port`",
            ));
        }
        if self.max_len == 0 {
            out.push(crate::config::Issue::new(
                format!("{prefix}.max_len"),
                "is 0",
                "keep at least the backlog a consumer may fall behind, e.g. 100000",
            ));
        }
        out
    }

    fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tally".to_string());
            format!("{host}-{}", std::process::id())
        })
    }
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(format!("redis: {e}"))
}

async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager, BusError> {
    let client = redis::Client::open(url)
        .map_err(|e| BusError::Invalid(format!("bad redis url `{url}`: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(3)));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(unavailable)
}

fn entry_id(position: u64) -> String {
    format!("{position}-0")
}

fn position_of(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

/// The last position in `stream` (0 when empty or missing).
async fn last_position(conn: &mut ConnectionManager, stream: &str) -> Result<u64, BusError> {
    let reply: StreamRangeReply = conn
        .xrevrange_count(stream, "+", "-", 1)
        .await
        .map_err(unavailable)?;
    Ok(reply
        .ids
        .first()
        .and_then(|id| position_of(&id.id))
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_carry_the_outbox_offset() {
        assert_eq!(entry_id(42), "42-0");
        assert_eq!(position_of("42-0"), Some(42));
        assert_eq!(position_of("garbage"), None);
    }

    #[test]
    fn settings_default_and_validate() {
        let s: RedisStreamSettings =
            toml::from_str("url = \"redis://127.0.0.1:6379\"").expect("parse");
        assert_eq!(s.stream("polling"), "tally:events:polling");
        assert_eq!(s.max_len, 100_000);
        assert!(s.issues("events.redis").is_empty());
        let bad = RedisStreamSettings::new("http://nope");
        assert_eq!(bad.issues("events.redis")[0].key, "events.redis.url");
    }
}
