//! The consumer runtime: applies a [`Handler`] to every event of a source with
//! exactly-once effects over at-least-once delivery.
//!
//! Per delivery, ONE [`WriteBatch`] in the consumer's own store holds
//! `insert_if_absent(__consumer_processed/<consumer>/<event_id>)`, the
//! handler's read-model writes, and the consumer's new offset
//! (`__consumer_offsets/<consumer>/offset`, guarded with `expect`). A duplicate
//! delivery fails the processed-row condition, so nothing of it is written;
//! the offset still advances. A handler that reads, modifies and writes a row
//! adds an `expect` guard on what it read; when that guard fails the runtime
//! re-runs the handler (a conflict, not a failure).
//!
//! Failures are retried with exponential backoff ([`RetryPolicy`]); after the
//! last attempt the event goes to the dead-letter queue ([`dead_letter`]) and
//! the consumer moves on. Events this build cannot understand (no known
//! payload variant, a schema version above [`Handler::max_schema_version`],
//! no event id) are skipped and logged, never dead-lettered.
//!
//! Operators redrive dead letters (applied at most once thanks to the processed
//! row) and replay a consumer from an offset; a rebuild replay first clears the
//! read model ([`Handler::reset`]) and the processed rows. A rebuild is marked
//! in the store before it starts, and finished on restart if the process dies
//! in the middle.
//!
//! Processed rows are kept (one small row per event id) so that a redelivery
//! at any later time stays without effect; a rebuild clears them. They are
//! not pruned yet: budget about 100 bytes per consumed event.
//!
//! Lag is `head - offset`, in [`ConsumerStatus`], in health through
//! [`Consumer::watch_health`], in `ConsumerAdminService.ListConsumers`, and
//! in metrics ([`crate::metrics`], updated whenever the status is computed;
//! the offset gauge also after each processed event).
//!
//! [`dead_letter`]: crate::events::dead_letter
//!
//! Submodules: [`process`] applies one delivery (retries, conflicts, dead
//! letters); [`operations`] holds the operator actions (redrive, replay,
//! rebuild); [`offsets`] reads and moves the durable offset.

mod offsets;
mod operations;
mod process;

pub use offsets::{OFFSETS, PROCESSED, clear_partition};

use crate::events::bus::{BusError, Delivery, EventSource, Subscription};
use crate::events::dead_letter;
use crate::events::feed_source::backoff;
use crate::health::HealthHub;
use crate::storage::{Store, StoreError, WriteBatch};
use async_trait::async_trait;
use futures::StreamExt;
use offsets::read_offset;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tracing::Instrument as _;

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later: retried with backoff, then dead-lettered.
    #[error("{0}")]
    Transient(String),
    /// Will not succeed by retrying: dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
    /// Not for this handler (or not understood): skipped, offset advances.
    #[error("skipped: {0}")]
    Skip(String),
    /// A store error; `ConditionFailed` from an `expect` guard re-runs the handler.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a consumer does with events. One handler = one consumer (its name
/// keys the offset, processed rows and dead letters).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The consumer's name, unique within its service, e.g. `poll-results`.
    fn name(&self) -> &str;

    /// Event types to receive (fully qualified); empty for all.
    fn event_types(&self) -> Vec<String> {
        Vec::new()
    }

    /// The newest schema version this handler understands; newer events are
    /// skipped (logged). `None`: accept every version (unknown fields are ignored).
    fn max_schema_version(&self) -> Option<u32> {
        None
    }

    /// Adds the read-model writes for `delivery` to `batch` (committed with the
    /// processed row and the offset). Reads go to `store`; read-modify-write
    /// needs `batch.expect(..)` on the value read.
    async fn handle(
        &self,
        delivery: &Delivery,
        batch: &mut WriteBatch,
        store: &dyn Store,
    ) -> Result<(), HandlerError>;

    /// Clears the read model before a rebuild replay.
    async fn reset(&self, store: &dyn Store) -> Result<(), HandlerError>;

    /// Called after the batch for `delivery` committed (e.g. to push live
    /// updates). Not called for duplicates, skips or dead letters.
    async fn committed(&self, _delivery: &Delivery) {}
}

