//! The storage port: what a service needs from its database, and nothing more.
//!
//! Rows live in named tables, addressed by a partition key and a sort key, so
//! the same shape maps onto ScyllaDB (partition key + clustering key) and onto
//! the embedded store. A write is a [`WriteBatch`]: puts, deletes and
//! conditions (insert-if-absent, expect-current-value) that succeed or fail
//! together, plus outbox events committed in the same transaction as the state
//! change, so no event exists without its change and no change without its
//! event.

pub mod embedded;
pub mod resilient;
pub mod scylla;

use async_trait::async_trait;
use std::sync::Arc;

use crate::config::StorageSettings;

/// One mutation or guard inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets the row, whatever it held.
    Put {
        /// The table written.
        table: &'static str,
        /// The row's partition key.
        partition: String,
        /// The row's sort key within the partition.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Sets the row only if it does not exist; otherwise the batch fails.
    InsertIfAbsent {
        /// The table written.
        table: &'static str,
        /// The row's partition key.
        partition: String,
        /// The row's sort key within the partition.
        key: String,
        /// The value of the new row.
        value: Vec<u8>,
    },
    /// Removes the row if present.
    Delete {
        /// The table written.
        table: &'static str,
        /// The row's partition key.
        partition: String,
        /// The row's sort key within the partition.
        key: String,
    },
    /// Guard: the row must hold exactly `expected` (`None`: must be absent).
    Expect {
        /// The table read.
        table: &'static str,
        /// The row's partition key.
        partition: String,
        /// The row's sort key within the partition.
        key: String,
        /// The exact bytes the row must hold.
        expected: Option<Vec<u8>>,
    },
}

/// An event to publish, appended to the outbox when its batch commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The aggregate the event belongs to; the relay keeps order per aggregate.
    pub aggregate_id: String,
    /// Fully qualified event type, e.g. `tally.events.v1.PollVoted`.
    pub event_type: String,
    /// The encoded `tally.events.v1.EventEnvelope`.
    pub payload: Vec<u8>,
}

/// An outbox event with the offset the store gave it (dense, increasing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The event's place in the outbox.
    pub offset: u64,
    /// The event stored.
    pub event: OutboxEvent,
}

/// Writes and events that commit atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Puts, deletes and guards, all or none applied.
    pub writes: Vec<Write>,
    /// Events appended to the outbox in the same commit.
    pub events: Vec<OutboxEvent>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a [`Write::Put`].
    pub fn put(
        &mut self,
        table: &'static str,
        partition: impl Into<String>,
        key: impl Into<String>,
        value: Vec<u8>,
    ) -> &mut Self {
        self.writes.push(Write::Put {
            table,
            partition: partition.into(),
            key: key.into(),
            value,
        });
        self
    }

    /// Adds a [`Write::InsertIfAbsent`].
    pub fn insert_if_absent(
        &mut self,
        table: &'static str,
        partition: impl Into<String>,
        key: impl Into<String>,
        value: Vec<u8>,
    ) -> &mut Self {
        self.writes.push(Write::InsertIfAbsent {
            table,
            partition: partition.into(),
            key: key.into(),
            value,
        });
        self
    }

    /// Adds a [`Write::Delete`].
    pub fn delete(
        &mut self,
        table: &'static str,
        partition: impl Into<String>,
        key: impl Into<String>,
    ) -> &mut Self {
        self.writes.push(Write::Delete {
            table,
            partition: partition.into(),
            key: key.into(),
        });
        self
    }

    /// Adds a [`Write::Expect`] guard.
    pub fn expect(
        &mut self,
        table: &'static str,
        partition: impl Into<String>,
        key: impl Into<String>,
        expected: Option<Vec<u8>>,
    ) -> &mut Self {
        self.writes.push(Write::Expect {
            table,
            partition: partition.into(),
            key: key.into(),
            expected,
        });
        self
    }

    /// Appends `event` to the outbox in the same commit.
    pub fn emit(&mut self, event: OutboxEvent) -> &mut Self {
        self.events.push(event);
        self
    }
}

/// A row returned by [`Store::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The row's sort key.
    pub key: String,
    /// The stored value.
    pub value: Vec<u8>,
}

/// Storage failures; gRPC edges map them with [`crate::status::store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A condition in the batch did not hold; nothing was written.
    #[error("condition {index} failed on {table}/{partition}/{key}")]
    ConditionFailed {
        /// Position of the failing write in [`WriteBatch::writes`].
        index: usize,
        /// The table of the failed guard.
        table: String,
        /// Its partition key.
        partition: String,
        /// Its sort key.
        key: String,
    },
    /// The database cannot be reached or used right now.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The storage port every service writes through.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One row, if present.
    async fn get(
        &self,
        table: &'static str,
        partition: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Rows of one partition in sort-key order, starting after `after`.
    async fn scan(
        &self,
        table: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError>;

    /// Applies the batch atomically, or nothing when a condition fails.
    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Outbox entries with offsets greater than `after`, in offset order.
    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Checks the store is usable, for health.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Name of the ScyllaDB client in metrics.
pub const SCYLLA_CLIENT: &str = "scylla";

/// Opens the adapter chosen by config; ScyllaDB calls go through
/// [`resilient::ResilientStore`].
pub async fn open(settings: &StorageSettings) -> Result<Arc<dyn Store>, StoreError> {
    match settings {
        StorageSettings::Embedded { path } => {
            let store = embedded::EmbeddedStore::open(path).await?;
            Ok(crate::trace::store::TracedStore::wrap(timed(Arc::new(
                store,
            ))))
        }
        StorageSettings::Scylla { .. } => {
            let store: Arc<dyn Store> = Arc::new(scylla::ScyllaStore::connect(settings).await?);
            let guarded = resilient::ResilientStore::new(
                SCYLLA_CLIENT,
                store,
                &crate::resilience::Settings::default(),
            )
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok(crate::trace::store::TracedStore::wrap(timed(Arc::new(
                guarded,
            ))))
        }
    }
}

/// Every operation of the opened store is timed for `/metrics`.
fn timed(store: Arc<dyn Store>) -> Arc<dyn Store> {
    Arc::new(crate::metrics::store::TimedStore::new(store))
}

/// Encodes a record as JSON bytes.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Decodes a record written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
