//! Cache-aside for GetPoll and GetResults: a [`PollStore`] decorator that
//! answers `get` and `results` from the cache port, reads the store on a
//! miss and fills the entry with the miss's ticket, and passes writes
//! through (invalidating after them when configured; the poll's events
//! invalidate in any case, see `invalidate`).
//!
//! Single flight: concurrent misses for one key in this process share one
//! lookup and one store read (a shared future per key, bounded by
//! `max_in_flight`). An invalidation drops the key's flight, so a read that
//! starts after it never joins a read of the old state.
//!
//! Degrading: a cache error is counted and the store answers. While an
//! invalidation of a poll has not landed (Redis down), reads of that poll
//! skip the cache for up to one TTL (after which any stale entry has
//! expired); while the event follower cannot apply invalidations at all,
//! every read skips it.

use super::{CacheError, CacheKey, Kind, Lookup, METRICS_NAME, PollCache};
use crate::domain::Millis;
use crate::domain::poll::Poll;
use crate::domain::tally::Tally;
use crate::domain::vote::VoteRequest;
use crate::ports::{CastOutcome, ListFilter, Page, PollStore, PollingError};
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tally_chassis::metrics::{CacheEvent, count_cache};
use tally_chassis::storage::StoreError;
use tokio::time::Instant;

/// Polls whose invalidation is outstanding that are remembered one by one;
/// beyond this every read skips the cache for one TTL.
pub const MAX_PENDING: usize = 10_000;

/// A value the layer caches.
pub trait Cached: Clone + Send + Sync + 'static {
    /// Which key kind holds it.
    const KIND: Kind;
    /// Its bytes, or `None` when it is not cached (e.g. a missing poll).
    fn encode(&self) -> Option<Vec<u8>>;
    /// The value of cached bytes, `None` when they do not decode.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Cached for Option<Poll> {
    const KIND: Kind = Kind::Poll;
    fn encode(&self) -> Option<Vec<u8>> {
        self.as_ref().and_then(|p| serde_json::to_vec(p).ok())
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Poll>(bytes).ok().map(Some)
    }
}

impl Cached for (Poll, Tally) {
    const KIND: Kind = Kind::Results;
    fn encode(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

type Outcome<V> = Result<V, Arc<PollingError>>;
type Flight<V> = Shared<BoxFuture<'static, Outcome<V>>>;

/// In-flight reads of one kind, by poll id.
struct Flights<V: Cached> {
    map: Mutex<HashMap<String, (u64, Flight<V>)>>,
    seq: AtomicU64,
}

impl<V: Cached> Flights<V> {
    fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        }
    }

    /// Joins the key's flight, or makes `fut` the key's flight; hands `fut`
    /// back when `max` flights already run.
    fn join(
        &self,
        poll_id: &str,
        max: usize,
        fut: BoxFuture<'static, Outcome<V>>,
    ) -> Result<(u64, Flight<V>), BoxFuture<'static, Outcome<V>>> {
        let mut map = self.map.lock();
        if let Some((id, flight)) = map.get(poll_id) {
            return Ok((*id, flight.clone()));
        }
        if map.len() >= max {
            return Err(fut);
        }
        let id = self.seq.fetch_add(1, Ordering::Relaxed);
        let flight = fut.shared();
        map.insert(poll_id.to_string(), (id, flight.clone()));
        Ok((id, flight))
    }

    /// Removes flight `id` of the key if it is still the current one.
    fn finish(&self, poll_id: &str, id: u64) {
        let mut map = self.map.lock();
        if map.get(poll_id).is_some_and(|(current, _)| *current == id) {
            map.remove(poll_id);
        }
    }

    fn forget(&self, poll_id: &str) {
        self.map.lock().remove(poll_id);
    }
}

/// Ends a participant's hold on a flight, also when its caller goes away.
struct FlightGuard<'a, V: Cached> {
    flights: &'a Flights<V>,
    poll_id: &'a str,
    id: u64,
}

impl<V: Cached> Drop for FlightGuard<'_, V> {
    fn drop(&mut self) {
        self.flights.finish(self.poll_id, self.id);
    }
}

