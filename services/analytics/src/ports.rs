//! Analytics' port: the reads the use cases need from the read model, as a
//! trait. [`crate::store::StoreReadModel`] implements it over the chassis
//! storage port, whose backend (embedded or Scylla) config chooses.

use crate::domain::{OwnedPoll, OwnerTotals, PollSummary, PollView};
use async_trait::async_trait;
use tally_chassis::storage::StoreError;

/// A read-model row with the sort key a page resumes after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<T> {
    /// The row's sort key within its partition.
    pub key: String,
    /// The decoded row.
    pub value: T,
}

/// The read model, as the query use cases see it. Scans return rows in sort
/// key order, after `after`, at most `limit`.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// One poll's results, if the read model has seen it.
    async fn poll(&self, poll_id: &str) -> Result<Option<PollView>, StoreError>;
    /// Votes per minute of one poll, keyed by the minute.
    async fn minutes(
        &self,
        poll_id: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<u64>>, StoreError>;
    /// The running totals of one owner, if any poll of theirs was seen.
    async fn owner_totals(&self, owner_id: &str) -> Result<Option<OwnerTotals>, StoreError>;
    /// The polls of one owner, keyed by poll id.
    async fn owner_polls(
        &self,
        owner_id: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<OwnedPoll>>, StoreError>;
    /// The top-polls ranking, most votes first.
    async fn top(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Keyed<PollSummary>>, StoreError>;
}
