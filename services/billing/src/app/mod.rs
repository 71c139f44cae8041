//! Runs subscription sagas and persists them step by step.
//!
//! For every step the intent is written first (`started`), then the step
//! runs, then its outcome is written together with the new saga state, the
//! step's local effects (seat, entitlement) and its events, in one batch.
//! Calls to payment use keys derived from the subscription id and the step
//! (`billing-<id>-charge`, `billing-<id>-refund`), so re-running a step after
//! a crash repeats the same request and the provider answers it once.
//! On start-up, and periodically, every unfinished saga is driven again
//! from its recorded phase: forward when it can, else through compensations.
//!
//! Crash points (testing only): `crash_after = <point>` aborts the process
//! right after `<point>` is persisted. Points are `started` (subscription
//! created), `<step>:intent` (intent written), `<step>` (outcome written),
//! and `charge_payment:called` / `refund_payment:called` (the provider has
//! answered, the outcome is not yet written).
//!
//! [`drive`] runs a saga step by step; [`steps`] carries out one step
//! (the local effects and the payment calls).

mod drive;
mod steps;

use crate::domain::plans::PlanId;
use crate::domain::saga::{Notice, Payment, Saga, SagaError, SagaEvent, SubscriptionState};
use crate::events;
use crate::payment::PaymentGateway;
use crate::store::{Entitlement, Records, StepLog, SubscriptionRecord};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_chassis::storage::{StoreError, WriteBatch};

/// Every crash point `crash_after` accepts.
pub const CRASH_POINTS: &[&str] = &[
    "started",
    "reserve_seat:intent",
    "reserve_seat",
    "charge_payment:intent",
    "charge_payment:called",
    "charge_payment",
    "activate_subscription:intent",
    "activate_subscription",
    "grant_limits:intent",
    "grant_limits",
    "refund_payment:intent",
    "refund_payment:called",
    "refund_payment",
    "release_seat:intent",
    "release_seat",
    "mark_failed:intent",
    "mark_failed",
];

/// Longest idempotency key a caller may send.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// How often `start` re-reads a running saga while it waits for the end.
const WAIT_POLL: Duration = Duration::from_millis(25);
/// Attempts of a cancel that loses races with the saga driver.
const CANCEL_ATTEMPTS: usize = 16;
/// Pause between cancel attempts.
const CANCEL_RETRY: Duration = Duration::from_millis(20);

/// Billing's use-case failures; the gRPC edge (`crate::grpc`) maps them to
/// status codes.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("subscription {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Saga(#[from] SagaError),
    #[error("step {step} cannot finish yet: {reason}; it will be retried")]
    Later { step: &'static str, reason: String },
}

#[derive(Debug, Clone)]
pub struct Tuning {
    pub payment_attempts: u32,
    pub retry_backoff: Duration,
    pub start_wait: Duration,
    pub crash_after: Option<String>,
}

/// Drives sagas; cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    records: Records,
    payment: Arc<dyn PaymentGateway>,
    tuning: Tuning,
    running: Arc<Mutex<HashSet<String>>>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Idempotency key of the saga's charge.
pub fn charge_key(subscription_id: &str) -> String {
    format!("billing-{subscription_id}-charge")
}

/// Idempotency key of the saga's refund (or void).
pub fn refund_key(subscription_id: &str) -> String {
    format!("billing-{subscription_id}-refund")
}

