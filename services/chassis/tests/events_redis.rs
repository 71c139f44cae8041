//! The Redis Streams transport against a real `redis-server` started by the
//! test: relay crash/resume, consumer groups with XACK and XAUTOCLAIM, and a
//! consumer killed mid-stream.

mod events_support;

use events_support::*;
use futures::StreamExt;
use redis::AsyncCommands;
use redis::streams::{StreamPendingCountReply, StreamRangeReply};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tally_chassis::events::relay::Publisher;
use tally_chassis::events::{
    Consumer, EventSource, RedisPublisher, RedisSource, RedisStreamSettings, Relay, Subscription,
    envelope,
};

fn settings(redis: &RedisServer, instance: &str, claim_idle_ms: u64) -> RedisStreamSettings {
    let mut s = RedisStreamSettings::new(&redis.url);
    s.instance = Some(instance.to_string());
    s.claim_idle_ms = claim_idle_ms;
    s.block_ms = 100;
    s
}

async fn stream_positions(redis: &RedisServer) -> Vec<(u64, String)> {
    let mut conn = redis.conn().await;
    let reply: StreamRangeReply = conn
        .xrange_all("tally:events:polling")
        .await
        .expect("xrange");
    reply
        .ids
        .iter()
        .map(|e| {
            let position = e.id.trim_end_matches("-0").parse().expect("offset id");
            let bytes: Vec<u8> = e.get("envelope").expect("envelope field");
            (
                position,
                envelope::decode(&bytes).expect("envelope").event_id,
            )
        })
        .collect()
}

async fn pending(redis: &RedisServer, group: &str) -> Vec<(u64, String)> {
    let mut conn = redis.conn().await;
    let reply: StreamPendingCountReply = conn
        .xpending_count("tally:events:polling", group, "-", "+", 1000)
        .await
        .expect("xpending");
    reply
        .ids
        .into_iter()
        .map(|p| (p.id.trim_end_matches("-0").parse().expect("id"), p.consumer))
        .collect()
}

#[tokio::test]
async fn relay_resumes_after_a_crash_and_every_event_arrives_in_order() {
    let redis = RedisServer::start().await;
    let (_dir, store) = temp_store().await;
    let mut ids = produce_votes(store.as_ref(), "p1", &["a", "b"], 60).await;
    let cfg = settings(&redis, "relay", 30_000);

    let publisher = Arc::new(
        RedisPublisher::connect(&cfg, "polling")
            .await
            .expect("publisher"),
    );
    let relay = Relay::new(store.clone(), publisher.clone(), "polling")
        .with_options(10, Duration::from_millis(10));
    assert_eq!(relay.step().await.expect("step"), 10);
    assert_eq!(relay.step().await.expect("step"), 10);
    assert_eq!(relay.delivered().await.expect("delivered"), 20);
    assert_eq!(relay.lag().await.expect("lag"), 40);

    // Crash between publishing and recording: entries 21..=30 are in Redis,
    // the delivered offset still says 20.
    let unrecorded = store.read_outbox(20, 10).await.expect("outbox");
    publisher.publish(&unrecorded).await.expect("publish");
    assert_eq!(relay.delivered().await.expect("delivered"), 20);

    // The relay task runs, is stopped mid-way, and a fresh one takes over.
    let task = relay.spawn();
    wait_until("relay passes offset 40", || async {
        relay.delivered().await.expect("delivered") >= 40
    })
    .await;
    task.abort();
    let _ = task.await;
    ids.extend(produce_votes(store.as_ref(), "p2", &["x"], 25).await);
    let restarted = Relay::new(
        store.clone(),
        Arc::new(
            RedisPublisher::connect(&cfg, "polling")
                .await
                .expect("publisher"),
        ),
        "polling",
    )
    .with_options(10, Duration::from_millis(10));
    let task = restarted.spawn();
    wait_until("relay delivers all 85", || async {
        restarted.delivered().await.expect("delivered") == 85
    })
    .await;
    task.abort();
    assert_eq!(restarted.lag().await.expect("lag"), 0);

    let published = stream_positions(&redis).await;
    let positions: Vec<u64> = published.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        positions,
        (1..=85).collect::<Vec<u64>>(),
        "in order, no loss"
    );
    let event_ids: Vec<String> = published.into_iter().map(|(_, id)| id).collect();
    assert_eq!(event_ids, ids);
    let source = RedisSource::connect(&cfg, "polling").await.expect("source");
    assert_eq!(source.head().await.expect("head"), 85);
}

#[tokio::test]
async fn consumer_group_acks_and_claims_a_dead_members_pending_entries() {
    let redis = RedisServer::start().await;
    let (_dir, store) = temp_store().await;
    produce_votes(store.as_ref(), "p1", &["a"], 10).await;
    let relay_cfg = settings(&redis, "relay", 30_000);
    let relay = Relay::new(
        store.clone(),
        Arc::new(
            RedisPublisher::connect(&relay_cfg, "polling")
                .await
                .expect("publisher"),
        ),
        "polling",
    );
    relay.step().await.expect("relay");

    // Member "a" reads, acks the first two, then dies with the rest pending.
    let a = RedisSource::connect(&settings(&redis, "a", 60_000), "polling")
        .await
        .expect("source a");
    let sub = Subscription {
        consumer: "group".into(),
        after: 0,
        event_types: vec![],
    };
    let mut stream = a.subscribe(sub.clone()).await.expect("subscribe");
    for expected in 1..=4u64 {
        let d = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(d.position, expected);
        if expected <= 2 {
            a.ack("group", d.position).await.expect("ack");
        }
    }
    drop(stream);
    let left = pending(&redis, "group").await;
    assert_eq!(
        left,
        (3..=10).map(|p| (p, "a".to_string())).collect::<Vec<_>>(),
        "acked entries leave the PEL; the rest stays with the dead member"
    );

    // Member "b" claims them once they are idle long enough, and acks them.
    let b = RedisSource::connect(&settings(&redis, "b", 300), "polling")
        .await
        .expect("source b");
    let mut stream = b.subscribe(sub).await.expect("subscribe");
    let mut got = Vec::new();
    while got.len() < 8 {
        let d = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("claimed in time")
            .expect("open")
            .expect("delivery");
        b.ack("group", d.position).await.expect("ack");
        got.push(d.position);
    }
    got.sort_unstable();
    assert_eq!(got, (3..=10).collect::<Vec<u64>>());
    assert!(pending(&redis, "group").await.is_empty());
}

