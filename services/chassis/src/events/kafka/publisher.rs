//! Writing a producer's outbox entries to its topic: each entry to the
//! partition of its aggregate, the partitions of one batch written at once,
//! each partition's records in outbox order in one produce request.

use super::{KafkaSettings, POSITION_HEADER, TYPE_HEADER, Topic, open_topic, partition_of};
use crate::events::bus::BusError;
use crate::events::relay::Publisher;
use crate::storage::OutboxEntry;
use async_trait::async_trait;
use rskafka::chrono::Utc;
use rskafka::client::partition::Compression;
use rskafka::record::Record;
use std::collections::BTreeMap;
use std::time::Duration;

/// Publishes outbox entries to a producer's topic.
pub struct KafkaPublisher {
    topic: Topic,
    timeout: Duration,
}

impl KafkaPublisher {
    /// Connects and targets the topic of `producer` (created if missing).
    pub async fn connect(settings: &KafkaSettings, producer: &str) -> Result<Self, BusError> {
        Ok(Self {
            topic: open_topic(settings, producer).await?,
            timeout: Duration::from_millis(settings.request_timeout_ms.max(1)),
        })
    }
}

/// The record of one outbox entry.
pub(super) fn record_of(entry: &OutboxEntry) -> Record {
    let mut headers = BTreeMap::new();
    headers.insert(
        POSITION_HEADER.to_string(),
        entry.offset.to_string().into_bytes(),
    );
    headers.insert(
        TYPE_HEADER.to_string(),
        entry.event.event_type.clone().into_bytes(),
    );
    Record {
        key: Some(entry.event.aggregate_id.clone().into_bytes()),
        value: Some(entry.event.payload.clone()),
        headers,
        timestamp: Utc::now(),
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    fn describe(&self) -> String {
        format!("kafka:{}", self.topic.name)
    }

    async fn publish(&self, entries: &[OutboxEntry]) -> Result<(), BusError> {
        let count = self.topic.partitions.len();
        let mut per_partition: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
        for entry in entries {
            per_partition
                .entry(partition_of(&entry.event.aggregate_id, count))
                .or_default()
                .push(record_of(entry));
        }
        let writes = per_partition.into_iter().filter_map(|(p, records)| {
            let client = self.topic.partitions.get(p)?.clone();
            Some(async move { client.produce(records, Compression::NoCompression).await })
        });
        match tokio::time::timeout(self.timeout, futures::future::try_join_all(writes)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(super::unavailable(e)),
            Err(_) => Err(BusError::Unavailable(format!(
                "kafka: producing to {} timed out",
                self.topic.name
            ))),
        }
    }
}
