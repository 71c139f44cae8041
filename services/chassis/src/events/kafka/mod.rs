//! The Kafka-protocol transport: one topic per producer
//! (`<topic_prefix><producer>`, e.g. `tally.events.polling`), written by the
//! [`Relay`](crate::events::relay::Relay) through [`KafkaPublisher`] and read
//! by consumers through [`KafkaSource`]. The client is `rskafka` (pure Rust,
//! no C library); any Kafka-protocol broker works (the tests run `tansu`).
//!
//! * **Partitioning**: a record goes to partition `fnv1a(aggregate_id) % n`,
//!   so every event of one poll lands in one partition, in outbox order.
//!   (The hash is written here, not taken from `std`, because it must stay
//!   the same across builds and Rust versions.)
//! * **Record**: key = aggregate id, value = the encoded `EventEnvelope`,
//!   headers `tally-position` (the producer's outbox offset, decimal) and
//!   `tally-type` (the event type).
//! * **Positions stay the producer's outbox offsets.** Kafka offsets are per
//!   partition, so the source merges the partitions back into outbox order
//!   (it hands out position `p + 1` after `p`, from whichever partition holds
//!   it, and drops positions it has already handed out, i.e. the relay's
//!   re-sends after a crash). So the consumer's durable offset, lag and replay
//!   mean the same thing as on the other transports.
//! * **Committed offsets live in the consumer's own store**, not in a broker
//!   consumer group: `rskafka` has no OffsetCommit/OffsetFetch or group
//!   membership (by design: "no support for offset tracking, consumer groups"),
//!   and the consumer runtime already commits its offset in the same
//!   transaction as its read-model writes, which a broker commit could never
//!   join. A (re)subscribe reads each partition from its earliest retained
//!   record and skips positions up to the durable offset, so its cost grows
//!   with the topic's retention.
//! * **Retention** is the topic's (`retention.ms` / `retention.bytes`, set on
//!   the broker). A position trimmed away is skipped (logged) once every
//!   partition holds a later one; until then the source waits for it.
//!
//! * **Tested against a real broker process**: tansu 0.6.0 (in-memory
//!   storage), which `bash scripts/test` builds once into `.tools/tansu`
//!   (a dev build, about 10 min on a busy 2-core machine against 64.5 min for
//!   the release profile; see the README).
//!
//! [`publisher`] writes records (for the relay); [`source`] reads and merges
//! them; this module holds the settings, the client set-up and the record
//! mapping.

mod publisher;
mod source;

pub use publisher::KafkaPublisher;
pub use source::KafkaSource;

use crate::config::{Issue, range_issue};
use crate::events::bus::BusError;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Default topic name prefix; the producer's name is appended.
pub const DEFAULT_TOPIC_PREFIX: &str = "tally.events.";
/// Default partitions of a topic the transport creates.
pub const DEFAULT_PARTITIONS: u16 = 6;
/// Most partitions a topic may be configured with.
pub const MAX_PARTITIONS: u16 = 1024;
/// Default replication factor of a topic the transport creates.
pub const DEFAULT_REPLICATION_FACTOR: u16 = 1;
/// Default longest wait of one fetch for new records.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(500);
/// Default most bytes one fetch returns per partition.
pub const DEFAULT_FETCH_MAX_BYTES: u32 = 1024 * 1024;
/// Default deadline of one broker request, retries included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Record header holding the producer's outbox offset.
pub const POSITION_HEADER: &str = "tally-position";
/// Record header holding the event type.
pub const TYPE_HEADER: &str = "tally-type";
/// Longest legal Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

