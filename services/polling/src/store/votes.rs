//! The writes that race on one poll: casting (or replaying) a vote and
//! closing the poll, each one batch guarded on the tally row and retried a
//! bounded number of times; and reading the vote log back.

use super::*;

impl PollRepository {
    /// Closes the poll for `caller` (owner only, once) and emits PollClosed.
    pub async fn close(
        &self,
        poll_id: &str,
        caller: &str,
        now: Millis,
    ) -> Result<Poll, PollingError> {
        let _guard = self.lock(poll_id).await;
        for attempt in 0..self.max_attempts {
            let poll = self.get(poll_id).await?.ok_or_else(|| not_found(poll_id))?;
            let closed = poll.close(caller, now)?;
            let (raw, tally) = self.tally_raw(poll_id).await?;
            let (next, seq) = tally.with_close();
            let mut batch = WriteBatch::new();
            // Free the owner's slot (the entry is missing for polls created
            // before the index existed: nothing to free then).
            let owner = &closed.owner_id;
            let indexed = self.store.get(OPEN_BY_OWNER, owner, poll_id).await?;
            if indexed.is_some() {
                let (count_raw, count) = self.open_count(owner).await?;
                batch
                    .expect(OPEN_BY_OWNER, owner, poll_id, indexed)
                    .expect(OPEN_COUNTS, owner, OPEN_COUNT_KEY, count_raw)
                    .delete(OPEN_BY_OWNER, owner, poll_id)
                    .put(
                        OPEN_COUNTS,
                        owner,
                        OPEN_COUNT_KEY,
                        count.saturating_sub(1).to_string().into_bytes(),
                    );
            }
            batch
                .expect(TALLIES, poll_id, TALLY_KEY, Some(raw))
                .put(TALLIES, poll_id, TALLY_KEY, encode(&next)?)
                .put(POLLS, poll_id, POLL_KEY, encode(&closed)?)
                .delete(OPEN_POLLS, OPEN_PARTITION, poll_id)
                .emit(events::poll_closed(&closed, caller, now, seq));
            match self.store.commit(batch).await {
                Ok(()) => return Ok(closed),
                Err(StoreError::ConditionFailed { .. }) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PollingError::Contention(poll_id.to_string()))
    }

    /// Casts (or replays) a vote; see [`crate::domain::vote`] for the rules.
    pub async fn cast_vote(
        &self,
        req: &VoteRequest,
        now: Millis,
    ) -> Result<CastOutcome, PollingError> {
        req.check_fields()?;
        let _guard = self.lock(&req.poll_id).await;
        for attempt in 0..self.max_attempts {
            if let Some(replay) = self.replay_by_key(req).await? {
                return Ok(CastOutcome {
                    vote: replay,
                    replayed: true,
                });
            }
            let poll = self.get(&req.poll_id).await?;
            let earlier = self.vote_of(&req.poll_id, &req.voter_id).await?;
            match vote::decide(poll.as_ref(), req, earlier.as_ref(), now)? {
                VoteDecision::Replay(vote) => {
                    return Ok(CastOutcome {
                        vote,
                        replayed: true,
                    });
                }
                VoteDecision::Cast => {}
            }
            let (raw, tally) = self.tally_raw(&req.poll_id).await?;
            let (next, slot) = tally.with_vote(&req.option_id);
            let vote = VoteRecord {
                vote_id: uuid::Uuid::now_v7().to_string(),
                poll_id: req.poll_id.clone(),
                option_id: req.option_id.clone(),
                voter_id: req.voter_id.clone(),
                cast_at: now,
                idempotency_key: req.idempotency_key.clone(),
                seq: slot.vote_seq,
            };
            let mut batch = WriteBatch::new();
            batch
                .expect(TALLIES, &req.poll_id, TALLY_KEY, Some(raw))
                .put(TALLIES, &req.poll_id, TALLY_KEY, encode(&next)?)
                .insert_if_absent(VOTES, &req.poll_id, vote_key(slot.vote_seq), encode(&vote)?)
                .insert_if_absent(
                    VOTERS,
                    &req.poll_id,
                    &req.voter_id,
                    slot.vote_seq.to_string().into_bytes(),
                );
            if !req.idempotency_key.is_empty() {
                let record = IdempotencyRecord {
                    poll_id: req.poll_id.clone(),
                    option_id: req.option_id.clone(),
                    vote_seq: slot.vote_seq,
                };
                batch.insert_if_absent(
                    VOTE_KEYS,
                    &req.voter_id,
                    &req.idempotency_key,
                    encode(&record)?,
                );
            }
            batch.emit(events::poll_voted(&vote, slot.event_seq));
            match self.store.commit(batch).await {
                Ok(()) => {
                    return Ok(CastOutcome {
                        vote,
                        replayed: false,
                    });
                }
                // Another write won; the next round sees it (a replay, a
                // duplicate voter, a closed poll, or just newer counts).
                Err(StoreError::ConditionFailed { .. }) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PollingError::Contention(req.poll_id.clone()))
    }

    /// The earlier vote a voter's idempotency key produced, if the key is known.
    async fn replay_by_key(&self, req: &VoteRequest) -> Result<Option<VoteRecord>, PollingError> {
        if req.idempotency_key.is_empty() {
            return Ok(None);
        }
        let Some(bytes) = self
            .store
            .get(VOTE_KEYS, &req.voter_id, &req.idempotency_key)
            .await?
        else {
            return Ok(None);
        };
        let record: IdempotencyRecord = decode(&bytes)?;
        req.replay_of(&record)?;
        let vote = self
            .store
            .get(VOTES, &record.poll_id, &vote_key(record.vote_seq))
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "idempotency key points at missing vote {} of poll `{}`",
                    record.vote_seq, record.poll_id
                ))
            })?;
        Ok(Some(decode(&vote)?))
    }

    /// The vote `voter_id` cast in `poll_id`, if any.
    async fn vote_of(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Option<VoteRecord>, PollingError> {
        let Some(seq) = self.store.get(VOTERS, poll_id, voter_id).await? else {
            return Ok(None);
        };
        let seq: u64 = std::str::from_utf8(&seq)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("bad voter row in poll `{poll_id}`")))?;
        let vote = self
            .store
            .get(VOTES, poll_id, &vote_key(seq))
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("voter row points at missing vote {seq}"))
            })?;
        Ok(Some(decode(&vote)?))
    }

    /// The whole vote log of a poll, in order.
    pub async fn vote_log(&self, poll_id: &str) -> Result<Vec<VoteRecord>, PollingError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let rows = self
                .store
                .scan(VOTES, poll_id, after.clone(), SCAN_BATCH)
                .await?;
            let exhausted = rows.len() < SCAN_BATCH;
            for row in rows {
                out.push(decode(&row.value)?);
                after = Some(row.key);
            }
            if exhausted {
                return Ok(out);
            }
        }
    }

    /// Counts per option rebuilt from the vote log alone.
    pub async fn recompute_counts(
        &self,
        poll_id: &str,
    ) -> Result<BTreeMap<String, u64>, PollingError> {
        let poll = self.get(poll_id).await?.ok_or_else(|| not_found(poll_id))?;
        let log = self.vote_log(poll_id).await?;
        Ok(tally::recompute(&poll, &log))
    }
}
