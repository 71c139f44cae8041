//! The event bus port: what a consumer needs from a transport, and no more.
//!
//! A source delivers a producer's events in outbox-offset order starting after
//! a position, tells the head position (for lag), takes acknowledgements after
//! the consumer's own transaction committed, and can be rewound for replay.
//! Delivery is at least once; the consumer runtime makes effects exactly once.

use async_trait::async_trait;
use futures::stream::BoxStream;
use tally_api::events::v1::EventEnvelope;

/// One event as delivered: its position in the producer's log and the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The producer's outbox offset (dense, increasing, 1-based).
    pub position: u64,
    /// The event itself.
    pub envelope: EventEnvelope,
}

/// What a consumer asks a source for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The consumer's name (a Redis consumer group, a log label on the feed).
    pub consumer: String,
    /// Deliver events with positions greater than this (0: from the start).
    pub after: u64,
    /// Only these event types; empty for all.
    pub event_types: Vec<String>,
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The producer or broker cannot be reached right now; try again later.
    #[error("event source unavailable: {0}")]
    Unavailable(String),
    /// Configuration or protocol misuse that retrying will not fix.
    #[error("event source misconfigured: {0}")]
    Invalid(String),
}

/// A never-ending stream of deliveries. Adapters reconnect on their own; an
/// `Err` item reports a problem the consumer may log (the stream goes on).
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BusError>>;

/// The port. Object safe, so a consumer holds an `Arc<dyn EventSource>`.
#[async_trait]
pub trait EventSource: Send + Sync + 'static {
    /// A label for status output, e.g. `feed:polling` or `redis:tally:events:polling`.
    fn describe(&self) -> String;

    /// Starts delivering. Dropping the stream stops it.
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream, BusError>;

    /// The position of the newest event the producer has published.
    async fn head(&self) -> Result<u64, BusError>;

    /// Confirms `position` is processed (Redis: XACK). Default: nothing to do.
    async fn ack(&self, _consumer: &str, _position: u64) -> Result<(), BusError> {
        Ok(())
    }

    /// Moves the consumer's transport-side cursor back to `after` before a
    /// replay (Redis: XGROUP SETID). Default: nothing; `subscribe` takes `after`.
    async fn rewind(&self, _consumer: &str, _after: u64) -> Result<(), BusError> {
        Ok(())
    }
}
