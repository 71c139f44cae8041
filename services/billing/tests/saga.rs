//! The subscription saga over real processes: `tally-user` (for access
//! tokens), `tally-payment` and `tally-billing`, each on its own port and
//! data directory. Binaries come from `cargo build --workspace --bins`.
//!
//! The crash-recovery test aborts billing at every step boundary
//! (`TALLY_BILLING_CRASH_AFTER`), restarts it, and checks each saga ends
//! ACTIVE with exactly one un-refunded charge, or FAILED/CANCELLED with every
//! charge refunded, and never charges twice.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;
use tally_api::billing::v1 as bpb;
use tally_api::billing::v1::billing_service_client::BillingServiceClient;
use tally_api::payment::v1 as ppb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tally_api::user::v1 as upb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::{Process, READY_TIMEOUT, bin_path, free_port};
use tokio::time::Instant;
use tonic::transport::Channel;

const BILLING: &str = "tally.billing.v1.BillingService";
const PAYMENT: &str = "tally.payment.v1.PaymentService";
const SAGA_TIMEOUT: Duration = Duration::from_secs(90);

fn config(dir: &Path, name: &str, port: u16, extra: &str) -> PathBuf {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).expect("state dir");
    let text = format!(
        "[server]\nlisten_addr = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 2\n\n\
         [storage]\nbackend = \"embedded\"\npath = \"{}\"\n\n{extra}",
        state.join(format!("{name}.redb")).display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn spawn(binary: &str, config: &Path, env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(bin_path(binary));
    cmd.arg("--config").arg(config).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Process::spawn_command(cmd)
}

/// A service process with its address and config, restartable in place.
struct Svc {
    proc: Process,
    addr: String,
    config: PathBuf,
    binary: &'static str,
    health: &'static str,
}

impl Svc {
    async fn start(
        binary: &'static str,
        health: &'static str,
        dir: &Path,
        name: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let config = config(dir, name, port, extra);
        let addr = format!("127.0.0.1:{port}");
        let mut proc = spawn(binary, &config, env);
        proc.wait_healthy(&addr, health, READY_TIMEOUT).await;
        Self {
            proc,
            addr,
            config,
            binary,
            health,
        }
    }

    /// Starts the process again on the same port and data (after it died or
    /// was stopped), with `env`.
    async fn restart(&mut self, env: &[(&str, &str)]) {
        if self.proc.is_running() {
            self.proc.terminate(Duration::from_secs(30));
        }
        self.proc = spawn(self.binary, &self.config, env);
        self.proc
            .wait_healthy(&self.addr, self.health, READY_TIMEOUT)
            .await;
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn channel(uri: &str) -> Channel {
    Channel::from_shared(uri.to_string())
        .expect("uri")
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy()
}

async fn start_user(dir: &Path) -> Svc {
    Svc::start(
        "tally-user",
        "tally.user.v1.UserService",
        dir,
        "user",
        "",
        &[],
    )
    .await
}

async fn start_payment(dir: &Path, name: &str, payment_toml: &str) -> Svc {
    let extra = format!("[payment]\n{payment_toml}\n");
    Svc::start("tally-payment", PAYMENT, dir, name, &extra, &[]).await
}

fn billing_toml(user: &Svc, payment: &Svc, saga: &str) -> String {
    format!(
        "[outbound]\nuser = \"{}\"\npayment = \"{}\"\n\n[saga]\nretry_backoff_ms = 50\nresume_interval_secs = 1\n{saga}\n",
        user.uri(),
        payment.uri()
    )
}

async fn start_billing(
    dir: &Path,
    name: &str,
    user: &Svc,
    payment: &Svc,
    saga: &str,
    env: &[(&str, &str)],
) -> Svc {
    let extra = billing_toml(user, payment, saga);
    Svc::start("tally-billing", BILLING, dir, name, &extra, env).await
}

/// A signed-up, logged-in user.
struct Account {
    user_id: String,
    token: String,
}

async fn account(user: &Svc, tag: &str) -> Account {
    let mut client = UserServiceClient::new(channel(&user.uri()).await);
    let email = format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery staple".to_string();
    client
        .sign_up(upb::SignUpRequest {
            email: email.clone(),
            password: password.clone(),
            display_name: tag.to_string(),
        })
        .await
        .expect("sign up");
    let login = client
        .login(upb::LoginRequest { email, password })
        .await
        .expect("login")
        .into_inner();
    Account {
        user_id: login.user.expect("user in login").user_id,
        token: login.access_token,
    }
}

fn authed<T>(acct: &Account, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", acct.token).parse().expect("header"),
    );
    req.set_timeout(Duration::from_secs(60));
    req
}

async fn billing_client(billing: &Svc) -> BillingServiceClient<Channel> {
    BillingServiceClient::new(channel(&billing.uri()).await)
}

async fn start_sub(
    billing: &Svc,
    acct: &Account,
    plan: bpb::PlanId,
    key: &str,
) -> Result<bpb::Subscription, tonic::Status> {
    billing_client(billing)
        .await
        .start_subscription(authed(
            acct,
            bpb::StartSubscriptionRequest {
                plan_id: plan as i32,
                idempotency_key: key.to_string(),
            },
        ))
        .await
        .map(|r| r.into_inner().subscription.expect("subscription"))
}

/// Polls until the saga has nothing left to do.
async fn wait_completed(billing: &Svc, acct: &Account, id: &str) -> bpb::Subscription {
    let deadline = Instant::now() + SAGA_TIMEOUT;
    let mut client = billing_client(billing).await;
    loop {
        let sub = client
            .get_subscription(authed(
                acct,
                bpb::GetSubscriptionRequest {
                    subscription_id: id.to_string(),
                },
            ))
            .await
            .expect("get subscription")
            .into_inner()
            .subscription
            .expect("subscription");
        if sub.saga_completed {
            return sub;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} did not complete within {SAGA_TIMEOUT:?}: {sub:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn charges(payment: &Svc, customer: &str) -> Vec<ppb::Charge> {
    PaymentServiceClient::new(channel(&payment.uri()).await)
        .list_charges(ppb::ListChargesRequest {
            customer_id: customer.to_string(),
        })
        .await
        .expect("list charges")
        .into_inner()
        .charges
}

fn status_of(c: &ppb::Charge) -> ppb::ChargeStatus {
    ppb::ChargeStatus::try_from(c.status).unwrap_or(ppb::ChargeStatus::Unspecified)
}

fn state_of(s: &bpb::Subscription) -> bpb::SubscriptionState {
    bpb::SubscriptionState::try_from(s.state).unwrap_or(bpb::SubscriptionState::Unspecified)
}

fn step_status<'a>(s: &'a bpb::Subscription, name: &str) -> Option<&'a str> {
    s.steps
        .iter()
        .rev()
        .find(|st| st.name == name)
        .map(|st| st.status.as_str())
}

/// The invariant every finished saga must satisfy: ACTIVE with exactly one
/// succeeded charge, or FAILED/CANCELLED with no money kept.
fn assert_settled(sub: &bpb::Subscription, charges: &[ppb::Charge], context: &str) {
    let kept: Vec<_> = charges
        .iter()
        .filter(|c| status_of(c) == ppb::ChargeStatus::Succeeded)
        .collect();
    match state_of(sub) {
        bpb::SubscriptionState::Active => {
            assert_eq!(
                kept.len(),
                1,
                "{context}: ACTIVE must have exactly one kept charge: {charges:#?}"
            );
            assert_eq!(kept[0].charge_id, sub.charge_id, "{context}");
        }
        bpb::SubscriptionState::Failed | bpb::SubscriptionState::Cancelled => {
            assert!(
                kept.is_empty(),
                "{context}: a failed saga kept money: {charges:#?}"
            );
        }
        other => panic!("{context}: saga ended in {other:?}: {sub:#?}"),
    }
    let successful_or_refunded = charges
        .iter()
        .filter(|c| {
            matches!(
                status_of(c),
                ppb::ChargeStatus::Succeeded | ppb::ChargeStatus::Refunded
            )
        })
        .count();
    assert!(
        successful_or_refunded <= 1,
        "{context}: charged more than once: {charges:#?}"
    );
}

fn aborted(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal().is_some() || !status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_activates_with_exactly_one_charge_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = start_user(dir.path()).await;
    let payment = start_payment(dir.path(), "payment", "").await;
    let billing = start_billing(dir.path(), "billing", &user, &payment, "", &[]).await;
    let alice = account(&user, "alice").await;

    let sub = start_sub(&billing, &alice, bpb::PlanId::Pro, "k-1")
        .await
        .expect("start");
    let sub = wait_completed(&billing, &alice, &sub.subscription_id).await;
    assert_eq!(state_of(&sub), bpb::SubscriptionState::Active, "{sub:#?}");
    let names: Vec<_> = sub.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reserve_seat",
            "charge_payment",
            "activate_subscription",
            "grant_limits"
        ]
    );
    assert!(sub.steps.iter().all(|s| s.status == "done"), "{sub:#?}");

    // The same key returns the same subscription and charges nothing more.
    let again = start_sub(&billing, &alice, bpb::PlanId::Pro, "k-1")
        .await
        .expect("retry");
    assert_eq!(again.subscription_id, sub.subscription_id);
    let list = charges(&payment, &alice.user_id).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].amount_cents, 900);
    assert_settled(&sub, &list, "happy path");

    // Reusing the key for another plan is refused.
    let err = start_sub(&billing, &alice, bpb::PlanId::Team, "k-1")
        .await
        .expect_err("key reuse");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let mut client = billing_client(&billing).await;
    let ent = client
        .get_entitlements(authed(&alice, bpb::GetEntitlementsRequest {}))
        .await
        .expect("entitlements")
        .into_inner();
    assert_eq!(ent.plan_id, bpb::PlanId::Pro as i32);
    assert_eq!(ent.max_open_polls, 50);

    // The seat is held: a second subscription fails without charging.
    let second = start_sub(&billing, &alice, bpb::PlanId::Team, "k-2")
        .await
        .expect("second");
    let second = wait_completed(&billing, &alice, &second.subscription_id).await;
    assert_eq!(state_of(&second), bpb::SubscriptionState::Failed);
    assert!(
        second.failure_reason.contains("already holds"),
        "{second:#?}"
    );
    assert_eq!(charges(&payment, &alice.user_id).await.len(), 1);

    // Cancelling ends it and returns the limits to free.
    let cancelled = client
        .cancel_subscription(authed(
            &alice,
            bpb::CancelSubscriptionRequest {
                subscription_id: sub.subscription_id.clone(),
            },
        ))
        .await
        .expect("cancel")
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!(state_of(&cancelled), bpb::SubscriptionState::Cancelled);
    let ent = client
        .get_entitlements(authed(&alice, bpb::GetEntitlementsRequest {}))
        .await
        .expect("entitlements")
        .into_inner();
    assert_eq!(ent.max_open_polls, 3);

    // Unauthenticated calls are refused.
    let err = client
        .start_subscription(bpb::StartSubscriptionRequest {
            plan_id: bpb::PlanId::Pro as i32,
            idempotency_key: "x".into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_fails_releases_the_seat_and_keeps_no_money() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = start_user(dir.path()).await;
    let payment = start_payment(dir.path(), "payment", "decline_rate = 1.0").await;
    let billing = start_billing(dir.path(), "billing", &user, &payment, "", &[]).await;
    let bob = account(&user, "bob").await;

    let sub = start_sub(&billing, &bob, bpb::PlanId::Pro, "d-1")
        .await
        .expect("start");
    let sub = wait_completed(&billing, &bob, &sub.subscription_id).await;
    assert_eq!(state_of(&sub), bpb::SubscriptionState::Failed, "{sub:#?}");
    assert!(sub.failure_reason.contains("declined"), "{sub:#?}");
    assert_eq!(step_status(&sub, "charge_payment"), Some("failed"));
    assert_eq!(step_status(&sub, "release_seat"), Some("done"));
    assert_eq!(step_status(&sub, "mark_failed"), Some("done"));
    let list = charges(&payment, &bob.user_id).await;
    assert_eq!(list.len(), 1);
    assert_eq!(status_of(&list[0]), ppb::ChargeStatus::Declined);
    assert_settled(&sub, &list, "decline");

    // The seat was released: the next attempt gets past the reservation and
    // fails on the payment again, not on the seat.
    let next = start_sub(&billing, &bob, bpb::PlanId::Pro, "d-2")
        .await
        .expect("start again");
    let next = wait_completed(&billing, &bob, &next.subscription_id).await;
    assert_eq!(
        step_status(&next, "reserve_seat"),
        Some("done"),
        "{next:#?}"
    );
    assert!(next.failure_reason.contains("declined"), "{next:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_outage_is_ridden_out_until_the_step_deadline_then_fails_without_charging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = start_user(dir.path()).await;
    let mut payment = start_payment(dir.path(), "payment", "outage = true").await;
    let billing = start_billing(
        dir.path(),
        "billing",
        &user,
        &payment,
        "step_deadline_secs = 3",
        &[],
    )
    .await;
    let carol = account(&user, "carol").await;

    let started = Instant::now();
    let sub = start_sub(&billing, &carol, bpb::PlanId::Team, "o-1")
        .await
        .expect("start");
    let sub = wait_completed(&billing, &carol, &sub.subscription_id).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "compensation waited for the step deadline"
    );
    assert_eq!(state_of(&sub), bpb::SubscriptionState::Failed, "{sub:#?}");
    let charge_step = sub
        .steps
        .iter()
        .find(|s| s.name == "charge_payment")
        .expect("charge step");
    assert!(
        charge_step.detail.contains("step deadline of 3 s"),
        "retries are bounded by the deadline and recorded: {charge_step:?}"
    );
    assert!(
        charge_step.detail.contains("Unavailable"),
        "{charge_step:?}"
    );
    assert_eq!(step_status(&sub, "release_seat"), Some("done"));

    // Once the provider is back, its books show no charge for carol.
    std::fs::write(
        &payment.config,
        std::fs::read_to_string(&payment.config)
            .expect("read config")
            .replace("outage = true", "outage = false"),
    )
    .expect("rewrite config");
    payment.restart(&[]).await;
    let list = charges(&payment, &carol.user_id).await;
    assert!(list.is_empty(), "{list:#?}");
    assert_settled(&sub, &list, "outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_charging_refunds_the_charge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = start_user(dir.path()).await;
    let payment = start_payment(dir.path(), "payment", "latency_ms = 6000").await;
    let billing = start_billing(
        dir.path(),
        "billing",
        &user,
        &payment,
        "start_wait_ms = 0\npayment_timeout_ms = 30000",
        &[],
    )
    .await;
    let dave = account(&user, "dave").await;
    let sub = start_sub(&billing, &dave, bpb::PlanId::Pro, "c-1")
        .await
        .expect("start");
    assert_eq!(state_of(&sub), bpb::SubscriptionState::Pending);
    billing_client(&billing)
        .await
        .cancel_subscription(authed(
            &dave,
            bpb::CancelSubscriptionRequest {
                subscription_id: sub.subscription_id.clone(),
            },
        ))
        .await
        .expect("cancel pending");
    let sub = wait_completed(&billing, &dave, &sub.subscription_id).await;
    assert_eq!(
        state_of(&sub),
        bpb::SubscriptionState::Cancelled,
        "{sub:#?}"
    );
    let list = charges(&payment, &dave.user_id).await;
    assert_settled(&sub, &list, "cancel while charging");
    if step_status(&sub, "charge_payment").is_some() {
        assert_eq!(
            step_status(&sub, "refund_payment"),
            Some("done"),
            "{sub:#?}"
        );
    }
}

/// One crash-and-recover round: billing aborts at `point`, is restarted
/// without the flag, and the saga must end settled.
async fn crash_round(
    dir: &Path,
    user: &Svc,
    payment: &Svc,
    point: &str,
    expect: bpb::SubscriptionState,
) {
    let acct = account(user, "crash").await;
    let name = format!("billing-{}", point.replace(':', "-"));
    let mut billing = start_billing(
        dir,
        &name,
        user,
        payment,
        "payment_attempts = 2\nstep_deadline_secs = 1",
        &[("TALLY_BILLING_CRASH_AFTER", point)],
    )
    .await;
    let key = format!("crash-{point}");
    let first = start_sub(&billing, &acct, bpb::PlanId::Pro, &key).await;
    let status = billing
        .proc
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "billing did not crash at {point}\n{}",
                billing.proc.output()
            )
        });
    assert!(aborted(status), "{point}: exit {status}");
    assert!(
        billing.proc.stderr().contains("crash_after reached"),
        "{point}: crashed elsewhere\n{}",
        billing.proc.output()
    );

    billing.restart(&[]).await;
    // The client retries with the same key and gets the same subscription.
    let retried = start_sub(&billing, &acct, bpb::PlanId::Pro, &key)
        .await
        .expect("retry after restart");
    if let Ok(first) = &first {
        assert_eq!(first.subscription_id, retried.subscription_id, "{point}");
    }
    let sub = wait_completed(&billing, &acct, &retried.subscription_id).await;
    let list = charges(payment, &acct.user_id).await;
    assert_settled(&sub, &list, point);
    assert_eq!(state_of(&sub), expect, "{point}: {sub:#?}\n{list:#?}");
    billing.proc.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_boundary_recovers_to_a_settled_saga() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = start_user(dir.path()).await;
    let ok_payment = start_payment(dir.path(), "payment-ok", "").await;
    let declining = start_payment(dir.path(), "payment-decline", "decline_rate = 1.0").await;
    let down = start_payment(dir.path(), "payment-down", "outage = true").await;

    for point in [
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
    ] {
        crash_round(
            dir.path(),
            &user,
            &ok_payment,
            point,
            bpb::SubscriptionState::Active,
        )
        .await;
    }
    for point in [
        "charge_payment:called",
        "charge_payment",
        "release_seat:intent",
        "release_seat",
        "mark_failed:intent",
        "mark_failed",
    ] {
        crash_round(
            dir.path(),
            &user,
            &declining,
            point,
            bpb::SubscriptionState::Failed,
        )
        .await;
    }
    // Refused charges go through the refund (void) compensation.
    for point in [
        "refund_payment:intent",
        "refund_payment:called",
        "refund_payment",
    ] {
        crash_round(
            dir.path(),
            &user,
            &down,
            point,
            bpb::SubscriptionState::Failed,
        )
        .await;
    }
}
