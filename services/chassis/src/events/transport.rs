//! Choosing the event transport by config: the embedded feed (default, nothing
//! else to run), Redis Streams or a Kafka-protocol broker. Producers and
//! consumers call the two functions here and never name an adapter.
//!
//! ```toml
//! [events]                  # or omitted: embedded
//! transport = "redis"
//! url = "redis://127.0.0.1:6379"
//! max_len = 100000          # optional, see redis_streams for the rest
//! ```
//!
//! ```toml
//! [events]
//! transport = "kafka"
//! brokers = ["127.0.0.1:9092"]
//! partitions = 6            # optional, see kafka for the rest
//! ```

use crate::config::{Issue, OutboundSettings};
use crate::events::bus::{BusError, EventSource};
use crate::events::feed_source::FeedSource;
use crate::events::kafka::{KafkaPublisher, KafkaSettings, KafkaSource};
use crate::events::redis_streams::{RedisPublisher, RedisSource, RedisStreamSettings};
use crate::events::relay::Relay;
use crate::storage::Store;
use serde::Deserialize;
use std::sync::Arc;

/// The `[events]` section of a producing or consuming service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum EventBusSettings {
    /// Consumers read the producer's `EventFeedService` through `[outbound]`.
    #[default]
    Embedded,
    /// A relay copies the outbox to Redis Streams; consumers use consumer groups.
    Redis(RedisStreamSettings),
    /// A relay copies the outbox to a Kafka-protocol topic per producer.
    Kafka(KafkaSettings),
}

impl EventBusSettings {
    /// These settings with the Redis group member named `instance` unless
    /// the config names one (stable across restarts, so a restarted replica
    /// takes back its own pending entries at once).
    pub fn with_instance(&self, instance: &str) -> Self {
        let mut bus = self.clone();
        if let EventBusSettings::Redis(redis) = &mut bus
            && redis.instance.is_none()
        {
            redis.instance = Some(instance.to_string());
        }
        bus
    }

    /// Validation issues, keys prefixed with `prefix` (usually `events`).
    pub fn issues(&self, prefix: &str) -> Vec<Issue> {
        match self {
            EventBusSettings::Embedded => Vec::new(),
            EventBusSettings::Redis(redis) => redis.issues(prefix),
            EventBusSettings::Kafka(kafka) => kafka.issues(prefix),
        }
    }
}

/// The source of `producer`'s events for a consumer.
pub async fn source(
    settings: &EventBusSettings,
    outbound: &OutboundSettings,
    producer: &str,
) -> Result<Arc<dyn EventSource>, BusError> {
    match settings {
        EventBusSettings::Embedded => Ok(Arc::new(
            FeedSource::from_outbound(outbound, producer)
                .map_err(|e| BusError::Invalid(e.to_string()))?,
        )),
        EventBusSettings::Redis(redis) => {
            Ok(Arc::new(RedisSource::connect(redis, producer).await?))
        }
        EventBusSettings::Kafka(kafka) => {
            Ok(Arc::new(KafkaSource::connect(kafka, producer).await?))
        }
    }
}

/// For a producer: starts the outbox relay when the transport needs one
/// (Redis, Kafka), or returns `None` (embedded: the feed serves the outbox itself).
pub async fn spawn_relay(
    settings: &EventBusSettings,
    store: Arc<dyn Store>,
    producer: &str,
) -> Result<Option<tokio::task::JoinHandle<()>>, BusError> {
    match settings {
        EventBusSettings::Embedded => Ok(None),
        EventBusSettings::Redis(redis) => {
            let publisher = Arc::new(RedisPublisher::connect(redis, producer).await?);
            Ok(Some(Relay::new(store, publisher, producer).spawn()))
        }
        EventBusSettings::Kafka(kafka) => {
            let publisher = Arc::new(KafkaPublisher::connect(kafka, producer).await?);
            Ok(Some(Relay::new(store, publisher, producer).spawn()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        events: EventBusSettings,
    }

    #[test]
    fn defaults_to_embedded_and_parses_redis() {
        let c: Config = toml::from_str("").expect("empty");
        assert!(matches!(c.events, EventBusSettings::Embedded));
        let c: Config = toml::from_str("[events]\ntransport = \"embedded\"").expect("embedded");
        assert!(matches!(c.events, EventBusSettings::Embedded));
        let c: Config = toml::from_str(
            "[events]\ntransport = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nmax_len = 5",
        )
        .expect("redis");
        match c.events {
            EventBusSettings::Redis(r) => {
                assert_eq!((r.url.as_str(), r.max_len), ("redis://127.0.0.1:1", 5))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            toml::from_str::<Config>("[events]\ntransport = \"kafka\"").is_err(),
            "kafka needs brokers"
        );
        assert!(toml::from_str::<Config>("[events]\ntransport = \"nats\"").is_err());
        let c: Config = toml::from_str(
            "[events]\ntransport = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\npartitions = 3",
        )
        .expect("kafka");
        match &c.events {
            EventBusSettings::Kafka(k) => assert_eq!((k.brokers.len(), k.partitions), (1, 3)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(c.events.issues("events").is_empty());
        assert!(
            toml::from_str::<Config>(
                "[events]\ntransport = \"kafka\"\nbrokers = [\"b:1\"]\npartition = 3"
            )
            .is_err(),
            "unknown kafka keys are rejected"
        );
        assert!(
            toml::from_str::<Config>(
                "[events]\ntransport = \"redis\"\nurl = \"redis://x\"\nmaxlen = 5"
            )
            .is_err(),
            "unknown keys are rejected"
        );
    }
}
