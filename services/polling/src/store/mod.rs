//! Polling's store adapter: polls, votes and counts on the storage port.
//!
//! Layout (table / partition / key):
//! - `polls / <poll_id> / poll`: the poll.
//! - `polls_by_owner / <owner_id> / <poll_id>` and `open_polls / open / <poll_id>`:
//!   list indexes. Poll ids are UUIDv7, so key order is creation order and
//!   pages are stable. Closing removes the open entry; polls past their
//!   deadline are filtered out when listed.
//! - `votes / <poll_id> / <seq, 20 digits>`: the vote log, the source of truth.
//! - `voters / <poll_id> / <voter_id>`: one vote per voter (insert-if-absent).
//! - `vote_keys / <voter_id> / <idempotency_key>`: which vote a key produced.
//! - `tallies / <poll_id> / tally`: the counts projection and the poll version.
//! - `open_by_owner / <owner_id> / <poll_id>`: the owner's polls not closed by
//!   the owner (value: the deadline), and `open_counts / <owner_id> / open`:
//!   how many rows that partition holds. Both change in the same batches as
//!   create and close, the counter guarded with `expect`, so concurrent creates
//!   of one owner cannot both take the last slot of a plan limit.
//!
//! Checking the open-poll limit is cheap: while the counter is below the
//! limit, one point read decides. Polls that pass their deadline close without
//! a write, so the counter can over-count them; only when it reaches the limit
//! is the owner's index scanned (at most about the limit plus the polls that
//! expired since the last scan), deadline-passed entries pruned in the create
//! batch, and the counter corrected. Polls created before this index existed
//! are not counted.
//!
//! Every vote and close is one batch: the new rows, the projection guarded by
//! an `expect` on its previous bytes (optimistic concurrency), and the event in
//! the outbox. A lost race (ConditionFailed) re-reads and retries a bounded
//! number of times, then gives up with ABORTED. Within one process, writes to
//! the same poll can also queue on a striped lock first, so they do not race
//! at all; the guard still keeps several processes correct.
//!
//! [`create`] holds creation under the open-poll limit, [`votes`] the writes
//! that race on one poll (votes and close) and the vote log; this module holds
//! the tables and reads.

mod create;
mod votes;

use crate::domain::limits;
use crate::domain::poll::Poll;
use crate::domain::tally::{self, Tally};
use crate::domain::vote::{self, IdempotencyRecord, VoteDecision, VoteRecord, VoteRequest};
use crate::domain::{DomainError, Millis};
use crate::events;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tally_chassis::storage::{Store, StoreError, WriteBatch, decode, encode};

pub use crate::ports::{CastOutcome, ListFilter, Page, PollingError};

/// Polls by id.
pub const POLLS: &str = "polls";
/// Index: each owner's polls in creation order.
pub const POLLS_BY_OWNER: &str = "polls_by_owner";
/// Index: polls not closed by their owner, in creation order.
pub const OPEN_POLLS: &str = "open_polls";
/// The vote log of each poll, the source of truth for counts.
pub const VOTES: &str = "votes";
/// One row per voter and poll: one vote per voter.
pub const VOTERS: &str = "voters";
/// Which vote each idempotency key produced.
pub const VOTE_KEYS: &str = "vote_keys";
/// The counts projection of each poll, with its version.
pub const TALLIES: &str = "tallies";
/// Each owner's polls not closed by the owner, with their deadlines.
pub const OPEN_BY_OWNER: &str = "open_by_owner";
/// How many rows each owner's `open_by_owner` partition holds.
pub const OPEN_COUNTS: &str = "open_counts";

const POLL_KEY: &str = "poll";
const TALLY_KEY: &str = "tally";
const OPEN_PARTITION: &str = "open";
const OPEN_COUNT_KEY: &str = "open";
const LOCK_STRIPES: usize = 64;
const SCAN_BATCH: usize = 1000;

