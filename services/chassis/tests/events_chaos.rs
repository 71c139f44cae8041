//! Exactly-once effects over at-least-once delivery, on every transport
//! (embedded feed, Redis Streams, a Kafka-protocol broker) from one suite:
//! votes keep coming while the consumer (and, on Redis and Kafka, the relay)
//! is killed at arbitrary points and restarted; in the end the read model
//! counts every vote exactly once, and a replay with rebuild gives the same.
//! A poison event goes to the dead-letter queue and is redriven once.
//!
//! [`transport_suite!`] generates the tests of each transport into a module
//! named after it (`embedded::`, `redis::`, `kafka::`).

mod events_support;

use events_support::*;
use std::sync::Arc;
use std::time::Duration;
use tally_chassis::events::{
    Consumer, EventSource, Feed, FeedSource, KafkaPublisher, KafkaSettings, KafkaSource, Publisher,
    RedisPublisher, RedisSource, RedisStreamSettings, Relay,
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

/// The transports the suite runs on.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Embedded,
    Redis,
    Kafka,
}

/// A transport's running pieces: the producer's feed (embedded), a real
/// `redis-server`, or a real Kafka-protocol broker (`tansu`).
enum Bus {
    Embedded {
        _feed: TestServer,
        source: Arc<dyn EventSource>,
    },
    Redis {
        redis: RedisServer,
    },
    Kafka {
        broker: tally_testkit::KafkaBroker,
    },
}

impl Bus {
    async fn start(transport: Transport, producer: &Arc<dyn Store>) -> Self {
        match transport {
            Transport::Embedded => {
                let mut routes = tonic::service::RoutesBuilder::default();
                routes.add_service(Feed::new(producer.clone()).server());
                let feed = TestServer::start(routes.routes(), 0).await;
                let source: Arc<dyn EventSource> = Arc::new(
                    FeedSource::from_outbound(&feed.outbound("polling"), "polling")
                        .expect("outbound")
                        .with_backoff(Duration::from_millis(10), Duration::from_millis(100)),
                );
                Bus::Embedded {
                    _feed: feed,
                    source,
                }
            }
            Transport::Redis => Bus::Redis {
                redis: RedisServer::start().await,
            },
            Transport::Kafka => Bus::Kafka {
                broker: tally_testkit::KafkaBroker::start().await,
            },
        }
    }

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
            Bus::Kafka { broker } => Arc::new(
                KafkaSource::connect(&kafka_settings(broker), "polling")
                    .await
                    .unwrap_or_else(|e| panic!("kafka source: {e}\n{}", broker.output())),
            ),
        }
    }

    async fn relay(&self, producer: &Arc<dyn Store>) -> Option<tokio::task::JoinHandle<()>> {
        let publisher: Arc<dyn Publisher> = match self {
            Bus::Embedded { .. } => return None,
            Bus::Redis { redis } => Arc::new(
                RedisPublisher::connect(&redis_settings(redis, "relay"), "polling")
                    .await
                    .expect("publisher"),
            ),
            Bus::Kafka { broker } => Arc::new(
                KafkaPublisher::connect(&kafka_settings(broker), "polling")
                    .await
                    .unwrap_or_else(|e| panic!("kafka publisher: {e}\n{}", broker.output())),
            ),
        };
        Some(
            Relay::new(producer.clone(), publisher, "polling")
                .with_options(7, Duration::from_millis(5))
                .spawn(),
        )
    }
}

fn redis_settings(redis: &RedisServer, instance: &str) -> RedisStreamSettings {
    let mut s = RedisStreamSettings::new(&redis.url);
    s.instance = Some(instance.to_string());
    s.claim_idle_ms = 200;
    s.block_ms = 50;
    s
}

/// Three partitions, so the votes of the three polls spread over them.
fn kafka_settings(broker: &tally_testkit::KafkaBroker) -> KafkaSettings {
    let mut s = KafkaSettings::new(&[&broker.address()]);
    s.partitions = 3;
    s.fetch_wait_ms = 50;
    s
}

