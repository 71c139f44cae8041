//! Creating a poll under the owner's open-poll limit: the counter read, the
//! exact scan (pruning polls past their deadline) when the counter is at the
//! limit, and the create batch guarded on the counter.

use super::*;

impl PollRepository {
    /// Stores a new poll, its index entries, its empty tally and PollCreated,
    /// unless the owner already has `limit` polls open (`None`: unlimited).
    pub async fn create(
        &self,
        poll: &Poll,
        limit: Option<u32>,
        now: Millis,
    ) -> Result<(), PollingError> {
        // Creates of one owner queue here rather than race on the counter.
        let _guard = self.lock(&format!("owner:{}", poll.owner_id)).await;
        for attempt in 0..self.max_attempts {
            let (raw, counted) = self.open_count(&poll.owner_id).await?;
            let (mut open, mut expired) = (counted, Vec::new());
            if limit.is_some_and(|max| counted >= u64::from(max)) {
                // At the limit by the counter: some of those may have passed
                // their deadline. Count exactly, and prune those.
                (open, expired) = self.scan_open(&poll.owner_id, now).await?;
            }
            limits::check_open_polls(open, limit)?;
            let mut batch = WriteBatch::new();
            // First, so a lost race is `ConditionFailed { index: 0 }`.
            batch.expect(OPEN_COUNTS, &poll.owner_id, OPEN_COUNT_KEY, raw);
            for poll_id in expired {
                batch.delete(OPEN_BY_OWNER, &poll.owner_id, poll_id);
            }
            batch
                .put(
                    OPEN_COUNTS,
                    &poll.owner_id,
                    OPEN_COUNT_KEY,
                    (open + 1).to_string().into_bytes(),
                )
                .put(
                    OPEN_BY_OWNER,
                    &poll.owner_id,
                    &poll.poll_id,
                    encode(&poll.closes_at)?,
                )
                .insert_if_absent(POLLS, &poll.poll_id, POLL_KEY, encode(poll)?)
                .insert_if_absent(
                    TALLIES,
                    &poll.poll_id,
                    TALLY_KEY,
                    encode(&Tally::created())?,
                )
                .put(POLLS_BY_OWNER, &poll.owner_id, &poll.poll_id, Vec::new())
                .put(OPEN_POLLS, OPEN_PARTITION, &poll.poll_id, Vec::new())
                .emit(events::poll_created(poll));
            match self.store.commit(batch).await {
                Ok(()) => return Ok(()),
                // The counter moved (another create or close of this owner,
                // in another process): count again.
                Err(StoreError::ConditionFailed { index: 0, .. }) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PollingError::Contention(format!(
            "open polls of {}",
            poll.owner_id
        )))
    }

    /// The owner's open-poll counter: its raw bytes (for `expect`) and value.
    pub(super) async fn open_count(
        &self,
        owner_id: &str,
    ) -> Result<(Option<Vec<u8>>, u64), PollingError> {
        let raw = self
            .store
            .get(OPEN_COUNTS, owner_id, OPEN_COUNT_KEY)
            .await?;
        let count = match &raw {
            None => 0,
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("open-poll counter of owner `{owner_id}`"))
                })?,
        };
        Ok((raw, count))
    }

    /// Polls in the owner's open index still open at `now`, and the ids of
    /// those past their deadline.
    async fn scan_open(
        &self,
        owner_id: &str,
        now: Millis,
    ) -> Result<(u64, Vec<String>), PollingError> {
        let mut live = 0u64;
        let mut expired = Vec::new();
        let mut after = None;
        loop {
            let rows = self
                .store
                .scan(OPEN_BY_OWNER, owner_id, after.clone(), SCAN_BATCH)
                .await?;
            let exhausted = rows.len() < SCAN_BATCH;
            for row in rows {
                let closes_at: Option<Millis> = decode(&row.value)?;
                if limits::still_open(closes_at, now) {
                    live += 1;
                } else {
                    expired.push(row.key.clone());
                }
                after = Some(row.key);
            }
            if exhausted {
                return Ok((live, expired));
            }
        }
    }

    /// How many polls `owner_id` has open at `now` (exact; reads the index).
    pub async fn open_polls_of(&self, owner_id: &str, now: Millis) -> Result<u64, PollingError> {
        Ok(self.scan_open(owner_id, now).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{NOW, new_poll, repo};
    use super::*;

    fn plan_limited(e: PollingError) -> bool {
        matches!(e, PollingError::Domain(DomainError::ResourceExhausted(ref m)) if m.starts_with("plan limit: 2 open polls"))
    }

    #[tokio::test]
    async fn the_open_poll_limit_counts_open_polls_and_closing_frees_a_slot() {
        let (_d, repo) = repo(true).await;
        let first = new_poll("alice");
        repo.create(&first, Some(2), NOW).await.expect("first");
        repo.create(&new_poll("alice"), Some(2), NOW)
            .await
            .expect("second");
        let third = repo.create(&new_poll("alice"), Some(2), NOW).await;
        assert!(third.is_err_and(plan_limited));
        // Other owners and unlimited plans are not affected.
        repo.create(&new_poll("bob"), Some(2), NOW)
            .await
            .expect("bob");
        repo.create(&new_poll("alice"), None, NOW)
            .await
            .expect("unlimited");
        assert_eq!(repo.open_polls_of("alice", NOW).await.expect("count"), 3);
        // A refused create leaves nothing behind.
        let outbox = repo.store().read_outbox(0, 100).await.expect("outbox");
        assert_eq!(outbox.len(), 4);

        repo.close(&first.poll_id, "alice", NOW + 1)
            .await
            .expect("close");
        let again = repo.create(&new_poll("alice"), Some(3), NOW + 2).await;
        assert!(again.is_ok(), "{again:?}");
        assert!(
            repo.create(&new_poll("alice"), Some(3), NOW + 2)
                .await
                .is_err()
        );
        assert_eq!(
            repo.open_polls_of("alice", NOW + 2).await.expect("count"),
            3
        );
    }

    #[tokio::test]
    async fn polls_past_their_deadline_stop_counting_and_are_pruned() {
        let (_d, repo) = repo(true).await;
        let mut short = new_poll("alice");
        short.closes_at = Some(NOW + 10);
        repo.create(&short, Some(2), NOW).await.expect("short");
        repo.create(&new_poll("alice"), Some(2), NOW)
            .await
            .expect("long");
        assert!(
            repo.create(&new_poll("alice"), Some(2), NOW + 9)
                .await
                .is_err_and(plan_limited)
        );
        // Past the deadline the short poll no longer counts.
        repo.create(&new_poll("alice"), Some(2), NOW + 10)
            .await
            .expect("slot of the expired poll");
        let index = repo
            .store()
            .scan(OPEN_BY_OWNER, "alice", None, 100)
            .await
            .expect("scan");
        assert_eq!(index.len(), 2, "the expired entry was pruned");
        assert!(index.iter().all(|r| r.key != short.poll_id));
        let (_, counted) = repo.open_count("alice").await.expect("counter");
        assert_eq!(counted, 2);
    }

    #[tokio::test]
    async fn concurrent_creates_never_exceed_the_limit() {
        // No local lock: only the counter's guard keeps the limit.
        let (_d, repo) = repo(false).await;
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let repo = repo.clone();
            tasks.push(tokio::spawn(async move {
                repo.create(&new_poll("alice"), Some(5), NOW).await
            }));
        }
        let (mut created, mut refused) = (0, 0);
        for t in tasks {
            match t.await.expect("join") {
                Ok(()) => created += 1,
                Err(PollingError::Domain(DomainError::ResourceExhausted(_))) => refused += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!((created, refused), (5, 7));
        assert_eq!(repo.open_polls_of("alice", NOW).await.expect("count"), 5);
    }
}