/// Removes a saga id from the running set when the driver ends, even on error.
struct RunningGuard {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Orchestrator {
    pub fn new(records: Records, payment: Arc<dyn PaymentGateway>, tuning: Tuning) -> Self {
        Self {
            records,
            payment,
            tuning,
            running: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    fn crash_point(&self, point: &str) {
        if self.tuning.crash_after.as_deref() == Some(point) {
            tracing::error!(point, "crash_after reached: aborting (testing only)");
            std::process::abort();
        }
    }

    /// Starts a subscription (or returns the one `key` already started),
    /// runs its saga, and waits up to the configured time for it to end.
    pub async fn start(
        &self,
        user_id: &str,
        plan: PlanId,
        key: &str,
    ) -> Result<SubscriptionRecord, BillingError> {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_LEN
            || key.chars().any(char::is_control)
        {
            return Err(BillingError::Invalid(format!(
                "idempotency_key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} printable characters"
            )));
        }
        let id = match self.records.by_start_key(user_id, key).await? {
            Some(existing) => self.existing_for_key(&existing, plan).await?,
            None => self.create(user_id, plan, key).await?,
        };
        self.spawn_drive(&id);
        self.wait_for(&id).await
    }

    async fn existing_for_key(&self, id: &str, plan: PlanId) -> Result<String, BillingError> {
        let rec = self
            .records
            .subscription(id)
            .await?
            .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
        if rec.value.plan != plan {
            return Err(BillingError::Precondition(format!(
                "idempotency key already started subscription {id} for plan {}",
                rec.value.plan.name()
            )));
        }
        Ok(id.to_string())
    }

    async fn create(&self, user_id: &str, plan: PlanId, key: &str) -> Result<String, BillingError> {
        let id = format!("sub_{}", uuid::Uuid::now_v7().simple());
        let (saga, _) = Saga::start(plan);
        let rec = SubscriptionRecord {
            subscription_id: id.clone(),
            user_id: user_id.to_string(),
            plan,
            idempotency_key: key.to_string(),
            created_at_ms: now_ms(),
            saga,
            steps: Vec::new(),
            event_seq: 1,
        };
        let event = events::envelope(&id, 1, events::started(&id, user_id, plan));
        match self.records.create(&rec, vec![event]).await {
            Ok(_) => {
                tracing::info!(subscription_id = %id, user_id, plan = plan.name(), "saga started");
                self.crash_point("started");
                Ok(id)
            }
            Err(StoreError::ConditionFailed { .. }) => {
                // A concurrent retry with the same key won.
                let existing = self
                    .records
                    .by_start_key(user_id, key)
                    .await?
                    .ok_or_else(|| BillingError::Precondition("idempotency key race".into()))?;
                self.existing_for_key(&existing, plan).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn wait_for(&self, id: &str) -> Result<SubscriptionRecord, BillingError> {
        let deadline = tokio::time::Instant::now() + self.tuning.start_wait;
        loop {
            let rec = self
                .records
                .subscription(id)
                .await?
                .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
            if rec.value.saga.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(rec.value);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Runs the saga in the background (no-op if it is already running).
    pub fn spawn_drive(&self, id: &str) {
        let this = self.clone();
        let id = id.to_string();
        let span = tally_chassis::trace::saga::run("subscription", &id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = this.drive(&id).await {
                    tracing::warn!(subscription_id = %id, error = %e, "saga paused; will resume");
                }
            },
            span,
        ));
    }

    /// Drives every unfinished saga; used at start-up and periodically.
    pub async fn resume_all(&self) -> Result<usize, BillingError> {
        let open = self.records.open_sagas().await?;
        let n = open.len();
        for id in open {
            self.spawn_drive(&id);
        }
        Ok(n)
    }

    /// The caller's subscription `id`.
    pub async fn subscription(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<SubscriptionRecord, BillingError> {
        self.records
            .subscription(id)
            .await?
            .filter(|r| r.value.user_id == user_id)
            .map(|r| r.value)
            .ok_or_else(|| BillingError::NotFound(id.to_string()))
    }

    /// The limits the caller's plan grants.
    pub async fn entitlement(&self, user_id: &str) -> Result<Entitlement, BillingError> {
        Ok(self.records.entitlement(user_id).await?.value)
    }

    /// Cancels `id` for `user_id`: an active subscription ends now (seat
    /// released, limits back to free); a pending one compensates.
    pub async fn cancel(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<SubscriptionRecord, BillingError> {
        for _ in 0..CANCEL_ATTEMPTS {
            let current = self
                .records
                .subscription(id)
                .await?
                .filter(|r| r.value.user_id == user_id)
                .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
            let Some(prev) = current.raw.clone() else {
                return Err(BillingError::NotFound(id.to_string()));
            };
            let mut rec = current.value;
            let was_active =
                rec.saga.state() == SubscriptionState::Active && rec.saga.is_finished();
            let transition = rec.saga.apply(SagaEvent::CancelRequested)?;
            let mut writes = WriteBatch::new();
            let mut out = Vec::new();
            for notice in &transition.notices {
                if let Notice::PlanLimitsGranted { plan } = notice {
                    self.grant_writes(&mut writes, &rec, *plan).await?;
                } else if let Some(payload) =
                    events::subscription_payload(&rec.subscription_id, &rec.user_id, notice)
                {
                    rec.event_seq += 1;
                    out.push(events::envelope(
                        &rec.subscription_id,
                        rec.event_seq,
                        payload,
                    ));
                }
            }
            if was_active && self.records.seat(user_id).await?.as_deref() == Some(id) {
                crate::store::release_seat(&mut writes, user_id, id);
            }
            rec.saga = transition.saga;
            rec.steps.push(StepLog {
                name: "cancel".into(),
                status: "done".into(),
                detail: String::new(),
                at_ms: now_ms(),
            });
            match self.records.save(&prev, &rec, writes, out).await {
                Ok(_) => {
                    if !rec.saga.is_finished() {
                        self.spawn_drive(id);
                    }
                    return Ok(rec);
                }
                Err(StoreError::ConditionFailed { .. }) => {
                    tokio::time::sleep(CANCEL_RETRY).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BillingError::Saga(SagaError::Busy))
    }
}

/// True when the saga's payment is fully settled (nothing taken, or refunded).
pub fn payment_settled(saga: &Saga) -> bool {
    !matches!(
        saga.payment,
        Payment::Charged { .. } | Payment::Uncertain { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::GatewayError;
    use async_trait::async_trait;
    use std::collections::VecDeque;
    use tally_api::payment::v1 as paypb;
    use tally_chassis::storage::Store;
    use tally_chassis::storage::embedded::EmbeddedStore;

    /// A payment port answering from a script; when the script runs out it
    /// answers like a healthy provider that remembers keys.
    #[derive(Default)]
    struct Scripted {
        charges: Mutex<VecDeque<Result<paypb::Charge, GatewayError>>>,
        settles: Mutex<VecDeque<Result<paypb::Charge, GatewayError>>>,
        charge_calls: Mutex<Vec<String>>,
        settle_calls: Mutex<Vec<String>>,
    }

    fn charge(id: &str, status: paypb::ChargeStatus) -> paypb::Charge {
        paypb::Charge {
            charge_id: id.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    #[async_trait]
    impl PaymentGateway for Scripted {
        async fn charge(
            &self,
            key: &str,
            _customer: &str,
            _amount: u64,
            _currency: &str,
        ) -> Result<paypb::Charge, GatewayError> {
            lock(&self.charge_calls).push(key.to_string());
            lock(&self.charges)
                .pop_front()
                .unwrap_or_else(|| Ok(charge("ch_ok", paypb::ChargeStatus::Succeeded)))
        }

        async fn settle(
            &self,
            refund_key: &str,
            _charge_key: &str,
        ) -> Result<paypb::Charge, GatewayError> {
            lock(&self.settle_calls).push(refund_key.to_string());
            lock(&self.settles)
                .pop_front()
                .unwrap_or_else(|| Ok(charge("ch_ok", paypb::ChargeStatus::Refunded)))
        }
    }

    type Setup = (
        tempfile::TempDir,
        Orchestrator,
        Arc<Scripted>,
        Arc<dyn Store>,
    );

    async fn setup(script: Scripted) -> Setup {
        setup_with_wait(script, Duration::from_secs(30)).await
    }

    async fn setup_with_wait(script: Scripted, start_wait: Duration) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.path().join("b.redb"))
                .await
                .expect("open"),
        );
        let payment = Arc::new(script);
        let orch = Orchestrator::new(
            Records::new(store.clone()),
            payment.clone(),
            Tuning {
                payment_attempts: 3,
                retry_backoff: Duration::from_millis(1),
                start_wait,
                crash_after: None,
            },
        );
        (dir, orch, payment, store)
    }

    #[tokio::test]
    async fn happy_saga_commits_events_with_each_step() {
        let (_d, orch, payment, store) = setup(Scripted::default()).await;
        let rec = orch.start("u1", PlanId::Pro, "k").await.expect("start");
        assert_eq!(rec.saga.phase, crate::domain::saga::Phase::Active);
        assert_eq!(
            *lock(&payment.charge_calls),
            [charge_key(&rec.subscription_id)]
        );
        let types: Vec<String> = store
            .read_outbox(0, 100)
            .await
            .expect("outbox")
            .into_iter()
            .map(|e| e.event.event_type)
            .collect();
        assert_eq!(
            types,
            [
                "tally.events.v1.SubscriptionStarted",
                "tally.events.v1.SubscriptionActivated",
                "tally.events.v1.PlanLimitsGranted"
            ]
        );
        assert!(orch.records().open_sagas().await.expect("open").is_empty());
        let ent = orch.records().entitlement("u1").await.expect("ent");
        assert_eq!(ent.value.max_open_polls, 50);
    }

    #[tokio::test]
    async fn unavailable_charge_retries_with_the_same_key_then_voids_best_effort() {
        let script = Scripted::default();
        for _ in 0..3 {
            lock(&script.charges)
                .push_back(Err(GatewayError::Unavailable("Unavailable: down".into())));
        }
        lock(&script.settles).push_back(Err(GatewayError::Unavailable("Unavailable: down".into())));
        let (_d, orch, payment, _s) = setup(script).await;
        let rec = orch.start("u1", PlanId::Pro, "k").await.expect("start");
        assert_eq!(rec.saga.state(), SubscriptionState::Failed);
        let calls = lock(&payment.charge_calls).clone();
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|k| *k == charge_key(&rec.subscription_id)));
        assert_eq!(lock(&payment.settle_calls).len(), 1, "one best-effort void");
        assert_eq!(orch.records().seat("u1").await.expect("seat"), None);
    }

    #[tokio::test]
    async fn uncertain_charge_waits_for_a_refund_before_failing() {
        let script = Scripted::default();
        lock(&script.charges).push_back(Err(GatewayError::Uncertain(
            "DeadlineExceeded: slow".into(),
        )));
        lock(&script.charges).push_back(Err(GatewayError::Unavailable("Unavailable: down".into())));
        lock(&script.charges).push_back(Err(GatewayError::Unavailable("Unavailable: down".into())));
        for _ in 0..3 {
            lock(&script.settles)
                .push_back(Err(GatewayError::Unavailable("Unavailable: down".into())));
        }
        let (_d, orch, payment, _s) = setup_with_wait(script, Duration::ZERO).await;
        let id = orch
            .start("u1", PlanId::Pro, "k")
            .await
            .expect("start")
            .subscription_id;
        // Wait for the background driver to give up on the refund.
        while lock(&orch.running).contains(&id) || lock(&payment.settle_calls).len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The refund could not be made: the saga stays open in refunding.
        let rec = orch
            .records()
            .subscription(&id)
            .await
            .expect("get")
            .expect("exists")
            .value;
        assert_eq!(rec.saga.phase, crate::domain::saga::Phase::Refunding);
        assert_eq!(
            orch.records().open_sagas().await.expect("open"),
            std::slice::from_ref(&id)
        );
        // The provider is back: the next sweep settles it and the saga ends.
        orch.drive(&id).await.expect("drive");
        let rec = orch
            .records()
            .subscription(&id)
            .await
            .expect("get")
            .expect("exists")
            .value;
        assert_eq!(rec.saga.state(), SubscriptionState::Failed);
        assert!(payment_settled(&rec.saga));
        assert_eq!(lock(&payment.settle_calls).len(), 4);
        assert!(orch.records().open_sagas().await.expect("open").is_empty());
    }

    #[tokio::test]
    async fn same_key_returns_the_same_subscription() {
        let (_d, orch, payment, _s) = setup(Scripted::default()).await;
        let a = orch.start("u1", PlanId::Team, "k").await.expect("a");
        let b = orch.start("u1", PlanId::Team, "k").await.expect("b");
        assert_eq!(a.subscription_id, b.subscription_id);
        assert_eq!(lock(&payment.charge_calls).len(), 1);
        assert!(matches!(
            orch.start("u1", PlanId::Pro, "k").await,
            Err(BillingError::Precondition(_))
        ));
        assert!(matches!(
            orch.start("u1", PlanId::Pro, "").await,
            Err(BillingError::Invalid(_))
        ));
    }
}
