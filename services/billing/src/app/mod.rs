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
use crate::domain::ride_out::Policy;
use crate::domain::saga::{Notice, Saga, SagaError, SagaEvent, SubscriptionState};
use crate::events;
use crate::payment::PaymentGateway;
use crate::store::{Entitlement, Records, StepLog, SubscriptionRecord};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
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
    /// Attempts of one refund round (the sweep runs further rounds).
    pub payment_attempts: u32,
    /// First pause between refund attempts.
    pub retry_backoff: Duration,
    pub start_wait: Duration,
    pub crash_after: Option<String>,
    /// When a failed charge is parked, and when the saga gives up.
    pub ride_out: Policy,
    pub clock: Clock,
}

/// Wall-clock readings for park deadlines, which must survive a restart.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// Tokio's clock counted from a fixed origin: it follows paused time,
    /// for tests of the timing rules.
    #[cfg(test)]
    Tokio {
        origin: tokio::time::Instant,
        origin_ms: i64,
    },
}

impl Clock {
    /// Tokio's clock, starting at the system time now.
    #[cfg(test)]
    pub fn tokio() -> Self {
        Clock::Tokio {
            origin: tokio::time::Instant::now(),
            origin_ms: now_ms(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => now_ms(),
            #[cfg(test)]
            Clock::Tokio { origin, origin_ms } => {
                let elapsed = i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX);
                origin_ms.saturating_add(elapsed)
            }
        }
    }
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
        self.set.lock().remove(&self.id);
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

    #[cfg(test)]
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
#[cfg(test)]
pub fn payment_settled(saga: &Saga) -> bool {
    use crate::domain::saga::Payment;
    !matches!(
        saga.payment,
        Payment::Charged { .. } | Payment::Uncertain { .. }
    )
}

#[cfg(test)]
mod tests;
