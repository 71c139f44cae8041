//! The orchestrator over a scripted payment port and a real embedded store:
//! parked charges under paused time (one key, backoff, fast-fail floor,
//! deadline, cancel), uncertain charges that must be refunded.

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
    /// The error answered once the script is empty (none: success).
    charge_default: Mutex<Option<GatewayError>>,
    settle_default: Mutex<Option<GatewayError>>,
    charge_calls: Mutex<Vec<String>>,
    charge_times: Mutex<Vec<tokio::time::Instant>>,
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
        self.charge_calls.lock().push(key.to_string());
        self.charge_times.lock().push(tokio::time::Instant::now());
        let default = self.charge_default.lock().clone();
        self.charges
            .lock()
            .pop_front()
            .unwrap_or_else(|| match default {
                Some(e) => Err(e),
                None => Ok(charge("ch_ok", paypb::ChargeStatus::Succeeded)),
            })
    }

    async fn settle(
        &self,
        refund_key: &str,
        _charge_key: &str,
    ) -> Result<paypb::Charge, GatewayError> {
        self.settle_calls.lock().push(refund_key.to_string());
        let default = self.settle_default.lock().clone();
        self.settles
            .lock()
            .pop_front()
            .unwrap_or_else(|| match default {
                Some(e) => Err(e),
                None => Ok(charge("ch_ok", paypb::ChargeStatus::Refunded)),
            })
    }
}

type Setup = (
    tempfile::TempDir,
    Orchestrator,
    Arc<Scripted>,
    Arc<dyn Store>,
);

async fn setup(script: Scripted) -> Setup {
    setup_with(script, Duration::from_secs(30), Policy::default()).await
}