/// Key of a vote in the log: zero-padded so key order is vote order.
pub fn vote_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Polls, votes and counts over a [`Store`].
#[derive(Clone)]
pub struct PollRepository {
    store: Arc<dyn Store>,
    max_attempts: u32,
    locks: Option<Arc<Vec<tokio::sync::Mutex<()>>>>,
}

impl PollRepository {
    /// `max_attempts` bounds the optimistic retries of one write;
    /// `local_lock` queues same-poll writes of this process before they race.
    pub fn new(store: Arc<dyn Store>, max_attempts: u32, local_lock: bool) -> Self {
        let locks = local_lock.then(|| {
            Arc::new(
                (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            )
        });
        Self {
            store,
            max_attempts: max_attempts.max(1),
            locks,
        }
    }

    /// The storage port underneath, e.g. to read the outbox these writes fill.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(super) async fn lock(&self, poll_id: &str) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let locks = self.locks.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        poll_id.hash(&mut h);
        let stripe = (h.finish() % LOCK_STRIPES as u64) as usize;
        Some(locks.get(stripe)?.lock().await)
    }

    /// One poll, if it exists.
    pub async fn get(&self, poll_id: &str) -> Result<Option<Poll>, PollingError> {
        match self.store.get(POLLS, poll_id, POLL_KEY).await? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn tally_raw(&self, poll_id: &str) -> Result<(Vec<u8>, Tally), PollingError> {
        let raw = self
            .store
            .get(TALLIES, poll_id, TALLY_KEY)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("poll `{poll_id}` has no tally row")))?;
        let tally = decode(&raw)?;
        Ok((raw, tally))
    }

    /// The poll and its current counts.
    pub async fn results(&self, poll_id: &str) -> Result<(Poll, Tally), PollingError> {
        let poll = self.get(poll_id).await?.ok_or_else(|| not_found(poll_id))?;
        let (_, tally) = self.tally_raw(poll_id).await?;
        Ok((poll, tally))
    }

    /// Polls of one index after `after`, at most `limit`, in id order.
    pub async fn list(
        &self,
        filter: &ListFilter,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> Result<Page, PollingError> {
        let (table, partition) = match filter {
            ListFilter::Owner(owner) => (POLLS_BY_OWNER, owner.as_str()),
            ListFilter::Open => (OPEN_POLLS, OPEN_PARTITION),
        };
        let batch = (limit + 1).min(SCAN_BATCH);
        let mut polls = Vec::with_capacity(limit + 1);
        let mut cursor = after;
        'scan: loop {
            let rows = self
                .store
                .scan(table, partition, cursor.clone(), batch)
                .await?;
            let exhausted = rows.len() < batch;
            for row in rows {
                cursor = Some(row.key.clone());
                let Some(poll) = self.get(&row.key).await? else {
                    continue;
                };
                if *filter == ListFilter::Open && !poll.is_open_at(now) {
                    continue;
                }
                polls.push(poll);
                // One more than asked tells whether another page exists.
                if polls.len() > limit {
                    break 'scan;
                }
            }
            if exhausted {
                break;
            }
        }
        let next_after = if polls.len() > limit {
            polls.truncate(limit);
            polls.last().map(|p| p.poll_id.clone())
        } else {
            None
        };
        Ok(Page { polls, next_after })
    }
}

#[async_trait::async_trait]
impl crate::ports::PollStore for PollRepository {
    async fn create(
        &self,
        poll: &Poll,
        limit: Option<u32>,
        now: Millis,
    ) -> Result<(), PollingError> {
        PollRepository::create(self, poll, limit, now).await
    }