async fn run_chaos(transport: Transport, seed: u64) {
    let (_pdir, producer) = temp_store().await;
    let bus = Bus::start(transport, &producer).await;
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
    assert_eq!(
        total(&result),
        VOTES as u64,
        "no loss, no double count: {result:?}"
    );
    // 20 chunks of 12 votes over 3 polls and 4 options: 7/7/6 chunks, 3 votes per option each.
    assert_eq!(result["p0:a"], 21);
    assert_eq!(result["p2:d"], 18);
    assert!(consumer.dead_letters().await.expect("dlq").is_empty());

    // A rebuild replay from the start gives the same read model.
    let before = handler.committed.load(std::sync::atomic::Ordering::SeqCst);
    consumer.replay(0, true).await.expect("replay");
    wait_until("every vote counted again after the rebuild", || async {
        handler.committed.load(std::sync::atomic::Ordering::SeqCst) >= before + VOTES as u64
            && consumer.offset().await.expect("offset") == VOTES as u64
    })
    .await;
    assert_eq!(
        counts(consumer_store.as_ref()).await,
        result,
        "same after rebuild"
    );
    task.abort();
    if let Some(relay) = relay {
        relay.abort();
    }
}

/// A vote no handler can count (option `poison`) is retried, dead-lettered
/// and passed; the others are applied; a redrive while it still fails keeps
/// it; after the fix a redrive applies it exactly once, and neither a
/// consumer restart nor later events count it again.
async fn run_poison(transport: Transport) {
    let (_pdir, producer) = temp_store().await;
    let bus = Bus::start(transport, &producer).await;
    let (_cdir, consumer_store) = temp_store().await;
    let relay = bus.relay(&producer).await;
    produce_votes(producer.as_ref(), "p1", &["a"], 3).await;
    let poison = produce_votes(producer.as_ref(), "p2", &["poison"], 1).await;
    produce_votes(producer.as_ref(), "p3", &["b"], 3).await;

    let handler = CountingHandler::new("results");
    handler
        .poisoned
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let consumer = Consumer::new(
        handler.clone(),
        consumer_store.clone(),
        bus.source(0).await,
        quick_policy(),
    );
    let task = consumer.spawn();
    wait_until(
        "the poison vote dead-lettered and the rest applied",
        || async {
            consumer.offset().await.expect("offset") == 7
                && total(&counts(consumer_store.as_ref()).await) == 6
                && consumer.dead_letters().await.expect("dlq").len() == 1
        },
    )
    .await;
    let counted = counts(consumer_store.as_ref()).await;
    assert_eq!(total(&counted), 6, "{counted:?}");
    assert!(!counted.contains_key("p2:poison"));
    let letters = consumer.dead_letters().await.expect("dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, poison[0]);
    assert_eq!(letters[0].position, 4);
    let status = consumer.status().await.expect("status");
    assert_eq!(
        (status.offset, status.head, status.dead_letters),
        (7, Some(7), 1)
    );

    assert_eq!(
        consumer.redrive(None).await.expect("redrive"),
        (0, 1),
        "still failing"
    );
    handler
        .poisoned
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        consumer.redrive(None).await.expect("redrive"),
        (1, 0),
        "fixed"
    );
    assert_eq!(counts(consumer_store.as_ref()).await["p2:poison"], 1);
    assert!(consumer.dead_letters().await.expect("dlq").is_empty());

    // Killed and restarted with a fresh source; more events arrive.
    task.abort();
    let _ = task.await;
    produce_votes(producer.as_ref(), "p2", &["c"], 2).await;
    let consumer = Consumer::new(
        handler.clone(),
        consumer_store.clone(),
        bus.source(1).await,
        quick_policy(),
    );
    let task = consumer.spawn();
    // (On Redis a position the killed member held comes back only after
    // the claim timeout, so the offset can reach 9 before 8 is applied.)
    wait_until("the later votes applied", || async {
        consumer.offset().await.expect("offset") == 9
            && total(&counts(consumer_store.as_ref()).await) >= 9
    })
    .await;
    let counted = counts(consumer_store.as_ref()).await;
    assert_eq!(counted["p2:poison"], 1, "redriven once: {counted:?}");
    assert_eq!(total(&counted), 9, "{counted:?}");
    task.abort();
    if let Some(relay) = relay {
        relay.abort();
    }
}

/// The suite for one transport, in a module named after it.
macro_rules! transport_suite {
    ($($module:ident => $transport:expr, seed $seed:expr;)+) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn counts_every_vote_once_despite_relay_and_consumer_kills() {
                run_chaos($transport, $seed).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn poison_event_goes_to_the_dlq_and_is_redriven_once() {
                run_poison($transport).await;
            }
        }
    )+};
}

transport_suite! {
    embedded => Transport::Embedded, seed 7;
    redis => Transport::Redis, seed 11;
    kafka => Transport::Kafka, seed 13;
}
