//! The consumer handler that keeps the read model: each polling event becomes
//! one set of writes, committed by the chassis consumer runtime in the same
//! transaction as the event id and the consumer offset, so a redelivered event
//! has no effect. Every read-modify-write carries an `expect` guard on the
//! value it read.
//!
//! Tables (all in the analytics service's own store):
//! - `analytics_polls / <poll_id> / poll`: the [`PollView`].
//! - `analytics_minutes / <poll_id> / <minute key>`: votes in that minute.
//! - `analytics_owners / <owner_id> / totals`: [`OwnerTotals`].
//! - `analytics_owner_polls / <owner_id> / <poll_id>`: [`OwnedPoll`], to count open polls.
//! - `analytics_top / all / <top key>`: [`PollSummary`], the ranking by votes.
//! - `analytics_registry / polls|owners / <id>`: what exists, so a rebuild can clear it.

use crate::domain::paging::{minute_key, top_key};
use crate::domain::{
    DomainError, Millis, OwnedPoll, OwnerTotals, PollSummary, PollView, millis, minute_of,
};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use tally_api::events::v1::event_envelope::Payload;
use tally_chassis::events::consumer::clear_partition;
use tally_chassis::events::{Delivery, Handler, HandlerError};
use tally_chassis::storage::{Store, StoreError, WriteBatch, decode, encode};

pub const POLLS: &str = "analytics_polls";
pub const MINUTES: &str = "analytics_minutes";
pub const OWNERS: &str = "analytics_owners";
pub const OWNER_POLLS: &str = "analytics_owner_polls";
pub const TOP: &str = "analytics_top";
pub const REGISTRY: &str = "analytics_registry";

pub const POLL_KEY: &str = "poll";
pub const TOTALS_KEY: &str = "totals";
pub const TOP_PARTITION: &str = "all";
const REGISTRY_POLLS: &str = "polls";
const REGISTRY_OWNERS: &str = "owners";
const PAGE: usize = 256;

/// The event types the read model is built from.
pub const EVENT_TYPES: [&str; 3] = [
    "tally.events.v1.PollCreated",
    "tally.events.v1.PollVoted",
    "tally.events.v1.PollClosed",
];

/// The read-model handler.
pub struct Projector {
    name: String,
    /// Fault injection (see `analytics.reject_questions`).
    reject_questions: BTreeSet<String>,
}

impl Projector {
    pub fn new(name: &str, reject_questions: impl IntoIterator<Item = String>) -> Self {
        Self {
            name: name.to_string(),
            reject_questions: reject_questions.into_iter().collect(),
        }
    }

    fn check_fault(&self, poll: &PollView) -> Result<(), HandlerError> {
        if self.reject_questions.contains(&poll.question) {
            return Err(HandlerError::Permanent(format!(
                "injected fault: events of polls asking {:?} are rejected (analytics.reject_questions)",
                poll.question
            )));
        }
        Ok(())
    }
}

/// A stored row decoded, with the raw bytes for an `expect` guard.
pub async fn read<T: DeserializeOwned>(
    store: &dyn Store,
    table: &'static str,
    partition: &str,
    key: &str,
) -> Result<Option<(Vec<u8>, T)>, StoreError> {
    match store.get(table, partition, key).await? {
        None => Ok(None),
        Some(raw) => {
            let value = decode(&raw)?;
            Ok(Some((raw, value)))
        }
    }
}

/// Guarded replace: the row must still hold `previous` (`None`: absent).
fn replace<T: Serialize>(
    batch: &mut WriteBatch,
    table: &'static str,
    partition: &str,
    key: &str,
    previous: Option<Vec<u8>>,
    value: &T,
) -> Result<(), StoreError> {
    batch
        .expect(table, partition, key, previous)
        .put(table, partition, key, encode(value)?);
    Ok(())
}

fn inconsistent(e: DomainError) -> HandlerError {
    HandlerError::Permanent(e.to_string())
}

fn occurred_ms(delivery: &Delivery) -> Millis {
    delivery
        .envelope
        .occurred_at
        .as_ref()
        .map(millis)
        .unwrap_or(0)
}

async fn poll_view(store: &dyn Store, poll_id: &str) -> Result<(Vec<u8>, PollView), HandlerError> {
    read::<PollView>(store, POLLS, poll_id, POLL_KEY)
        .await?
        .ok_or_else(|| {
            HandlerError::Permanent(format!(
                "event for poll {poll_id}, which the read model has not seen created"
            ))
        })
}

#[async_trait]
impl Handler for Projector {
    fn name(&self) -> &str {
        &self.name
    }

    fn event_types(&self) -> Vec<String> {
        EVENT_TYPES.iter().map(|t| t.to_string()).collect()
    }

