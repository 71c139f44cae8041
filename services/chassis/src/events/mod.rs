//! The event backbone: how events leave a producer's outbox and reach the
//! read models of other services, exactly once in effect over at-least-once
//! delivery.
//!
//! ```text
//! producer store ──outbox──▶ feed (gRPC server stream)  ──▶ FeedSource ─┐
//!                └─outbox──▶ relay ──XADD──▶ Redis stream ──▶ RedisSource ─┤
//!                └─outbox──▶ relay ─produce─▶ Kafka topic ──▶ KafkaSource ─┤
//!                                                                          ▼
//!                            consumer runtime ──one WriteBatch──▶ consumer store
//!                            (processed row + read model + offset; DLQ on failure)
//! ```
//!
//! * [`feed`]: every producer serves its outbox as `tally.events.v1.EventFeedService`.
//! * [`bus`]: the narrow port a consumer reads from ([`bus::EventSource`]), with three adapters:
//!   [`feed_source`] (the embedded default, a client of the producer's feed through the
//!   mesh), [`redis_streams`] (Redis Streams with consumer groups) and [`kafka`] (a
//!   Kafka-protocol broker), both fed by the [`relay`].
//! * [`consumer`]: the runtime that applies a [`consumer::Handler`] idempotently, retries,
//!   dead-letters, redrives and replays; [`dead_letter`] holds the DLQ records.
//! * [`admin`]: `tally.events.v1.ConsumerAdminService` over a service's consumers.
//!
//! # Wiring a service
//! ```ignore
//! // Producer (e.g. polling): serve the outbox next to the service, and start
//! // the relay when the transport is Redis or Kafka (None for the embedded feed).
//! routes.add_feed(&events::Feed::new(store.clone()));
//! let _relay = events::transport::spawn_relay(&cfg.events, store.clone(), "polling").await?;
//!
//! // Consumer (e.g. analytics): one Consumer per handler, the admin service, health.
//! let source = events::transport::source(&cfg.events, &cfg.outbound, "polling").await?;
//! let results = events::Consumer::new(Arc::new(PollResults), store.clone(), source, Default::default());
//! results.spawn();
//! results.watch_health(&hub, 10_000, Duration::from_secs(5)); // optional: NOT_SERVING when far behind
//! routes.add_service(events::ConsumerAdmin::new([results.clone()]).server());
//! ```
//!
//! Positions are the producer's outbox offsets on every transport (the relay
//! uses the offset as the Redis stream entry id, and as a Kafka record
//! header), so a consumer's durable
//! offset, lag and replay mean the same thing whichever transport carries it.
//!
//! # The Kafka transport
//! [`kafka`] implements [`bus::EventSource`] and [`relay::Publisher`] over the
//! Kafka protocol: one topic per producer, partitioned by aggregate id, the
//! outbox offset in a record header, and a source that merges the partitions
//! back into outbox order; see its module doc for why offsets stay in the
//! consumer's own store rather than in a broker consumer group. Dead
//! consumers need no claiming there: a restarted consumer resubscribes from
//! its durable offset.

pub mod admin;
pub mod bus;
pub mod consumer;
pub mod dead_letter;
pub mod envelope;
pub mod feed;
pub mod feed_source;
pub mod kafka;
pub mod redis_streams;
pub mod relay;
pub mod transport;

pub use admin::ConsumerAdmin;
pub use bus::{BusError, Delivery, DeliveryStream, EventSource, Subscription};
pub use consumer::{Consumer, ConsumerError, ConsumerStatus, Handler, HandlerError, RetryPolicy};
pub use feed::Feed;
pub use feed_source::FeedSource;
pub use kafka::{KafkaPublisher, KafkaSettings, KafkaSource};
pub use redis_streams::{RedisPublisher, RedisSource, RedisStreamSettings};
pub use relay::{Publisher, Relay};
pub use transport::EventBusSettings;
