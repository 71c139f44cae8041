//! Password guessing against the real `tally-user` process: 40 wrong
//! passwords for one account, each from its own loopback address (real TCP
//! peers: every client socket is bound to a distinct 127.0.0.x), are not all
//! answered as wrong passwords, while the account's owner still logs in from
//! the address they logged in from before, and a new address gets in once
//! the delay the service announced is over.

use std::net::IpAddr;
use std::time::Duration;
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_user::retry_info::retry_delay;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Endpoint;

mod support;

use support::UserProcess;

const PASSWORD: &str = "correct horse battery";
const EMAIL: &str = "victim@example.com";
/// Account-wide budget and delay for this test (tight, so it is quick).
const ACCOUNT_FREE_FAILURES: usize = 10;
const DELAY: Duration = Duration::from_secs(10);
const GUESSES: u8 = 40;

fn throttle_config() -> String {
    format!(
        "[user.login_throttle]\naccount_free_failures = {ACCOUNT_FREE_FAILURES}\n\
         base_delay_ms = {}\nmax_delay_secs = {}\n",
        DELAY.as_millis(),
        DELAY.as_secs()
    )
}

/// A client whose connection comes from `from`.
async fn client_from(
    p: &UserProcess,
    from: [u8; 4],
) -> UserServiceClient<tonic::transport::Channel> {
    let ch = Endpoint::from_shared(format!("http://{}", p.addr))
        .expect("endpoint")
        .local_address(Some(IpAddr::from(from)))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect from a loopback address");
    UserServiceClient::new(ch)
}

async fn login_from(
    p: &UserProcess,
    from: [u8; 4],
    password: &str,
) -> Result<pb::LoginResponse, tonic::Status> {
    client_from(p, from)
        .await
        .login(pb::LoginRequest {
            email: EMAIL.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn guesses_from_many_addresses_are_throttled_but_the_owner_gets_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(dir.path(), &throttle_config()).await;
    let owner_home = [127, 0, 0, 200];
    client_from(&p, owner_home)
        .await
        .sign_up(pb::SignUpRequest {
            email: EMAIL.into(),
            password: PASSWORD.into(),
            display_name: "Victim".into(),
        })
        .await
        .expect("sign up");
    login_from(&p, owner_home, PASSWORD)
        .await
        .expect("the owner logs in from home");

    let (mut wrong, mut throttled) = (0, 0);
    for i in 1..=GUESSES {
        match login_from(&p, [127, 0, 1, i], "not the password").await {
            Err(s) if s.code() == Code::Unauthenticated => wrong += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                let wait = retry_delay(&s).expect("RetryInfo in the status details");
                assert!(wait > Duration::ZERO && wait <= DELAY, "{wait:?}");
                assert!(s.metadata().get("retry-after").is_some());
                throttled += 1;
            }
            other => panic!("guess {i}: {other:?}"),
        }
    }
    assert!(
        wrong >= ACCOUNT_FREE_FAILURES && throttled >= 20,
        "{wrong} wrong-password answers, {throttled} throttled, of {GUESSES}"
    );

    // The owner's known address is not held back by the attack...
    login_from(&p, owner_home, PASSWORD)
        .await
        .expect("the owner still logs in from home during the attack");
    // ...a new address is, even with the right password, but only for the
    // announced delay: it gets in once that is over.
    let new_place = [127, 0, 0, 150];
    let deadline = Instant::now() + 6 * DELAY;
    loop {
        match login_from(&p, new_place, PASSWORD).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                let wait = retry_delay(&s).expect("RetryInfo");
                assert!(wait <= DELAY, "{wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(s) => panic!("the owner from a new address: {s:?}\n{}", p.log_text()),
        }
    }
}

#[tokio::test]
async fn one_address_is_throttled_on_its_own_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(dir.path(), &throttle_config()).await;
    // Unknown accounts are throttled alike, so the answer does not reveal
    // whether the email has an account.
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            login_from(&p, [127, 0, 2, 1], "not the password")
                .await
                .expect_err("no such account")
                .code(),
        );
    }
    let wrong = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    assert_eq!(wrong, 5, "the per-address budget (default 5): {codes:?}");
    assert!(
        codes[5..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    // Another address is still answered normally.
    let s = login_from(&p, [127, 0, 2, 2], "not the password")
        .await
        .expect_err("wrong");
    assert_eq!(s.code(), Code::Unauthenticated);
}
