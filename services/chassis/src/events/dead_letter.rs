//! Dead letters: events a consumer gave up on after its retries, kept in the
//! consumer's own store (table `__consumer_dlq`, partition = consumer name,
//! key = event id) with the error, the attempt count, the time and the whole
//! envelope, so an operator can inspect and redrive them.

use crate::events::bus::Delivery;
use crate::storage::{Store, StoreError, decode};
use prost::Message;
use serde::{Deserialize, Serialize};
use tally_api::events::v1::{DeadLetter, EventEnvelope};

/// The DLQ table in a consumer's store.
pub const TABLE: &str = "__consumer_dlq";

const PAGE: usize = 256;

/// One dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The envelope's event id.
    pub event_id: String,
    /// The event's position in the producer's log.
    pub position: u64,
    /// The fully qualified event type.
    pub event_type: String,
    /// The last error.
    pub error: String,
    /// Attempts so far, across redrives.
    pub attempts: u32,
    /// When it last failed, milliseconds since the Unix epoch.
    pub failed_at_ms: u64,
    /// The encoded `EventEnvelope`.
    pub envelope: Vec<u8>,
}

impl DeadLetterRecord {
    /// A record for `delivery` failing with `error` after `attempts` attempts.
    pub fn new(delivery: &Delivery, error: String, attempts: u32) -> Self {
        Self {
            event_id: delivery.envelope.event_id.clone(),
            position: delivery.position,
            event_type: delivery.envelope.event_type.clone(),
            error,
            attempts,
            failed_at_ms: now_ms(),
            envelope: delivery.envelope.encode_to_vec(),
        }
    }

    /// The delivery to process again.
    pub fn delivery(&self) -> Result<Delivery, StoreError> {
        let envelope = EventEnvelope::decode(self.envelope.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("dead letter {}: {e}", self.event_id)))?;
        Ok(Delivery {
            position: self.position,
            envelope,
        })
    }

    /// The wire form for `ConsumerAdminService`.
    pub fn to_proto(&self, consumer: &str) -> DeadLetter {
        let failed_at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.failed_at_ms);
        DeadLetter {
            consumer: consumer.to_string(),
            event_id: self.event_id.clone(),
            offset: self.position,
            event_type: self.event_type.clone(),
            error: self.error.clone(),
            attempts: self.attempts,
            failed_at: Some(prost_types::Timestamp::from(failed_at)),
            event: EventEnvelope::decode(self.envelope.as_slice()).ok(),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One dead letter of `consumer`.
pub async fn get(
    store: &dyn Store,
    consumer: &str,
    event_id: &str,
) -> Result<Option<DeadLetterRecord>, StoreError> {
    store
        .get(TABLE, consumer, event_id)
        .await?
        .map(|bytes| decode(&bytes))
        .transpose()
}

/// Every dead letter of `consumer`, in event-id order (UUIDv7: time order).
pub async fn list(store: &dyn Store, consumer: &str) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let rows = store.scan(TABLE, consumer, after.clone(), PAGE).await?;
        let full = rows.len() == PAGE;
        for row in rows {
            out.push(decode(&row.value)?);
            after = Some(row.key);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// How many dead letters `consumer` has.
pub async fn count(store: &dyn Store, consumer: &str) -> Result<u64, StoreError> {
    let mut n = 0u64;
    let mut after = None;
    loop {
        let rows = store.scan(TABLE, consumer, after.clone(), PAGE).await?;
        n += rows.len() as u64;
        if rows.len() < PAGE {
            return Ok(n);
        }
        after = rows.last().map(|r| r.key.clone());
    }
}
