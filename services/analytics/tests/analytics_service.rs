//! The analytics service over real processes: user, polling and analytics
//! binaries on real sockets, with polling's event feed as the transport.

mod support;

use support::*;
use tally_api::analytics::v1 as pb;
use tally_api::common::v1::PageRequest;
use tally_api::events::v1 as evpb;
use tally_api::poll::v1 as pollpb;
use tonic::Code;

/// Polling's results for `poll_id` as (option id, text, votes), total, closed.
async fn polling_results(
    stack: &Stack,
    token: &str,
    poll_id: &str,
) -> (Vec<(String, String, u64)>, u64, bool) {
    let r = stack
        .as_user(token)
        .get_results(poll_id)
        .await
        .unwrap_or_else(|e| panic!("GetResults {poll_id}: {e}"));
    (
        r.results
            .into_iter()
            .map(|o| (o.option_id, o.text, o.votes))
            .collect(),
        r.total_votes,
        r.status == pollpb::PollStatus::Closed as i32,
    )
}

async fn analytics_results(
    stack: &Stack,
    token: &str,
    poll_id: &str,
) -> (Vec<(String, String, u64)>, u64, bool) {
    let r = analytics_client(stack.analytics())
        .get_poll_results(bearer(
            pb::GetPollResultsRequest {
                poll_id: poll_id.into(),
            },
            token,
        ))
        .await
        .unwrap_or_else(|e| panic!("GetPollResults {poll_id}: {e:?}"))
        .into_inner();
    (
        r.options
            .into_iter()
            .map(|o| (o.option_id, o.text, o.votes))
            .collect(),
        r.total_votes,
        r.closed,
    )
}

async fn assert_equal_to_polling(stack: &Stack, token: &str, polls: &[String], label: &str) {
    for poll_id in polls {
        let want = polling_results(stack, token, poll_id).await;
        let got = analytics_results(stack, token, poll_id).await;
        assert_eq!(got, want, "{label}: poll {poll_id} differs from polling");
    }
}

