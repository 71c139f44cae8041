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

use crate::domain::plans::{CURRENCY, PlanId};
use crate::domain::saga::{
    Command, Notice, Payment, Saga, SagaError, SagaEvent, Step, SubscriptionState,
};
use crate::events;
use crate::payment::PaymentGateway;
use crate::records::{self, Entitlement, Records, StepLog, SubscriptionRecord};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_api::payment::v1 as paypb;
use tally_chassis::storage::{StoreError, WriteBatch};
use tonic::{Code, Status};

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

/// Orchestrator failures, mapped to gRPC codes at the edge.
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

impl From<BillingError> for Status {
    fn from(e: BillingError) -> Self {
        let msg = e.to_string();
        match e {
            BillingError::Store(s) => s.into(),
            BillingError::NotFound(_) => Status::not_found(msg),
            BillingError::Invalid(_) => Status::invalid_argument(msg),
            BillingError::Precondition(_) => Status::failed_precondition(msg),
            BillingError::Saga(SagaError::Busy) => Status::unavailable(msg),
            BillingError::Saga(_) => Status::failed_precondition(msg),
            BillingError::Later { .. } => Status::unavailable(msg),
        }
    }
}

/// Orchestrator tunables (from `[saga]` and `crash_after`).
#[derive(Debug, Clone)]
pub struct Tuning {
    pub payment_attempts: u32,
    pub retry_backoff: Duration,
    pub start_wait: Duration,
    pub crash_after: Option<String>,
}

