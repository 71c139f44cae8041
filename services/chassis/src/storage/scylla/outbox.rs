//! The outbox on Scylla: reserving dense offsets with a CAS on the counter
//! row, reading buckets in offset order, and stepping over gaps only after
//! their grace period.

use super::commit::backoff;
use super::cql::{OUTBOX_READ, SEQ_CAS, SEQ_INIT, SEQ_READ, page_size, text, to_i64};
use super::plan::lwt_outcome;
use super::{BUCKET_SIZE, MAX_TRACKED_GAP, SEQ_ATTEMPTS, SEQ_NAME, ScyllaStore};
use crate::storage::{OutboxEntry, OutboxEvent, StoreError};
use scylla::response::PagingState;
use scylla::value::CqlValue;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::time::Instant;

impl ScyllaStore {
    /// Outbox entries after `after`: the contiguous run of offsets, stepping
    /// over a missing one only once its grace period has passed.
    pub(super) async fn read_contiguous_outbox(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(next) = self.read_next().await? else {
            return Ok(Vec::new());
        };
        let high = u64::try_from(next.saturating_sub(1)).unwrap_or(0);
        {
            let mut gaps = self.gaps.lock();
            gaps.prune(after);
        }
        let mut expected = after.saturating_add(1);
        let mut out = Vec::new();
        while expected <= high && out.len() < limit {
            let bucket = expected / BUCKET_SIZE;
            let bucket_last = (bucket + 1) * BUCKET_SIZE - 1;
            let rows = self
                .read_bucket(bucket, expected, limit - out.len())
                .await?;
            for entry in rows {
                while expected < entry.offset {
                    if !self.gap_expired(expected, entry.offset - 1) {
                        return Ok(out);
                    }
                    expected += 1;
                }
                expected = entry.offset + 1;
                out.push(entry);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            let last = high.min(bucket_last);
            while expected <= last {
                if !self.gap_expired(expected, last) {
                    return Ok(out);
                }
                expected += 1;
            }
        }
        Ok(out)
    }

    /// Reserves `n` consecutive outbox offsets; returns the first.
    pub(super) async fn reserve_offsets(&self, n: u64) -> Result<u64, StoreError> {
        let n = to_i64(n)?;
        let mut known = self.read_next().await?;
        for attempt in 0..SEQ_ATTEMPTS {
            let result = match known {
                None => {
                    self.execute(
                        SEQ_INIT,
                        vec![text(SEQ_NAME.into()), CqlValue::BigInt(1 + n)],
                    )
                    .await?
                }
                Some(next) => {
                    self.execute(
                        SEQ_CAS,
                        vec![
                            CqlValue::BigInt(next + n),
                            text(SEQ_NAME.into()),
                            CqlValue::BigInt(next),
                        ],
                    )
                    .await?
                }
            };
            let (applied, returned) =
                lwt_outcome(result).map_err(|e| self.unavailable("outbox offsets", e))?;
            if applied {
                let first = known.unwrap_or(1);
                return u64::try_from(first)
                    .map_err(|_| StoreError::Corrupt(format!("outbox counter is {first}")));
            }
            known = match returned
                .first()
                .and_then(|r| r.get("next"))
                .and_then(|v| v.as_ref())
            {
                Some(CqlValue::BigInt(next)) => Some(*next),
                _ => self.read_next().await?,
            };
            if attempt >= 2 {
                tokio::time::sleep(backoff(attempt - 2)).await;
            }
        }
        Err(self.unavailable(
            "outbox offsets",
            format!("the counter stayed contended for {SEQ_ATTEMPTS} attempts; retry later"),
        ))
    }

    /// The next unreserved outbox offset, `None` before the first commit.
    pub(super) async fn read_next(&self) -> Result<Option<i64>, StoreError> {
        let result = self.execute(SEQ_READ, vec![text(SEQ_NAME.into())]).await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| self.unavailable("outbox counter", e))?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| self.unavailable("outbox counter", e))?;
        Ok(row.and_then(|(next,)| next))
    }

    /// Outbox rows of one bucket with offsets of at least `from`, in order.
    async fn read_bucket(
        &self,
        bucket: u64,
        from: u64,
        want: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.stmt(OUTBOX_READ).await?;
        stmt.set_page_size(page_size(want));
        let values = vec![
            CqlValue::BigInt(to_i64(bucket)?),
            CqlValue::BigInt(to_i64(from)? - 1),
        ];
        let mut paging = PagingState::start();
        let mut out = Vec::new();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&stmt, &values, paging)
                .await
                .map_err(|e| self.unavailable("outbox read", e))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| self.unavailable("outbox read", e))?;
            type OutboxRow = (i64, Option<String>, Option<String>, Option<Vec<u8>>);
            for row in rows
                .rows::<OutboxRow>()
                .map_err(|e| self.unavailable("outbox read", e))?
            {
                let (seq, aggregate_id, event_type, payload) =
                    row.map_err(|e| self.unavailable("outbox read", e))?;
                let (Some(aggregate_id), Some(event_type), Some(payload)) =
                    (aggregate_id, event_type, payload)
                else {
                    return Err(StoreError::Corrupt(format!(
                        "outbox row {seq} is incomplete"
                    )));
                };
                let offset = u64::try_from(seq)
                    .map_err(|_| StoreError::Corrupt(format!("outbox offset {seq}")))?;
                out.push(OutboxEntry {
                    offset,
                    event: OutboxEvent {
                        aggregate_id,
                        event_type,
                        payload,
                    },
                });
            }
            if out.len() >= want {
                return Ok(out);
            }
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(out),
                ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    /// Whether readers may step over missing offsets `from..=to` (checked
    /// for `from`), recording when each was first seen missing.
    fn gap_expired(&self, from: u64, to: u64) -> bool {
        let mut gaps = self.gaps.lock();
        gaps.observe(from, to, Instant::now(), self.gap_grace)
    }
}

/// When readers first saw each missing outbox offset.
#[derive(Debug, Default)]
pub(super) struct GapTracker {
    first_seen: BTreeMap<u64, Instant>,
}

impl GapTracker {
    /// Records `from..=to` as missing at `now` (keeping earlier sightings)
    /// and tells whether `from` has been missing for at least `grace`.
    fn observe(&mut self, from: u64, to: u64, now: Instant, grace: Duration) -> bool {
        let to = to.min(from.saturating_add(MAX_TRACKED_GAP));
        for offset in from..=to {
            self.first_seen.entry(offset).or_insert(now);
        }
        self.first_seen
            .get(&from)
            .is_some_and(|seen| now.saturating_duration_since(*seen) >= grace)
    }

    /// Forgets offsets at or below `upto` (already consumed).
    fn prune(&mut self, upto: u64) {
        self.first_seen = self.first_seen.split_off(&upto.saturating_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_block_readers_until_the_grace_period_passes() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut gaps = GapTracker::default();
        assert!(!gaps.observe(5, 7, t0, grace));
        assert!(!gaps.observe(5, 7, t0 + Duration::from_secs(59), grace));
        assert!(gaps.observe(5, 7, t0 + grace, grace));
        // Offsets seen missing in the same observation expire together.
        assert!(gaps.observe(6, 7, t0 + grace, grace));
        // An offset first seen later gets its own grace period.
        assert!(!gaps.observe(8, 8, t0 + grace, grace));
        gaps.prune(7);
        assert_eq!(gaps.first_seen.keys().copied().collect::<Vec<_>>(), [8]);
    }
}
