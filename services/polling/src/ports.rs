//! Polling's ports: what the use cases need from storage (polls, votes,
//! counts) and from the plan-limits read model, as traits. The adapters over
//! the chassis storage port ([`crate::store::PollRepository`],
//! [`crate::entitlements::Entitlements`]) implement them; the storage
//! backend (embedded or Scylla) is chosen by config when the store opens.

use crate::domain::poll::Poll;
use crate::domain::tally::Tally;
use crate::domain::vote::{VoteRecord, VoteRequest};
use crate::domain::{DomainError, Millis};
use async_trait::async_trait;
use tally_chassis::storage::StoreError;

/// Failures of the use cases and the storage port.
#[derive(Debug, thiserror::Error)]
pub enum PollingError {
    /// A polling rule refused the request.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every attempt lost a race with another writer.
    #[error("too many concurrent writes to poll `{0}`; retry the call")]
    Contention(String),
}

/// Which polls to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFilter {
    /// The polls one owner created.
    Owner(String),
    /// Every poll still open.
    Open,
}

/// One page of polls and the key to continue after, if more exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The polls of this page, in id (creation) order.
    pub polls: Vec<Poll>,
    /// The poll id the next page starts after; `None` on the last page.
    pub next_after: Option<String>,
}

/// The answer to a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastOutcome {
    /// The vote as recorded (the earlier one when replayed).
    pub vote: VoteRecord,
    /// True when the idempotency key had already produced this vote.
    pub replayed: bool,
}

/// Polls, votes and counts: the storage the use cases write through.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait PollStore: Send + Sync + 'static {
    /// Stores a new poll with its indexes, empty tally and PollCreated,
    /// unless the owner already has `limit` polls open (`None`: unlimited).
    async fn create(
        &self,
        poll: &Poll,
        limit: Option<u32>,
        now: Millis,
    ) -> Result<(), PollingError>;
    /// One poll, if it exists.
    async fn get(&self, poll_id: &str) -> Result<Option<Poll>, PollingError>;
    /// Polls of one index after `after`, at most `limit`, in id order.
    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> Result<Page, PollingError>;
    /// Closes the poll for `caller` (owner only, once) and emits PollClosed.
    async fn close(&self, poll_id: &str, caller: &str, now: Millis) -> Result<Poll, PollingError>;
    /// Casts (or replays) a vote and emits PollVoted for a new one.
    async fn cast_vote(&self, req: &VoteRequest, now: Millis) -> Result<CastOutcome, PollingError>;
    /// The poll and its current counts.
    async fn results(&self, poll_id: &str) -> Result<(Poll, Tally), PollingError>;
}

/// The plan limits billing granted, as polling last heard of them.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait PlanLimitsPort: Send + Sync + 'static {
    /// Most polls `user_id` may have open; `None` = unlimited.
    async fn open_poll_limit(&self, user_id: &str) -> Result<Option<u32>, StoreError>;
}
