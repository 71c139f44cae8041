//! Plan limits end to end over real processes.
//!
//! - With `polling.default_max_open_polls = 2` and no billing: the third open
//!   poll of an owner is refused with RESOURCE_EXHAUSTED, other owners are not
//!   affected, closing a poll frees a slot, and the count survives a restart.
//! - With the real billing saga (`tally-user`, `tally-payment`, `tally-billing`
//!   and `tally-polling` with `[outbound] billing`): StartSubscription(pro)
//!   grants 50 open polls, polling's `plan-limits` consumer receives
//!   PlanLimitsGranted from billing's event feed and lifts the default limit;
//!   cancelling grants the free plan (3), which polling enforces again.
//!
//! Binaries come from `cargo build --workspace --bins` (next to this test).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{PASSWORD, Service, Stack, bearer, create_req, expect_code, user_binary};
use tally_api::billing::v1 as bpb;
use tally_api::billing::v1::billing_service_client::BillingServiceClient;
use tally_api::events::v1::consumer_admin_service_client::ConsumerAdminServiceClient;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::events::v1::{ConsumerStatus, GetHeadRequest, ListConsumersRequest};
use tally_api::poll::v1 as pb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::user::v1 as upb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

type Polls = PollServiceClient<Channel>;

const WAIT: Duration = Duration::from_secs(120);
const LIMIT_2: &str = "plan limit: 2 open polls; upgrade or close a poll";

/// A workspace binary built next to this test executable.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the {name} binary was not found next to {}; run `cargo build --workspace --bins` first",
        exe.display()
    );
}

async fn create(polls: &mut Polls, token: &str, question: &str) -> Result<pb::Poll, tonic::Status> {
    polls
        .create_poll(bearer(create_req(question, 2), token))
        .await
        .map(|r| r.into_inner().poll.expect("poll"))
}

async fn close(polls: &mut Polls, token: &str, poll_id: &str) {
    polls
        .close_poll(bearer(
            pb::ClosePollRequest {
                poll_id: poll_id.into(),
            },
            token,
        ))
        .await
        .expect("close poll");
}

async fn consumers(polling: &Service) -> Vec<ConsumerStatus> {
    ConsumerAdminServiceClient::new(polling.channel().await)
        .list_consumers(ListConsumersRequest {})
        .await
        .expect("list consumers")
        .into_inner()
        .consumers
}

#[tokio::test]
async fn default_limit_refuses_the_third_open_poll_and_closing_frees_a_slot() {
    let mut stack = Stack::start("[polling]\ndefault_max_open_polls = 2\n").await;
    let (_, alice) = stack.account("alice@example.com").await;
    let (_, bob) = stack.account("bob@example.com").await;
    let mut polls = stack.polls().await;

    let first = create(&mut polls, &alice, "First?").await.expect("first");
    create(&mut polls, &alice, "Second?").await.expect("second");
    let refused = expect_code(
        create(&mut polls, &alice, "Third?").await,
        Code::ResourceExhausted,
    );
    assert_eq!(refused.message(), LIMIT_2);
    // The limit is per owner.
    create(&mut polls, &bob, "Bob's first?").await.expect("bob");
    // A refused create left nothing: alice still owns exactly two polls.
    let listed = polls
        .list_polls(bearer(pb::ListPollsRequest::default(), &alice))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.polls.len(), 2);

    close(&mut polls, &alice, &first.poll_id).await;
    create(&mut polls, &alice, "Third, after closing one?")
        .await
        .expect("a slot was freed");
    expect_code(
        create(&mut polls, &alice, "Fourth?").await,
        Code::ResourceExhausted,
    );

    // The count is stored, not kept in memory.
    stack.polling.restart().await;
    let mut polls = stack.polls().await;
    let refused = expect_code(
        create(&mut polls, &alice, "After restart?").await,
        Code::ResourceExhausted,
    );
    assert_eq!(refused.message(), LIMIT_2);
    // Without [outbound] billing no consumer runs.
    assert!(consumers(&stack.polling).await.is_empty());
}

#[tokio::test]
async fn unlimited_by_default() {
    let stack = Stack::start("").await;
    let (_, alice) = stack.account("carol@example.com").await;
    let mut polls = stack.polls().await;
    for i in 0..5 {
        create(&mut polls, &alice, &format!("Poll {i}?"))
            .await
            .expect("no limit without a plan or default");
    }
}

/// user + payment + billing + polling (consuming billing's events).
struct SagaStack {
    _dir: tempfile::TempDir,
    user: Service,
    _payment: Service,
    billing: Service,
    polling: Service,
}

fn storage(dir: &Path, name: &str) -> String {
    format!(
        "[storage]\nbackend = \"embedded\"\npath = {:?}\n",
        dir.join(format!("{name}.redb"))
    )
}

fn subdir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

