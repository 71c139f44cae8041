//! Writing a producer's outbox entries to its stream, skipping offsets the
//! stream already holds (entry id = outbox offset), trimmed to `max_len`.

use super::{RedisStreamSettings, connect, entry_id, last_position, unavailable};
use crate::events::bus::BusError;
use crate::events::relay::Publisher;
use crate::storage::OutboxEntry;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::sync::Mutex;

/// Publishes outbox entries to a producer's stream.
pub struct RedisPublisher {
    conn: ConnectionManager,
    stream: String,
    max_len: usize,
    /// The stream's last position as last seen (`None`: ask Redis).
    last: Mutex<Option<u64>>,
}

impl RedisPublisher {
    /// Connects and targets the stream of `producer`.
    pub async fn connect(settings: &RedisStreamSettings, producer: &str) -> Result<Self, BusError> {
        Ok(Self {
            conn: connect(&settings.url, Duration::from_secs(5)).await?,
            stream: settings.stream(producer),
            max_len: settings.max_len.max(1),
            last: Mutex::new(None),
        })
    }
}

#[async_trait]
impl Publisher for RedisPublisher {
    fn describe(&self) -> String {
        format!("redis:{}", self.stream)
    }

    async fn publish(&self, entries: &[OutboxEntry]) -> Result<(), BusError> {
        let mut last = self.last.lock().await;
        let mut conn = self.conn.clone();
        let known = match *last {
            Some(known) => known,
            None => last_position(&mut conn, &self.stream).await?,
        };
        let fresh: Vec<&OutboxEntry> = entries.iter().filter(|e| e.offset > known).collect();
        if fresh.len() < entries.len() {
            tracing::info!(stream = %self.stream, skipped = entries.len() - fresh.len(), "entries already in the stream");
        }
        if let Some(newest) = fresh.last().map(|e| e.offset) {
            let mut pipe = redis::pipe();
            for entry in &fresh {
                pipe.cmd("XADD")
                    .arg(&self.stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.max_len)
                    .arg(entry_id(entry.offset))
                    .arg("type")
                    .arg(&entry.event.event_type)
                    .arg("aggregate")
                    .arg(&entry.event.aggregate_id)
                    .arg("envelope")
                    .arg(entry.event.payload.as_slice())
                    .ignore();
            }
            let result: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            if let Err(e) = result {
                *last = None;
                return Err(unavailable(e));
            }
            *last = Some(newest);
        } else {
            *last = Some(known);
        }
        Ok(())
    }
}
