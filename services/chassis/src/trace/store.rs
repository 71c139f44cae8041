//! A span around each store call made while a traced call is running (a
//! request, a consumer delivery): the storage port wrapped once in `open`.
//! Calls outside any span (relay polling, health pings) stay unrecorded, so
//! background loops do not flood the collector with one-span traces.

use crate::storage::{OutboxEntry, Row, Store, StoreError, WriteBatch};
use async_trait::async_trait;
use std::sync::Arc;
use tracing::Instrument as _;

/// The store port with spans.
pub struct TracedStore {
    inner: Arc<dyn Store>,
}

impl TracedStore {
    /// Puts `inner` behind the spans, as the store port `open` hands out.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Self { inner })
    }
}

/// The span of one store operation, or a disabled one outside a traced call.
fn span(operation: &'static str, table: &str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "store",
        otel.name = format!("store {operation} {table}"),
        otel.kind = "client",
        db.operation.name = operation,
        db.collection.name = table,
    )
}

#[async_trait]
impl Store for TracedStore {
    async fn get(
        &self,
        table: &'static str,
        partition: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner
            .get(table, partition, key)
            .instrument(span("get", table))
            .await
    }

    async fn scan(
        &self,
        table: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        self.inner
            .scan(table, partition, after, limit)
            .instrument(span("scan", table))
            .await
    }

    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.inner
            .commit(batch)
            .instrument(span("commit", "batch"))
            .await
    }

    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.read_outbox(after, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
