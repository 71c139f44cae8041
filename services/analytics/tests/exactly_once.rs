//! Exactly-once effects over at-least-once delivery, under chaos: many votes
//! are cast while the analytics, notification and polling processes (polling
//! also serves the feed or runs the Redis relay) are SIGKILLed and restarted
//! at random points. At the end the analytics read model and the notification
//! counts must equal the votes polling stored: nothing lost, nothing counted
//! twice. One suite, run over every transport: the embedded feed, Redis
//! Streams and a real Kafka-protocol broker (`transport_suite!` generates a
//! test per transport).
//!
//! The same suite sends a poison event to the dead-letter queue and redrives
//! it once after the fix, on every transport.
//!
//! The kill schedule comes from a seed printed at the start; set
//! `CHAOS_SEED=<n>` to replay one.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::*;
use tally_api::analytics::v1 as pb;
use tally_api::events::v1 as evpb;
use tally_api::notification::v1 as npb;
use tonic::Code;

const POLLS: usize = 6;
const VOTERS: usize = 16;
const MIN_ROUNDS: usize = 10;

fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// Polling's counts per option for `poll_id` (retrying while it restarts).
async fn polling_counts(stack: &Stack, token: &str, poll_id: &str) -> (Vec<(String, u64)>, u64) {
    let client = stack.as_user(token);
    loop {
        match client.get_results(poll_id).await {
            Ok(r) => {
                return (
                    r.results
                        .into_iter()
                        .map(|o| (o.option_id, o.votes))
                        .collect(),
                    r.total_votes,
                );
            }
            Err(e) if transient(e.code()) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("GetResults {poll_id}: {e}"),
        }
    }
}

async fn analytics_counts(stack: &Stack, token: &str, poll_id: &str) -> (Vec<(String, u64)>, u64) {
    let r = retry("GetPollResults", || {
        let mut client = analytics_client(stack.analytics());
        let req = bearer(
            pb::GetPollResultsRequest {
                poll_id: poll_id.to_string(),
            },
            token,
        );
        async move { client.get_poll_results(req).await }
    })
    .await
    .into_inner();
    (
        r.options
            .into_iter()
            .map(|o| (o.option_id, o.votes))
            .collect(),
        r.total_votes,
    )
}

/// The notification replica's current counts: the snapshot that opens a fresh watch.
async fn notification_counts(stack: &Stack, poll_id: &str) -> (Vec<(String, u64)>, u64) {
    let mut stream = retry("WatchPoll", || {
        let mut client = notification_client(stack.notification(), None);
        let req = npb::WatchPollRequest {
            poll_id: poll_id.to_string(),
            resume_after_sequence: 0,
        };
        async move { client.watch_poll(req).await }
    })
    .await
    .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("snapshot within the hang guard")
        .expect("stream ok")
        .expect("snapshot");
    assert!(msg.snapshot);
    let u = msg.update.expect("update");
    (
        u.counts
            .into_iter()
            .map(|c| (c.option_id, c.votes))
            .collect(),
        u.total_votes,
    )
}

