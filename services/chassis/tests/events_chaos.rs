//! Exactly-once effects over at-least-once delivery: votes keep coming while
//! the consumer (and, on Redis, the relay) is killed at arbitrary points and
//! restarted; in the end the read model counts every vote exactly once.

mod events_support;

use events_support::*;
use std::sync::Arc;
use std::time::Duration;
use tally_chassis::events::{
    Consumer, EventSource, Feed, FeedSource, RedisPublisher, RedisSource, RedisStreamSettings,
    Relay,
};
use tally_chassis::storage::Store;

const VOTES: usize = 240;
const OPTIONS: [&str; 4] = ["a", "b", "c", "d"];

/// A small deterministic generator, so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

enum Bus {
    Embedded {
        _feed: TestServer,
        source: Arc<dyn EventSource>,
    },
    Redis {
        redis: RedisServer,
    },
}

impl Bus {
    async fn source(&self, round: usize) -> Arc<dyn EventSource> {
        match self {
            Bus::Embedded { source, .. } => source.clone(),
            Bus::Redis { redis } => Arc::new(
                RedisSource::connect(
                    &redis_settings(redis, &format!("member-{}", round % 3)),
                    "polling",
                )
                .await
                .expect("redis source"),
            ),
        }
    }

    async fn relay(&self, producer: &Arc<dyn Store>) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Bus::Embedded { .. } => None,
            Bus::Redis { redis } => {
                let publisher = RedisPublisher::connect(&redis_settings(redis, "relay"), "polling")
                    .await
                    .expect("publisher");
                Some(
                    Relay::new(producer.clone(), Arc::new(publisher), "polling")
                        .with_options(7, Duration::from_millis(5))
                        .spawn(),
                )
            }
        }
    }
}

fn redis_settings(redis: &RedisServer, instance: &str) -> RedisStreamSettings {
    let mut s = RedisStreamSettings::new(&redis.url);
    s.instance = Some(instance.to_string());
    s.claim_idle_ms = 200;
    s.block_ms = 50;
    s
}

async fn run_chaos(bus: Bus, producer: Arc<dyn Store>, seed: u64) {
    let (_cdir, consumer_store) = temp_store().await;
    let handler = CountingHandler::new("results");
    let mut rng = Lcg(seed);

    let writer = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for chunk in 0..(VOTES / 12) {
                produce_votes(producer.as_ref(), &format!("p{}", chunk % 3), &OPTIONS, 12).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    for round in 0..15 {
        let relay = bus.relay(&producer).await;
        let consumer = Consumer::new(
            handler.clone(),
            consumer_store.clone(),
            bus.source(round).await,
            quick_policy(),
        );
        let task = consumer.spawn();
        tokio::time::sleep(Duration::from_millis(10 + rng.next(90))).await;
        task.abort();
        let _ = task.await;
        if let Some(relay) = relay {
            if rng.next(2) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.next(30))).await;
            }
            relay.abort();
            let _ = relay.await;
        }
    }
    writer.await.expect("writer");

    let relay = bus.relay(&producer).await;
    let consumer = Consumer::new(
        handler.clone(),
        consumer_store.clone(),
        bus.source(99).await,
        quick_policy(),
    );
    let task = consumer.spawn();
    wait_until("every vote counted", || async {
        total(&counts(consumer_store.as_ref()).await) >= VOTES as u64
            && consumer.offset().await.expect("offset") == VOTES as u64
    })
    .await;
    let result = counts(consumer_store.as_ref()).await;
    task.abort();
    if let Some(relay) = relay {
        relay.abort();
    }
    assert_eq!(
        total(&result),
        VOTES as u64,
        "no loss, no double count: {result:?}"
    );
    // 20 chunks of 12 votes over 3 polls and 4 options: 7/7/6 chunks, 3 votes per option each.
    assert_eq!(result["p0:a"], 21);
    assert_eq!(result["p2:d"], 18);
    assert!(consumer.dead_letters().await.expect("dlq").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_feed_counts_every_vote_once_despite_consumer_kills() {
    let (_pdir, producer) = temp_store().await;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(Feed::new(producer.clone()).server());
    let feed = TestServer::start(routes.routes(), 0).await;
    let source: Arc<dyn EventSource> = Arc::new(
        FeedSource::from_outbound(&feed.outbound("polling"), "polling")
            .expect("outbound")
            .with_backoff(Duration::from_millis(10), Duration::from_millis(100)),
    );
    run_chaos(
        Bus::Embedded {
            _feed: feed,
            source,
        },
        producer,
        7,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_count_every_vote_once_despite_relay_and_consumer_kills() {
    let redis = RedisServer::start().await;
    let (_pdir, producer) = temp_store().await;
    run_chaos(Bus::Redis { redis }, producer, 11).await;
}
