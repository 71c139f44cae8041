//! The SDK against the real `tally-user` and `tally-polling` binaries: the
//! whole product flow, the status codes callers see, and concurrent voting.

use std::collections::HashSet;
use tally_api::poll::v1::PollStatus;
use tally_sdk::{Client, Credentials, ListFilter};
use tally_testkit::Platform;
use tonic::Code;

const PASSWORD: &str = "correct horse battery";

async fn signed_in(client: &Client, email: &str, name: &str) -> (Client, String) {
    let user = client
        .sign_up(email, PASSWORD, name)
        .await
        .expect("sign up");
    let login = client.login(email, PASSWORD).await.expect("login");
    assert!(!login.access_token.is_empty() && !login.session_token.is_empty());
    assert_eq!(
        login.user.as_ref().map(|u| u.user_id.as_str()),
        Some(user.user_id.as_str())
    );
    (
        client.with_credentials(Credentials::Bearer(login.access_token)),
        user.user_id,
    )
}

fn code<T: std::fmt::Debug>(r: Result<T, tally_sdk::Error>) -> Code {
    r.expect_err("expected an error status").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_through_the_sdk() {
    // A short API-key cache so the revocation check below is quick.
    let platform = Platform::start_with("", "[auth]\napi_key_cache_ttl_secs = 1\n").await;
    let client = Client::connect(&platform.user_uri(), &platform.poll_uri())
        .await
        .expect("connect");

    // Accounts.
    let (ada, ada_id) = signed_in(&client, "ada@example.com", "Ada").await;
    assert_eq!(
        code(
            client
                .sign_up("ada@example.com", PASSWORD, "Ada again")
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(client.login("ada@example.com", "wrong password!").await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.login("nobody@example.com", PASSWORD).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.sign_up("not-an-email", PASSWORD, "X").await),
        Code::InvalidArgument
    );
    let me = ada.profile().await.expect("profile");
    assert_eq!(
        (me.user_id.as_str(), me.email.as_str()),
        (ada_id.as_str(), "ada@example.com")
    );
    assert_eq!(code(client.profile().await), Code::Unauthenticated);

    // Polls need credentials.
    assert_eq!(
        code(client.create_poll("Tea?", ["yes", "no"], None).await),
        Code::Unauthenticated
    );
    let bogus = client.with_credentials(Credentials::Bearer("not.a.jwt".into()));
    assert_eq!(code(bogus.get_poll("x").await), Code::Unauthenticated);

    assert_eq!(
        code(ada.create_poll("Tea?", ["only one"], None).await),
        Code::InvalidArgument
    );
    let poll = ada
        .create_poll("Tea or coffee?", ["tea", "coffee"], None)
        .await
        .expect("create poll");
    assert_eq!(poll.owner_id, ada_id);
    assert_eq!(poll.status, PollStatus::Open as i32);
    let texts: Vec<&str> = poll.options.iter().map(|o| o.text.as_str()).collect();
    assert_eq!(texts, ["tea", "coffee"]);
    let tea = poll.options[0].option_id.clone();
    let coffee = poll.options[1].option_id.clone();

    let fetched = ada.get_poll(&poll.poll_id).await.expect("get");
    assert_eq!(fetched.question, "Tea or coffee?");
    assert_eq!(code(ada.get_poll("no-such-poll").await), Code::NotFound);

    let mine = ada
        .list_polls(ListFilter::Owner(ada_id.clone()), 10, "")
        .await
        .expect("list");
    assert!(mine.polls.iter().any(|p| p.poll_id == poll.poll_id));

    // Votes: one per voter, idempotent retries.
    let first = ada
        .cast_vote(&poll.poll_id, &tea, "ada-1")
        .await
        .expect("vote");
    assert!(!first.replayed);
    let again = ada
        .cast_vote(&poll.poll_id, &tea, "ada-1")
        .await
        .expect("retry");
    assert!(again.replayed);
    assert_eq!(
        again.vote.as_ref().map(|v| &v.vote_id),
        first.vote.as_ref().map(|v| &v.vote_id)
    );
    assert_eq!(
        code(ada.cast_vote(&poll.poll_id, &coffee, "ada-2").await),
        Code::AlreadyExists
    );
    let (bob, _) = signed_in(&client, "bob@example.com", "Bob").await;
    assert_eq!(
        code(
            bob.cast_vote(&poll.poll_id, "no-such-option", "bob-0")
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(bob.cast_vote("no-such-poll", &coffee, "bob-x").await),
        Code::NotFound
    );
    bob.cast_vote(&poll.poll_id, &coffee, "bob-1")
        .await
        .expect("bob votes");

    let results = bob.get_results(&poll.poll_id).await.expect("results");
    assert_eq!(results.total_votes, 2);
    let counts: Vec<(&str, u64)> = results
        .results
        .iter()
        .map(|r| (r.text.as_str(), r.votes))
        .collect();
    assert_eq!(counts, [("tea", 1), ("coffee", 1)]);

    // Only the owner closes, once; closed polls take no votes.
    assert_eq!(
        code(bob.close_poll(&poll.poll_id).await),
        Code::PermissionDenied
    );
    let closed = ada.close_poll(&poll.poll_id).await.expect("close");
    assert_eq!(closed.status, PollStatus::Closed as i32);
    assert_eq!(
        code(ada.close_poll(&poll.poll_id).await),
        Code::FailedPrecondition
    );
    let (carol, _) = signed_in(&client, "carol@example.com", "Carol").await;
    assert_eq!(
        code(carol.cast_vote(&poll.poll_id, &tea, "carol-1").await),
        Code::FailedPrecondition
    );
    let open = ada
        .list_polls(ListFilter::OpenOnly, 50, "")
        .await
        .expect("open polls");
    assert!(open.polls.iter().all(|p| p.poll_id != poll.poll_id));

    // API keys carry scopes.
    let key = ada
        .create_api_key("reader", ["polls:read"])
        .await
        .expect("api key");
    assert!(!key.secret.is_empty());
    let reader = client.with_credentials(Credentials::ApiKey(key.secret.clone()));
    reader.get_poll(&poll.poll_id).await.expect("read with key");
    assert_eq!(
        code(reader.create_poll("Nope?", ["a", "b"], None).await),
        Code::PermissionDenied
    );
    let key_id = key.api_key.expect("key metadata").key_id;
    ada.revoke_api_key(&key_id).await.expect("revoke");
    // Verifiers may cache a key for a short while; it must stop working.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match reader.get_poll(&poll.poll_id).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected error for a revoked key: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked key kept working"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_voters_and_retries_are_counted_exactly_once() {
    let platform = Platform::start().await;
    let client = Client::connect(&platform.user_uri(), &platform.poll_uri())
        .await
        .expect("connect");
    let (owner, _) = signed_in(&client, "owner@example.com", "Owner").await;
    let poll = owner
        .create_poll("Best number?", ["one", "two", "three"], None)
        .await
        .expect("create");

    const VOTERS: usize = 12;
    const RETRIES: usize = 4;
    let mut voters = Vec::new();
    for i in 0..VOTERS {
        voters.push(
            signed_in(
                &client,
                &format!("voter{i}@example.com"),
                &format!("Voter {i}"),
            )
            .await
            .0,
        );
    }
    let mut tasks = Vec::new();
    for (i, voter) in voters.iter().enumerate() {
        let option = poll.options[i % 3].option_id.clone();
        for _ in 0..RETRIES {
            let (voter, poll_id, option) = (voter.clone(), poll.poll_id.clone(), option.clone());
            tasks.push(tokio::spawn(async move {
                voter
                    .cast_vote(&poll_id, &option, &format!("key-{i}"))
                    .await
            }));
        }
    }
    let mut vote_ids = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let res = t.await.expect("task").expect("every retry succeeds");
        if !res.replayed {
            fresh += 1;
        }
        vote_ids.insert(res.vote.expect("vote").vote_id);
    }
    assert_eq!(fresh, VOTERS, "exactly one original vote per voter");
    assert_eq!(vote_ids.len(), VOTERS, "retries return the original vote");

    let results = owner.get_results(&poll.poll_id).await.expect("results");
    assert_eq!(results.total_votes, VOTERS as u64);
    let counts: Vec<u64> = results.results.iter().map(|r| r.votes).collect();
    assert_eq!(counts, [4, 4, 4]);
}
