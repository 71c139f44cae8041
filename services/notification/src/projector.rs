//! The consumer handler: applies polling events to the per-poll state, appends
//! the resulting update to the poll's bounded log (keyed by sequence), trims
//! the log, and, once the chassis consumer runtime has committed all of that
//! with the event id and offset, publishes the update to this replica's
//! watchers. A redelivered event commits nothing and publishes nothing.
//!
//! Tables (in this replica's own store):
//! - `notification_polls / <poll_id> / state`: [`PollState`].
//! - `notification_log / <poll_id> / <sequence, 20 digits>`: [`Update`].
//! - `notification_owners / <owner_id> / <poll_id>`: the owner's polls.
//! - `notification_registry / polls|owners / <id>`: what exists, for rebuilds.

use crate::domain::{Inconsistent, Millis, PollState, Update};
use crate::hub::{Hub, Published};
use async_trait::async_trait;
use parking_lot::Mutex;
use tally_api::events::v1::event_envelope::Payload;
use tally_chassis::events::consumer::clear_partition;
use tally_chassis::events::{Delivery, Handler, HandlerError};
use tally_chassis::storage::{Store, StoreError, WriteBatch, decode, encode};

pub const POLLS: &str = "notification_polls";
pub const LOG: &str = "notification_log";
pub const OWNERS: &str = "notification_owners";
pub const REGISTRY: &str = "notification_registry";
pub const STATE_KEY: &str = "state";
const REGISTRY_POLLS: &str = "polls";
const REGISTRY_OWNERS: &str = "owners";
const PAGE: usize = 256;
/// Most log rows one event deletes while trimming.
const MAX_TRIM: u64 = 64;

/// The event types watchers care about.
pub const EVENT_TYPES: [&str; 3] = [
    "tally.events.v1.PollCreated",
    "tally.events.v1.PollVoted",
    "tally.events.v1.PollClosed",
];

/// The sort key of `sequence` in the log.
pub fn log_key(sequence: u64) -> String {
    format!("{sequence:020}")
}

/// One poll's state, if this replica has seen it.
pub async fn load_state(store: &dyn Store, poll_id: &str) -> Result<Option<PollState>, StoreError> {
    store
        .get(POLLS, poll_id, STATE_KEY)
        .await?
        .map(|raw| decode(&raw))
        .transpose()
}

/// Logged updates of `poll_id` after `after`, oldest first, at most `limit`.
pub async fn read_log(
    store: &dyn Store,
    poll_id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<Update>, StoreError> {
    let rows = store
        .scan(LOG, poll_id, Some(log_key(after)), limit)
        .await?;
    rows.iter().map(|r| decode(&r.value)).collect()
}

/// A page of the poll ids `owner_id` owns, after `after`.
pub async fn owned_polls(
    store: &dyn Store,
    owner_id: &str,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    Ok(store
        .scan(OWNERS, owner_id, after, limit)
        .await?
        .into_iter()
        .map(|r| r.key)
        .collect())
}

/// The handler.
pub struct Projector {
    name: String,
    hub: Hub,
    log_capacity: u64,
    /// The update of the event being processed, published once it commits.
    pending: Mutex<Option<(String, Published)>>,
}

impl Projector {
    pub fn new(name: &str, hub: Hub, log_capacity: u64) -> Self {
        Self {
            name: name.to_string(),
            hub,
            log_capacity: log_capacity.max(1),
            pending: Mutex::new(None),
        }
    }

    fn set_pending(&self, event_id: &str, published: Option<Published>) {
        let mut slot = self.pending.lock();
        *slot = published.map(|p| (event_id.to_string(), p));
    }
}

fn millis(ts: &prost_types::Timestamp) -> Millis {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos.clamp(0, 999_999_999)) / 1_000_000)
}

fn permanent(e: Inconsistent) -> HandlerError {
    HandlerError::Permanent(e.0)
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
        let env = &delivery.envelope;
        self.set_pending(&env.event_id, None);
        let at = env.occurred_at.as_ref().map(millis).unwrap_or(0);
        let seq = env.sequence;
        let (previous, state) = match &env.payload {
            Some(Payload::PollCreated(ev)) => {
                if store.get(POLLS, &ev.poll_id, STATE_KEY).await?.is_some() {
                    return Err(HandlerError::Skip(format!(
                        "poll {} is already known",
                        ev.poll_id
                    )));
                }
                let state = PollState::created(ev, seq, at).map_err(permanent)?;
                batch.put(
                    OWNERS,
                    state.owner_id.clone(),
                    state.poll_id.clone(),
                    Vec::new(),
                );
                batch.put(REGISTRY, REGISTRY_POLLS, state.poll_id.clone(), Vec::new());
                batch.put(
                    REGISTRY,
                    REGISTRY_OWNERS,
                    state.owner_id.clone(),
                    Vec::new(),
                );
                (None, state)
            }
            Some(Payload::PollVoted(ev)) => {
                let (raw, mut state) = existing(store, &ev.poll_id).await?;
                state.vote(&ev.option_id, seq, at).map_err(permanent)?;
                (Some(raw), state)
            }
            Some(Payload::PollClosed(ev)) => {
                let (raw, mut state) = existing(store, &ev.poll_id).await?;
                state.close(seq, at).map_err(permanent)?;
                (Some(raw), state)
            }
            _ => {
                return Err(HandlerError::Skip(format!(
                    "`{}` is not watched",
                    env.event_type
                )));
            }
        };
        let mut state = state;
        for old in state.trim_log(self.log_capacity, MAX_TRIM) {
            batch.delete(LOG, state.poll_id.clone(), log_key(old));
        }
        let update = state.update();
        batch
            .expect(POLLS, state.poll_id.clone(), STATE_KEY, previous)
            .put(POLLS, state.poll_id.clone(), STATE_KEY, encode(&state)?)
            .put(
                LOG,
                state.poll_id.clone(),
                log_key(update.sequence),
                encode(&update)?,
            );
        self.set_pending(
            &env.event_id,
            Some(Published {
                owner_id: state.owner_id.clone(),
                update,
            }),
        );
        Ok(())
    }

    async fn committed(&self, delivery: &Delivery) {
        let taken = {
            let mut slot = self.pending.lock();
            match slot.take() {
                Some((id, published)) if id == delivery.envelope.event_id => Some(published),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some(published) = taken {
            self.hub.publish(published);
        }
    }

    async fn reset(&self, store: &dyn Store) -> Result<(), HandlerError> {
        for poll_id in registry(store, REGISTRY_POLLS).await? {
            clear_partition(store, LOG, &poll_id).await?;
            let mut batch = WriteBatch::new();
            batch.delete(POLLS, poll_id.clone(), STATE_KEY);
            batch.delete(REGISTRY, REGISTRY_POLLS, poll_id);
            store.commit(batch).await?;
        }
        for owner in registry(store, REGISTRY_OWNERS).await? {
            clear_partition(store, OWNERS, &owner).await?;
            let mut batch = WriteBatch::new();
            batch.delete(REGISTRY, REGISTRY_OWNERS, owner);
            store.commit(batch).await?;
        }
        tracing::info!(consumer = %self.name, "notification state cleared for a rebuild");
        Ok(())
    }
}

async fn existing(store: &dyn Store, poll_id: &str) -> Result<(Vec<u8>, PollState), HandlerError> {
    let raw = store.get(POLLS, poll_id, STATE_KEY).await?.ok_or_else(|| {
        HandlerError::Permanent(format!(
            "event for poll {poll_id}, which this replica has not seen created"
        ))
    })?;
    let state = decode(&raw)?;
    Ok((raw, state))
}

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
