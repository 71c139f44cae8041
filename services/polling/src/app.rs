//! Polling's use cases: create a poll within the owner's plan limit, read,
//! list, close, vote, and read results. They take the store adapter and the
//! entitlements read model, call the domain rules, and return
//! [`PollingError`]; the gRPC edge turns those into statuses.

use crate::domain::poll::{NewPoll, Poll};
use crate::domain::tally::Tally;
use crate::domain::vote::VoteRequest;
use crate::domain::{DomainError, Millis};
use crate::entitlements::Entitlements;
use crate::store::{CastOutcome, ListFilter, Page, PollRepository, PollingError};

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The use cases over one store.
#[derive(Clone)]
pub struct Polls {
    repo: PollRepository,
    entitlements: Entitlements,
}

impl Polls {
    pub fn new(repo: PollRepository, entitlements: Entitlements) -> Self {
        Self { repo, entitlements }
    }

    /// Validates and stores a new poll owned by `owner_id`, unless the owner
    /// already has as many polls open as the plan allows.
    pub async fn create(
        &self,
        owner_id: String,
        new: NewPoll,
        now: Millis,
    ) -> Result<Poll, PollingError> {
        let poll = new.validate(uuid::Uuid::now_v7().to_string(), owner_id, now)?;
        let limit = self.entitlements.open_poll_limit(&poll.owner_id).await?;
        self.repo.create(&poll, limit, now).await?;
        tracing::info!(poll_id = %poll.poll_id, owner = %poll.owner_id, "poll created");
        Ok(poll)
    }

    /// One poll.
    pub async fn get(&self, poll_id: &str) -> Result<Poll, PollingError> {
        self.repo
            .get(poll_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("poll `{poll_id}` not found")).into())
    }

    /// One page of polls.
    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<String>,
        size: usize,
        now: Millis,
    ) -> Result<Page, PollingError> {
        self.repo.list(filter, after, size, now).await
    }

    /// Closes a poll for its owner.
    pub async fn close(
        &self,
        poll_id: &str,
        caller_id: &str,
        now: Millis,
    ) -> Result<Poll, PollingError> {
        let poll = self.repo.close(poll_id, caller_id, now).await?;
        tracing::info!(poll_id = %poll.poll_id, "poll closed");
        Ok(poll)
    }

    /// Casts (or replays) a vote.
    pub async fn cast_vote(
        &self,
        req: &VoteRequest,
        now: Millis,
    ) -> Result<CastOutcome, PollingError> {
        self.repo.cast_vote(req, now).await
    }

    /// The poll and its counts.
    pub async fn results(&self, poll_id: &str) -> Result<(Poll, Tally), PollingError> {
        self.repo.results(poll_id).await
    }
}
