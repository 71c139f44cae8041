//! The read-model adapter: implements [`ReadModel`] over the chassis storage
//! port, reading the tables the [`crate::projector`] writes.

use crate::domain::{OwnedPoll, OwnerTotals, PollSummary, PollView};
use crate::ports::{Keyed, ReadModel};
use crate::projector::{
    MINUTES, OWNER_POLLS, OWNERS, POLL_KEY, POLLS, TOP, TOP_PARTITION, TOTALS_KEY, read,
};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tally_chassis::storage::{Store, StoreError, decode};

/// The read model on a [`Store`].
#[derive(Clone)]
pub struct StoreReadModel {
    store: Arc<dyn Store>,
}

impl StoreReadModel {
    /// Reads from `store`, which the projector writes.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn scan<T: DeserializeOwned>(
        &self,
        table: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<T>>, StoreError> {
        let rows = self.store.scan(table, partition, after, limit).await?;
        rows.into_iter()
            .map(|row| {
                Ok(Keyed {
                    value: decode(&row.value)?,
                    key: row.key,
                })
            })
            .collect()
    }
}

#[async_trait]
impl ReadModel for StoreReadModel {
    async fn poll(&self, poll_id: &str) -> Result<Option<PollView>, StoreError> {
        Ok(
            read::<PollView>(self.store.as_ref(), POLLS, poll_id, POLL_KEY)
                .await?
                .map(|(_, v)| v),
        )
    }

    async fn minutes(
        &self,
        poll_id: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<u64>>, StoreError> {
        self.scan(MINUTES, poll_id, after, limit).await
    }

    async fn owner_totals(&self, owner_id: &str) -> Result<Option<OwnerTotals>, StoreError> {
        Ok(
            read::<OwnerTotals>(self.store.as_ref(), OWNERS, owner_id, TOTALS_KEY)
                .await?
                .map(|(_, t)| t),
        )
    }

    async fn owner_polls(
        &self,
        owner_id: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<OwnedPoll>>, StoreError> {
        self.scan(OWNER_POLLS, owner_id, after, limit).await
    }

    async fn top(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<PollSummary>>, StoreError> {
        self.scan(TOP, TOP_PARTITION, after, limit).await
    }
}
