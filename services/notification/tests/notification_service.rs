//! The notification service over real processes: user, polling and
//! notification binaries on real sockets, polling's event feed as transport.

#[path = "../../analytics/tests/support/mod.rs"]
mod support;

use std::time::Duration;
use support::*;
use tally_api::notification::v1 as pb;
use tonic::{Code, Status, Streaming};

/// Hang guard for one message (never an assertion about speed).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(120);

async fn next<T>(stream: &mut Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(MESSAGE_TIMEOUT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no message within {MESSAGE_TIMEOUT:?}"))
}

async fn next_update(stream: &mut Streaming<pb::WatchPollResponse>) -> pb::WatchPollResponse {
    next(stream)
        .await
        .expect("stream error")
        .expect("stream ended")
}

/// Opens WatchPoll, retrying while the replica has not received the poll yet.
async fn watch(
    svc: &Service,
    poll_id: &str,
    resume_after: u64,
    window: Option<u32>,
) -> Streaming<pb::WatchPollResponse> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let mut client = notification_client(svc, window);
        let req = pb::WatchPollRequest {
            poll_id: poll_id.to_string(),
            resume_after_sequence: resume_after,
        };
        match client.watch_poll(req).await {
            Ok(r) => return r.into_inner(),
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unavailable) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} never knew poll {poll_id}: {s:?}\n{}",
                    svc.name,
                    svc.output()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("WatchPoll {poll_id}: {s:?}"),
        }
    }
}

fn counts(u: &pb::PollUpdate) -> Vec<(String, u64)> {
    u.counts
        .iter()
        .map(|c| (c.option_id.clone(), c.votes))
        .collect()
}

