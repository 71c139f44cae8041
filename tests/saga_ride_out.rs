//! A payment outage during sign-ups, through the mesh: `tally up` with real
//! services and sidecars; payment's inbound sidecar aborts half of its calls
//! with UNAVAILABLE (and delays 30 % by 200 ms) for [`OUTAGE`], set and
//! cleared through its admin API with the platform's admin token, while
//! [`USERS`] users start subscriptions. Billing's own sidecar opens its
//! breaker for payment again and again during that minute (open window 5 s),
//! so sagas meet both real aborts and breaker fast-fails. They must ride it
//! out: at least 95 % end ACTIVE once the outage is over, every saga ends,
//! and the ledger reconciles (one kept charge per ACTIVE subscription, none
//! for FAILED ones, never two charges for one subscription).

use futures::StreamExt;
use std::time::Duration;
use tally_api::billing::v1 as bpb;
use tally_api::billing::v1::billing_service_client::BillingServiceClient;
use tally_api::payment::v1 as ppb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tally_api::user::v1 as upb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::TallyUp;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Users starting a subscription during the outage.
const USERS: usize = 60;
/// How long payment's sidecar injects faults: the issue's minute, twelve
/// times the mesh breaker's open window.
const OUTAGE: Duration = Duration::from_secs(60);
/// Subscriptions start over the first part of the outage.
const START_SPREAD: Duration = Duration::from_secs(40);
/// After the outage, every saga must end within this (the longest pause of
/// a parked charge is 20 s).
const RECOVERY: Duration = Duration::from_secs(120);
/// Sign-ups made at once before the outage.
const SIGNUP_CONCURRENCY: usize = 4;
/// Share of subscriptions that must end ACTIVE.
const TARGET_ACTIVE: f64 = 0.95;
/// Deadline of each test call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn channel(uri: &str) -> Channel {
    Channel::from_shared(uri.to_string())
        .expect("uri")
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy()
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req.set_timeout(CALL_TIMEOUT);
    req
}

struct Account {
    user_id: String,
    token: String,
}