/// Kafka settings (the `[events]` section with `transport = "kafka"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Topic name prefix; the producer's name is appended.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Partitions of a topic this transport creates (an existing topic keeps its own).
    #[serde(default = "default_partitions")]
    pub partitions: u16,
    /// Replication factor of a topic this transport creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// Longest wait of one fetch for new records, in milliseconds.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u64,
    /// Most bytes one fetch returns per partition.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: u32,
    /// Deadline of one broker request (retries included), in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_string()
}
fn default_partitions() -> u16 {
    DEFAULT_PARTITIONS
}
fn default_replication_factor() -> u16 {
    DEFAULT_REPLICATION_FACTOR
}
fn default_fetch_wait_ms() -> u64 {
    millis(DEFAULT_FETCH_WAIT)
}
fn default_fetch_max_bytes() -> u32 {
    DEFAULT_FETCH_MAX_BYTES
}
fn default_request_timeout_ms() -> u64 {
    millis(DEFAULT_REQUEST_TIMEOUT)
}
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl KafkaSettings {
    /// Settings with defaults for everything but the brokers.
    pub fn new(brokers: &[&str]) -> Self {
        Self {
            brokers: brokers.iter().map(|b| b.to_string()).collect(),
            topic_prefix: default_topic_prefix(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            fetch_wait_ms: default_fetch_wait_ms(),
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
            request_timeout_ms: default_request_timeout_ms(),
        }
    }

    /// The topic of `producer`.
    pub fn topic(&self, producer: &str) -> String {
        format!("{}{producer}", self.topic_prefix)
    }

    /// Validation issues, keys prefixed with `prefix`.
    pub fn issues(&self, prefix: &str) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.brokers.is_empty() {
            out.push(Issue::new(
                format!("{prefix}.brokers"),
                "is empty",
                "name at least one broker, e.g. brokers = [\"127.0.0.1:9092\"]",
            ));
        }
        for broker in &self.brokers {
            let port_ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                out.push(Issue::new(
                    format!("{prefix}.brokers"),
                    format!("`{broker}` is not host:port"),
                    "write each broker as `host:port`, e.g. `127.0.0.1:9092`",
                ));
            }
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.topic_prefix.is_empty()
            || !self.topic_prefix.chars().all(legal)
            || self.topic_prefix.len() > MAX_TOPIC_LEN / 2
        {
            out.push(Issue::new(
                format!("{prefix}.topic_prefix"),
                format!("`{}` is not a usable topic prefix", self.topic_prefix),
                format!(
                    "use letters, digits, `.`, `_` and `-`, at most {} characters (`{DEFAULT_TOPIC_PREFIX}` is the default)",
                    MAX_TOPIC_LEN / 2
                ),
            ));
        }
        out.extend(range_issue(
            &format!("{prefix}.partitions"),
            self.partitions,
            1u16,
            MAX_PARTITIONS,
            DEFAULT_PARTITIONS,
        ));
        out.extend(range_issue(
            &format!("{prefix}.replication_factor"),
            self.replication_factor,
            1u16,
            16u16,
            DEFAULT_REPLICATION_FACTOR,
        ));
        out.extend(range_issue(
            &format!("{prefix}.fetch_wait_ms"),
            self.fetch_wait_ms,
            1u64,
            60_000u64,
            default_fetch_wait_ms(),
        ));
        out.extend(range_issue(
            &format!("{prefix}.fetch_max_bytes"),
            self.fetch_max_bytes,
            1024u32,
            64 * 1024 * 1024u32,
            DEFAULT_FETCH_MAX_BYTES,
        ));
        out.extend(range_issue(
            &format!("{prefix}.request_timeout_ms"),
            self.request_timeout_ms,
            100u64,
            600_000u64,
            default_request_timeout_ms(),
        ));
        out
    }

    fn fetch_wait(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_ms.max(1))
    }
}

fn unavailable(e: KafkaError) -> BusError {
    BusError::Unavailable(format!("kafka: {e}"))
}

/// The partition of `aggregate_id` among `partitions` (FNV-1a, stable).
pub fn partition_of(aggregate_id: &str, partitions: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in aggregate_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    usize::try_from(hash % partitions.max(1) as u64).unwrap_or(0)
}

/// A connected client with the producer's topic created if missing, and one
/// client per partition of it.
struct Topic {
    name: String,
    partitions: Vec<Arc<PartitionClient>>,
}

