//! End-to-end tests over real processes: `tally-user` issues tokens and API
//! keys, `tally-polling` verifies them (JWKS over gRPC) and applies the poll
//! and vote rules. Every status code the rules promise is checked here.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Stack, api_key, bearer, create_req, expect_code};
use tally_api::poll::v1 as pb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_polling::store::PollRepository;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;

type Polls = PollServiceClient<Channel>;

fn timestamp_in(offset: Duration, past: bool) -> prost_types::Timestamp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let at = if past { now - offset } else { now + offset };
    prost_types::Timestamp {
        seconds: at.as_secs() as i64,
        nanos: at.subsec_nanos() as i32,
    }
}

async fn create(polls: &mut Polls, token: &str, req: pb::CreatePollRequest) -> pb::Poll {
    polls
        .create_poll(bearer(req, token))
        .await
        .expect("create poll")
        .into_inner()
        .poll
        .expect("poll")
}

fn vote_req(poll_id: &str, option_id: &str, key: &str) -> pb::CastVoteRequest {
    pb::CastVoteRequest {
        poll_id: poll_id.into(),
        option_id: option_id.into(),
        idempotency_key: key.into(),
    }
}

async fn results(polls: &mut Polls, token: &str, poll_id: &str) -> pb::GetResultsResponse {
    polls
        .get_results(bearer(
            pb::GetResultsRequest {
                poll_id: poll_id.into(),
            },
            token,
        ))
        .await
        .expect("results")
        .into_inner()
}

fn counts(r: &pb::GetResultsResponse) -> BTreeMap<String, u64> {
    r.results
        .iter()
        .map(|o| (o.option_id.clone(), o.votes))
        .collect()
}