/// Tunables of the layer.
#[derive(Debug, Clone)]
pub struct Options {
    /// Entry lifetime (also how long a poll with an outstanding invalidation skips the cache).
    pub ttl: Duration,
    /// Values larger than this are not cached.
    pub max_entry_bytes: usize,
    /// Keys with a read in flight at once.
    pub max_in_flight: usize,
    /// Invalidate right after this process's own writes.
    pub invalidate_on_write: bool,
}

type WriteHook = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    store: Arc<dyn PollStore>,
    cache: Arc<dyn PollCache>,
    options: Options,
    polls: Flights<Option<Poll>>,
    results: Flights<(Poll, Tally)>,
    pending: Mutex<HashMap<String, Instant>>,
    skip_all_until: Mutex<Option<Instant>>,
    held: AtomicBool,
    on_write: Option<WriteHook>,
}

/// The decorator. Cheap to clone; clones share flights and state.
#[derive(Clone)]
pub struct ReadThrough {
    inner: Arc<Inner>,
}

fn unshare(e: &PollingError) -> PollingError {
    match e {
        PollingError::Domain(d) => PollingError::Domain(d.clone()),
        PollingError::Contention(m) => PollingError::Contention(m.clone()),
        PollingError::Store(s) => PollingError::Store(match s {
            StoreError::ConditionFailed {
                index,
                table,
                partition,
                key,
            } => StoreError::ConditionFailed {
                index: *index,
                table: table.clone(),
                partition: partition.clone(),
                key: key.clone(),
            },
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        }),
    }
}

fn count(event: CacheEvent) {
    count_cache(METRICS_NAME, event);
}

/// One flight: lookup, and on a miss the store read and the ticketed fill.
async fn fill_through<V: Cached>(
    cache: Arc<dyn PollCache>,
    key: CacheKey,
    max_entry_bytes: usize,
    load: BoxFuture<'static, Result<V, PollingError>>,
) -> Outcome<V> {
    let ticket = match cache.lookup(&key).await {
        Ok(Lookup::Hit(bytes)) => {
            if let Some(value) = V::decode(&bytes) {
                count(CacheEvent::Hit);
                return Ok(value);
            }
            count(CacheEvent::Error);
            tracing::warn!(poll_id = %key.poll_id, "cached entry does not decode; reading the store");
            None
        }
        Ok(Lookup::Miss(ticket)) => {
            count(CacheEvent::Miss);
            Some(ticket)
        }
        Err(e) => {
            count(CacheEvent::Error);
            tracing::debug!(error = %e, "cache lookup failed; reading the store");
            None
        }
    };
    let value = load.await.map_err(Arc::new)?;
    if let Some(ticket) = ticket
        && let Some(bytes) = value.encode()
        && bytes.len() <= max_entry_bytes
        && let Err(e) = cache.fill(&key, &ticket, &bytes).await
    {
        count(CacheEvent::Error);
        tracing::debug!(error = %e, "cache fill failed");
    }
    Ok(value)
}