    async fn get(&self, poll_id: &str) -> Result<Option<Poll>, PollingError> {
        PollRepository::get(self, poll_id).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> Result<Page, PollingError> {
        PollRepository::list(self, filter, after, limit, now).await
    }

    async fn close(&self, poll_id: &str, caller: &str, now: Millis) -> Result<Poll, PollingError> {
        PollRepository::close(self, poll_id, caller, now).await
    }

    async fn cast_vote(&self, req: &VoteRequest, now: Millis) -> Result<CastOutcome, PollingError> {
        PollRepository::cast_vote(self, req, now).await
    }

    async fn results(&self, poll_id: &str) -> Result<(Poll, Tally), PollingError> {
        PollRepository::results(self, poll_id).await
    }
}

pub(super) fn not_found(poll_id: &str) -> PollingError {
    DomainError::NotFound(format!("poll `{poll_id}` not found")).into()
}

/// A short random pause that grows with the attempt number.
pub(super) async fn backoff(attempt: u32) {
    let cap_ms: u64 = 1 << attempt.min(6);
    let ms = rand::random_range(0..=cap_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::poll::NewPoll;
    use tally_chassis::storage::embedded::EmbeddedStore;
    use tally_chassis::storage::{MockStore, Write};

    pub(super) const NOW: Millis = 1_700_000_000_000;

    pub(super) async fn repo(local_lock: bool) -> (tempfile::TempDir, PollRepository) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("p.redb"))
            .await
            .expect("open");
        (dir, PollRepository::new(Arc::new(store), 64, local_lock))
    }

    pub(super) fn new_poll(owner: &str) -> Poll {
        NewPoll {
            question: "q".into(),
            options: vec!["a".into(), "b".into()],
            closes_at: None,
        }
        .validate(uuid::Uuid::now_v7().to_string(), owner.into(), NOW)
        .expect("valid")
    }

    fn vote(poll: &Poll, voter: &str, option: &str, key: &str) -> VoteRequest {
        VoteRequest {
            poll_id: poll.poll_id.clone(),
            option_id: option.into(),
            voter_id: voter.into(),
            idempotency_key: key.into(),
        }
    }

    #[tokio::test]
    async fn votes_update_projection_log_and_outbox_together() {
        let (_d, repo) = repo(true).await;
        let poll = new_poll("owner");
        repo.create(&poll, None, NOW).await.expect("create");
        let first = repo
            .cast_vote(&vote(&poll, "u1", "opt-1", "k"), NOW)
            .await
            .expect("vote");
        assert!(!first.replayed);
        let again = repo
            .cast_vote(&vote(&poll, "u1", "opt-1", "k"), NOW)
            .await
            .expect("replay");
        assert!(again.replayed);
        assert_eq!(again.vote, first.vote);
        let dup = repo
            .cast_vote(&vote(&poll, "u1", "opt-2", "other"), NOW)
            .await
            .expect_err("second vote");
        assert!(matches!(
            dup,
            PollingError::Domain(DomainError::AlreadyExists(_))
        ));
        repo.cast_vote(&vote(&poll, "u2", "opt-2", ""), NOW)
            .await
            .expect("vote");
        let (_, tally) = repo.results(&poll.poll_id).await.expect("results");
        assert_eq!(tally.votes, 2);
        assert_eq!(tally.version, 3);
        let rebuilt = repo.recompute_counts(&poll.poll_id).await.expect("log");
        assert_eq!(rebuilt["opt-1"], 1);
        assert_eq!(rebuilt["opt-2"], 1);
        let outbox = repo.store().read_outbox(0, 100).await.expect("outbox");
        let types: Vec<_> = outbox.iter().map(|e| e.event.event_type.as_str()).collect();
        assert_eq!(
            types,
            [events::POLL_CREATED, events::POLL_VOTED, events::POLL_VOTED]
        );
    }

    #[tokio::test]
    async fn concurrent_votes_without_local_lock_are_exact() {
        // Only the optimistic guard protects the counts here.
        let (_d, repo) = repo(false).await;
        let poll = new_poll("owner");
        repo.create(&poll, None, NOW).await.expect("create");
        let mut tasks = Vec::new();
        for voter in 0..20 {
            for attempt in 0..3 {
                let repo = repo.clone();
                let key = if attempt < 2 { "same" } else { "different" };
                let req = vote(&poll, &format!("u{voter}"), "opt-1", key);
                tasks.push(tokio::spawn(async move { repo.cast_vote(&req, NOW).await }));
            }
        }
        let mut fresh = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(o) if !o.replayed => fresh += 1,
                Ok(_) | Err(PollingError::Domain(DomainError::AlreadyExists(_))) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(fresh, 20);
        let (_, tally) = repo.results(&poll.poll_id).await.expect("results");
        assert_eq!(tally.count("opt-1"), 20);
        assert_eq!(
            repo.recompute_counts(&poll.poll_id).await.expect("log")["opt-1"],
            20
        );
    }