#[tokio::test]
async fn create_validation_get_and_close_rules() {
    let stack = Stack::start("").await;
    let (alice_id, alice) = stack.account("alice@example.com").await;
    let (_, bob) = stack.account("bob@example.com").await;
    let mut polls = stack.polls().await;

    // Every validation failure names its field.
    let cases: Vec<(pb::CreatePollRequest, &str)> = vec![
        (create_req("   ", 2), "question"),
        (create_req(&"q".repeat(501), 2), "question"),
        (create_req("q", 1), "options"),
        (create_req("q", 21), "options"),
        (
            pb::CreatePollRequest {
                question: "q".into(),
                options: vec!["a".into(), "b".into(), "c".into(), " ".into()],
                closes_at: None,
            },
            "options[3]",
        ),
        (
            pb::CreatePollRequest {
                question: "q".into(),
                options: vec!["Yes".into(), "No".into(), " yes".into()],
                closes_at: None,
            },
            "options[2]",
        ),
        (
            pb::CreatePollRequest {
                question: "q".into(),
                options: vec!["a".into(), "b".repeat(201)],
                closes_at: None,
            },
            "options[1]",
        ),
        (
            pb::CreatePollRequest {
                closes_at: Some(timestamp_in(Duration::from_secs(60), true)),
                ..create_req("q", 2)
            },
            "closes_at",
        ),
    ];
    for (req, field) in cases {
        let s = expect_code(
            polls.create_poll(bearer(req, &alice)).await,
            Code::InvalidArgument,
        );
        assert!(
            s.message().starts_with(field),
            "expected field {field}: {}",
            s.message()
        );
    }

    let poll = create(
        &mut polls,
        &alice,
        pb::CreatePollRequest {
            question: "  Lunch?  ".into(),
            options: vec!["Pizza".into(), "Soup".into(), "Salad".into()],
            closes_at: Some(timestamp_in(Duration::from_secs(3600), false)),
        },
    )
    .await;
    assert_eq!(poll.question, "Lunch?");
    assert_eq!(poll.owner_id, alice_id);
    assert_eq!(poll.status, pb::PollStatus::Open as i32);
    assert_eq!(poll.options.len(), 3);
    assert!(uuid::Uuid::parse_str(&poll.poll_id).is_ok());

    let got = polls
        .get_poll(bearer(
            pb::GetPollRequest {
                poll_id: poll.poll_id.clone(),
            },
            &bob,
        ))
        .await
        .expect("get")
        .into_inner()
        .poll
        .expect("poll");
    assert_eq!(got, poll);
    expect_code(
        polls
            .get_poll(bearer(
                pb::GetPollRequest {
                    poll_id: uuid::Uuid::now_v7().to_string(),
                },
                &bob,
            ))
            .await,
        Code::NotFound,
    );
    expect_code(
        polls
            .get_poll(bearer(
                pb::GetPollRequest {
                    poll_id: String::new(),
                },
                &bob,
            ))
            .await,
        Code::InvalidArgument,
    );

    // Only the owner closes, and only once.
    let close = |token: &str| {
        bearer(
            pb::ClosePollRequest {
                poll_id: poll.poll_id.clone(),
            },
            token,
        )
    };
    expect_code(polls.close_poll(close(&bob)).await, Code::PermissionDenied);
    let closed = polls
        .close_poll(close(&alice))
        .await
        .expect("owner closes")
        .into_inner()
        .poll
        .expect("poll");
    assert_eq!(closed.status, pb::PollStatus::Closed as i32);
    assert!(closed.closed_at.is_some());
    expect_code(
        polls.close_poll(close(&alice)).await,
        Code::FailedPrecondition,
    );
    expect_code(
        polls
            .close_poll(bearer(
                pb::ClosePollRequest {
                    poll_id: uuid::Uuid::now_v7().to_string(),
                },
                &alice,
            ))
            .await,
        Code::NotFound,
    );
    // Closed polls take no votes and leave the open list.
    expect_code(
        polls
            .cast_vote(bearer(vote_req(&poll.poll_id, "opt-1", "k"), &bob))
            .await,
        Code::FailedPrecondition,
    );
    let open = polls
        .list_polls(bearer(
            pb::ListPollsRequest {
                filter: Some(pb::list_polls_request::Filter::OpenOnly(true)),
                page: None,
            },
            &bob,
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(open.polls.iter().all(|p| p.poll_id != poll.poll_id));
    let r = results(&mut polls, &bob, &poll.poll_id).await;
    assert_eq!(r.status, pb::PollStatus::Closed as i32);
    assert_eq!(r.total_votes, 0);
}

#[tokio::test]
async fn vote_rules_and_idempotent_retries() {
    let stack = Stack::start("").await;
    let (_, alice) = stack.account("alice@example.com").await;
    let (bob_id, bob) = stack.account("bob@example.com").await;
    let mut polls = stack.polls().await;
    let poll = create(&mut polls, &alice, create_req("Best colour?", 3)).await;
    let id = poll.poll_id.as_str();

    expect_code(
        polls
            .cast_vote(bearer(
                vote_req(&uuid::Uuid::now_v7().to_string(), "opt-1", "k0"),
                &bob,
            ))
            .await,
        Code::NotFound,
    );
    let s = expect_code(
        polls
            .cast_vote(bearer(vote_req(id, "opt-9", "k0"), &bob))
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().starts_with("option_id"), "{}", s.message());

    let first = polls
        .cast_vote(bearer(vote_req(id, "opt-2", "k1"), &bob))
        .await
        .expect("vote")
        .into_inner();
    assert!(!first.replayed);
    let vote = first.vote.expect("vote");
    assert_eq!(vote.voter_id, bob_id);
    assert_eq!(vote.option_id, "opt-2");

    // A retry with the same key returns the original vote.
    let retry = polls
        .cast_vote(bearer(vote_req(id, "opt-2", "k1"), &bob))
        .await
        .expect("retry")
        .into_inner();
    assert!(retry.replayed);
    assert_eq!(retry.vote.expect("vote"), vote);
    // Another key: one vote per voter.
    expect_code(
        polls
            .cast_vote(bearer(vote_req(id, "opt-1", "k2"), &bob))
            .await,
        Code::AlreadyExists,
    );
    expect_code(
        polls
            .cast_vote(bearer(vote_req(id, "opt-2", ""), &bob))
            .await,
        Code::AlreadyExists,
    );
    // The same key for a different option or poll is a client bug.
    let s = expect_code(
        polls
            .cast_vote(bearer(vote_req(id, "opt-3", "k1"), &bob))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        s.message().starts_with("idempotency_key"),
        "{}",
        s.message()
    );
    let other = create(&mut polls, &alice, create_req("Other?", 2)).await;
    expect_code(
        polls
            .cast_vote(bearer(vote_req(&other.poll_id, "opt-2", "k1"), &bob))
            .await,
        Code::InvalidArgument,
    );

    // Keys are per voter: alice may use "k1" too.
    polls
        .cast_vote(bearer(vote_req(id, "opt-2", "k1"), &alice))
        .await
        .expect("alice votes");
    let r = results(&mut polls, &bob, id).await;
    assert_eq!(r.total_votes, 2);
    assert_eq!(
        counts(&r),
        BTreeMap::from([
            ("opt-1".to_string(), 0),
            ("opt-2".to_string(), 2),
            ("opt-3".to_string(), 0)
        ])
    );

    // After close, a retry still replays; a new vote is refused.
    polls
        .close_poll(bearer(pb::ClosePollRequest { poll_id: id.into() }, &alice))
        .await
        .expect("close");
    let late_retry = polls
        .cast_vote(bearer(vote_req(id, "opt-2", "k1"), &bob))
        .await
        .expect("replay after close")
        .into_inner();
    assert!(late_retry.replayed);
    let (_, carol) = stack.account("carol@example.com").await;
    expect_code(
        polls
            .cast_vote(bearer(vote_req(id, "opt-1", "c1"), &carol))
            .await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn expired_polls_refuse_votes() {
    let stack = Stack::start("").await;
    let (_, alice) = stack.account("alice@example.com").await;
    let mut polls = stack.polls().await;
    let deadline = timestamp_in(Duration::from_secs(2), false);
    let poll = create(
        &mut polls,
        &alice,
        pb::CreatePollRequest {
            closes_at: Some(deadline),
            ..create_req("Quick?", 2)
        },
    )
    .await;
    // Wait until the deadline has passed (a condition, not a timing assertion).
    loop {
        let now = timestamp_in(Duration::ZERO, false);
        if (now.seconds, now.nanos) > (deadline.seconds + 1, deadline.nanos) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expect_code(
        polls
            .cast_vote(bearer(vote_req(&poll.poll_id, "opt-1", "k"), &alice))
            .await,
        Code::FailedPrecondition,
    );
    let r = results(&mut polls, &alice, &poll.poll_id).await;
    assert_eq!(r.status, pb::PollStatus::Closed as i32);
    expect_code(
        polls
            .close_poll(bearer(
                pb::ClosePollRequest {
                    poll_id: poll.poll_id.clone(),
                },
                &alice,
            ))
            .await,
        Code::FailedPrecondition,
    );
}

/// An EdDSA token with valid claims, signed by a freshly generated key.
fn forge_token(kid: &str, sub: &str) -> String {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let key = jsonwebtoken::EncodingKey::from_ed_der(&pair.serialize_der());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": sub, "iss": "tally-user", "aud": "tally",
        "iat": now, "exp": now + 600, "sid": "forged",
    });
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

#[tokio::test]
async fn credentials_and_scopes() {
    // No API key cache, so a revoked key is refused at once.
    let stack = Stack::start("[auth]\napi_key_cache_ttl_secs = 0\n").await;
    let (alice_id, alice) = stack.account("alice@example.com").await;
    let mut polls = stack.polls().await;
    let poll = create(&mut polls, &alice, create_req("Scoped?", 2)).await;
    let get = || pb::GetPollRequest {
        poll_id: poll.poll_id.clone(),
    };

    // Missing and bad credentials.
    expect_code(
        polls.get_poll(Request::new(get())).await,
        Code::Unauthenticated,
    );
    expect_code(
        polls.get_poll(bearer(get(), "not-a-jwt")).await,
        Code::Unauthenticated,
    );
    let mut basic = Request::new(get());
    basic
        .metadata_mut()
        .insert("authorization", "Basic YTpi".parse().expect("ascii"));
    expect_code(polls.get_poll(basic).await, Code::Unauthenticated);
    // A token with a tampered payload or signature.
    let parts: Vec<&str> = alice.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
    let bad_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.into_iter().collect::<String>()
    );
    expect_code(
        polls.get_poll(bearer(get(), &bad_sig)).await,
        Code::Unauthenticated,
    );
    let swapped = format!("{}.{}.{}", parts[0], parts[0], parts[2]);
    expect_code(
        polls.get_poll(bearer(get(), &swapped)).await,
        Code::Unauthenticated,
    );
    expect_code(
        polls.get_poll(api_key(get(), "tk_nope_nothing")).await,
        Code::Unauthenticated,
    );
    // Well-formed tokens signed by a key the user service never published:
    // once with the real key id, once with an unknown one (which makes the
    // verifier refetch the JWKS first).
    let real_kid = jsonwebtoken::decode_header(&alice)
        .expect("header")
        .kid
        .expect("kid");
    for kid in [real_kid.as_str(), "kid-nobody-published"] {
        let forged = forge_token(kid, &alice_id);
        let s = expect_code(
            polls.get_poll(bearer(get(), &forged)).await,
            Code::Unauthenticated,
        );
        assert!(!s.message().is_empty());
    }

    // A read-only key reads but cannot write or vote.
    let (_, reader) = stack.api_key(&alice, &["polls:read"]).await;
    polls
        .get_poll(api_key(get(), &reader))
        .await
        .expect("read with key");
    let s = expect_code(
        polls
            .create_poll(api_key(create_req("No?", 2), &reader))
            .await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("polls:write"), "{}", s.message());
    let s = expect_code(
        polls
            .cast_vote(api_key(vote_req(&poll.poll_id, "opt-1", "k"), &reader))
            .await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("votes:write"), "{}", s.message());
    let s = expect_code(
        polls
            .close_poll(api_key(
                pb::ClosePollRequest {
                    poll_id: poll.poll_id.clone(),
                },
                &reader,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("polls:write"), "{}", s.message());

    // A vote-only key votes but cannot read.
    let (_, voter) = stack.api_key(&alice, &["votes:write"]).await;
    let v = polls
        .cast_vote(api_key(vote_req(&poll.poll_id, "opt-1", "kv"), &voter))
        .await
        .expect("vote with key")
        .into_inner();
    assert_eq!(v.vote.expect("vote").voter_id, alice_id);
    expect_code(
        polls.get_poll(api_key(get(), &voter)).await,
        Code::PermissionDenied,
    );

    // A full key acts as its user: creates polls owned by them.
    let (full_id, full) = stack
        .api_key(&alice, &["polls:read", "polls:write", "votes:write"])
        .await;
    let created = polls
        .create_poll(api_key(create_req("Via key?", 2), &full))
        .await
        .expect("create with key")
        .into_inner()
        .poll
        .expect("poll");
    assert_eq!(created.owner_id, alice_id);

    // Revoked keys stop working.
    let mut users = stack.users().await;
    users
        .revoke_api_key(bearer(
            tally_api::user::v1::RevokeApiKeyRequest { key_id: full_id },
            &alice,
        ))
        .await
        .expect("revoke");
    expect_code(
        polls
            .create_poll(api_key(create_req("Revoked?", 2), &full))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn pagination_is_stable_and_complete() {
    let stack = Stack::start("").await;
    let (alice_id, alice) = stack.account("alice@example.com").await;
    let (bob_id, bob) = stack.account("bob@example.com").await;
    let mut polls = stack.polls().await;
    let mut created = Vec::new();
    for i in 0..23 {
        created.push(
            create(&mut polls, &alice, create_req(&format!("Q{i}"), 2))
                .await
                .poll_id,
        );
    }
    let bobs = create(&mut polls, &bob, create_req("Bob's", 2))
        .await
        .poll_id;

    let list = |filter: pb::list_polls_request::Filter, size: u32, token: String| {
        bearer(
            pb::ListPollsRequest {
                filter: Some(filter),
                page: Some(tally_api::common::v1::PageRequest {
                    page_size: size,
                    page_token: token,
                }),
            },
            &bob,
        )
    };
    let by_alice = || pb::list_polls_request::Filter::OwnerId(alice_id.clone());

    // Pages of 5, with a poll created mid-way: nothing skipped or repeated,
    // and the newcomer appears at the end.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = polls
            .list_polls(list(by_alice(), 5, token.clone()))
            .await
            .expect("page")
            .into_inner();
        assert!(page.polls.len() <= 5);
        assert!(page.polls.iter().all(|p| p.owner_id == alice_id));
        seen.extend(page.polls.into_iter().map(|p| p.poll_id));
        pages += 1;
        if pages == 2 {
            created.push(
                create(&mut polls, &alice, create_req("Late", 2))
                    .await
                    .poll_id,
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 5, "24 polls in pages of 5");

    // Default page size holds them all; an exact fit has no next token.
    let all = polls
        .list_polls(list(by_alice(), 0, String::new()))
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(all.polls.len(), 24);
    assert!(all.next_page_token.is_empty());
    let exact = polls
        .list_polls(list(by_alice(), 24, String::new()))
        .await
        .expect("exact page")
        .into_inner();
    assert!(exact.next_page_token.is_empty());
    // Oversized pages are capped, not refused.
    polls
        .list_polls(list(by_alice(), 100_000, String::new()))
        .await
        .expect("capped page");

    // Open polls from everyone, in creation order.
    let open = polls
        .list_polls(list(
            pb::list_polls_request::Filter::OpenOnly(true),
            500,
            String::new(),
        ))
        .await
        .expect("open")
        .into_inner();
    let open_ids: Vec<String> = open.polls.into_iter().map(|p| p.poll_id).collect();
    let mut expected = created.clone();
    expected.push(bobs.clone());
    expected.sort();
    assert_eq!(open_ids, expected);

    // No filter: the caller's own polls.
    let mine = polls
        .list_polls(bearer(pb::ListPollsRequest::default(), &bob))
        .await
        .expect("mine")
        .into_inner();
    assert_eq!(
        mine.polls.iter().map(|p| &p.poll_id).collect::<Vec<_>>(),
        [&bobs]
    );
    assert!(mine.polls.iter().all(|p| p.owner_id == bob_id));

    for garbage in ["garbage!", "Zm9v", "%%%"] {
        let s = expect_code(
            polls
                .list_polls(list(by_alice(), 5, garbage.to_string()))
                .await,
            Code::InvalidArgument,
        );
        assert!(
            s.message().starts_with("page.page_token"),
            "{}",
            s.message()
        );
    }
}

/// Casts a vote, retrying while the service reports a transient failure
/// (ABORTED after lost races, UNAVAILABLE): what a real client does.
async fn vote_with_retries(
    mut polls: Polls,
    token: Arc<String>,
    req: pb::CastVoteRequest,
) -> Result<pb::CastVoteResponse, Status> {
    let mut last = None;
    for _ in 0..50 {
        match polls.cast_vote(bearer(req.clone(), &token)).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if matches!(s.code(), Code::Aborted | Code::Unavailable) => {
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => return Err(s),
        }
    }
    Err(last.unwrap_or_else(|| Status::internal("no attempt made")))
}

#[tokio::test]
async fn concurrent_votes_are_exact_and_survive_restart() {
    // Without the in-process lock only the optimistic guard protects counts.
    let mut stack = Stack::start("[polling]\nlocal_write_lock = false\n").await;
    let (_, owner) = stack.account("owner@example.com").await;
    let mut polls = stack.polls().await;
    let poll = create(&mut polls, &owner, create_req("Concurrent?", 4)).await;
    let poll_id = poll.poll_id.clone();

    const VOTERS: usize = 50;
    let mut tokens = Vec::new();
    {
        use futures::StreamExt;
        let accounts = futures::stream::iter(0..VOTERS)
            .map(|i| {
                let stack = &stack;
                async move { stack.account(&format!("voter{i}@example.com")).await }
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        tokens.extend(accounts.into_iter().map(|(_, t)| Arc::new(t)));
    }

    // Per voter: 4 concurrent calls with key A and 2 with key B, all for the
    // same option, all at once.
    let option_of = |i: usize| format!("opt-{}", i % 4 + 1);
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        for attempt in 0..6 {
            let key = if attempt < 4 {
                format!("voter{i}-a")
            } else {
                format!("voter{i}-b")
            };
            let req = vote_req(&poll_id, &option_of(i), &key);
            let client = polls.clone();
            let token = token.clone();
            tasks.push((i, key, tokio::spawn(vote_with_retries(client, token, req))));
        }
    }
    let mut fresh: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    let mut replays: Vec<(usize, String, String)> = Vec::new();
    let mut duplicates = 0usize;
    for (i, key, task) in tasks {
        match task.await.expect("join") {
            Ok(r) => {
                let vote = r.vote.expect("vote");
                assert_eq!(vote.option_id, option_of(i));
                if r.replayed {
                    replays.push((i, key, vote.vote_id));
                } else {
                    fresh.entry(i).or_default().push((key, vote.vote_id));
                }
            }
            Err(s) if s.code() == Code::AlreadyExists => duplicates += 1,
            Err(s) => panic!("voter {i} key {key}: unexpected {s:?}"),
        }
    }
    // Exactly one vote per voter was recorded...
    assert_eq!(fresh.len(), VOTERS);
    assert!(fresh.values().all(|v| v.len() == 1), "{fresh:?}");
    // ...every replay returned that vote under its key...
    for (i, key, vote_id) in &replays {
        let (winning_key, winning_id) = &fresh[i][0];
        assert_eq!(key, winning_key, "voter {i}: replay under the losing key");
        assert_eq!(vote_id, winning_id);
    }
    // ...and every other call was refused as a duplicate.
    assert_eq!(VOTERS + replays.len() + duplicates, VOTERS * 6);
    let winners: HashSet<&String> = fresh.values().map(|v| &v[0].1).collect();
    assert_eq!(winners.len(), VOTERS, "vote ids are unique");

    let before = results(&mut polls, &owner, &poll_id).await;
    assert_eq!(before.total_votes, VOTERS as u64);
    let mut expected = BTreeMap::new();
    for i in 0..VOTERS {
        *expected.entry(option_of(i)).or_insert(0u64) += 1;
    }
    assert_eq!(counts(&before), expected);

    // Stop polling and read its store directly: the projection equals the
    // counts recomputed from the vote log, and the outbox holds one event per
    // change with dense per-poll sequences.
    stack.polling.stop().await;
    {
        let store = tally_chassis::storage::embedded::EmbeddedStore::open(&stack.polling_db_path())
            .await
            .expect("open polling store");
        let store: Arc<dyn tally_chassis::storage::Store> = Arc::new(store);
        let repo = PollRepository::new(store.clone(), 1, false);
        assert_eq!(
            repo.recompute_counts(&poll_id).await.expect("recompute"),
            expected
        );
        assert_eq!(repo.vote_log(&poll_id).await.expect("log").len(), VOTERS);
        let outbox = store.read_outbox(0, 10_000).await.expect("outbox");
        let sequences: Vec<u64> = outbox
            .iter()
            .filter(|e| e.event.aggregate_id == poll_id)
            .map(|e| {
                use prost::Message;
                tally_api::events::v1::EventEnvelope::decode(e.event.payload.as_slice())
                    .expect("envelope")
                    .sequence
            })
            .collect();
        assert_eq!(sequences, (1..=VOTERS as u64 + 1).collect::<Vec<_>>());
    }

    // Restart: the data is still there.
    stack.polling.restart().await;
    let mut polls = stack.polls().await;
    let after = results(&mut polls, &owner, &poll_id).await;
    assert_eq!(after, before);
    let again = polls
        .cast_vote(bearer(vote_req(&poll_id, "opt-1", "voter0-a"), &tokens[0]))
        .await;
    match again {
        Ok(r) => assert!(r.into_inner().replayed),
        Err(s) => assert_eq!(s.code(), Code::AlreadyExists),
    }
}

#[tokio::test]
async fn health_follows_the_user_service() {
    let mut stack = Stack::start("[polling]\nhealth_interval_secs = 1\n").await;
    let (_, alice) = stack.account("alice@example.com").await;
    stack.user.stop().await;
    stack.polling.wait_health(ServingStatus::NotServing).await;
    // Tokens whose key is already cached still verify locally.
    let mut polls = stack.polls().await;
    create(&mut polls, &alice, create_req("Offline user service?", 2)).await;
    stack.user.restart().await;
    stack.polling.wait_health(ServingStatus::Serving).await;
}
