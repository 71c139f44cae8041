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

use crate::events::bus::{BusError, Delivery, EventSource, Subscription};
use crate::events::dead_letter::{self, DeadLetterRecord};
use crate::events::feed_source::backoff;
use crate::health::HealthHub;
use crate::storage::{Store, StoreError, WriteBatch};
use async_trait::async_trait;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// Offsets (and the rebuild marker) per consumer.
pub const OFFSETS: &str = "__consumer_offsets";
/// One row per processed event id per consumer.
pub const PROCESSED: &str = "__consumer_processed";

const OFFSET_KEY: &str = "offset";
const REBUILD_KEY: &str = "rebuilding";
const PAGE: usize = 256;

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
    pub initial_backoff: Duration,
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("handler failed: {0}")]
    Handler(String),
}

impl From<ConsumerError> for tonic::Status {
    fn from(e: ConsumerError) -> Self {
        match e {
            ConsumerError::Store(s) => s.into(),
            ConsumerError::Bus(b @ BusError::Unavailable(_)) => {
                tonic::Status::unavailable(b.to_string())
            }
            ConsumerError::Bus(b) => tonic::Status::failed_precondition(b.to_string()),
            ConsumerError::NotFound(m) => tonic::Status::not_found(format!("{m} not found")),
            ConsumerError::Invalid(m) => tonic::Status::invalid_argument(m),
            ConsumerError::Handler(m) => tonic::Status::internal(m),
        }
    }
}

/// A consumer's position and backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub consumer: String,
    pub source: String,
    pub offset: u64,
    /// `None` when the source cannot be reached.
    pub head: Option<u64>,
    /// `head - offset`, when the head is known.
    pub lag: Option<u64>,
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

enum Attempt {
    Conflict(String),
    Transient(String),
    Permanent(String),
    Skip(String),
    Fatal(StoreError),
}