async fn voters(stack: &Stack, tag: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(stack.account(&format!("{tag}-{i}@example.com")).await.1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_sees_counts_rise_and_the_close_and_resumes_exactly_after_a_sequence() {
    let stack = Stack::start(StackOptions {
        notification: Some(String::new()),
        ..Default::default()
    })
    .await;
    let (_, owner) = stack.account("watch-owner@example.com").await;
    let voters = voters(&stack, "watch-voter", 5).await;
    let poll = stack
        .as_user(&owner)
        .create_poll("Live?", ["yes", "no"], None)
        .await
        .expect("create");
    let svc = stack.notification();

    let mut stream = watch(svc, &poll.poll_id, 0, None).await;
    let first = next_update(&mut stream).await;
    assert!(first.snapshot && !first.resume_unavailable);
    let snap = first.update.expect("update");
    assert_eq!(
        (snap.sequence, snap.total_votes, snap.closed),
        (1, 0, false)
    );
    assert_eq!(
        counts(&snap),
        vec![("opt-1".into(), 0), ("opt-2".into(), 0)]
    );

    let mut seen = Vec::new();
    for (i, voter) in voters.iter().enumerate() {
        let option = if i % 2 == 0 { "opt-1" } else { "opt-2" };
        stack
            .as_user(voter)
            .cast_vote(&poll.poll_id, option, "")
            .await
            .expect("vote");
        let msg = next_update(&mut stream).await;
        assert!(!msg.snapshot);
        let u = msg.update.expect("update");
        assert_eq!(u.total_votes, i as u64 + 1, "counts rise by one per vote");
        assert_eq!(u.sequence, i as u64 + 2, "one sequence per event");
        seen.push(u);
    }
    assert_eq!(
        counts(&seen[4]),
        vec![("opt-1".into(), 3), ("opt-2".into(), 2)]
    );
    stack
        .as_user(&owner)
        .close_poll(&poll.poll_id)
        .await
        .expect("close");
    let closed = next_update(&mut stream).await.update.expect("update");
    assert!(closed.closed);
    assert_eq!((closed.sequence, closed.total_votes), (7, 5));
    seen.push(closed);

    // Resume after sequence 3: exactly the updates after it, in order, equal
    // to what the live watcher saw.
    let mut resumed = watch(svc, &poll.poll_id, 3, None).await;
    for want in seen.iter().filter(|u| u.sequence > 3) {
        let msg = next_update(&mut resumed).await;
        assert!(!msg.snapshot && !msg.resume_unavailable);
        assert_eq!(msg.update.as_ref(), Some(want));
    }
    // Resuming at the newest sequence sends nothing old: the next message is
    // the next live change (here: none, so the stream stays open). A second
    // poll's events must not leak into it either.
    let other = stack
        .as_user(&owner)
        .create_poll("Other?", ["x", "y"], None)
        .await
        .expect("create");
    stack
        .as_user(&voters[0])
        .cast_vote(&other.poll_id, "opt-1", "")
        .await
        .expect("vote");

    // WatchMyPolls: the owner's polls' current state, then changes.
    wait_caught_up(&stack, svc).await;
    let err = notification_client(svc, None)
        .watch_my_polls(pb::WatchMyPollsRequest {})
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut mine = notification_client(svc, None)
        .watch_my_polls(bearer(pb::WatchMyPollsRequest {}, &owner))
        .await
        .expect("watch my polls")
        .into_inner();
    let mut snapshots = Vec::new();
    for _ in 0..2 {
        let msg = next(&mut mine).await.expect("ok").expect("open");
        assert!(msg.snapshot, "{msg:?}");
        let u = msg.update.expect("update");
        snapshots.push((u.poll_id.clone(), u.sequence, u.total_votes));
    }
    snapshots.sort();
    let mut want = vec![(poll.poll_id.clone(), 7, 5), (other.poll_id.clone(), 2, 1)];
    want.sort();
    assert_eq!(snapshots, want);
    stack
        .as_user(&voters[1])
        .cast_vote(&other.poll_id, "opt-2", "")
        .await
        .expect("vote");
    let live = next(&mut mine).await.expect("ok").expect("open");
    assert!(!live.snapshot);
    let u = live.update.expect("update");
    assert_eq!(
        (u.poll_id.as_str(), u.sequence, u.total_votes),
        (other.poll_id.as_str(), 3, 2)
    );

    // Unknown or malformed polls.
    let err = notification_client(svc, None)
        .watch_poll(pb::WatchPollRequest {
            poll_id: "01900000-0000-7000-8000-000000000000".into(),
            resume_after_sequence: 0,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = notification_client(svc, None)
        .watch_poll(pb::WatchPollRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_beyond_the_log_starts_from_a_snapshot_and_any_replica_serves_any_watcher() {
    let stack = Stack::start(StackOptions {
        notification: Some("log_capacity = 3\n".into()),
        ..Default::default()
    })
    .await;
    let (_, owner) = stack.account("trim-owner@example.com").await;
    let voters = voters(&stack, "trim-voter", 6).await;
    let poll = stack
        .as_user(&owner)
        .create_poll("Trim?", ["a", "b"], None)
        .await
        .expect("create");
    for voter in &voters {
        stack
            .as_user(voter)
            .cast_vote(&poll.poll_id, "opt-2", "")
            .await
            .expect("vote");
    }
    let svc = stack.notification();
    wait_caught_up(&stack, svc).await;

    // Sequences 1..=7 happened; the log keeps 5, 6, 7.
    let mut stream = watch(svc, &poll.poll_id, 1, None).await;
    let msg = next_update(&mut stream).await;
    assert!(msg.snapshot && msg.resume_unavailable, "{msg:?}");
    let u = msg.update.expect("update");
    assert_eq!((u.sequence, u.total_votes), (7, 6));

    let mut stream = watch(svc, &poll.poll_id, 4, None).await;
    for want in 5..=7u64 {
        let msg = next_update(&mut stream).await;
        assert!(!msg.snapshot, "{msg:?}");
        assert_eq!(msg.update.expect("update").sequence, want);
    }

    // A second replica with its own store and consumer.
    let mut second = stack.notification_replica("n2");
    second.start().await;
    wait_caught_up(&stack, &second).await;
    let status = consumer_status(&second).await.expect("status");
    assert_eq!(status.consumer, "notification-n2");
    let mut other = watch(&second, &poll.poll_id, 6, None).await;
    let msg = next_update(&mut other).await;
    assert_eq!(
        msg.update.as_ref().map(|u| (u.sequence, u.total_votes)),
        Some((7, 6))
    );
    stack
        .as_user(&owner)
        .close_poll(&poll.poll_id)
        .await
        .expect("close");
    let a = next_update(&mut stream).await.update.expect("update");
    let b = next_update(&mut other).await.update.expect("update");
    assert_eq!(
        a, b,
        "both replicas send the same update for the same event"
    );
    assert!(a.closed && a.sequence == 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_stops_reading_is_cut_off_with_resource_exhausted_and_resumes_without_gaps()
{
    let stack = Stack::start(StackOptions {
        notification: Some("subscriber_buffer = 2\n".into()),
        ..Default::default()
    })
    .await;
    let (_, owner) = stack.account("slow-owner@example.com").await;
    let voters = voters(&stack, "slow-voter", 40).await;
    let poll = stack
        .as_user(&owner)
        .create_poll("Slow?", ["a", "b"], None)
        .await
        .expect("create");
    let svc = stack.notification();

    // A tiny HTTP/2 window: the server feels the unread messages after a few.
    let mut stream = watch(svc, &poll.poll_id, 0, Some(1024)).await;
    assert_eq!(
        next_update(&mut stream)
            .await
            .update
            .expect("update")
            .sequence,
        1
    );
    // Stop reading while every vote is cast.
    for voter in &voters {
        stack
            .as_user(voter)
            .cast_vote(&poll.poll_id, "opt-1", "")
            .await
            .expect("vote");
    }
    wait_caught_up(&stack, svc).await;
    let last_sequence = 41;

    let mut expected = 2u64;
    let status = loop {
        match next(&mut stream).await {
            Ok(Some(msg)) => {
                let u = msg.update.expect("update");
                assert_eq!(u.sequence, expected, "no gaps before the cut-off");
                assert!(
                    u.sequence < last_sequence,
                    "the watcher read everything without being cut off"
                );
                expected += 1;
            }
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let last_seen = expected - 1;
    assert!(
        status
            .message()
            .contains(&format!("resume from sequence {last_seen}")),
        "{status:?}"
    );

    // Resume from there: everything after it, nothing twice.
    let mut resumed = watch(svc, &poll.poll_id, last_seen, None).await;
    for want in last_seen + 1..=last_sequence {
        let msg = next_update(&mut resumed).await;
        let u = msg.update.expect("update");
        assert_eq!(u.sequence, want);
        assert_eq!(u.total_votes, want - 1);
    }
}