/// Retry and backoff bounds.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before dead-lettering (the first attempt counts).
    pub max_attempts: u32,
    /// Pause after the first failed attempt; doubles per attempt.
    pub initial_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
    /// Re-runs after failed `expect` guards before counting one failed attempt.
    pub max_conflicts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_conflicts: 32,
        }
    }
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's writes committed.
    Applied,
    /// Already processed earlier: no effect.
    Duplicate,
    /// Not understood or not wanted: no effect, offset advanced.
    Skipped(String),
    /// Gave up: stored in the DLQ with this error.
    DeadLettered(String),
    /// Delivered by a subscription that a replay has since replaced: ignored.
    Stale,
}

/// Failures of the runtime itself (its store or its source).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The consumer's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event source failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No such consumer or dead letter.
    #[error("{0} not found")]
    NotFound(String),
    /// An admin request that cannot be carried out as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The handler failed while a dead letter was retried.
    #[error("handler failed: {0}")]
    Handler(String),
}

/// A consumer's position and backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    /// The consumer's name.
    pub consumer: String,
    /// The producer it follows.
    pub source: String,
    /// The position of the last event handled.
    pub offset: u64,
    /// `None` when the source cannot be reached.
    pub head: Option<u64>,
    /// `head - offset`, when the head is known.
    pub lag: Option<u64>,
    /// Events in the dead-letter queue.
    pub dead_letters: u64,
}

impl ConsumerStatus {
    /// The wire form (unknown head and lag as 0).
    pub fn to_proto(&self) -> tally_api::events::v1::ConsumerStatus {
        tally_api::events::v1::ConsumerStatus {
            consumer: self.consumer.clone(),
            source: self.source.clone(),
            offset: self.offset,
            head_offset: self.head.unwrap_or(0),
            lag: self.lag.unwrap_or(0),
            dead_letters: self.dead_letters,
        }
    }
}

/// One handler bound to a store and a source. Cheap to clone; clones share
/// one processing lock, so deliveries, redrives and replays never interleave.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    handler: Arc<dyn Handler>,
    store: Arc<dyn Store>,
    source: Arc<dyn EventSource>,
    policy: RetryPolicy,
    lock: Mutex<()>,
    /// Bumped by every replay; deliveries of older subscriptions are dropped.
    generation: watch::Sender<u64>,
}

