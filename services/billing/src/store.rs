//! Billing's store adapter: what billing keeps in its store: subscriptions with their saga and step
//! log, idempotency keys, seat reservations and entitlements, plus the
//! index of unfinished sagas the orchestrator resumes on start-up.
//!
//! Every write of a subscription is guarded by its previous bytes, so two
//! writers (the saga driver and a cancel request) never overwrite each other.

use crate::domain::plans::PlanId;
use crate::domain::saga::Saga;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tally_chassis::storage::{OutboxEvent, Store, StoreError, WriteBatch, decode, encode};

pub const SUBSCRIPTIONS: &str = "subscriptions";
pub const START_KEYS: &str = "start_keys";
pub const SEATS: &str = "seats";
pub const ENTITLEMENTS: &str = "entitlements";
pub const OPEN_SAGAS: &str = "open_sagas";
pub const ROW: &str = "_";
const OPEN_PARTITION: &str = "open";

/// One entry of a subscription's step log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLog {
    pub name: String,
    /// `started` (intent recorded), `done`, `failed` or `skipped`.
    pub status: String,
    #[serde(default)]
    pub detail: String,
    pub at_ms: i64,
}

/// A subscription and its saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub subscription_id: String,
    pub user_id: String,
    pub plan: PlanId,
    pub idempotency_key: String,
    pub created_at_ms: i64,
    pub saga: Saga,
    pub steps: Vec<StepLog>,
    /// Sequence of the last event published for this subscription.
    pub event_seq: u64,
}

/// The limits a user's plan grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    pub plan: PlanId,
    pub max_open_polls: u32,
    pub subscription_id: String,
    /// Sequence of the last PlanLimitsGranted event for this user.
    pub event_seq: u64,
}

impl Entitlement {
    /// What a user without a subscription gets.
    pub fn free() -> Self {
        Self {
            plan: PlanId::Free,
            max_open_polls: PlanId::Free.plan().max_open_polls,
            subscription_id: String::new(),
            event_seq: 0,
        }
    }
}

/// A record together with the exact bytes it was read from (the CAS guard).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub raw: Option<Vec<u8>>,
}

/// Typed access to billing's tables.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
}

impl Records {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn subscription(
        &self,
        id: &str,
    ) -> Result<Option<Versioned<SubscriptionRecord>>, StoreError> {
        match self.store.get(SUBSCRIPTIONS, id, ROW).await? {
            Some(raw) => Ok(Some(Versioned {
                value: decode(&raw)?,
                raw: Some(raw),
            })),
            None => Ok(None),
        }
    }

    /// The subscription started by `user_id` with `key`, if any.
    pub async fn by_start_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        self.store
            .get(START_KEYS, user_id, key)
            .await?
            .map(|b| String::from_utf8(b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// The subscription holding `user_id`'s seat, if any.
    pub async fn seat(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.store
            .get(SEATS, user_id, ROW)
            .await?
            .map(|b| String::from_utf8(b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    pub async fn entitlement(&self, user_id: &str) -> Result<Versioned<Entitlement>, StoreError> {
        match self.store.get(ENTITLEMENTS, user_id, ROW).await? {
            Some(raw) => Ok(Versioned {
                value: decode(&raw)?,
                raw: Some(raw),
            }),
            None => Ok(Versioned {
                value: Entitlement::free(),
                raw: None,
            }),
        }
    }

    /// Ids of sagas that have not ended.
    pub async fn open_sagas(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let rows = self
                .store
                .scan(OPEN_SAGAS, OPEN_PARTITION, after.clone(), 500)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            let full = rows.len() == 500;
            out.extend(rows.into_iter().map(|r| r.key));
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Creates a subscription, claiming its start key, in one commit with
    /// its first event. `ConditionFailed` means the key was already used.
    pub async fn create(
        &self,
        rec: &SubscriptionRecord,
        events: Vec<OutboxEvent>,
    ) -> Result<Vec<u8>, StoreError> {
        let raw = encode(rec)?;
        let mut batch = WriteBatch::new();
        batch
            .insert_if_absent(
                START_KEYS,
                &rec.user_id,
                &rec.idempotency_key,
                rec.subscription_id.clone().into_bytes(),
            )
            .insert_if_absent(SUBSCRIPTIONS, &rec.subscription_id, ROW, raw.clone())
            .put(OPEN_SAGAS, OPEN_PARTITION, &rec.subscription_id, Vec::new());
        batch.events = events;
        self.store.commit(batch).await?;
        record_transition(rec);
        Ok(raw)
    }

    /// Replaces the subscription if it still holds `prev`, together with
    /// `extra` writes and `events`; drops it from the open index once its
    /// saga has ended. Returns the new bytes.
    pub async fn save(
        &self,
        prev: &[u8],
        rec: &SubscriptionRecord,
        mut extra: WriteBatch,
        events: Vec<OutboxEvent>,
    ) -> Result<Vec<u8>, StoreError> {
        let raw = encode(rec)?;
        let mut batch = WriteBatch::new();
        batch
            .expect(
                SUBSCRIPTIONS,
                &rec.subscription_id,
                ROW,
                Some(prev.to_vec()),
            )
            .put(SUBSCRIPTIONS, &rec.subscription_id, ROW, raw.clone());
        if rec.saga.is_finished() {
            batch.delete(OPEN_SAGAS, OPEN_PARTITION, &rec.subscription_id);
        }
        batch.writes.append(&mut extra.writes);
        batch.events = events;
        batch.events.append(&mut extra.events);
        self.store.commit(batch).await?;
        record_transition(rec);
        Ok(raw)
    }

    pub async fn ping(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}

/// The saga's name in `tally_saga_transitions` and `tally_saga_outcomes`.
pub const SAGA_METRIC_NAME: &str = "subscription";

/// Publishes a persisted step: the phase entered (its record name, a fixed
/// set) and, when it ended the saga, the outcome.
fn record_transition(rec: &SubscriptionRecord) {
    let phase = serde_json::to_value(&rec.saga.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let outcome = rec.saga.is_finished().then_some(phase.as_str());
    tally_chassis::metrics::record_saga_transition(SAGA_METRIC_NAME, &phase, outcome);
}

/// Writes that reserve `user_id`'s seat for `subscription_id` (fails the
/// batch if someone else holds it).
pub fn reserve_seat(batch: &mut WriteBatch, user_id: &str, subscription_id: &str) {
    batch.insert_if_absent(SEATS, user_id, ROW, subscription_id.as_bytes().to_vec());
}

/// Writes that free `user_id`'s seat if `subscription_id` still holds it.
pub fn release_seat(batch: &mut WriteBatch, user_id: &str, subscription_id: &str) {
    batch
        .expect(
            SEATS,
            user_id,
            ROW,
            Some(subscription_id.as_bytes().to_vec()),
        )
        .delete(SEATS, user_id, ROW);
}

/// Writes that set `user_id`'s entitlement, guarded by the version read.
pub fn set_entitlement(
    batch: &mut WriteBatch,
    user_id: &str,
    prev: &Versioned<Entitlement>,
    next: &Entitlement,
) -> Result<(), StoreError> {
    batch
        .expect(ENTITLEMENTS, user_id, ROW, prev.raw.clone())
        .put(ENTITLEMENTS, user_id, ROW, encode(next)?);
    Ok(())
}