impl Consumer {
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
        self.process_locked(delivery, true).await
    }

    /// Processes one delivery now (as the runtime does), advancing the offset.
    pub async fn process(&self, delivery: &Delivery) -> Result<Outcome, ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        self.process_locked(delivery, true).await
    }

    fn skip_reason(&self, delivery: &Delivery) -> Option<String> {
        let env = &delivery.envelope;
        if env.payload.is_none() {
            return Some(format!("unknown payload for type `{}`", env.event_type));
        }
        if env.event_id.is_empty() {
            return Some("envelope without event id".to_string());
        }
        if let Some(max) = self.inner.handler.max_schema_version()
            && env.schema_version > max
        {
            return Some(format!(
                "schema version {} is newer than {max}",
                env.schema_version
            ));
        }
        let wanted = self.inner.handler.event_types();
        if !wanted.is_empty() && !wanted.contains(&env.event_type) {
            return Some(format!("type `{}` not subscribed", env.event_type));
        }
        None
    }

    async fn process_locked(&self, d: &Delivery, advance: bool) -> Result<Outcome, ConsumerError> {
        let inner = &self.inner;
        if let Some(reason) = self.skip_reason(d) {
            tracing::info!(consumer = %inner.name, position = d.position, event_id = %d.envelope.event_id, %reason, "skipping event");
            if advance {
                self.advance_only(d.position).await?;
            }
            return Ok(Outcome::Skipped(reason));
        }
        let mut attempts = 0u32;
        let mut conflicts = 0u32;
        loop {
            let error = match self.attempt(d, advance).await {
                Ok(outcome) => return Ok(outcome),
                Err(Attempt::Fatal(e)) => return Err(e.into()),
                Err(Attempt::Skip(reason)) => {
                    tracing::info!(consumer = %inner.name, position = d.position, %reason, "handler skipped event");
                    if advance {
                        self.advance_only(d.position).await?;
                    }
                    return Ok(Outcome::Skipped(reason));
                }
                Err(Attempt::Conflict(e)) => {
                    conflicts += 1;
                    if conflicts <= inner.policy.max_conflicts {
                        continue;
                    }
                    conflicts = 0;
                    format!("conflicting writes: {e}")
                }
                Err(Attempt::Permanent(e)) => {
                    attempts += 1;
                    return self.dead_letter(d, e, attempts, advance).await;
                }
                Err(Attempt::Transient(e)) => e,
            };
            attempts += 1;
            if attempts >= inner.policy.max_attempts {
                return self.dead_letter(d, error, attempts, advance).await;
            }
            tracing::warn!(consumer = %inner.name, position = d.position, attempt = attempts, %error, "event failed; retrying");
            tokio::time::sleep(backoff(
                inner.policy.initial_backoff,
                inner.policy.max_backoff,
                attempts,
            ))
            .await;
        }
    }

    async fn attempt(&self, d: &Delivery, advance: bool) -> Result<Outcome, Attempt> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        let event_id = d.envelope.event_id.as_str();
        let already = store
            .get(PROCESSED, &inner.name, event_id)
            .await
            .map_err(|e| Attempt::Transient(e.to_string()))?;
        if already.is_some() {
            if advance {
                self.advance_only(d.position)
                    .await
                    .map_err(Attempt::Fatal)?;
            }
            return Ok(Outcome::Duplicate);
        }
        let mut batch = WriteBatch::new();
        batch.insert_if_absent(
            PROCESSED,
            inner.name.clone(),
            event_id,
            d.position.to_string().into_bytes(),
        );
        match inner.handler.handle(d, &mut batch, store).await {
            Ok(()) => {}
            Err(HandlerError::Transient(e)) => return Err(Attempt::Transient(e)),
            Err(HandlerError::Permanent(e)) => return Err(Attempt::Permanent(e)),
            Err(HandlerError::Skip(e)) => return Err(Attempt::Skip(e)),
            Err(HandlerError::Store(e @ StoreError::ConditionFailed { .. })) => {
                return Err(Attempt::Conflict(e.to_string()));
            }
            Err(HandlerError::Store(e)) => return Err(Attempt::Transient(e.to_string())),
        }
        batch.delete(dead_letter::TABLE, inner.name.clone(), event_id);
        if advance {
            push_offset(store, &inner.name, &mut batch, d.position)
                .await
                .map_err(|e| Attempt::Transient(e.to_string()))?;
        }
        match store.commit(batch).await {
            Ok(()) => {
                inner.handler.committed(d).await;
                Ok(Outcome::Applied)
            }
            Err(StoreError::ConditionFailed { index: 0, .. }) => {
                if advance {
                    self.advance_only(d.position)
                        .await
                        .map_err(Attempt::Fatal)?;
                }
                Ok(Outcome::Duplicate)
            }
            Err(e @ StoreError::ConditionFailed { .. }) => Err(Attempt::Conflict(e.to_string())),
            Err(e) => Err(Attempt::Transient(e.to_string())),
        }
    }

    async fn dead_letter(
        &self,
        d: &Delivery,
        error: String,
        attempts: u32,
        advance: bool,
    ) -> Result<Outcome, ConsumerError> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        tracing::error!(consumer = %inner.name, position = d.position, event_id = %d.envelope.event_id, attempts, %error, "event dead-lettered");
        for _ in 0..=inner.policy.max_conflicts {
            let previous = dead_letter::get(store, &inner.name, &d.envelope.event_id)
                .await?
                .map(|r| r.attempts)
                .unwrap_or(0);
            let record = DeadLetterRecord::new(d, error.clone(), previous.saturating_add(attempts));
            let mut batch = WriteBatch::new();
            batch.put(
                dead_letter::TABLE,
                inner.name.clone(),
                d.envelope.event_id.clone(),
                crate::storage::encode(&record)?,
            );
            if advance {
                push_offset(store, &inner.name, &mut batch, d.position).await?;
            }
            match store.commit(batch).await {
                Ok(()) => return Ok(Outcome::DeadLettered(error)),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConsumerError::Handler(format!(
            "offset of {} keeps changing under the dead-letter write",
            inner.name
        )))
    }

    /// Moves the offset to `position` (if ahead) with nothing else.
    async fn advance_only(&self, position: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        for _ in 0..=inner.policy.max_conflicts {
            let mut batch = WriteBatch::new();
            push_offset(inner.store.as_ref(), &inner.name, &mut batch, position).await?;
            if batch.writes.is_empty() {
                return Ok(());
            }
            match inner.store.commit(batch).await {
                Ok(()) => return Ok(()),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "offset of {} keeps changing",
            inner.name
        )))
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

    /// Every dead letter of this consumer.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRecord>, ConsumerError> {
        Ok(dead_letter::list(self.inner.store.as_ref(), &self.inner.name).await?)
    }

    /// One dead letter.
    pub async fn dead_letter_entry(
        &self,
        event_id: &str,
    ) -> Result<DeadLetterRecord, ConsumerError> {
        dead_letter::get(self.inner.store.as_ref(), &self.inner.name, event_id)
            .await?
            .ok_or_else(|| {
                ConsumerError::NotFound(format!("dead letter {event_id} of {}", self.inner.name))
            })
    }

    /// Processes dead letters again (one, or all when `event_id` is `None`),
    /// with the usual retries. Each is applied at most once; a success removes
    /// it from the queue. Returns `(redriven, still_failing)`.
    pub async fn redrive(&self, event_id: Option<&str>) -> Result<(u32, u32), ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        let store = self.inner.store.as_ref();
        let records = match event_id {
            Some(id) => vec![self.dead_letter_entry(id).await?],
            None => self.dead_letters().await?,
        };
        let (mut redriven, mut failing) = (0u32, 0u32);
        for record in records {
            let delivery = record.delivery()?;
            match self.process_locked(&delivery, false).await? {
                Outcome::DeadLettered(_) => failing += 1,
                Outcome::Applied => redriven += 1,
                Outcome::Duplicate | Outcome::Skipped(_) | Outcome::Stale => {
                    let mut batch = WriteBatch::new();
                    batch.delete(
                        dead_letter::TABLE,
                        self.inner.name.clone(),
                        record.event_id.clone(),
                    );
                    store.commit(batch).await?;
                    redriven += 1;
                }
            }
        }
        tracing::info!(consumer = %self.inner.name, redriven, still_failing = failing, "redrive finished");
        Ok((redriven, failing))
    }

    /// Rewinds the consumer to `after` (events with greater positions are
    /// delivered again; those already processed stay without effect). With
    /// `rebuild` (only from 0), the read model and processed rows are cleared
    /// first, so every event is applied again.
    pub async fn replay(&self, after: u64, rebuild: bool) -> Result<(), ConsumerError> {
        if rebuild && after != 0 {
            return Err(ConsumerError::Invalid(
                "a rebuild replays from the start: use from_offset 0".into(),
            ));
        }
        let inner = &self.inner;
        let _guard = inner.lock.lock().await;
        let mut batch = WriteBatch::new();
        batch.put(
            OFFSETS,
            inner.name.clone(),
            OFFSET_KEY,
            after.to_string().into_bytes(),
        );
        if rebuild {
            batch.put(OFFSETS, inner.name.clone(), REBUILD_KEY, b"1".to_vec());
        }
        inner.store.commit(batch).await?;
        if rebuild {
            self.rebuild_locked().await?;
        }
        inner.source.rewind(&inner.name, after).await?;
        inner.generation.send_modify(|g| *g = g.wrapping_add(1));
        tracing::info!(consumer = %inner.name, after, rebuild, "consumer rewound");
        Ok(())
    }

    async fn finish_rebuild(&self) -> Result<(), ConsumerError> {
        let _guard = self.inner.lock.lock().await;
        let marker = self
            .inner
            .store
            .get(OFFSETS, &self.inner.name, REBUILD_KEY)
            .await?;
        if marker.is_some() {
            tracing::info!(consumer = %self.inner.name, "finishing an interrupted rebuild");
            self.rebuild_locked().await?;
        }
        Ok(())
    }

    async fn rebuild_locked(&self) -> Result<(), ConsumerError> {
        let inner = &self.inner;
        let store = inner.store.as_ref();
        inner
            .handler
            .reset(store)
            .await
            .map_err(|e| ConsumerError::Handler(format!("reset of {}: {e}", inner.name)))?;
        clear_partition(store, PROCESSED, &inner.name).await?;
        let mut batch = WriteBatch::new();
        batch.delete(OFFSETS, inner.name.clone(), REBUILD_KEY);
        store.commit(batch).await?;
        Ok(())
    }
}

