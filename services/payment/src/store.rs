//! Payment's store adapter: the charge ledger over the storage port: charges, the idempotency keys
//! that point at them, and a per-customer index.
//!
//! Every write that creates a charge or settles a refund claims its key with
//! insert-if-absent in the same batch as the change, so two racing retries
//! can never both take money: the loser reads the winner's result.

use crate::domain::{self, ChargeIntent, ChargeRecord, PaymentError, RefundEffect};
use std::sync::Arc;
use tally_chassis::storage::{Store, StoreError, WriteBatch, decode, encode};

const CHARGES: &str = "charges";
const CHARGE_KEYS: &str = "charge_keys";
const REFUND_KEYS: &str = "refund_keys";
const CUSTOMER_CHARGES: &str = "customer_charges";
const ROW: &str = "_";

/// Attempts at an optimistic write before giving up (only contention retries).
const CAS_ATTEMPTS: usize = 8;

/// Ledger failures; the gRPC edge maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Rule(#[from] PaymentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("charge {0} not found")]
    NotFound(String),
    #[error("too much contention on {0}; retry")]
    Contention(String),
}

/// Charges and refunds in the service's own store.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn Store>,
}

fn new_id() -> String {
    format!("ch_{}", uuid::Uuid::now_v7().simple())
}

impl Ledger {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn load(&self, charge_id: &str) -> Result<Option<(ChargeRecord, Vec<u8>)>, LedgerError> {
        match self.store.get(CHARGES, charge_id, ROW).await? {
            Some(raw) => Ok(Some((decode(&raw)?, raw))),
            None => Ok(None),
        }
    }

