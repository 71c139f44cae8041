//! The three commit paths (see the module docs of `scylla`): a blind batch,
//! one conditional batch on one partition, and locked multi-partition
//! commits with their lease rows and SERIAL reads.

use super::cql::{
    DELETE_IF, GET_SERIAL, LOCK_ACQUIRE, conditional_statements, outbox_statements, text,
    write_statements,
};
use super::plan::{
    Guarded, RowRef, condition_failed, current_from_returned, evaluate, lwt_outcome, row_ref,
};
use super::{LOCK_KEY, LOCK_TTL_SECS, LOCK_WAIT, ScyllaStore};
use crate::storage::{StoreError, Write, WriteBatch};
use scylla::statement::Consistency;
use scylla::statement::batch::BatchType;
use scylla::value::CqlValue;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

impl ScyllaStore {
    /// Path 1: no conditions.
    pub(super) async fn commit_blind(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let partitions: BTreeSet<(String, String)> = batch
            .writes
            .iter()
            .map(|w| {
                let (t, p, _) = row_ref(w);
                (t, p)
            })
            .collect();
        let final_rows = evaluate(&batch.writes, &HashMap::new()).map_err(|index| {
            // Unreachable: a batch without conditions cannot fail one.
            condition_failed(&batch.writes, index)
        })?;
        let has_events = !batch.events.is_empty();
        let mut statements = write_statements(final_rows);
        if has_events {
            let first = self.reserve_offsets(batch.events.len() as u64).await?;
            statements.extend(outbox_statements(first, batch.events)?);
        }
        let kind = if partitions.len() > 1 || has_events {
            BatchType::Logged
        } else {
            BatchType::Unlogged
        };
        self.run_batch(kind, None, statements).await?;
        Ok(())
    }

