//! Applying one delivery: skip what this build cannot understand, run the
//! handler inside one batch with the processed row and the new offset, re-run
//! on guard conflicts, retry failures with backoff, and dead-letter at the end.

use super::offsets::push_offset;
use super::{Consumer, ConsumerError, HandlerError, Outcome, PROCESSED};
use crate::events::bus::Delivery;
use crate::events::dead_letter::{self, DeadLetterRecord};
use crate::events::feed_source::backoff;
use crate::storage::{StoreError, WriteBatch};

/// How one attempt at a delivery ended, when it did not apply.
enum Attempt {
    Conflict(String),
    Transient(String),
    Permanent(String),
    Skip(String),
    Fatal(StoreError),
}

impl Consumer {
    /// Processes one delivery now (as the runtime does), advancing the offset.
    pub async fn process(&self, delivery: &Delivery) -> Result<Outcome, ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        self.process_locked(delivery, true).await
    }

    fn skip_reason(&self, delivery: &Delivery) -> Option<String> {
        let env = &delivery.envelope;
        if env.payload.is_none() {
            return Some(format!("unknown payload for type `{}`", env.event_type));
        }
        if env.event_id.is_empty() {
            return Some("envelope without event id".to_string());
        }
        if let Some(max) = self.inner.handler.max_schema_version()
            && env.schema_version > max
        {
            return Some(format!(
                "schema version {} is newer than {max}",
                env.schema_version
            ));
        }
        let wanted = self.inner.handler.event_types();
        if !wanted.is_empty() && !wanted.contains(&env.event_type) {
            return Some(format!("type `{}` not subscribed", env.event_type));
        }
        None
    }

    pub(super) async fn process_locked(
        &self,
        d: &Delivery,
        advance: bool,
    ) -> Result<Outcome, ConsumerError> {
        let inner = &self.inner;
        if let Some(reason) = self.skip_reason(d) {
            tracing::info!(consumer = %inner.name, position = d.position, event_id = %d.envelope.event_id, %reason, "skipping event");
            if advance {
                self.advance_only(d.position).await?;
            }
            return Ok(Outcome::Skipped(reason));
        }
        let mut attempts = 0u32;
        let mut conflicts = 0u32;
        loop {
            let error = match self.attempt(d, advance).await {
                Ok(outcome) => return Ok(outcome),
                Err(Attempt::Fatal(e)) => return Err(e.into()),
                Err(Attempt::Skip(reason)) => {
                    tracing::info!(consumer = %inner.name, position = d.position, %reason, "handler skipped event");
                    if advance {
                        self.advance_only(d.position).await?;
                    }
                    return Ok(Outcome::Skipped(reason));
                }
                Err(Attempt::Conflict(e)) => {
                    conflicts += 1;
                    if conflicts <= inner.policy.max_conflicts {
                        continue;
                    }
                    conflicts = 0;
                    format!("conflicting writes: {e}")
                }
                Err(Attempt::Permanent(e)) => {
                    attempts += 1;
                    return self.dead_letter(d, e, attempts, advance).await;
                }
                Err(Attempt::Transient(e)) => e,
            };
            attempts += 1;
            if attempts >= inner.policy.max_attempts {
                return self.dead_letter(d, error, attempts, advance).await;
            }
            tracing::warn!(consumer = %inner.name, position = d.position, attempt = attempts, %error, "event failed; retrying");
            tokio::time::sleep(backoff(
                inner.policy.initial_backoff,
                inner.policy.max_backoff,
                attempts,
            ))
            .await;
        }
    }

    async fn attempt(&self, d: &Delivery, advance: bool) -> Result<Outcome, Attempt> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        let event_id = d.envelope.event_id.as_str();
        let already = store
            .get(PROCESSED, &inner.name, event_id)
            .await
            .map_err(|e| Attempt::Transient(e.to_string()))?;
        if already.is_some() {
            if advance {
                self.advance_only(d.position)
                    .await
                    .map_err(Attempt::Fatal)?;
            }
            return Ok(Outcome::Duplicate);
        }
        let mut batch = WriteBatch::new();
        batch.insert_if_absent(
            PROCESSED,
            inner.name.clone(),
            event_id,
            d.position.to_string().into_bytes(),
        );
        match inner.handler.handle(d, &mut batch, store).await {
            Ok(()) => {}
            Err(HandlerError::Transient(e)) => return Err(Attempt::Transient(e)),
            Err(HandlerError::Permanent(e)) => return Err(Attempt::Permanent(e)),
            Err(HandlerError::Skip(e)) => return Err(Attempt::Skip(e)),
            Err(HandlerError::Store(e @ StoreError::ConditionFailed { .. })) => {
                return Err(Attempt::Conflict(e.to_string()));
            }
            Err(HandlerError::Store(e)) => return Err(Attempt::Transient(e.to_string())),
        }
        batch.delete(dead_letter::TABLE, inner.name.clone(), event_id);
        if advance {
            push_offset(store, &inner.name, &mut batch, d.position)
                .await
                .map_err(|e| Attempt::Transient(e.to_string()))?;
        }
        match store.commit(batch).await {
            Ok(()) => {
                inner.handler.committed(d).await;
                Ok(Outcome::Applied)
            }
            Err(StoreError::ConditionFailed { index: 0, .. }) => {
                if advance {
                    self.advance_only(d.position)
                        .await
                        .map_err(Attempt::Fatal)?;
                }
                Ok(Outcome::Duplicate)
            }
            Err(e @ StoreError::ConditionFailed { .. }) => Err(Attempt::Conflict(e.to_string())),
            Err(e) => Err(Attempt::Transient(e.to_string())),
        }
    }

    async fn dead_letter(
        &self,
        d: &Delivery,
        error: String,
        attempts: u32,
        advance: bool,
    ) -> Result<Outcome, ConsumerError> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        tracing::error!(consumer = %inner.name, position = d.position, event_id = %d.envelope.event_id, attempts, %error, "event dead-lettered");
        for _ in 0..=inner.policy.max_conflicts {
            let previous = dead_letter::get(store, &inner.name, &d.envelope.event_id)
                .await?
                .map(|r| r.attempts)
                .unwrap_or(0);
            let record = DeadLetterRecord::new(d, error.clone(), previous.saturating_add(attempts));
            let mut batch = WriteBatch::new();
            batch.put(
                dead_letter::TABLE,
                inner.name.clone(),
                d.envelope.event_id.clone(),
                crate::storage::encode(&record)?,
            );
            if advance {
                push_offset(store, &inner.name, &mut batch, d.position).await?;
            }
            match store.commit(batch).await {
                Ok(()) => return Ok(Outcome::DeadLettered(error)),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConsumerError::Handler(format!(
            "offset of {} keeps changing under the dead-letter write",
            inner.name
        )))
    }

    /// Moves the offset to `position` (if ahead) with nothing else.
    async fn advance_only(&self, position: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        for _ in 0..=inner.policy.max_conflicts {
            let mut batch = WriteBatch::new();
            push_offset(inner.store.as_ref(), &inner.name, &mut batch, position).await?;
            if batch.writes.is_empty() {
                return Ok(());
            }
            match inner.store.commit(batch).await {
                Ok(()) => return Ok(()),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "offset of {} keeps changing",
            inner.name
        )))
    }
}