async fn setup_with(script: Scripted, start_wait: Duration, ride_out: Policy) -> Setup {
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
            ride_out,
            clock: Clock::tokio(),
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
        *payment.charge_calls.lock(),
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

fn down() -> GatewayError {
    GatewayError::unavailable("Unavailable: down")
}

fn breaker_open() -> GatewayError {
    GatewayError::Unavailable {
        message: "Unavailable: circuit open (tally-proxy-error: breaker-open)".into(),
        fast_fail: true,
        pushback: None,
    }
}

async fn record(orch: &Orchestrator, id: &str) -> SubscriptionRecord {
    orch.records()
        .subscription(id)
        .await
        .expect("get")
        .expect("exists")
        .value
}

/// Waits (in paused time) until the saga has nothing left to run.
async fn until_finished(orch: &Orchestrator, id: &str) -> SubscriptionRecord {
    loop {
        let rec = record(orch, id).await;
        if rec.saga.is_finished() && !orch.running.lock().contains(id) {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_charge_failing_transiently_is_parked_and_the_subscription_stays_pending() {
    let script = Scripted::default();
    for _ in 0..5 {
        script.charges.lock().push_back(Err(down()));
    }
    let (_d, orch, payment, _s) = setup_with(script, Duration::ZERO, Policy::default()).await;
    let t0 = tokio::time::Instant::now();
    let rec = orch.start("u1", PlanId::Pro, "k").await.expect("start");
    assert_eq!(rec.saga.state(), SubscriptionState::Pending);
    let id = rec.subscription_id;
    // After the first failures it is parked, still pending, nothing undone.
    while payment.charge_calls.lock().len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let parked = record(&orch, &id).await;
    assert_eq!(parked.saga.state(), SubscriptionState::Pending);
    assert_eq!(
        orch.records().seat("u1").await.expect("seat"),
        Some(id.clone())
    );
    let rec = until_finished(&orch, &id).await;
    assert_eq!(rec.saga.state(), SubscriptionState::Active, "{rec:#?}");
    assert_eq!(rec.saga.parked, None);
    let calls = payment.charge_calls.lock().clone();
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|k| *k == charge_key(&id)), "one key");
    assert!(
        payment.settle_calls.lock().is_empty(),
        "nothing compensated"
    );
    // Five pauses of 100..=200, 200..=400, ... ms: at least 3.1 s in all.
    assert!(
        t0.elapsed() >= Duration::from_millis(3_100),
        "{:?}",
        t0.elapsed()
    );
    let charge_steps: Vec<_> = rec
        .steps
        .iter()
        .filter(|s| s.name == "charge_payment")
        .collect();
    assert_eq!(charge_steps.len(), 1, "one log entry: {:#?}", rec.steps);
    assert_eq!(charge_steps[0].status, "done");
}

#[tokio::test(start_paused = true)]
async fn after_a_mesh_fast_fail_the_next_try_waits_out_the_breaker() {
    let script = Scripted::default();
    for _ in 0..3 {
        script.charges.lock().push_back(Err(breaker_open()));
    }
    let (_d, orch, payment, _s) = setup_with(script, Duration::ZERO, Policy::default()).await;
    let id = orch
        .start("u1", PlanId::Pro, "k")
        .await
        .expect("start")
        .subscription_id;
    let rec = until_finished(&orch, &id).await;
    assert_eq!(rec.saga.state(), SubscriptionState::Active);
    let times = payment.charge_times.lock().clone();
    assert_eq!(times.len(), 4);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= crate::domain::ride_out::DEFAULT_FAST_FAIL_BACKOFF,
            "a try {gap:?} after a breaker-open"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn compensation_starts_only_at_the_step_deadline() {
    let script = Scripted::default();
    *script.charge_default.lock() = Some(down());
    let policy = Policy {
        step_deadline: Duration::from_secs(120),
        ..Policy::default()
    };
    let (_d, orch, payment, _s) = setup_with(script, Duration::ZERO, policy).await;
    let t0 = tokio::time::Instant::now();
    let id = orch
        .start("u1", PlanId::Pro, "k")
        .await
        .expect("start")
        .subscription_id;
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        record(&orch, &id).await.saga.state(),
        SubscriptionState::Pending,
        "still riding it out before the deadline"
    );
    let rec = until_finished(&orch, &id).await;
    let took = t0.elapsed();
    assert_eq!(rec.saga.state(), SubscriptionState::Failed);
    assert!(took >= Duration::from_secs(120), "{took:?}");
    assert!(took < Duration::from_secs(125), "{took:?}");
    let reason = rec.saga.failure_reason.clone().unwrap_or_default();
    assert!(reason.contains("step deadline of 120 s"), "{reason}");
    // Every try was refused unprocessed: one best-effort void, seat released.
    assert_eq!(payment.settle_calls.lock().len(), 1);
    assert_eq!(orch.records().seat("u1").await.expect("seat"), None);
    assert!(payment.charge_calls.lock().len() > 10);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_charge_must_be_refunded_before_the_saga_fails() {
    let script = Scripted::default();
    script
        .charges
        .lock()
        .push_back(Err(GatewayError::TimedOut("DeadlineExceeded: slow".into())));
    *script.charge_default.lock() = Some(down());
    *script.settle_default.lock() = Some(down());
    let policy = Policy {
        step_deadline: Duration::from_secs(10),
        ..Policy::default()
    };
    let (_d, orch, payment, _s) = setup_with(script, Duration::ZERO, policy).await;
    let id = orch
        .start("u1", PlanId::Pro, "k")
        .await
        .expect("start")
        .subscription_id;
    // Wait for the driver to give up on the refund round.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !orch.running.lock().contains(&id) && !payment.settle_calls.lock().is_empty() {
            break;
        }
    }
    let rec = record(&orch, &id).await;
    assert_eq!(rec.saga.phase, crate::domain::saga::Phase::Refunding);
    assert_eq!(
        orch.records().open_sagas().await.expect("open"),
        std::slice::from_ref(&id)
    );
    // The provider is back: the next sweep settles it and the saga ends.
    *payment.settle_default.lock() = None;
    orch.drive(&id).await.expect("drive");
    let rec = record(&orch, &id).await;
    assert_eq!(rec.saga.state(), SubscriptionState::Failed);
    assert!(payment_settled(&rec.saga));
    assert!(orch.records().open_sagas().await.expect("open").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cancel_ends_a_parked_charge_at_its_next_try() {
    let script = Scripted::default();
    *script.charge_default.lock() = Some(down());
    let (_d, orch, _payment, _s) = setup_with(script, Duration::ZERO, Policy::default()).await;
    let id = orch
        .start("u1", PlanId::Pro, "k")
        .await
        .expect("start")
        .subscription_id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    orch.cancel("u1", &id).await.expect("cancel");
    let t0 = tokio::time::Instant::now();
    let rec = until_finished(&orch, &id).await;
    assert_eq!(rec.saga.state(), SubscriptionState::Cancelled);
    assert!(
        t0.elapsed() <= crate::domain::ride_out::DEFAULT_MAX_BACKOFF + Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_rejected_charge_declines_without_retrying() {
    let script = Scripted::default();
    script.charges.lock().push_back(Err(GatewayError::Rejected(
        "InvalidArgument: bad currency".into(),
    )));
    let (_d, orch, payment, _s) = setup(script).await;
    let rec = orch.start("u1", PlanId::Pro, "k").await.expect("start");
    assert_eq!(rec.saga.state(), SubscriptionState::Failed);
    assert_eq!(payment.charge_calls.lock().len(), 1);
}

#[tokio::test]
async fn same_key_returns_the_same_subscription() {
    let (_d, orch, payment, _s) = setup(Scripted::default()).await;
    let a = orch.start("u1", PlanId::Team, "k").await.expect("a");
    let b = orch.start("u1", PlanId::Team, "k").await.expect("b");
    assert_eq!(a.subscription_id, b.subscription_id);
    assert_eq!(payment.charge_calls.lock().len(), 1);
    assert!(matches!(
        orch.start("u1", PlanId::Pro, "k").await,
        Err(BillingError::Precondition(_))
    ));
    assert!(matches!(
        orch.start("u1", PlanId::Pro, "").await,
        Err(BillingError::Invalid(_))
    ));
}
