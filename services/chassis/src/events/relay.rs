//! The outbox relay: moves a producer's outbox to a broker (Redis Streams, or
//! later Kafka) for the non-embedded transports.
//!
//! It reads the outbox after its durable "delivered" offset (a row in the
//! producer's own store: `__relay/<name>/delivered`), publishes the entries in
//! offset order (which keeps order per aggregate), and records the new
//! delivered offset only after the publisher confirmed them. A crash between
//! publishing and recording publishes those entries again on restart:
//! duplicates are possible, loss is not. (The Redis publisher also drops
//! entries the stream already holds, so in practice duplicates are rare.)

use crate::events::bus::BusError;
use crate::storage::{OutboxEntry, Store, StoreError, WriteBatch};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The relay's table in the producer's store.
pub const TABLE: &str = "__relay";
const DELIVERED_KEY: &str = "delivered";

/// Where the relay publishes.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// A label for logs, e.g. `redis:tally:events:polling`.
    fn describe(&self) -> String;
    /// Publishes `entries` (in offset order) and returns once the broker has them.
    async fn publish(&self, entries: &[OutboxEntry]) -> Result<(), BusError>;
}

/// Relay failures.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading the outbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Publishing to the bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The relay for one producer store and one publisher.
#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    name: String,
    batch: usize,
    idle_poll: Duration,
}

impl Relay {
    /// A relay named `name` (keys its delivered offset; usually the producer's name).
    pub fn new(store: Arc<dyn Store>, publisher: Arc<dyn Publisher>, name: &str) -> Self {
        Self {
            store,
            publisher,
            name: name.to_string(),
            batch: 256,
            idle_poll: Duration::from_millis(50),
        }
    }

    /// Entries per publish and the idle poll interval.
    pub fn with_options(mut self, batch: usize, idle_poll: Duration) -> Self {
        self.batch = batch.max(1);
        self.idle_poll = idle_poll.max(Duration::from_millis(1));
        self
    }

    /// The last outbox offset confirmed published.
    pub async fn delivered(&self) -> Result<u64, RelayError> {
        let raw = self.store.get(TABLE, &self.name, DELIVERED_KEY).await?;
        match raw {
            None => Ok(0),
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    RelayError::Store(StoreError::Corrupt(format!(
                        "delivered offset of relay {}",
                        self.name
                    )))
                }),
        }
    }

    /// Outbox entries not yet published (outbox head minus delivered offset).
    pub async fn lag(&self) -> Result<u64, RelayError> {
        let delivered = self.delivered().await?;
        let head = crate::events::feed::find_head(self.store.as_ref(), delivered).await?;
        Ok(head.saturating_sub(delivered))
    }

    /// Publishes the next batch after the delivered offset and records it.
    /// Returns how many entries it published (0: nothing new).
    pub async fn step(&self) -> Result<usize, RelayError> {
        let delivered = self.delivered().await?;
        let entries = self.store.read_outbox(delivered, self.batch).await?;
        let Some(last) = entries.last().map(|e| e.offset) else {
            return Ok(0);
        };
        self.publisher.publish(&entries).await?;
        let mut batch = WriteBatch::new();
        batch.put(
            TABLE,
            self.name.clone(),
            DELIVERED_KEY,
            last.to_string().into_bytes(),
        );
        self.store.commit(batch).await?;
        Ok(entries.len())
    }

    /// Relays until `shutdown` resolves, backing off while the broker or the
    /// store fails.
    pub async fn run<F: Future<Output = ()> + Send>(&self, shutdown: F) {
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        tracing::info!(relay = %self.name, target = %self.publisher.describe(), "relay started");
        loop {
            let wait = match self.step().await {
                Ok(0) => self.idle_poll,
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = crate::events::feed_source::backoff(
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                        failures,
                    );
                    tracing::warn!(relay = %self.name, error = %e, ?wait, "relay step failed");
                    wait
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!(relay = %self.name, "relay stopped");
    }

    /// Runs the relay on a task until the process ends (or the handle is aborted).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let relay = self.clone();
        tokio::spawn(async move { relay.run(std::future::pending::<()>()).await })
    }
}
