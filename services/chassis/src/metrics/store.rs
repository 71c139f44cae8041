//! Store latency for operators: a decorator over the storage port that times
//! every operation into `tally_store_operation_seconds{op, outcome}`. It sits
//! around whichever adapter the config picks, so both report alike.

use crate::storage::{OutboxEntry, Row, Store, StoreError, WriteBatch};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::time::Instant;

/// A store whose operations are timed.
pub struct TimedStore {
    inner: Arc<dyn Store>,
}

impl TimedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner }
    }
}

fn observe<T>(op: &str, started: Instant, result: &Result<T, StoreError>) {
    let outcome = match result {
        Ok(_) => "ok",
        // A failed condition is the caller's expected race, not a store fault.
        Err(StoreError::ConditionFailed { .. }) => "condition_failed",
        Err(_) => "error",
    };
    super::record_store_operation(op, outcome, started.elapsed());
}

#[async_trait]
impl Store for TimedStore {
    async fn get(
        &self,
        table: &'static str,
        partition: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let started = Instant::now();
        let r = self.inner.get(table, partition, key).await;
        observe("get", started, &r);
        r
    }

    async fn scan(
        &self,
        table: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let r = self.inner.scan(table, partition, after, limit).await;
        observe("scan", started, &r);
        r
    }

    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.commit(batch).await;
        observe("commit", started, &r);
        r
    }

    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let started = Instant::now();
        let r = self.inner.read_outbox(after, limit).await;
        observe("read_outbox", started, &r);
        r
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.ping().await;
        observe("ping", started, &r);
        r
    }
}