impl SagaStack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let user_dir = subdir(root, "user");
        let user = Service::start(
            "tally-user",
            user_binary(),
            "tally.user.v1.UserService",
            &user_dir,
            &storage(&user_dir, "user"),
        )
        .await;
        let payment_dir = subdir(root, "payment");
        let payment = Service::start(
            "tally-payment",
            binary("tally-payment"),
            "tally.payment.v1.PaymentService",
            &payment_dir,
            &storage(&payment_dir, "payment"),
        )
        .await;
        let billing_dir = subdir(root, "billing");
        let billing = Service::start(
            "tally-billing",
            binary("tally-billing"),
            "tally.billing.v1.BillingService",
            &billing_dir,
            &format!(
                "{}[outbound]\nuser = \"http://{}\"\npayment = \"http://{}\"\n\
                 [saga]\nretry_backoff_ms = 50\nresume_interval_secs = 1\n",
                storage(&billing_dir, "billing"),
                user.addr,
                payment.addr
            ),
        )
        .await;
        let polling_dir = subdir(root, "polling");
        let polling = Service::start(
            "tally-polling",
            PathBuf::from(env!("CARGO_BIN_EXE_tally-polling")),
            "tally.poll.v1.PollService",
            &polling_dir,
            &format!(
                "{}[outbound]\nuser = \"http://{}\"\nbilling = \"http://{}\"\n\
                 [polling]\ndefault_max_open_polls = 2\n",
                storage(&polling_dir, "polling"),
                user.addr,
                billing.addr
            ),
        )
        .await;
        SagaStack {
            _dir: dir,
            user,
            _payment: payment,
            billing,
            polling,
        }
    }

    /// Signs up and logs in; returns the access token.
    async fn account(&self, email: &str) -> String {
        let mut users = UserServiceClient::new(self.user.channel().await);
        users
            .sign_up(upb::SignUpRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Subscriber".into(),
            })
            .await
            .expect("sign up");
        users
            .login(upb::LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token
    }

    async fn billing(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(self.billing.channel().await)
    }

    /// Waits until the saga has nothing left to do; returns the subscription.
    async fn wait_saga(&self, token: &str, id: &str) -> bpb::Subscription {
        let deadline = Instant::now() + WAIT;
        let mut billing = self.billing().await;
        loop {
            let sub = billing
                .get_subscription(bearer(
                    bpb::GetSubscriptionRequest {
                        subscription_id: id.into(),
                    },
                    token,
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
                "saga {id} did not complete: {sub:#?}\nbilling log:\n{}",
                self.billing.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until polling's plan-limits consumer has processed everything
    /// billing has published so far.
    async fn wait_caught_up(&self) -> ConsumerStatus {
        let head = EventFeedServiceClient::new(self.billing.channel().await)
            .get_head(GetHeadRequest {})
            .await
            .expect("billing's feed head")
            .into_inner()
            .head_offset;
        assert!(head > 0, "billing published events");
        let deadline = Instant::now() + WAIT;
        loop {
            let statuses = consumers(&self.polling).await;
            let status = statuses
                .iter()
                .find(|c| c.consumer == "plan-limits")
                .unwrap_or_else(|| panic!("no plan-limits consumer in {statuses:?}"))
                .clone();
            if status.offset >= head {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "plan-limits stayed at {status:?}, billing's head is {head}; polling log:\n{}",
                self.polling.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn billing_saga_grants_limits_that_polling_enforces() {
    let stack = SagaStack::start().await;
    let token = stack.account("subscriber@example.com").await;
    let mut polls = PollServiceClient::new(stack.polling.channel().await);

    // No plan yet: the default (2) applies.
    create(&mut polls, &token, "One?").await.expect("one");
    create(&mut polls, &token, "Two?").await.expect("two");
    let refused = expect_code(
        create(&mut polls, &token, "Three?").await,
        Code::ResourceExhausted,
    );
    assert_eq!(refused.message(), LIMIT_2);

    // Subscribe to pro through the real saga (reserve, charge, activate, grant).
    let sub = stack
        .billing()
        .await
        .start_subscription(bearer(
            bpb::StartSubscriptionRequest {
                plan_id: bpb::PlanId::Pro as i32,
                idempotency_key: "pro-1".into(),
            },
            &token,
        ))
        .await
        .expect("start subscription")
        .into_inner()
        .subscription
        .expect("subscription");
    let sub = stack.wait_saga(&token, &sub.subscription_id).await;
    assert_eq!(sub.state, bpb::SubscriptionState::Active as i32, "{sub:#?}");
    let status = stack.wait_caught_up().await;
    assert_eq!(status.dead_letters, 0, "{status:?}");

    // Pro grants 50 open polls.
    for i in 3..=5 {
        create(&mut polls, &token, &format!("Pro poll {i}?"))
            .await
            .expect("pro lifts the default limit");
    }

    // Cancelling returns the user to the free plan (3 open polls); 5 are open.
    stack
        .billing()
        .await
        .cancel_subscription(bearer(
            bpb::CancelSubscriptionRequest {
                subscription_id: sub.subscription_id.clone(),
            },
            &token,
        ))
        .await
        .expect("cancel");
    stack.wait_caught_up().await;
    let refused = expect_code(
        create(&mut polls, &token, "After cancelling?").await,
        Code::ResourceExhausted,
    );
    assert_eq!(
        refused.message(),
        "plan limit: 3 open polls; upgrade or close a poll"
    );
}