    async fn handle(
        &self,
        delivery: &Delivery,
        batch: &mut WriteBatch,
        store: &dyn Store,
    ) -> Result<(), HandlerError> {
        let offset = delivery.position;
        match &delivery.envelope.payload {
            Some(Payload::PollCreated(ev)) => {
                let view =
                    PollView::created(ev, occurred_ms(delivery), offset).map_err(inconsistent)?;
                self.check_fault(&view)?;
                if store.get(POLLS, &view.poll_id, POLL_KEY).await?.is_some() {
                    return Err(HandlerError::Skip(format!(
                        "poll {} is already in the read model",
                        view.poll_id
                    )));
                }
                let owner = view.owner_id.clone();
                let poll_id = view.poll_id.clone();
                batch.insert_if_absent(POLLS, poll_id.clone(), POLL_KEY, encode(&view)?);
                let (raw, mut totals) =
                    match read::<OwnerTotals>(store, OWNERS, &owner, TOTALS_KEY).await? {
                        Some((raw, t)) => (Some(raw), t),
                        None => (None, OwnerTotals::default()),
                    };
                totals.polls += 1;
                replace(batch, OWNERS, &owner, TOTALS_KEY, raw, &totals)?;
                let owned = OwnedPoll {
                    closes_at_ms: view.closes_at_ms,
                    closed: false,
                };
                batch.put(OWNER_POLLS, owner.clone(), poll_id.clone(), encode(&owned)?);
                batch.put(
                    TOP,
                    TOP_PARTITION,
                    top_key(0, &poll_id),
                    encode(&PollSummary::from(&view))?,
                );
                batch.put(REGISTRY, REGISTRY_POLLS, poll_id, Vec::new());
                batch.put(REGISTRY, REGISTRY_OWNERS, owner, Vec::new());
                Ok(())
            }
            Some(Payload::PollVoted(ev)) => {
                let (raw, mut view) = poll_view(store, &ev.poll_id).await?;
                self.check_fault(&view)?;
                let before = view.total_votes;
                view.vote(&ev.option_id, offset).map_err(inconsistent)?;
                replace(batch, POLLS, &view.poll_id, POLL_KEY, Some(raw), &view)?;

                let owner = view.owner_id.clone();
                let (raw, mut totals) =
                    match read::<OwnerTotals>(store, OWNERS, &owner, TOTALS_KEY).await? {
                        Some((raw, t)) => (Some(raw), t),
                        None => (None, OwnerTotals::default()),
                    };
                totals.total_votes += 1;
                replace(batch, OWNERS, &owner, TOTALS_KEY, raw, &totals)?;

                let cast_ms = ev
                    .cast_at
                    .as_ref()
                    .map(millis)
                    .unwrap_or_else(|| occurred_ms(delivery));
                let minute = minute_key(minute_of(cast_ms));
                let (raw, count) = match read::<u64>(store, MINUTES, &view.poll_id, &minute).await?
                {
                    Some((raw, n)) => (Some(raw), n),
                    None => (None, 0),
                };
                replace(batch, MINUTES, &view.poll_id, &minute, raw, &(count + 1))?;

                batch.delete(TOP, TOP_PARTITION, top_key(before, &view.poll_id));
                batch.put(
                    TOP,
                    TOP_PARTITION,
                    top_key(view.total_votes, &view.poll_id),
                    encode(&PollSummary::from(&view))?,
                );
                Ok(())
            }
            Some(Payload::PollClosed(ev)) => {
                let (raw, mut view) = poll_view(store, &ev.poll_id).await?;
                self.check_fault(&view)?;
                view.close(offset);
                replace(batch, POLLS, &view.poll_id, POLL_KEY, Some(raw), &view)?;
                let owned = OwnedPoll {
                    closes_at_ms: view.closes_at_ms,
                    closed: true,
                };
                batch.put(
                    OWNER_POLLS,
                    view.owner_id.clone(),
                    view.poll_id.clone(),
                    encode(&owned)?,
                );
                Ok(())
            }
            _ => Err(HandlerError::Skip(format!(
                "`{}` is not part of the analytics read model",
                delivery.envelope.event_type
            ))),
        }
    }

    async fn reset(&self, store: &dyn Store) -> Result<(), HandlerError> {
        for poll_id in registry(store, REGISTRY_POLLS).await? {
            clear_partition(store, MINUTES, &poll_id).await?;
            let mut batch = WriteBatch::new();
            batch.delete(POLLS, poll_id.clone(), POLL_KEY);
            batch.delete(REGISTRY, REGISTRY_POLLS, poll_id);
            store.commit(batch).await?;
        }
        for owner in registry(store, REGISTRY_OWNERS).await? {
            clear_partition(store, OWNER_POLLS, &owner).await?;
            let mut batch = WriteBatch::new();
            batch.delete(OWNERS, owner.clone(), TOTALS_KEY);
            batch.delete(REGISTRY, REGISTRY_OWNERS, owner);
            store.commit(batch).await?;
        }
        clear_partition(store, TOP, TOP_PARTITION).await?;
        tracing::info!(consumer = %self.name, "analytics read model cleared for a rebuild");
        Ok(())
    }
}

/// Every id in one registry partition.
async fn registry(store: &dyn Store, partition: &str) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let rows = store.scan(REGISTRY, partition, after.clone(), PAGE).await?;
        let full = rows.len() == PAGE;
        for row in rows {
            after = Some(row.key.clone());
            out.push(row.key);
        }
        if !full {
            return Ok(out);
        }
    }
}