/// The result of running one command.
struct Outcome {
    event: SagaEvent,
    /// Local effects to commit with the outcome.
    writes: WriteBatch,
    status: &'static str,
    detail: String,
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
        if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
            return Err(BillingError::Invalid(
                "idempotency_key must be 1..=200 printable characters".into(),
            ));
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
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs the saga in the background (no-op if it is already running).
    pub fn spawn_drive(&self, id: &str) {
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = this.drive(&id).await {
                tracing::warn!(subscription_id = %id, error = %e, "saga paused; will resume");
            }
        });
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

    /// Runs the saga from its recorded phase until it ends or a step must
    /// wait. Only one driver runs per saga in this process.
    pub async fn drive(&self, id: &str) -> Result<(), BillingError> {
        if !lock(&self.running).insert(id.to_string()) {
            return Ok(());
        }
        let _guard = RunningGuard {
            set: self.running.clone(),
            id: id.to_string(),
        };
        loop {
            let current = self
                .records
                .subscription(id)
                .await?
                .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
            let Some(command) = current.value.saga.next_command() else {
                return Ok(());
            };
            let Some(prev) = current.raw else {
                return Err(BillingError::NotFound(id.to_string()));
            };
            let step = command.step();

            // 1. Intent, before anything runs.
            let mut rec = current.value;
            record_intent(&mut rec, step);
            let intent_raw = match self
                .records
                .save(&prev, &rec, WriteBatch::new(), vec![])
                .await
            {
                Ok(raw) => raw,
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            self.crash_point(&format!("{}:intent", step.name()));

            // 2. The step itself.
            let outcome = self.execute(&rec, &command).await?;
            if matches!(step, Step::ChargePayment | Step::RefundPayment) {
                self.crash_point(&format!("{}:called", step.name()));
            }

            // 3. Outcome, new state, local effects and events together.
            let transition = rec.saga.apply(outcome.event)?;
            let mut events_out = Vec::new();
            let mut writes = outcome.writes;
            for notice in &transition.notices {
                if let Notice::PlanLimitsGranted { plan } = notice {
                    self.grant_writes(&mut writes, &rec, *plan).await?;
                } else if let Some(payload) =
                    events::subscription_payload(&rec.subscription_id, &rec.user_id, notice)
                {
                    rec.event_seq += 1;
                    events_out.push(events::envelope(
                        &rec.subscription_id,
                        rec.event_seq,
                        payload,
                    ));
                }
            }
            rec.saga = transition.saga;
            record_outcome(&mut rec, step, outcome.status, &outcome.detail);
            match self
                .records
                .save(&intent_raw, &rec, writes, events_out)
                .await
            {
                Ok(_) => {}
                // Someone changed the saga (a cancel) or a guarded row moved:
                // read again and repeat the step; every step is idempotent.
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            tracing::info!(subscription_id = %id, step = step.name(), status = outcome.status, phase = ?rec.saga.phase, "saga step");
            self.crash_point(step.name());
        }
    }

    /// Writes and the event that set `plan`'s limits for the record's user.
    async fn grant_writes(
        &self,
        writes: &mut WriteBatch,
        rec: &SubscriptionRecord,
        plan: PlanId,
    ) -> Result<(), BillingError> {
        let prev = self.records.entitlement(&rec.user_id).await?;
        let next = Entitlement {
            plan,
            max_open_polls: plan.plan().max_open_polls,
            subscription_id: if plan == PlanId::Free {
                String::new()
            } else {
                rec.subscription_id.clone()
            },
            event_seq: prev.value.event_seq + 1,
        };
        records::set_entitlement(writes, &rec.user_id, &prev, &next)?;
        writes.emit(events::envelope(
            &rec.user_id,
            next.event_seq,
            events::limits(&rec.user_id, plan),
        ));
        Ok(())
    }

    async fn execute(
        &self,
        rec: &SubscriptionRecord,
        command: &Command,
    ) -> Result<Outcome, BillingError> {
        let id = rec.subscription_id.as_str();
        let done = |event, writes, detail: String| Outcome {
            event,
            writes,
            status: "done",
            detail,
        };
        match command {
            Command::ReserveSeat => {
                let mut writes = WriteBatch::new();
                match self.records.seat(&rec.user_id).await? {
                    None => {
                        records::reserve_seat(&mut writes, &rec.user_id, id);
                        Ok(done(SagaEvent::SeatReserved, writes, String::new()))
                    }
                    Some(holder) if holder == id => {
                        Ok(done(SagaEvent::SeatReserved, writes, String::new()))
                    }
                    Some(holder) => {
                        let reason = format!(
                            "the user already holds subscription {holder}; cancel it first"
                        );
                        Ok(Outcome {
                            event: SagaEvent::SeatUnavailable {
                                reason: reason.clone(),
                            },
                            writes,
                            status: "failed",
                            detail: reason,
                        })
                    }
                }
            }
            Command::ChargePayment { amount_cents } => self.charge(rec, *amount_cents).await,
            Command::ActivateSubscription => Ok(done(
                SagaEvent::SubscriptionActivated,
                WriteBatch::new(),
                String::new(),
            )),
            Command::GrantLimits { plan } => Ok(done(
                SagaEvent::LimitsGranted,
                WriteBatch::new(),
                format!("max_open_polls = {}", plan.plan().max_open_polls),
            )),
            Command::RefundPayment { best_effort } => self.refund(rec, *best_effort).await,
            Command::ReleaseSeat => {
                let mut writes = WriteBatch::new();
                if self.records.seat(&rec.user_id).await?.as_deref() == Some(id) {
                    records::release_seat(&mut writes, &rec.user_id, id);
                }
                Ok(done(SagaEvent::SeatReleased, writes, String::new()))
            }
            Command::MarkFailed => Ok(done(
                SagaEvent::MarkedFailed,
                WriteBatch::new(),
                rec.saga.failure_reason.clone().unwrap_or_default(),
            )),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.min(10);
        let ms = (self.tuning.retry_backoff.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms.min(5_000))
    }

    async fn charge(
        &self,
        rec: &SubscriptionRecord,
        amount_cents: u64,
    ) -> Result<Outcome, BillingError> {
        let key = charge_key(&rec.subscription_id);
        let mut processed_possibly = false;
        let mut last = String::new();
        for attempt in 0..self.tuning.payment_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            match self
                .payment
                .charge(&key, &rec.user_id, amount_cents, CURRENCY)
                .await
            {
                Ok(charge) => return Ok(charge_outcome(charge)),
                Err(status) => {
                    last = format!("{:?}: {}", status.code(), status.message());
                    tracing::warn!(subscription_id = %rec.subscription_id, attempt, error = %last, "charge attempt failed");
                    match status.code() {
                        Code::Unavailable => {}
                        Code::DeadlineExceeded
                        | Code::Unknown
                        | Code::Internal
                        | Code::Cancelled
                        | Code::Aborted
                        | Code::ResourceExhausted => processed_possibly = true,
                        _ => {
                            // The provider refused the request itself: nothing was charged.
                            return Ok(Outcome {
                                event: SagaEvent::PaymentDeclined {
                                    charge_id: String::new(),
                                    reason: format!("rejected by the provider: {last}"),
                                },
                                writes: WriteBatch::new(),
                                status: "failed",
                                detail: last,
                            });
                        }
                    }
                }
            }
        }
        let detail = format!(
            "{} attempts failed; last: {last}",
            self.tuning.payment_attempts
        );
        Ok(Outcome {
            event: SagaEvent::PaymentUnavailable {
                reason: detail.clone(),
                processed_possibly,
            },
            writes: WriteBatch::new(),
            status: "failed",
            detail,
        })
    }

    async fn refund(
        &self,
        rec: &SubscriptionRecord,
        best_effort: bool,
    ) -> Result<Outcome, BillingError> {
        let id = &rec.subscription_id;
        let attempts = if best_effort {
            1
        } else {
            self.tuning.payment_attempts
        };
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            match self.payment.settle(&refund_key(id), &charge_key(id)).await {
                Ok(charge) => {
                    let status = paypb::ChargeStatus::try_from(charge.status)
                        .unwrap_or(paypb::ChargeStatus::Unspecified);
                    return Ok(Outcome {
                        event: SagaEvent::PaymentRefunded {
                            charge_id: charge.charge_id.clone(),
                        },
                        writes: WriteBatch::new(),
                        status: "done",
                        detail: format!("charge {} is {}", charge.charge_id, status.as_str_name()),
                    });
                }
                Err(status) => {
                    last = format!("{:?}: {}", status.code(), status.message());
                    tracing::warn!(subscription_id = %id, attempt, error = %last, "refund attempt failed");
                }
            }
        }
        if best_effort {
            return Ok(Outcome {
                event: SagaEvent::RefundSkipped,
                writes: WriteBatch::new(),
                status: "skipped",
                detail: format!("nothing was charged; void not confirmed ({last})"),
            });
        }
        Err(BillingError::Later {
            step: Step::RefundPayment.name(),
            reason: last,
        })
    }

    /// Cancels `id` for `user_id`: an active subscription ends now (seat
    /// released, limits back to free); a pending one compensates.
    pub async fn cancel(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<SubscriptionRecord, BillingError> {
        for _ in 0..16 {
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
                records::release_seat(&mut writes, user_id, id);
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
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BillingError::Saga(SagaError::Busy))
    }
}

fn charge_outcome(charge: paypb::Charge) -> Outcome {
    let status =
        paypb::ChargeStatus::try_from(charge.status).unwrap_or(paypb::ChargeStatus::Unspecified);
    match status {
        paypb::ChargeStatus::Succeeded => Outcome {
            detail: format!("charge {}", charge.charge_id),
            event: SagaEvent::PaymentCharged {
                charge_id: charge.charge_id,
            },
            writes: WriteBatch::new(),
            status: "done",
        },
        other => {
            let reason = if charge.decline_reason.is_empty() {
                format!("charge is {}", other.as_str_name())
            } else {
                charge.decline_reason.clone()
            };
            Outcome {
                detail: format!("charge {}: {reason}", charge.charge_id),
                event: SagaEvent::PaymentDeclined {
                    charge_id: charge.charge_id,
                    reason,
                },
                writes: WriteBatch::new(),
                status: "failed",
            }
        }
    }
}

/// Appends the step's intent, or marks a resumed intent as such.
fn record_intent(rec: &mut SubscriptionRecord, step: Step) {
    let at_ms = now_ms();
    if let Some(last) = rec.steps.last_mut()
        && last.name == step.name()
        && last.status == "started"
    {
        last.detail = "resumed".into();
        last.at_ms = at_ms;
        return;
    }
    rec.steps.push(StepLog {
        name: step.name().into(),
        status: "started".into(),
        detail: String::new(),
        at_ms,
    });
}

fn record_outcome(rec: &mut SubscriptionRecord, step: Step, status: &str, detail: &str) {
    let entry = StepLog {
        name: step.name().into(),
        status: status.into(),
        detail: detail.into(),
        at_ms: now_ms(),
    };
    match rec.steps.last_mut() {
        Some(last) if last.name == step.name() && last.status == "started" => *last = entry,
        _ => rec.steps.push(entry),
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
    use async_trait::async_trait;
    use std::collections::VecDeque;
    use tally_chassis::storage::Store;
    use tally_chassis::storage::embedded::EmbeddedStore;

    /// A payment port answering from a script; when the script runs out it
    /// answers like a healthy provider that remembers keys.
    #[derive(Default)]
    struct Scripted {
        charges: Mutex<VecDeque<Result<paypb::Charge, Status>>>,
        settles: Mutex<VecDeque<Result<paypb::Charge, Status>>>,
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
        ) -> Result<paypb::Charge, Status> {
            lock(&self.charge_calls).push(key.to_string());
            lock(&self.charges)
                .pop_front()
                .unwrap_or_else(|| Ok(charge("ch_ok", paypb::ChargeStatus::Succeeded)))
        }

        async fn settle(
            &self,
            refund_key: &str,
            _charge_key: &str,
        ) -> Result<paypb::Charge, Status> {
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
            lock(&script.charges).push_back(Err(Status::unavailable("down")));
        }
        lock(&script.settles).push_back(Err(Status::unavailable("down")));
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
        lock(&script.charges).push_back(Err(Status::deadline_exceeded("slow")));
        lock(&script.charges).push_back(Err(Status::unavailable("down")));
        lock(&script.charges).push_back(Err(Status::unavailable("down")));
        for _ in 0..3 {
            lock(&script.settles).push_back(Err(Status::unavailable("down")));
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