/// Deletes every row of one partition (for [`Handler::reset`] implementations too).
pub async fn clear_partition(
    store: &dyn Store,
    table: &'static str,
    partition: &str,
) -> Result<(), StoreError> {
    loop {
        let rows = store.scan(table, partition, None, PAGE).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for row in rows {
            batch.delete(table, partition, row.key);
        }
        store.commit(batch).await?;
    }
}

async fn read_offset_raw(
    store: &dyn Store,
    consumer: &str,
) -> Result<(Option<Vec<u8>>, u64), StoreError> {
    let raw = store.get(OFFSETS, consumer, OFFSET_KEY).await?;
    let value = match &raw {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("offset of consumer {consumer}")))?,
    };
    Ok((raw, value))
}

async fn read_offset(store: &dyn Store, consumer: &str) -> Result<u64, StoreError> {
    Ok(read_offset_raw(store, consumer).await?.1)
}

/// Adds "offset := position" to `batch` when it moves the offset forward,
/// guarded by the value read (so concurrent writers never move it back).
async fn push_offset(
    store: &dyn Store,
    consumer: &str,
    batch: &mut WriteBatch,
    position: u64,
) -> Result<(), StoreError> {
    let (raw, current) = read_offset_raw(store, consumer).await?;
    if position > current {
        batch.expect(OFFSETS, consumer, OFFSET_KEY, raw).put(
            OFFSETS,
            consumer,
            OFFSET_KEY,
            position.to_string().into_bytes(),
        );
    }
    Ok(())
}
