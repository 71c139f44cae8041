//! The operator actions on a consumer: listing and redriving dead letters,
//! replaying from an offset, and rebuilding the read model from the start
//! (finished on restart when the process died in the middle).

use super::offsets::{OFFSET_KEY, REBUILD_KEY, clear_partition};
use super::{Consumer, ConsumerError, OFFSETS, Outcome, PROCESSED};
use crate::events::dead_letter::{self, DeadLetterRecord};
use crate::storage::WriteBatch;

impl Consumer {
    /// Every dead letter of this consumer.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRecord>, ConsumerError> {
        Ok(dead_letter::list(self.inner.store.as_ref(), &self.inner.name).await?)
    }

    /// One dead letter.
    pub async fn dead_letter_entry(
        &self,
        event_id: &str,
    ) -> Result<DeadLetterRecord, ConsumerError> {
        dead_letter::get(self.inner.store.as_ref(), &self.inner.name, event_id)
            .await?
            .ok_or_else(|| {
                ConsumerError::NotFound(format!("dead letter {event_id} of {}", self.inner.name))
            })
    }

    /// Processes dead letters again (one, or all when `event_id` is `None`),
    /// with the usual retries. Each is applied at most once; a success removes
    /// it from the queue. Returns `(redriven, still_failing)`.
    pub async fn redrive(&self, event_id: Option<&str>) -> Result<(u32, u32), ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        let store = self.inner.store.as_ref();
        let records = match event_id {
            Some(id) => vec![self.dead_letter_entry(id).await?],
            None => self.dead_letters().await?,
        };
        let (mut redriven, mut failing) = (0u32, 0u32);
        for record in records {
            let delivery = record.delivery()?;
            match self.process_locked(&delivery, false).await? {
                Outcome::DeadLettered(_) => failing += 1,
                Outcome::Applied => redriven += 1,
                Outcome::Duplicate | Outcome::Skipped(_) | Outcome::Stale => {
                    let mut batch = WriteBatch::new();
                    batch.delete(
                        dead_letter::TABLE,
                        self.inner.name.clone(),
                        record.event_id.clone(),
                    );
                    store.commit(batch).await?;
                    redriven += 1;
                }
            }
        }
        tracing::info!(consumer = %self.inner.name, redriven, still_failing = failing, "redrive finished");
        Ok((redriven, failing))
    }

    /// Rewinds the consumer to `after` (events with greater positions are
    /// delivered again; those already processed stay without effect). With
    /// `rebuild` (only from 0), the read model and processed rows are cleared
    /// first, so every event is applied again.
    pub async fn replay(&self, after: u64, rebuild: bool) -> Result<(), ConsumerError> {
        if rebuild && after != 0 {
            return Err(ConsumerError::Invalid(
                "a rebuild replays from the start: use from_offset 0".into(),
            ));
        }
        let inner = &self.inner;
        let _guard = inner.lock.lock().await;
        let mut batch = WriteBatch::new();
        batch.put(
            OFFSETS,
            inner.name.clone(),
            OFFSET_KEY,
            after.to_string().into_bytes(),
        );
        if rebuild {
            batch.put(OFFSETS, inner.name.clone(), REBUILD_KEY, b"1".to_vec());
        }
        inner.store.commit(batch).await?;
        if rebuild {
            self.rebuild_locked().await?;
        }
        inner.source.rewind(&inner.name, after).await?;
        inner.generation.send_modify(|g| *g = g.wrapping_add(1));
        tracing::info!(consumer = %inner.name, after, rebuild, "consumer rewound");
        Ok(())
    }

    pub(super) async fn finish_rebuild(&self) -> Result<(), ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        let marker = self
            .inner
            .store
            .get(OFFSETS, &self.inner.name, REBUILD_KEY)
            .await?;
        if marker.is_some() {
            tracing::info!(consumer = %self.inner.name, "finishing an interrupted rebuild");
            self.rebuild_locked().await?;
        }
        Ok(())
    }

    async fn rebuild_locked(&self) -> Result<(), ConsumerError> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        inner
            .handler
            .reset(store)
            .await
            .map_err(|e| ConsumerError::Handler(format!("reset of {}: {e}", inner.name)))?;
        clear_partition(store, PROCESSED, &inner.name).await?;
        let mut batch = WriteBatch::new();
        batch.delete(OFFSETS, inner.name.clone(), REBUILD_KEY);
        store.commit(batch).await?;
        Ok(())
    }
}