#[tokio::test]
async fn redis_consumer_killed_mid_stream_applies_every_event_once() {
    let redis = RedisServer::start().await;
    let (_pdir, producer) = temp_store().await;
    let (_cdir, consumer_store) = temp_store().await;
    produce_votes(producer.as_ref(), "p1", &["a", "b"], 30).await;
    let relay = Relay::new(
        producer.clone(),
        Arc::new(
            RedisPublisher::connect(&settings(&redis, "relay", 30_000), "polling")
                .await
                .expect("publisher"),
        ),
        "polling",
    )
    .with_options(8, Duration::from_millis(10));
    let relay_task = relay.spawn();

    let handler = CountingHandler::new("results");
    handler.hang_at.store(12, Ordering::SeqCst);
    let first = Consumer::new(
        handler.clone(),
        consumer_store.clone(),
        Arc::new(
            RedisSource::connect(&settings(&redis, "c1", 300), "polling")
                .await
                .expect("source"),
        ),
        quick_policy(),
    );
    let task = first.spawn();
    wait_until("consumer hangs inside event 12", || async {
        handler.calls.load(Ordering::SeqCst) >= 12
    })
    .await;
    task.abort();
    let _ = task.await;
    assert_eq!(first.offset().await.expect("offset"), 11);
    assert!(
        pending(&redis, "results")
            .await
            .iter()
            .any(|(_, owner)| owner == "c1"),
        "the killed member leaves entries pending"
    );

    // A replacement process (another member name) takes over, while more
    // events keep coming.
    handler.hang_at.store(0, Ordering::SeqCst);
    let second = Consumer::new(
        handler.clone(),
        consumer_store.clone(),
        Arc::new(
            RedisSource::connect(&settings(&redis, "c2", 300), "polling")
                .await
                .expect("source"),
        ),
        quick_policy(),
    );
    let task = second.spawn();
    produce_votes(producer.as_ref(), "p2", &["x"], 10).await;
    wait_until("all 40 applied", || async {
        total(&counts(consumer_store.as_ref()).await) >= 40
    })
    .await;
    wait_until("nothing left pending", || async {
        pending(&redis, "results").await.is_empty()
    })
    .await;
    let result = counts(consumer_store.as_ref()).await;
    assert_eq!(total(&result), 40);
    assert_eq!(result["p1:a"], 15);
    assert_eq!(result["p2:x"], 10);
    assert_eq!(
        handler.committed.load(Ordering::SeqCst),
        40,
        "each applied once"
    );
    assert_eq!(second.offset().await.expect("offset"), 40);

    // Replay with rebuild over Redis rewinds the group and rebuilds the same model.
    second.replay(0, true).await.expect("replay");
    wait_until("rebuilt", || async {
        handler.committed.load(Ordering::SeqCst) >= 80
    })
    .await;
    wait_until("offset back at head", || async {
        second.offset().await.expect("offset") == 40
    })
    .await;
    assert_eq!(counts(consumer_store.as_ref()).await, result);
    let status = second.status().await.expect("status");
    assert_eq!(status.source, "redis:tally:events:polling");
    assert_eq!((status.head, status.lag), (Some(40), Some(0)));
    task.abort();
    relay_task.abort();
}

#[tokio::test]
async fn consumer_carries_on_when_redis_loses_its_data() {
    let redis = RedisServer::start().await;
    let (_pdir, producer) = temp_store().await;
    let (_cdir, consumer_store) = temp_store().await;
    produce_votes(producer.as_ref(), "p1", &["a"], 10).await;
    let relay = Relay::new(
        producer.clone(),
        Arc::new(
            RedisPublisher::connect(&settings(&redis, "relay", 30_000), "polling")
                .await
                .expect("publisher"),
        ),
        "polling",
    )
    .with_options(8, Duration::from_millis(10));
    let relay_task = relay.spawn();
    let handler = CountingHandler::new("results");
    let consumer = Consumer::new(
        handler.clone(),
        consumer_store.clone(),
        Arc::new(
            RedisSource::connect(&settings(&redis, "c1", 300), "polling")
                .await
                .expect("source"),
        ),
        quick_policy(),
    );
    let task = consumer.spawn();
    wait_until("first 10 applied", || async {
        consumer.offset().await.expect("offset") == 10
    })
    .await;

    // A Redis restart without persistence: stream and consumer group are gone.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flushall");
    produce_votes(producer.as_ref(), "p1", &["b"], 10).await;
    wait_until("next 10 applied after the group is recreated", || async {
        total(&counts(consumer_store.as_ref()).await) == 20
    })
    .await;
    task.abort();
    relay_task.abort();
    let result = counts(consumer_store.as_ref()).await;
    assert_eq!((result["p1:a"], result["p1:b"]), (10, 10));
}