impl ReadThrough {
    /// Reads of `store` cached in `cache`; `on_write` runs after every
    /// committed write (e.g. to wake the event feed at once).
    pub fn with_write_hook(
        store: Arc<dyn PollStore>,
        cache: Arc<dyn PollCache>,
        options: Options,
        on_write: Option<WriteHook>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                cache,
                options,
                polls: Flights::new(),
                results: Flights::new(),
                pending: Mutex::new(HashMap::new()),
                skip_all_until: Mutex::new(None),
                held: AtomicBool::new(false),
                on_write,
            }),
        }
    }

    /// While `on`, every read skips the cache (the event follower sets it
    /// while it cannot apply invalidations).
    pub fn hold(&self, on: bool) {
        self.inner.held.store(on, Ordering::SeqCst);
    }

    /// Drops every cached read of `poll_id` (and its in-flight reads).
    pub async fn invalidate(&self, poll_id: &str) -> Result<(), CacheError> {
        let inner = &self.inner;
        if !inner.cache.stores() {
            return Ok(());
        }
        self.mark_pending(poll_id);
        inner.polls.forget(poll_id);
        inner.results.forget(poll_id);
        let out = inner.cache.invalidate(poll_id).await;
        inner.polls.forget(poll_id);
        inner.results.forget(poll_id);
        match &out {
            Ok(()) => {
                count(CacheEvent::Invalidation);
                inner.pending.lock().remove(poll_id);
            }
            Err(e) => {
                count(CacheEvent::Error);
                tracing::warn!(poll_id, error = %e, "cache invalidation failed; the poll skips the cache until it lands");
            }
        }
        out
    }

    fn mark_pending(&self, poll_id: &str) {
        let now = Instant::now();
        let mut pending = self.inner.pending.lock();
        if pending.len() >= MAX_PENDING && !pending.contains_key(poll_id) {
            *self.inner.skip_all_until.lock() = Some(now + self.inner.options.ttl);
            pending.retain(|_, at| now.duration_since(*at) < self.inner.options.ttl);
            return;
        }
        pending.insert(poll_id.to_string(), now);
    }

    /// Whether reads of `poll_id` must go to the store alone now.
    fn skips(&self, poll_id: &str) -> bool {
        let inner = &self.inner;
        if inner.held.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        {
            let mut all = inner.skip_all_until.lock();
            match *all {
                Some(until) if now < until => return true,
                Some(_) => *all = None,
                None => {}
            }
        }
        let mut pending = inner.pending.lock();
        match pending.get(poll_id) {
            Some(at) if now.duration_since(*at) < inner.options.ttl => true,
            Some(_) => {
                pending.remove(poll_id);
                false
            }
            None => false,
        }
    }

    async fn read<V: Cached>(
        &self,
        poll_id: &str,
        flights: &Flights<V>,
        load: BoxFuture<'static, Result<V, PollingError>>,
    ) -> Result<V, PollingError> {
        let inner = &self.inner;
        if !inner.cache.stores() || self.skips(poll_id) {
            return load.await;
        }
        let key = CacheKey::new(V::KIND, poll_id);
        let fut = Box::pin(fill_through(
            inner.cache.clone(),
            key,
            inner.options.max_entry_bytes,
            load,
        ));
        match flights.join(poll_id, inner.options.max_in_flight, fut) {
            Ok((id, flight)) => {
                let _guard = FlightGuard {
                    flights,
                    poll_id,
                    id,
                };
                flight.await.map_err(|e| unshare(&e))
            }
            // Too many keys in flight: this read goes alone.
            Err(fut) => fut.await.map_err(|e| unshare(&e)),
        }
    }

    async fn after_write(&self, poll_id: &str) {
        if let Some(hook) = &self.inner.on_write {
            hook();
        }
        if self.inner.options.invalidate_on_write {
            // Failures are counted and logged there; the event retries.
            let _ = self.invalidate(poll_id).await;
        }
    }
}

#[async_trait]
impl PollStore for ReadThrough {
    async fn create(
        &self,
        poll: &Poll,
        limit: Option<u32>,
        now: Millis,
    ) -> Result<(), PollingError> {
        self.inner.store.create(poll, limit, now).await?;
        if let Some(hook) = &self.inner.on_write {
            hook();
        }
        Ok(())
    }

    async fn get(&self, poll_id: &str) -> Result<Option<Poll>, PollingError> {
        let store = self.inner.store.clone();
        let id = poll_id.to_string();
        let load = Box::pin(async move { store.get(&id).await });
        self.read(poll_id, &self.inner.polls, load).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<String>,
        limit: usize,
        now: Millis,
    ) -> Result<Page, PollingError> {
        self.inner.store.list(filter, after, limit, now).await
    }

    async fn close(&self, poll_id: &str, caller: &str, now: Millis) -> Result<Poll, PollingError> {
        let poll = self.inner.store.close(poll_id, caller, now).await?;
        self.after_write(poll_id).await;
        Ok(poll)
    }

    async fn cast_vote(&self, req: &VoteRequest, now: Millis) -> Result<CastOutcome, PollingError> {
        let outcome = self.inner.store.cast_vote(req, now).await?;
        if !outcome.replayed {
            self.after_write(&req.poll_id).await;
        }
        Ok(outcome)
    }

    async fn results(&self, poll_id: &str) -> Result<(Poll, Tally), PollingError> {
        let store = self.inner.store.clone();
        let id = poll_id.to_string();
        let load = Box::pin(async move { store.results(&id).await });
        self.read(poll_id, &self.inner.results, load).await
    }
}

#[cfg(test)]
mod tests;
