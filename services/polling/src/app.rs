//! Polling's use cases: create a poll within the owner's plan limit, read,
//! list, close, vote, and read results. They take the ports (the poll store
//! and the plan-limits read model), call the domain rules, and return
//! [`PollingError`]; the gRPC edge turns those into statuses.

use crate::domain::poll::{NewPoll, Poll};
use crate::domain::tally::Tally;
use crate::domain::vote::VoteRequest;
use crate::domain::{DomainError, Millis};
use crate::ports::{CastOutcome, ListFilter, Page, PlanLimitsPort, PollStore, PollingError};
use std::sync::Arc;

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
    repo: Arc<dyn PollStore>,
    entitlements: Arc<dyn PlanLimitsPort>,
}

impl Polls {
    /// Use cases writing through `repo`, with open-poll limits from `entitlements`.
    pub fn new(repo: Arc<dyn PollStore>, entitlements: Arc<dyn PlanLimitsPort>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockPlanLimitsPort, MockPollStore};
    use mockall::predicate::eq;

    fn new_poll(question: &str) -> NewPoll {
        NewPoll {
            question: question.into(),
            options: vec!["yes".into(), "no".into()],
            closes_at: None,
        }
    }

    #[tokio::test]
    async fn create_passes_the_owners_plan_limit_to_the_store() {
        let mut limits = MockPlanLimitsPort::new();
        limits
            .expect_open_poll_limit()
            .with(eq("owner-1"))
            .times(1)
            .returning(|_| Ok(Some(3)));
        let mut store = MockPollStore::new();
        store
            .expect_create()
            .withf(|poll, limit, now| poll.owner_id == "owner-1" && *limit == Some(3) && *now == 7)
            .times(1)
            .returning(|_, _, _| Ok(()));
        let polls = Polls::new(Arc::new(store), Arc::new(limits));
        let poll = polls
            .create("owner-1".into(), new_poll("Lunch?"), 7)
            .await
            .unwrap();
        assert_eq!(poll.owner_id, "owner-1");
    }

    #[tokio::test]
    async fn an_invalid_poll_touches_neither_limits_nor_store() {
        // Mocks without expectations fail the test if called.
        let polls = Polls::new(
            Arc::new(MockPollStore::new()),
            Arc::new(MockPlanLimitsPort::new()),
        );
        let err = polls
            .create("owner-1".into(), new_poll("   "), 7)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PollingError::Domain(DomainError::InvalidArgument { .. })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_poll_is_not_found() {
        let mut store = MockPollStore::new();
        store.expect_get().returning(|_| Ok(None));
        let polls = Polls::new(Arc::new(store), Arc::new(MockPlanLimitsPort::new()));
        let err = polls.get("p-1").await.unwrap_err();
        assert!(
            matches!(err, PollingError::Domain(DomainError::NotFound(ref m)) if m.contains("p-1")),
            "{err:?}"
        );
    }
}
