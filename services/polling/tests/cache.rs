//! The read-through cache end to end: real `redis-server`, `tally-user` and
//! `tally-polling` processes. Polling runs with `invalidate_on_write = false`,
//! so only the delivery of the poll's own events invalidates: a vote must
//! show in GetResults within one event delivery (the latency is printed),
//! no stale entry may survive a delivered invalidation even while readers
//! race the writes, and a Redis outage must degrade to store reads.

mod support;

use std::time::Duration;
use support::{Stack, bearer, create_req};
use tally_api::poll::v1 as pb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::transport::Channel;

type Polls = PollServiceClient<Channel>;

/// Key prefix the tests configure.
const PREFIX: &str = "e2e:";
/// Voters (each account votes once per poll).
const VOTERS: usize = 4;
/// Liveness bound for a vote to show (not a performance target).
const SHOW_DEADLINE: Duration = Duration::from_secs(10);

struct Fixture {
    stack: Stack,
    redis: RedisServer,
    metrics: std::net::SocketAddr,
    owner: String,
    voters: Vec<String>,
}

impl Fixture {
    async fn start() -> Self {
        let redis = RedisServer::start().await;
        let metrics: std::net::SocketAddr = ([127, 0, 0, 1], tally_testkit::free_port()).into();
        let stack = Stack::start(&format!(
            "[telemetry]\nmetrics_addr = \"{metrics}\"\n[cache]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{PREFIX}\"\ninvalidate_on_write = false\n",
            redis.url()
        ))
        .await;
        let (_, owner) = stack.account("owner@example.com").await;
        let mut voters = Vec::new();
        for i in 0..VOTERS {
            voters.push(stack.account(&format!("voter{i}@example.com")).await.1);
        }
        Self {
            stack,
            redis,
            metrics,
            owner,
            voters,
        }
    }