impl Consumer {
    /// A consumer feeding `source`'s events to `handler`, keeping its position and dead letters in `store`.
    pub fn new(
        handler: Arc<dyn Handler>,
        store: Arc<dyn Store>,
        source: Arc<dyn EventSource>,
        policy: RetryPolicy,
    ) -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                name: handler.name().to_string(),
                handler,
                store,
                source,
                policy,
                lock: Mutex::new(()),
                generation,
            }),
        }
    }

    /// The consumer's name (the handler's).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs the runtime on a task until the process ends (or the handle is aborted).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let consumer = self.clone();
        tokio::spawn(async move { consumer.run(std::future::pending::<()>()).await })
    }

    /// Follows the source until `shutdown` resolves: subscribes from the
    /// durable offset, processes each delivery, acks it, and resubscribes
    /// after a replay or a source failure.
    pub async fn run<F: Future<Output = ()> + Send>(&self, shutdown: F) {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => {}
            _ = self.follow() => {}
        }
        tracing::info!(consumer = %self.inner.name, "consumer stopped");
    }

    async fn follow(&self) {
        let inner = &self.inner;
        let mut generation = inner.generation.subscribe();
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                let wait = backoff(
                    inner.policy.initial_backoff,
                    inner.policy.max_backoff,
                    failures,
                );
                tokio::time::sleep(wait).await;
            }
            if let Err(e) = self.finish_rebuild().await {
                tracing::warn!(consumer = %inner.name, error = %e, "cannot finish the pending rebuild");
                failures = failures.saturating_add(1);
                continue;
            }
            let after = match read_offset(inner.store.as_ref(), &inner.name).await {
                Ok(offset) => offset,
                Err(e) => {
                    tracing::warn!(consumer = %inner.name, error = %e, "cannot read the consumer offset");
                    failures = failures.saturating_add(1);
                    continue;
                }
            };
            let current = *generation.borrow_and_update();
            let subscription = Subscription {
                consumer: inner.name.clone(),
                after,
                event_types: inner.handler.event_types(),
            };
            let mut stream = match inner.source.subscribe(subscription).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(consumer = %inner.name, error = %e, "cannot subscribe");
                    failures = failures.saturating_add(1);
                    continue;
                }
            };
            tracing::info!(consumer = %inner.name, source = %inner.source.describe(), after, "consumer subscribed");
            loop {
                let item = tokio::select! {
                    _ = generation.changed() => { failures = 0; break; }
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(delivery)) => match self.deliver(&delivery, current).await {
                        Ok(Outcome::Stale) => {}
                        Ok(_) => {
                            failures = 0;
                            crate::metrics::record_consumer_offset(&inner.name, delivery.position);
                            if let Err(e) = inner.source.ack(&inner.name, delivery.position).await {
                                tracing::warn!(consumer = %inner.name, position = delivery.position, error = %e, "ack failed; the event will be redelivered");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(consumer = %inner.name, position = delivery.position, error = %e, "cannot record the event; resubscribing from the durable offset");
                            failures = failures.saturating_add(1);
                            break;
                        }
                    },
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %inner.name, error = %e, "event source problem");
                    }
                    None => {
                        failures = failures.saturating_add(1);
                        break;
                    }
                }
            }
        }
    }

    async fn deliver(
        &self,
        delivery: &Delivery,
        generation: u64,
    ) -> Result<Outcome, ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        if *self.inner.generation.borrow() != generation {
            return Ok(Outcome::Stale);
        }
        let env = &delivery.envelope;
        let span = crate::trace::events::consume(
            &self.inner.name,
            &env.event_type,
            &env.event_id,
            &env.traceparent,
        );
        self.process_locked(delivery, true).instrument(span).await
    }
    /// The durable offset: the greatest position processed, skipped or dead-lettered.
    pub async fn offset(&self) -> Result<u64, ConsumerError> {
        Ok(read_offset(self.inner.store.as_ref(), &self.inner.name).await?)
    }

    /// Offset, head, lag and dead letters.
    pub async fn status(&self) -> Result<ConsumerStatus, ConsumerError> {
        let inner = &self.inner;
        let offset = self.offset().await?;
        let head = match inner.source.head().await {
            Ok(head) => Some(head),
            Err(e) => {
                tracing::debug!(consumer = %inner.name, error = %e, "head unknown");
                None
            }
        };
        let status = ConsumerStatus {
            consumer: inner.name.clone(),
            source: inner.source.describe(),
            offset,
            head,
            lag: head.map(|h| h.saturating_sub(offset)),
            dead_letters: dead_letter::count(inner.store.as_ref(), &inner.name).await?,
        };
        crate::metrics::record_consumer(&status);
        Ok(status)
    }

    /// Reports dependency `events:<consumer>` up while the source's head is
    /// reachable and the lag is at most `max_lag`.
    pub fn watch_health(&self, hub: &HealthHub, max_lag: u64, interval: Duration) {
        let consumer = self.clone();
        hub.watch(
            &format!("events:{}", self.inner.name),
            interval,
            move || {
                let consumer = consumer.clone();
                async move {
                    match consumer.status().await {
                        Ok(status) => status.lag.is_some_and(|lag| lag <= max_lag),
                        Err(_) => false,
                    }
                }
            },
        );
    }
}