async fn open_topic(settings: &KafkaSettings, producer: &str) -> Result<Topic, BusError> {
    if settings.brokers.is_empty() {
        return Err(BusError::Invalid("kafka: no brokers configured".into()));
    }
    let timeout = Duration::from_millis(settings.request_timeout_ms.max(1));
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(timeout),
    };
    let build = ClientBuilder::new(settings.brokers.clone())
        .client_id("tally")
        .backoff_config(backoff)
        .build();
    let client: Client = tokio::time::timeout(timeout, build)
        .await
        .map_err(|_| BusError::Unavailable("kafka: connecting timed out".into()))?
        .map_err(unavailable)?;
    let name = settings.topic(producer);
    let count = match partition_count(&client, &name).await? {
        Some(n) => n,
        None => {
            let created = client
                .controller_client()
                .map_err(unavailable)?
                .create_topic(
                    name.clone(),
                    i32::from(settings.partitions.max(1)),
                    i16::try_from(settings.replication_factor.max(1)).unwrap_or(1),
                    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX),
                )
                .await;
            match created {
                Ok(()) => {}
                Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::TopicAlreadyExists,
                    ..
                }) => {}
                Err(e) => return Err(unavailable(e)),
            }
            partition_count(&client, &name)
                .await?
                .unwrap_or(usize::from(settings.partitions.max(1)))
        }
    };
    if count != usize::from(settings.partitions) {
        tracing::info!(topic = %name, partitions = count, configured = settings.partitions, "topic exists with its own partition count");
    }
    let mut partitions = Vec::with_capacity(count);
    for p in 0..count {
        let id = i32::try_from(p).map_err(|_| BusError::Invalid("too many partitions".into()))?;
        let pc = client
            .partition_client(name.clone(), id, UnknownTopicHandling::Retry)
            .await
            .map_err(unavailable)?;
        partitions.push(Arc::new(pc));
    }
    Ok(Topic { name, partitions })
}

async fn partition_count(client: &Client, topic: &str) -> Result<Option<usize>, BusError> {
    let topics = client.list_topics().await.map_err(unavailable)?;
    Ok(topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.len())
        .filter(|n| *n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_and_validate() {
        let s: KafkaSettings = toml::from_str("brokers = [\"127.0.0.1:9092\"]").expect("parse");
        assert_eq!(s.topic("polling"), "tally.events.polling");
        assert_eq!(s.partitions, DEFAULT_PARTITIONS);
        assert_eq!(s.fetch_wait(), DEFAULT_FETCH_WAIT);
        assert!(s.issues("events").is_empty());
        assert!(toml::from_str::<KafkaSettings>("brokers = []\npartition = 3").is_err());

        let mut bad = KafkaSettings::new(&["nohost"]);
        bad.partitions = 0;
        bad.topic_prefix = "bad prefix/".into();
        let keys: Vec<String> = bad.issues("events").into_iter().map(|i| i.key).collect();
        assert_eq!(
            keys,
            ["events.brokers", "events.topic_prefix", "events.partitions"]
        );
        assert_eq!(
            KafkaSettings {
                brokers: vec![],
                ..KafkaSettings::new(&[])
            }
            .issues("events")[0]
                .key,
            "events.brokers"
        );
    }

    #[test]
    fn one_aggregate_always_maps_to_one_partition() {
        assert_eq!(partition_of("poll-1", 6), partition_of("poll-1", 6));
        assert!(partition_of("poll-1", 6) < 6);
        assert_eq!(partition_of("anything", 1), 0);
        // Spread: 60 aggregates over 6 partitions use more than one partition.
        let used: std::collections::HashSet<usize> = (0..60)
            .map(|i| partition_of(&format!("poll-{i}"), 6))
            .collect();
        assert!(used.len() > 3, "{used:?}");
        // Stable across builds: a fixed value.
        assert_eq!(partition_of("", 7), (0xcbf2_9ce4_8422_2325u64 % 7) as usize);
    }
}