    #[tokio::test]
    async fn close_bumps_version_and_blocks_votes() {
        let (_d, repo) = repo(true).await;
        let poll = new_poll("owner");
        repo.create(&poll, None, NOW).await.expect("create");
        let denied = repo.close(&poll.poll_id, "intruder", NOW).await;
        assert!(matches!(
            denied,
            Err(PollingError::Domain(DomainError::PermissionDenied(_)))
        ));
        let closed = repo
            .close(&poll.poll_id, "owner", NOW + 1)
            .await
            .expect("close");
        assert_eq!(closed.closed_at, Some(NOW + 1));
        let twice = repo.close(&poll.poll_id, "owner", NOW + 2).await;
        assert!(matches!(
            twice,
            Err(PollingError::Domain(DomainError::FailedPrecondition(_)))
        ));
        let late = repo
            .cast_vote(&vote(&poll, "u1", "opt-1", "k"), NOW + 3)
            .await;
        assert!(matches!(
            late,
            Err(PollingError::Domain(DomainError::FailedPrecondition(_)))
        ));
        let open = repo
            .list(&ListFilter::Open, None, 10, NOW + 3)
            .await
            .expect("list");
        assert!(open.polls.is_empty());
        let (_, tally) = repo.results(&poll.poll_id).await.expect("results");
        assert_eq!(tally.version, 2);
    }

    #[tokio::test]
    async fn list_pages_are_stable_and_complete() {
        let (_d, repo) = repo(true).await;
        let mut ids = Vec::new();
        for _ in 0..7 {
            let p = new_poll("alice");
            repo.create(&p, None, NOW).await.expect("create");
            ids.push(p.poll_id);
        }
        repo.create(&new_poll("bob"), None, NOW)
            .await
            .expect("create");
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = repo
                .list(&ListFilter::Owner("alice".into()), after, 3, NOW)
                .await
                .expect("list");
            assert!(page.polls.len() <= 3);
            seen.extend(page.polls.iter().map(|p| p.poll_id.clone()));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ids);
        let exact = repo
            .list(&ListFilter::Owner("alice".into()), None, 7, NOW)
            .await
            .expect("list");
        assert_eq!(exact.polls.len(), 7);
        assert_eq!(exact.next_after, None);
    }

    #[tokio::test]
    async fn lost_races_are_retried_then_reported_as_contention() {
        let poll = new_poll("owner");
        let poll_bytes = encode(&poll).expect("encode");
        let tally_bytes = encode(&Tally::created()).expect("encode");
        let mut store = MockStore::new();
        store.expect_get().returning(move |table, _, _| {
            Ok(match table {
                POLLS => Some(poll_bytes.clone()),
                TALLIES => Some(tally_bytes.clone()),
                _ => None,
            })
        });
        store.expect_commit().times(3).returning(|batch| {
            let first = batch.writes.first().cloned();
            assert!(matches!(first, Some(Write::Expect { table: TALLIES, .. })));
            Err(StoreError::ConditionFailed {
                index: 0,
                table: TALLIES.into(),
                partition: "p".into(),
                key: TALLY_KEY.into(),
            })
        });
        let repo = PollRepository::new(Arc::new(store), 3, true);
        let err = repo
            .cast_vote(&vote(&poll, "u1", "opt-1", "k"), NOW)
            .await
            .expect_err("contention");
        assert!(matches!(err, PollingError::Contention(_)), "{err}");
    }
}