    /// A charge by id.
    pub async fn get(&self, charge_id: &str) -> Result<ChargeRecord, LedgerError> {
        self.load(charge_id)
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| LedgerError::NotFound(charge_id.to_string()))
    }

    /// The charge made with `key`, if any.
    pub async fn by_key(&self, key: &str) -> Result<Option<ChargeRecord>, LedgerError> {
        let Some(id) = self.store.get(CHARGE_KEYS, key, ROW).await? else {
            return Ok(None);
        };
        let id = String::from_utf8(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(self.get(&id).await?))
    }

    /// Stores the charge settled by `settle` unless `intent`'s key already
    /// has one; returns the stored charge either way.
    pub async fn charge(
        &self,
        intent: &ChargeIntent,
        settle: impl Fn(String) -> ChargeRecord,
    ) -> Result<ChargeRecord, LedgerError> {
        if let Some(existing) = self.by_key(&intent.idempotency_key).await? {
            return self.same_request(intent, existing);
        }
        let record = settle(new_id());
        let mut batch = WriteBatch::new();
        batch
            .insert_if_absent(
                CHARGE_KEYS,
                &intent.idempotency_key,
                ROW,
                record.charge_id.clone().into_bytes(),
            )
            .put(CHARGES, &record.charge_id, ROW, encode(&record)?)
            .put(
                CUSTOMER_CHARGES,
                &record.customer_id,
                &record.charge_id,
                Vec::new(),
            );
        match self.store.commit(batch).await {
            Ok(()) => Ok(record),
            Err(StoreError::ConditionFailed { .. }) => {
                // A concurrent retry won the key: its result is the result.
                let existing = self
                    .by_key(&intent.idempotency_key)
                    .await?
                    .ok_or_else(|| LedgerError::Contention(intent.idempotency_key.clone()))?;
                self.same_request(intent, existing)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn same_request(
        &self,
        intent: &ChargeIntent,
        existing: ChargeRecord,
    ) -> Result<ChargeRecord, LedgerError> {
        if intent.matches(&existing) {
            Ok(existing)
        } else {
            Err(PaymentError::KeyReused(intent.idempotency_key.clone()).into())
        }
    }

    /// Refunds charge `charge_id` once per `refund_key`.
    pub async fn refund_by_id(
        &self,
        charge_id: &str,
        refund_key: &str,
    ) -> Result<ChargeRecord, LedgerError> {
        self.refund(charge_id, refund_key, false).await
    }

    async fn refund(
        &self,
        charge_id: &str,
        refund_key: &str,
        lenient: bool,
    ) -> Result<ChargeRecord, LedgerError> {
        for _ in 0..CAS_ATTEMPTS {
            if let Some(done) = self.store.get(REFUND_KEYS, refund_key, ROW).await? {
                if done != charge_id.as_bytes() {
                    return Err(PaymentError::KeyReused(refund_key.to_string()).into());
                }
                return self.get(charge_id).await;
            }
            let (record, raw) = self
                .load(charge_id)
                .await?
                .ok_or_else(|| LedgerError::NotFound(charge_id.to_string()))?;
            let mut batch = WriteBatch::new();
            batch.insert_if_absent(REFUND_KEYS, refund_key, ROW, charge_id.as_bytes().to_vec());
            let result = match domain::refund(&record, refund_key, lenient)? {
                RefundEffect::Refund(next) => {
                    batch.expect(CHARGES, charge_id, ROW, Some(raw)).put(
                        CHARGES,
                        charge_id,
                        ROW,
                        encode(&next)?,
                    );
                    next
                }
                RefundEffect::Unchanged => record,
            };
            match self.store.commit(batch).await {
                Ok(()) => return Ok(result),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::Contention(charge_id.to_string()))
    }

    /// Refunds the charge made with `charge_key`, or voids the key when no
    /// charge was made, so a later charge with it takes no money.
    pub async fn settle_by_charge_key(
        &self,
        charge_key: &str,
        refund_key: &str,
        now_ms: i64,
    ) -> Result<ChargeRecord, LedgerError> {
        for _ in 0..CAS_ATTEMPTS {
            if let Some(existing) = self.by_key(charge_key).await? {
                return self.refund(&existing.charge_id, refund_key, true).await;
            }
            let record = domain::voided(new_id(), charge_key, refund_key, now_ms);
            let mut batch = WriteBatch::new();
            batch
                .insert_if_absent(
                    CHARGE_KEYS,
                    charge_key,
                    ROW,
                    record.charge_id.clone().into_bytes(),
                )
                .insert_if_absent(
                    REFUND_KEYS,
                    refund_key,
                    ROW,
                    record.charge_id.clone().into_bytes(),
                )
                .put(CHARGES, &record.charge_id, ROW, encode(&record)?);
            match self.store.commit(batch).await {
                Ok(()) => return Ok(record),
                Err(StoreError::ConditionFailed { index: 0, .. }) => continue,
                Err(StoreError::ConditionFailed { .. }) => {
                    return Err(PaymentError::KeyReused(refund_key.to_string()).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::Contention(charge_key.to_string()))
    }

    /// A customer's charges, oldest first.
    pub async fn list(&self, customer_id: &str) -> Result<Vec<ChargeRecord>, LedgerError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let rows = self
                .store
                .scan(CUSTOMER_CHARGES, customer_id, after.clone(), 500)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            for row in &rows {
                out.push(self.get(&row.key).await?);
            }
            if rows.len() < 500 {
                break;
            }
        }
        Ok(out)
    }

    /// Checks the store is usable, for health.
    pub async fn ping(&self) -> bool {
        self.store.ping().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChargeStatus;
    use tally_chassis::storage::embedded::EmbeddedStore;

    async fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("p.redb"))
            .await
            .expect("open");
        (dir, Ledger::new(Arc::new(store)))
    }

    fn settle(intent: &ChargeIntent) -> impl Fn(String) -> ChargeRecord + '_ {
        move |id| intent.settle(id, 0.0, 0.5, false, 1)
    }

    #[tokio::test]
    async fn same_key_charges_once() {
        let (_d, l) = ledger().await;
        let intent = ChargeIntent::new("k", "alice", 900, "usd").expect("valid");
        let a = l.charge(&intent, settle(&intent)).await.expect("first");
        let b = l.charge(&intent, settle(&intent)).await.expect("retry");
        assert_eq!(a, b);
        assert_eq!(l.list("alice").await.expect("list").len(), 1);
        let other = ChargeIntent::new("k", "alice", 100, "usd").expect("valid");
        assert!(matches!(
            l.charge(&other, settle(&other)).await,
            Err(LedgerError::Rule(PaymentError::KeyReused(_)))
        ));
    }

    #[tokio::test]
    async fn concurrent_retries_charge_once() {
        let (_d, l) = ledger().await;
        let intent = ChargeIntent::new("race", "bob", 500, "usd").expect("valid");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (l, intent) = (l.clone(), intent.clone());
            tasks.push(tokio::spawn(async move {
                l.charge(&intent, |id| intent.settle(id, 0.0, 0.5, false, 1))
                    .await
                    .expect("charge")
                    .charge_id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("join"));
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "every retry must see the same charge");
        assert_eq!(l.list("bob").await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn refund_is_idempotent_and_void_blocks_late_charge() {
        let (_d, l) = ledger().await;
        let intent = ChargeIntent::new("k", "alice", 900, "usd").expect("valid");
        let c = l.charge(&intent, settle(&intent)).await.expect("charge");
        let r1 = l.refund_by_id(&c.charge_id, "r").await.expect("refund");
        let r2 = l.refund_by_id(&c.charge_id, "r").await.expect("again");
        assert_eq!(r1.status, ChargeStatus::Refunded);
        assert_eq!(r1, r2);
        let by_key = l
            .settle_by_charge_key("k", "r-other", 2)
            .await
            .expect("by key");
        assert_eq!(by_key.status, ChargeStatus::Refunded);

        let v = l
            .settle_by_charge_key("never", "rv", 2)
            .await
            .expect("void");
        assert_eq!(v.status, ChargeStatus::Voided);
        let late = ChargeIntent::new("never", "alice", 900, "usd").expect("valid");
        let got = l.charge(&late, settle(&late)).await.expect("late charge");
        assert_eq!(got.status, ChargeStatus::Voided);
        assert_eq!(l.list("alice").await.expect("list").len(), 1);
        assert!(matches!(
            l.refund_by_id("missing", "x").await,
            Err(LedgerError::NotFound(_))
        ));
    }
}