async fn account(user: Channel, n: usize) -> Account {
    let mut client = UserServiceClient::new(user);
    let email = format!("rider-{n}-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery staple".to_string();
    client
        .sign_up(upb::SignUpRequest {
            email: email.clone(),
            password: password.clone(),
            display_name: format!("rider {n}"),
        })
        .await
        .expect("sign up");
    let login = client
        .login(upb::LoginRequest { email, password })
        .await
        .expect("login")
        .into_inner();
    Account {
        user_id: login.user.expect("user").user_id,
        token: login.access_token,
    }
}

fn state_of(s: &bpb::Subscription) -> bpb::SubscriptionState {
    bpb::SubscriptionState::try_from(s.state).unwrap_or(bpb::SubscriptionState::Unspecified)
}

fn status_of(c: &ppb::Charge) -> ppb::ChargeStatus {
    ppb::ChargeStatus::try_from(c.status).unwrap_or(ppb::ChargeStatus::Unspecified)
}

async fn subscription(billing: Channel, acct: &Account, id: &str) -> bpb::Subscription {
    BillingServiceClient::new(billing)
        .get_subscription(authed(
            &acct.token,
            bpb::GetSubscriptionRequest {
                subscription_id: id.to_string(),
            },
        ))
        .await
        .expect("get subscription")
        .into_inner()
        .subscription
        .expect("subscription")
}

/// The sum of the samples of Prometheus series `name` in `text`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn set_faults(abort: f64, delay: f64) -> String {
    format!(
        r#"{{"route": "inbound", "faults": {{"abort_percent": {abort}, "abort_grpc_status": 14, "delay_percent": {delay}, "delay_ms": 200}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_ride_out_a_payment_outage_through_the_mesh() {
    let up = TallyUp::start(&[]).await;
    let user = channel(&format!("http://{}", up.addr("user")));
    let billing = channel(&format!("http://{}", up.addr("billing")));
    let payment = channel(&format!("http://{}", up.addr("payment")));
    let accounts: Vec<Account> = futures::stream::iter(0..USERS)
        .map(|n| account(user.clone(), n))
        .buffered(SIGNUP_CONCURRENCY)
        .collect()
        .await;

    // The outage: half of payment's inbound calls fail, some are slow.
    let r = up
        .admin("payment-proxy", "PUT", "/faults", &set_faults(50.0, 30.0))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outage_started = Instant::now();

    let starts = accounts.iter().enumerate().map(|(n, acct)| {
        let billing = billing.clone();
        async move {
            tokio::time::sleep(START_SPREAD.mul_f64(n as f64 / USERS as f64)).await;
            BillingServiceClient::new(billing)
                .start_subscription(authed(
                    &acct.token,
                    bpb::StartSubscriptionRequest {
                        plan_id: bpb::PlanId::Pro as i32,
                        idempotency_key: format!("ride-out-{n}"),
                    },
                ))
                .await
                .unwrap_or_else(|e| panic!("start subscription {n}: {e:?}"))
                .into_inner()
                .subscription
                .expect("subscription")
        }
    });
    let started: Vec<bpb::Subscription> = futures::future::join_all(starts).await;
    assert!(
        outage_started.elapsed() < OUTAGE,
        "every subscription started during the outage"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;

    // While it lasted, nothing gave up: sagas were parked, still pending.
    let mut failed_during = 0;
    for (acct, sub) in accounts.iter().zip(&started) {
        let now = subscription(billing.clone(), acct, &sub.subscription_id).await;
        if state_of(&now) == bpb::SubscriptionState::Failed {
            failed_during += 1;
        }
    }
    let r = up
        .admin("payment-proxy", "PUT", "/faults", &set_faults(0.0, 0.0))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let outage_ended = Instant::now();

    // The faults really hit the sagas (the test can fail for its reason).
    let metrics = up.admin("payment-proxy", "GET", "/metrics", "").await.body;
    let injected = metric_sum(&metrics, "tally_proxy_faults_injected");
    assert!(
        injected >= 10.0,
        "payment's sidecar injected {injected} faults"
    );
    let billing_log = up.log("billing");
    assert!(
        billing_log.contains("saga step parked"),
        "no charge was ever parked:\n{billing_log}"
    );

    // Every saga ends once the outage is over.
    let mut ended = Vec::with_capacity(USERS);
    for (acct, sub) in accounts.iter().zip(&started) {
        loop {
            let now = subscription(billing.clone(), acct, &sub.subscription_id).await;
            if now.saga_completed {
                ended.push(now);
                break;
            }
            assert!(
                outage_ended.elapsed() < RECOVERY,
                "saga {} still running {RECOVERY:?} after the outage: {now:#?}",
                sub.subscription_id
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let active = ended
        .iter()
        .filter(|s| state_of(s) == bpb::SubscriptionState::Active)
        .count();
    let breaker_opens = metric_sum(
        &up.admin("billing-proxy", "GET", "/metrics", "").await.body,
        "tally_proxy_breaker_opens",
    );
    eprintln!(
        "ride-out: {active}/{USERS} ACTIVE, {failed_during} FAILED during the outage, \
         {injected} faults injected, billing's breaker opened {breaker_opens} times, \
         all ended {:?} after the outage",
        outage_ended.elapsed()
    );
    assert!(
        active as f64 >= TARGET_ACTIVE * USERS as f64,
        "only {active} of {USERS} subscriptions ended ACTIVE: {:#?}",
        ended
            .iter()
            .filter(|s| state_of(s) != bpb::SubscriptionState::Active)
            .collect::<Vec<_>>()
    );

    // The ledger reconciles with the subscriptions.
    let mut ledger = PaymentServiceClient::new(payment);
    for (acct, sub) in accounts.iter().zip(&ended) {
        let charges = ledger
            .list_charges(ppb::ListChargesRequest {
                customer_id: acct.user_id.clone(),
            })
            .await
            .expect("list charges")
            .into_inner()
            .charges;
        let kept: Vec<_> = charges
            .iter()
            .filter(|c| status_of(c) == ppb::ChargeStatus::Succeeded)
            .collect();
        let taken = charges
            .iter()
            .filter(|c| {
                matches!(
                    status_of(c),
                    ppb::ChargeStatus::Succeeded | ppb::ChargeStatus::Refunded
                )
            })
            .count();
        assert!(taken <= 1, "charged twice: {charges:#?}");
        match state_of(sub) {
            bpb::SubscriptionState::Active => {
                assert_eq!(kept.len(), 1, "{sub:#?}\n{charges:#?}");
                assert_eq!(kept[0].charge_id, sub.charge_id);
            }
            bpb::SubscriptionState::Failed => {
                assert!(kept.is_empty(), "a FAILED saga kept money: {charges:#?}")
            }
            other => panic!("saga ended {other:?}: {sub:#?}"),
        }
    }
}