/// Creates `polls` polls owned by a new account, then `voters` voters each
/// vote once in every poll (concurrently); returns (owner id, owner token, poll ids, votes cast).
async fn populate(
    stack: &Stack,
    tag: &str,
    polls: usize,
    voters: usize,
) -> (String, String, Vec<String>, u64) {
    let (owner_id, owner) = stack.account(&format!("owner-{tag}@example.com")).await;
    let mut poll_ids = Vec::new();
    for i in 0..polls {
        let poll = stack
            .as_user(&owner)
            .create_poll(
                &format!("Question {tag} {i}?"),
                ["red", "green", "blue"],
                None,
            )
            .await
            .expect("create poll");
        poll_ids.push(poll.poll_id);
    }
    let mut tasks = Vec::new();
    for v in 0..voters {
        let (_, token) = stack.account(&format!("voter-{tag}-{v}@example.com")).await;
        let client = stack.as_user(&token);
        let polls = poll_ids.clone();
        tasks.push(tokio::spawn(async move {
            for (i, poll_id) in polls.iter().enumerate() {
                let option = format!("opt-{}", (v * 7 + i) % 3 + 1);
                client
                    .cast_vote(poll_id, &option, &format!("k-{v}-{i}"))
                    .await
                    .unwrap_or_else(|e| panic!("vote {v} in {poll_id}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("voter task");
    }
    (owner_id, owner, poll_ids, (polls * voters) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analytics_equals_polling_then_again_after_a_rebuild_replay() {
    let stack = Stack::start(StackOptions {
        analytics: Some(String::new()),
        ..Default::default()
    })
    .await;
    let (owner_id, owner, polls, votes) = populate(&stack, "eq", 5, 8).await;
    stack
        .as_user(&owner)
        .close_poll(&polls[0])
        .await
        .expect("close");

    let status = wait_caught_up(&stack, stack.analytics()).await;
    assert_eq!(status.dead_letters, 0, "{status:?}");
    assert_equal_to_polling(&stack, &owner, &polls, "live").await;

    // Owner totals follow from the same events.
    let totals = analytics_client(stack.analytics())
        .get_owner_totals(bearer(pb::GetOwnerTotalsRequest::default(), &owner))
        .await
        .expect("owner totals")
        .into_inner();
    assert_eq!(
        (
            totals.owner_id.as_str(),
            totals.polls,
            totals.open_polls,
            totals.total_votes
        ),
        (owner_id.as_str(), 5, 4, votes)
    );

    // Votes over time add up to the poll's total.
    let series = analytics_client(stack.analytics())
        .get_vote_time_series(bearer(
            pb::GetVoteTimeSeriesRequest {
                poll_id: polls[1].clone(),
                page: None,
            },
            &owner,
        ))
        .await
        .expect("series")
        .into_inner();
    assert_eq!(series.buckets.iter().map(|b| b.votes).sum::<u64>(), 8);

    // Rebuild from scratch by replay, then compare again.
    let mut admin = admin_client(stack.analytics());
    admin
        .replay(evpb::ReplayRequest {
            consumer: status.consumer.clone(),
            from_offset: 0,
            rebuild: true,
        })
        .await
        .expect("replay");
    let after = wait_caught_up(&stack, stack.analytics()).await;
    assert_eq!(after.dead_letters, 0, "{after:?}");
    assert_equal_to_polling(&stack, &owner, &polls, "after rebuild").await;
    let totals = analytics_client(stack.analytics())
        .get_owner_totals(bearer(
            pb::GetOwnerTotalsRequest {
                owner_id: owner_id.clone(),
            },
            &owner,
        ))
        .await
        .expect("owner totals")
        .into_inner();
    assert_eq!(
        (totals.polls, totals.open_polls, totals.total_votes),
        (5, 4, votes)
    );

    // Replaying without a rebuild re-delivers events that are already applied: no effect.
    admin
        .replay(evpb::ReplayRequest {
            consumer: status.consumer.clone(),
            from_offset: 0,
            rebuild: false,
        })
        .await
        .expect("replay");
    wait_caught_up(&stack, stack.analytics()).await;
    assert_equal_to_polling(&stack, &owner, &polls, "after a plain replay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_paginate_with_opaque_tokens_and_refuse_bad_input() {
    let stack = Stack::start(StackOptions {
        analytics: Some(String::new()),
        ..Default::default()
    })
    .await;
    let (owner_id, owner) = stack.account("pager@example.com").await;
    let mut voters = Vec::new();
    for v in 0..4 {
        voters.push(stack.account(&format!("pv{v}@example.com")).await.1);
    }
    // Poll i gets i votes, so the ranking is known.
    let mut polls = Vec::new();
    for i in 0..5usize {
        let poll = stack
            .as_user(&owner)
            .create_poll(&format!("Rank {i}?"), ["a", "b"], None)
            .await
            .expect("create");
        for voter in voters.iter().take(i) {
            stack
                .as_user(voter)
                .cast_vote(&poll.poll_id, "opt-1", "")
                .await
                .expect("vote");
        }
        polls.push(poll.poll_id);
    }
    wait_caught_up(&stack, stack.analytics()).await;

    let mut client = analytics_client(stack.analytics());
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_top_polls(bearer(
                pb::ListTopPollsRequest {
                    page: Some(PageRequest {
                        page_size: 2,
                        page_token: token.clone(),
                    }),
                },
                &owner,
            ))
            .await
            .expect("top page")
            .into_inner();
        assert!(page.polls.len() <= 2);
        seen.extend(
            page.polls
                .into_iter()
                .map(|p| (p.poll_id, p.total_votes, p.owner_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(
            !page.next_page_token.contains(&polls[0]),
            "tokens are opaque"
        );
        token = page.next_page_token;
    }
    let expected: Vec<(String, u64, String)> = (0..5)
        .rev()
        .map(|i| (polls[i].clone(), i as u64, owner_id.clone()))
        .collect();
    assert_eq!(seen, expected, "most votes first, every poll once");

    for bad in ["garbage!", "dDF8bm9wZQ", &"x".repeat(300)] {
        let err = client
            .list_top_polls(bearer(
                pb::ListTopPollsRequest {
                    page: Some(PageRequest {
                        page_size: 2,
                        page_token: bad.to_string(),
                    }),
                },
                &owner,
            ))
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        let err = client
            .get_vote_time_series(bearer(
                pb::GetVoteTimeSeriesRequest {
                    poll_id: polls[4].clone(),
                    page: Some(PageRequest {
                        page_size: 1,
                        page_token: bad.to_string(),
                    }),
                },
                &owner,
            ))
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }

    let unknown = uuid_like();
    let err = client
        .get_poll_results(bearer(
            pb::GetPollResultsRequest {
                poll_id: unknown.clone(),
            },
            &owner,
        ))
        .await
        .expect_err("unknown poll");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_vote_time_series(bearer(
            pb::GetVoteTimeSeriesRequest {
                poll_id: unknown,
                page: None,
            },
            &owner,
        ))
        .await
        .expect_err("unknown poll");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_poll_results(bearer(
            pb::GetPollResultsRequest {
                poll_id: String::new(),
            },
            &owner,
        ))
        .await
        .expect_err("empty id");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Reads need a caller.
    let err = client
        .get_poll_results(pb::GetPollResultsRequest {
            poll_id: polls[1].clone(),
        })
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .get_poll_results(bearer(
            pb::GetPollResultsRequest {
                poll_id: polls[1].clone(),
            },
            "not-a-jwt",
        ))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // API keys: `polls:read` reads, other scopes are refused.
    for (scopes, code) in [
        (vec!["votes:write"], Some(Code::PermissionDenied)),
        (vec!["polls:read"], None),
    ] {
        let key = stack
            .as_user(&owner)
            .create_api_key("analytics-test", scopes.clone())
            .await
            .expect("api key");
        let mut req = tonic::Request::new(pb::GetPollResultsRequest {
            poll_id: polls[2].clone(),
        });
        req.metadata_mut()
            .insert("x-api-key", key.secret.parse().expect("ascii"));
        let result = client.get_poll_results(req).await;
        match code {
            Some(code) => assert_eq!(result.expect_err("refused").code(), code, "{scopes:?}"),
            None => assert_eq!(
                result.expect("allowed").into_inner().total_votes,
                2,
                "{scopes:?}"
            ),
        }
    }
}

#[tokio::test]
async fn bad_config_exits_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (binary, text, key) in [
        (
            "tally-analytics",
            "[analytics]\nmax_page_size = 0\n",
            "analytics.max_page_size",
        ),
        (
            "tally-analytics",
            "[events]\ntransport = \"redis\"\nurl = \"http://x\"\n",
            "events.url",
        ),
        (
            "tally-notification",
            "[notification]\nsubscriber_buffer = 0\n",
            "notification.subscriber_buffer",
        ),
        (
            "tally-notification",
            "[outbound]\nuser = \"http://127.0.0.1:1\"\n",
            "outbound.polling",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(tally_testkit::bin_path(binary))
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{binary}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key) && stderr.contains("fix"),
            "{binary}: {stderr}"
        );
    }
}

fn uuid_like() -> String {
    "01900000-0000-7000-8000-000000000000".to_string()
}

async fn wait_serving(svc: &Service, want: bool) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    while tally_testkit::is_serving(&svc.addr, "tally.analytics.v1.AnalyticsService").await != want
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} health never became serving={want}\n{}",
            svc.name,
            svc.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_the_event_source_and_the_consumer_resumes_after_polling_restarts() {
    let mut stack = Stack::start(StackOptions {
        analytics: Some(String::new()),
        ..Default::default()
    })
    .await;
    let (_, owner) = stack.account("health-owner@example.com").await;
    let (_, voter) = stack.account("health-voter@example.com").await;
    let poll = stack
        .as_user(&owner)
        .create_poll("Health?", ["a", "b"], None)
        .await
        .expect("create");
    wait_caught_up(&stack, stack.analytics()).await;

    // Without its event source the consumer's lag is unknown: NOT_SERVING.
    stack.polling.kill();
    wait_serving(stack.analytics(), false).await;
    stack.polling.start().await;
    stack
        .as_user(&voter)
        .cast_vote(&poll.poll_id, "opt-2", "")
        .await
        .expect("vote");
    wait_serving(stack.analytics(), true).await;
    wait_caught_up(&stack, stack.analytics()).await;
    assert_equal_to_polling(
        &stack,
        &owner,
        std::slice::from_ref(&poll.poll_id),
        "after polling restarted",
    )
    .await;
    assert_eq!(analytics_results(&stack, &owner, &poll.poll_id).await.1, 1);
}