    /// Waits until `n` events were delivered and invalidated (each test's
    /// polling process is fresh, so the counter starts at 0).
    async fn delivered(&self, n: u64) {
        let deadline = Instant::now() + SHOW_DEADLINE;
        while self.counter("tally_cache_invalidations_total").await < n {
            assert!(
                Instant::now() < deadline,
                "{n} invalidations never delivered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn poll(&self) -> pb::Poll {
        let mut polls = self.stack.polls().await;
        polls
            .create_poll(bearer(create_req("Lunch?", 2), &self.owner))
            .await
            .expect("create")
            .into_inner()
            .poll
            .expect("poll")
    }

    /// One counter of polling's /metrics (0 when absent).
    async fn counter(&self, name: &str) -> u64 {
        let mut conn = tokio::net::TcpStream::connect(self.metrics)
            .await
            .expect("metrics endpoint");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: polling\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("response");
        let prefix = format!("{name}{{cache=\"polls\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

async fn total(polls: &mut Polls, token: &str, poll_id: &str) -> u64 {
    polls
        .get_results(bearer(
            pb::GetResultsRequest {
                poll_id: poll_id.into(),
            },
            token,
        ))
        .await
        .expect("GetResults never fails")
        .into_inner()
        .total_votes
}

async fn vote(polls: &mut Polls, token: &str, poll: &pb::Poll, key: &str) {
    polls
        .cast_vote(bearer(
            pb::CastVoteRequest {
                poll_id: poll.poll_id.clone(),
                option_id: poll.options[0].option_id.clone(),
                idempotency_key: key.into(),
            },
            token,
        ))
        .await
        .expect("vote");
}

/// What Redis holds for the poll's results, as a vote count.
async fn cached_total(redis: &RedisServer, poll_id: &str) -> Option<u64> {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{PREFIX}results:{poll_id}"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    bytes.map(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        v[1]["votes"].as_u64().expect("votes")
    })
}

#[tokio::test]
async fn a_vote_shows_in_cached_results_within_one_event_delivery() {
    let f = Fixture::start().await;
    let poll = f.poll().await;
    let mut polls = f.stack.polls().await;
    let mut latencies = Vec::new();
    for (i, voter) in f.voters.iter().enumerate() {
        let before = i as u64;
        // Every earlier event is delivered; warm the entry: the second read
        // is a hit of the current count.
        f.delivered(1 + before).await;
        assert_eq!(total(&mut polls, &f.owner, &poll.poll_id).await, before);
        let hits = f.counter("tally_cache_hits_total").await;
        assert_eq!(total(&mut polls, &f.owner, &poll.poll_id).await, before);
        assert!(
            f.counter("tally_cache_hits_total").await > hits,
            "served from the cache"
        );
        assert_eq!(cached_total(&f.redis, &poll.poll_id).await, Some(before));

        vote(&mut polls, voter, &poll, &format!("k{i}")).await;
        let acked = Instant::now();
        let mut reads = 0;
        while total(&mut polls, &f.owner, &poll.poll_id).await != before + 1 {
            reads += 1;
            assert!(acked.elapsed() < SHOW_DEADLINE, "vote {i} never showed");
            tokio::task::yield_now().await;
        }
        let took = acked.elapsed();
        println!(
            "vote {i}: shown in GetResults {took:?} after the ack ({reads} stale reads before)"
        );
        latencies.push(took);
    }
    latencies.sort();
    println!(
        "invalidation latency over {} votes: median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let invalidations = f.counter("tally_cache_invalidations_total").await;
    assert!(
        invalidations > VOTERS as u64,
        "one invalidation per event (PollCreated + votes), got {invalidations}"
    );
}

#[tokio::test]
async fn no_stale_entry_outlives_a_delivered_invalidation() {
    let f = Fixture::start().await;
    let poll = f.poll().await;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Readers keep missing and filling while the votes land.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut polls = f.stack.polls().await;
        let (token, id) = (f.owner.clone(), poll.poll_id.clone());
        let (stop, done) = (stop.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                total(&mut polls, &token, &id).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // The votes start once the readers are busy.
    let deadline = Instant::now() + SHOW_DEADLINE;
    while done.load(Ordering::SeqCst) < 8 {
        assert!(Instant::now() < deadline, "the readers never got going");
        tokio::task::yield_now().await;
    }
    let mut voters = Vec::new();
    for (i, voter) in f.voters.iter().enumerate() {
        let mut polls = f.stack.polls().await;
        let (voter, poll) = (voter.clone(), poll.clone());
        voters.push(tokio::spawn(async move {
            vote(&mut polls, &voter, &poll, &format!("race{i}")).await
        }));
    }
    for v in voters {
        v.await.expect("voter");
    }
    // Wait until every event (PollCreated, the votes) was delivered.
    f.delivered(1 + VOTERS as u64).await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader");
    }
    let reads = done.load(Ordering::SeqCst);
    let cached = cached_total(&f.redis, &poll.poll_id).await;
    assert!(
        cached.is_none_or(|c| c == VOTERS as u64),
        "a stale entry survived: Redis holds {cached:?} votes, {VOTERS} were cast"
    );
    let mut polls = f.stack.polls().await;
    for _ in 0..3 {
        assert_eq!(
            total(&mut polls, &f.owner, &poll.poll_id).await,
            VOTERS as u64
        );
    }
    println!(
        "{reads} racing reads; Redis holds {cached:?}; misses {} hits {}",
        f.counter("tally_cache_misses_total").await,
        f.counter("tally_cache_hits_total").await
    );
}

#[tokio::test]
async fn a_redis_outage_degrades_to_store_reads() {
    let mut f = Fixture::start().await;
    let poll = f.poll().await;
    let mut polls = f.stack.polls().await;
    assert_eq!(total(&mut polls, &f.owner, &poll.poll_id).await, 0);
    assert_eq!(total(&mut polls, &f.owner, &poll.poll_id).await, 0);
    f.redis.stop();
    // Reads and writes go on; the vote shows although no invalidation lands.
    for (i, voter) in f.voters.iter().enumerate().take(2) {
        vote(&mut polls, voter, &poll, &format!("down{i}")).await;
        let started = Instant::now();
        while total(&mut polls, &f.owner, &poll.poll_id).await != i as u64 + 1 {
            assert!(started.elapsed() < SHOW_DEADLINE, "vote {i} never showed");
        }
    }
    assert!(f.counter("tally_cache_errors_total").await > 0);
    f.redis.restart().await;
    let voter = &f.voters[2];
    vote(&mut polls, voter, &poll, "up").await;
    let started = Instant::now();
    while total(&mut polls, &f.owner, &poll.poll_id).await != 3 {
        assert!(
            started.elapsed() < SHOW_DEADLINE,
            "the vote after the restart never showed"
        );
    }
    // The cache is used again once Redis is back.
    let deadline = Instant::now() + SHOW_DEADLINE;
    let hits = f.counter("tally_cache_hits_total").await;
    while f.counter("tally_cache_hits_total").await == hits {
        assert!(Instant::now() < deadline, "the cache was never used again");
        assert_eq!(total(&mut polls, &f.owner, &poll.poll_id).await, 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