/// Kills `victims` (SIGKILL), waits a random moment, restarts them (polling
/// first, since the consumers read from it) and waits until they serve.
async fn chaos_round(stack: &mut Stack, rng: &mut StdRng, log: &mut Vec<String>) {
    let pick = rng.random_range(0..5u32);
    let (polling, analytics, notification) = match pick {
        0 => (true, false, false),
        1 => (false, true, false),
        2 => (false, false, true),
        3 => (false, true, true),
        _ => (true, true, true),
    };
    log.push(format!(
        "p{}a{}n{}",
        polling as u8, analytics as u8, notification as u8
    ));
    if polling {
        stack.polling.kill();
    }
    if analytics {
        stack.analytics.as_mut().expect("analytics").kill();
    }
    if notification {
        stack.notification.as_mut().expect("notification").kill();
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    if polling {
        stack.polling.start().await;
    }
    if analytics {
        stack.analytics.as_mut().expect("analytics").start().await;
    }
    if notification {
        stack
            .notification
            .as_mut()
            .expect("notification")
            .start()
            .await;
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
}

/// The transports the suite runs on.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Embedded,
    Redis,
    Kafka,
}

async fn exactly_once_under_chaos(transport: Transport) {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("chaos seed {seed} ({transport:?}); rerun with CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stack = Stack::start(StackOptions {
        redis: matches!(transport, Transport::Redis),
        kafka: matches!(transport, Transport::Kafka),
        analytics: Some(String::new()),
        notification: Some(String::new()),
        ..Default::default()
    })
    .await;

    let (_, owner) = stack.account("chaos-owner@example.com").await;
    let mut polls = Vec::new();
    for i in 0..POLLS {
        let poll = stack
            .as_user(&owner)
            .create_poll(&format!("Chaos {i}?"), ["a", "b", "c"], None)
            .await
            .expect("create");
        polls.push(poll.poll_id);
    }
    let mut voters = Vec::new();
    for v in 0..VOTERS {
        voters.push(
            stack
                .account(&format!("chaos-voter-{v}@example.com"))
                .await
                .1,
        );
    }

    // Voters cast every vote until polling confirms it (same idempotency key
    // on every retry, so a retried vote is never a second vote).
    let done = Arc::new(AtomicBool::new(false));
    let cast = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (v, token) in voters.iter().enumerate() {
        let client = stack.as_user(token);
        let polls = polls.clone();
        let cast = cast.clone();
        let option = ["opt-1", "opt-2", "opt-3"][rng.random_range(0..3)];
        // Paced so the votes spread over many kill rounds.
        let pauses: Vec<u64> = (0..POLLS).map(|_| rng.random_range(300..1500)).collect();
        tasks.push(tokio::spawn(async move {
            for (p, poll_id) in polls.iter().enumerate() {
                let key = format!("chaos-{v}-{p}");
                loop {
                    match client.cast_vote(poll_id, option, &key).await {
                        Ok(_) => break,
                        Err(e) if transient(e.code()) => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => panic!("vote {key}: {e}"),
                    }
                }
                cast.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(pauses[p])).await;
            }
        }));
    }
    let voting = {
        let done = done.clone();
        tokio::spawn(async move {
            for t in tasks {
                t.await.expect("voter task");
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut log = Vec::new();
    let mut rounds = 0;
    let mut rounds_while_voting = 0;
    while !done.load(Ordering::SeqCst) || rounds < MIN_ROUNDS {
        if !done.load(Ordering::SeqCst) {
            rounds_while_voting += 1;
        }
        chaos_round(&mut stack, &mut rng, &mut log).await;
        rounds += 1;
    }
    voting.await.expect("voting");
    assert_eq!(cast.load(Ordering::SeqCst), (POLLS * VOTERS) as u64);
    // One more kill of the consumers while they catch up.
    for svc in [stack.analytics.as_mut(), stack.notification.as_mut()]
        .into_iter()
        .flatten()
    {
        svc.kill();
        svc.start().await;
    }
    eprintln!(
        "chaos rounds: {rounds}, {} while voting ({})",
        rounds_while_voting,
        log.join(" ")
    );

    let a = wait_caught_up(&stack, stack.analytics()).await;
    let n = wait_caught_up(&stack, stack.notification()).await;
    assert_eq!((a.dead_letters, n.dead_letters), (0, 0), "{a:?} {n:?}");

    let mut stored = 0;
    for poll_id in &polls {
        let want = polling_counts(&stack, &owner, poll_id).await;
        stored += want.1;
        assert_eq!(
            want.1, VOTERS as u64,
            "polling stored every vote of poll {poll_id}"
        );
        let got = analytics_counts(&stack, &owner, poll_id).await;
        assert_eq!(
            got, want,
            "analytics vs polling for {poll_id} (seed {seed})"
        );
        let live = notification_counts(&stack, poll_id).await;
        assert_eq!(
            live, want,
            "notification vs polling for {poll_id} (seed {seed})"
        );
    }
    assert_eq!(stored, (POLLS * VOTERS) as u64);
}

/// A poll analytics refuses (an injected fault) sends its `PollCreated` and
/// votes to the dead-letter queue while the rest is applied; a redrive
/// before the fix keeps them; after the fix (a restart without the fault) a
/// redrive applies each exactly once, and neither a second redrive nor a
/// replay from the start changes the counts.
async fn poison_to_the_dlq_then_redriven_once(transport: Transport) {
    let poison = "Poison question?";
    let mut stack = Stack::start(StackOptions {
        redis: matches!(transport, Transport::Redis),
        kafka: matches!(transport, Transport::Kafka),
        analytics: Some(format!("reject_questions = [\"{poison}\"]\n")),
        retry_max_attempts: Some(2),
        ..Default::default()
    })
    .await;
    let (_, owner) = stack.account("dlq-owner@example.com").await;
    let good = stack
        .as_user(&owner)
        .create_poll("Fine question?", ["a", "b"], None)
        .await
        .expect("create");
    let bad = stack
        .as_user(&owner)
        .create_poll(poison, ["a", "b"], None)
        .await
        .expect("create");
    for v in 0..3 {
        let (_, token) = stack.account(&format!("dlq-voter-{v}@example.com")).await;
        for poll in [&good, &bad] {
            let option = if poll.poll_id == good.poll_id {
                "opt-1"
            } else {
                "opt-2"
            };
            stack
                .as_user(&token)
                .cast_vote(&poll.poll_id, option, "")
                .await
                .expect("vote");
        }
    }
    let status = wait_caught_up(&stack, stack.analytics()).await;
    // PollCreated of the poison poll and its three votes are dead-lettered; the rest is applied.
    assert_eq!(status.dead_letters, 4, "{status:?}");
    let mut admin = admin_client(stack.analytics());
    let letters = admin
        .list_dead_letters(evpb::ListDeadLettersRequest {
            consumer: status.consumer.clone(),
        })
        .await
        .expect("list")
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 4);
    assert!(
        letters
            .iter()
            .all(|l| l.attempts >= 1 && !l.error.is_empty()),
        "{letters:?}"
    );
    let created: Vec<_> = letters
        .iter()
        .filter(|l| l.event_type == "tally.events.v1.PollCreated")
        .collect();
    assert_eq!(created.len(), 1, "{letters:?}");
    assert!(
        created[0].error.contains("injected fault"),
        "{:?}",
        created[0]
    );
    let good_counts = polling_counts(&stack, &owner, &good.poll_id).await;
    assert_eq!(
        analytics_counts(&stack, &owner, &good.poll_id).await,
        good_counts
    );
    let err = analytics_client(stack.analytics())
        .get_poll_results(bearer(
            pb::GetPollResultsRequest {
                poll_id: bad.poll_id.clone(),
            },
            &owner,
        ))
        .await
        .expect_err("poison poll not applied");
    assert_eq!(err.code(), Code::NotFound);

    let redrive = |admin: &ConsumerAdmin| {
        let req = evpb::RedriveDeadLetterRequest {
            consumer: status.consumer.clone(),
            event_id: String::new(),
        };
        let mut admin = admin.clone();
        async move {
            let r = admin
                .redrive_dead_letter(req)
                .await
                .expect("redrive")
                .into_inner();
            (r.redriven, r.still_failing)
        }
    };
    // Redriving before the fix keeps them in the queue.
    assert_eq!(redrive(&admin).await, (0, 4));

    // The fix: restart without the fault.
    let analytics = stack.analytics.as_mut().expect("analytics");
    analytics.kill();
    let config = stack.dir.path().join("analytics.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(&format!("reject_questions = [\"{poison}\"]\n"), ""),
    )
    .expect("write");
    analytics.start().await;

    let mut admin = admin_client(stack.analytics());
    assert_eq!(redrive(&admin).await, (4, 0));
    let bad_counts = polling_counts(&stack, &owner, &bad.poll_id).await;
    assert_eq!(bad_counts.1, 3);
    assert_eq!(
        analytics_counts(&stack, &owner, &bad.poll_id).await,
        bad_counts
    );

    // Applied once: a second redrive finds nothing, a replay changes nothing.
    assert_eq!(redrive(&admin).await, (0, 0));
    admin
        .replay(evpb::ReplayRequest {
            consumer: status.consumer.clone(),
            from_offset: 0,
            rebuild: false,
        })
        .await
        .expect("replay");
    let after = wait_caught_up(&stack, stack.analytics()).await;
    assert_eq!(after.dead_letters, 0);
    for (poll_id, want) in [(&good.poll_id, &good_counts), (&bad.poll_id, &bad_counts)] {
        assert_eq!(
            &analytics_counts(&stack, &owner, poll_id).await,
            want,
            "after replay ({transport:?})"
        );
    }
}

type ConsumerAdmin =
    tally_api::events::v1::consumer_admin_service_client::ConsumerAdminServiceClient<
        tonic::transport::Channel,
    >;

/// One test per transport.
macro_rules! transport_suite {
    ($($module:ident => $transport:expr;)+) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn exactly_once_counts_under_chaos() {
                exactly_once_under_chaos($transport).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn poison_event_goes_to_the_dlq_and_is_applied_once_after_the_fix_and_redrive() {
                poison_to_the_dlq_then_redriven_once($transport).await;
            }
        }
    )+};
}

transport_suite! {
    embedded => Transport::Embedded;
    redis => Transport::Redis;
    kafka => Transport::Kafka;
}