    /// Path 2: one conditional batch on one partition.
    pub(super) async fn commit_single_partition(
        &self,
        batch: &WriteBatch,
        plan: Vec<Guarded>,
        (table, partition): (String, String),
    ) -> Result<(), StoreError> {
        let lock_row: RowRef = (table.clone(), partition.clone(), LOCK_KEY.to_string());
        let (statements, guarded_rows) = conditional_statements(table, partition, plan);
        let deadline = Instant::now() + LOCK_WAIT;
        let mut attempt = 0u32;
        loop {
            let result = self
                .run_batch(BatchType::Logged, None, statements.clone())
                .await?;
            let (applied, returned) =
                lwt_outcome(result).map_err(|e| self.unavailable("batch", e))?;
            if applied {
                return Ok(());
            }
            let current = match current_from_returned(&returned, &guarded_rows) {
                Some(current) => current,
                None => self.read_serial(&guarded_rows).await?.0,
            };
            let locked = current.get(&lock_row).is_some_and(|v| v.is_some());
            if !locked && let Err(index) = evaluate(&batch.writes, &current) {
                return Err(condition_failed(&batch.writes, index));
            }
            // Either another commit holds the partition's lock, or the state
            // that failed the condition changed since: try again.
            if Instant::now() >= deadline {
                return Err(self.unavailable(
                    "commit",
                    "the partition stayed locked or contended; retry later",
                ));
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Path 3: lock the guarded partitions, check, write everything in one
    /// logged batch, unlock.
    pub(super) async fn commit_locked(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut guarded_rows: Vec<RowRef> = Vec::new();
        let mut partitions: BTreeSet<(String, String)> = BTreeSet::new();
        for w in &batch.writes {
            if matches!(w, Write::InsertIfAbsent { .. } | Write::Expect { .. }) {
                let row = row_ref(w);
                partitions.insert((row.0.clone(), row.1.clone()));
                if !guarded_rows.contains(&row) {
                    guarded_rows.push(row);
                }
            }
        }
        let owner = uuid::Uuid::new_v4().as_bytes().to_vec();
        let mut held = Vec::new();
        if let Err(e) = self.acquire_locks(&partitions, &owner, &mut held).await {
            self.release_locks(&held, &owner).await;
            return Err(e);
        }
        let (result, written) = self.commit_under_locks(batch, &guarded_rows).await;
        // A logged batch that failed may still be replayed: then the lease
        // is left to expire rather than released early.
        if result.is_ok() || !written {
            self.release_locks(&held, &owner).await;
        }
        result
    }

    async fn acquire_locks(
        &self,
        partitions: &BTreeSet<(String, String)>,
        owner: &[u8],
        held: &mut Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + LOCK_WAIT;
        for (t, p) in partitions {
            let mut attempt = 0u32;
            loop {
                let result = self
                    .execute(
                        LOCK_ACQUIRE,
                        vec![
                            text(t.clone()),
                            text(p.clone()),
                            text(LOCK_KEY.to_string()),
                            CqlValue::Blob(owner.to_vec()),
                        ],
                    )
                    .await?;
                let (applied, _) = lwt_outcome(result).map_err(|e| self.unavailable("lock", e))?;
                if applied {
                    held.push((t.clone(), p.clone()));
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(self.unavailable(
                        "lock",
                        format!(
                            "partition {t}/{p} stayed locked by another commit for {LOCK_WAIT:?} \
                             (a lease expires after {LOCK_TTL_SECS} s); retry later"
                        ),
                    ));
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
        Ok(())
    }

    async fn release_locks(&self, held: &[(String, String)], owner: &[u8]) {
        for (t, p) in held {
            let released = self
                .execute(
                    DELETE_IF,
                    vec![
                        text(t.clone()),
                        text(p.clone()),
                        text(LOCK_KEY.to_string()),
                        CqlValue::Blob(owner.to_vec()),
                    ],
                )
                .await;
            if let Err(e) = released {
                tracing::warn!(table = %t, partition = %p, error = %e,
                    "lock release failed; the lease expires by itself");
            }
        }
    }

    /// Returns the outcome and whether the logged batch was sent.
    async fn commit_under_locks(
        &self,
        batch: WriteBatch,
        guarded_rows: &[RowRef],
    ) -> (Result<(), StoreError>, bool) {
        let (current, newest) = match self.read_serial(guarded_rows).await {
            Ok(read) => read,
            Err(e) => return (Err(e), false),
        };
        let final_rows = match evaluate(&batch.writes, &current) {
            Ok(rows) => rows,
            Err(index) => return (Err(condition_failed(&batch.writes, index)), false),
        };
        let mut statements = write_statements(final_rows);
        if !batch.events.is_empty() {
            let first = match self.reserve_offsets(batch.events.len() as u64).await {
                Ok(first) => first,
                Err(e) => return (Err(e), false),
            };
            match outbox_statements(first, batch.events) {
                Ok(s) => statements.extend(s),
                Err(e) => return (Err(e), false),
            }
        }
        // Above every write time seen, so this write wins over them even if
        // this coordinator's clock lags.
        let timestamp = now_micros().max(newest.saturating_add(1));
        let result = self
            .run_batch(BatchType::Logged, Some(timestamp), statements)
            .await
            .map(|_| ());
        (result, true)
    }

    /// Linearizable reads of rows: their values and the newest write time.
    async fn read_serial(
        &self,
        rows: &[RowRef],
    ) -> Result<(HashMap<RowRef, Option<Vec<u8>>>, i64), StoreError> {
        let mut stmt = self.stmt(GET_SERIAL).await?;
        stmt.set_consistency(Consistency::Serial);
        let reads = rows.iter().map(|(t, p, k)| {
            let stmt = &stmt;
            async move {
                let values = vec![text(t.clone()), text(p.clone()), text(k.clone())];
                let result = self
                    .session
                    .execute_unpaged(stmt, values)
                    .await
                    .map_err(|e| self.unavailable("serial read", e))?;
                let rows = result
                    .into_rows_result()
                    .map_err(|e| self.unavailable("serial read", e))?;
                let row = rows
                    .maybe_first_row::<(Option<Vec<u8>>, Option<i64>)>()
                    .map_err(|e| self.unavailable("serial read", e))?;
                Ok::<_, StoreError>(row.unwrap_or((None, None)))
            }
        });
        let values = futures::future::try_join_all(reads).await?;
        let mut current = HashMap::new();
        let mut newest = 0i64;
        for (row, (value, written)) in rows.iter().zip(values) {
            newest = newest.max(written.unwrap_or(0));
            current.insert(row.clone(), value);
        }
        Ok((current, newest))
    }
}

pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempt.min(6)).min(200);
    // Jitter so contending commits do not retry in lockstep.
    let jitter = (uuid::Uuid::new_v4().as_u128() % 16) as u64;
    Duration::from_millis(base + jitter)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_bounded() {
        for attempt in 0..100 {
            assert!(backoff(attempt) <= Duration::from_millis(216));
        }
    }
}
