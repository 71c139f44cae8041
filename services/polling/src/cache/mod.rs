//! The read cache port: what the read-through layer needs from a cache
//! (look up, fill if nothing changed since the miss, invalidate a poll), and
//! the no-op adapter used when `[cache] backend = "none"`.
//!
//! Correctness rests on the fill ticket. A miss hands out a ticket naming the
//! poll's current *generation*; every invalidation replaces that generation;
//! a fill stores its value only while the generation is still the ticket's.
//! So a reader that read the store before a write, and fills after that
//! write's invalidation, is refused: no stale entry outlives a delivered
//! invalidation (see `read_through` and the tests there for the race).
//!
//! - [`read_through`]: cache-aside over the poll store, single flight per key.
//! - [`redis`]: the Redis adapter (Lua scripts keep each step atomic).
//! - [`resilient`]: the adapter behind the chassis' time limit and breaker.
//! - [`invalidate`]: follows the poll's own events and invalidates.

pub mod invalidate;
pub mod read_through;
pub mod redis;
pub mod resilient;

use crate::config::{CacheBackend, CacheSettings};
use crate::ports::PollStore;
use async_trait::async_trait;
use std::sync::Arc;
use tally_chassis::events::Feed;

/// The cache's name in metrics (`tally_cache_*{cache="polls"}`).
pub const METRICS_NAME: &str = "polls";

/// What is cached about a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The poll itself (GetPoll).
    Poll,
    /// The poll and its counts (GetResults).
    Results,
}

impl Kind {
    /// Both kinds: an invalidation drops them together.
    pub const ALL: [Kind; 2] = [Kind::Poll, Kind::Results];

    /// The key segment of this kind.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Poll => "poll",
            Kind::Results => "results",
        }
    }
}

/// One cached entry: a kind of read of one poll.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Which read.
    pub kind: Kind,
    /// Of which poll.
    pub poll_id: String,
}

impl CacheKey {
    /// The key of `kind` for `poll_id`.
    pub fn new(kind: Kind, poll_id: &str) -> Self {
        Self {
            kind,
            poll_id: poll_id.to_string(),
        }
    }
}

/// The poll's generation seen at a miss; a fill is stored only while it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillTicket(pub String);

/// The answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The cached bytes.
    Hit(Vec<u8>),
    /// Nothing cached; fill with this ticket after reading the store.
    Miss(FillTicket),
}

/// Cache failures; the read-through layer counts them and reads the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The cache cannot be reached or did not answer in time.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The cache answered something this build does not understand.
    #[error("cache answered unexpectedly: {0}")]
    Protocol(String),
}

/// The port.
#[async_trait]
pub trait PollCache: Send + Sync + 'static {
    /// Whether this adapter keeps anything; the read-through layer steps
    /// aside entirely for one that does not (reads go straight to the store).
    fn stores(&self) -> bool {
        true
    }
    /// The cached value of `key`, or a ticket to fill it with.
    async fn lookup(&self, key: &CacheKey) -> Result<Lookup, CacheError>;
    /// Stores `value` under `key` unless the poll was invalidated since
    /// `ticket` was handed out; returns whether it was stored.
    async fn fill(
        &self,
        key: &CacheKey,
        ticket: &FillTicket,
        value: &[u8],
    ) -> Result<bool, CacheError>;
    /// Drops every entry of `poll_id` and refuses fills of earlier tickets.
    async fn invalidate(&self, poll_id: &str) -> Result<(), CacheError>;
    /// The event position up to which every invalidation was applied, if known.
    async fn checkpoint(&self) -> Result<Option<u64>, CacheError>;
    /// Records that every event up to `position` was applied.
    async fn record_checkpoint(&self, position: u64) -> Result<(), CacheError>;
}

/// The adapter when no cache is configured: every lookup misses and nothing
/// is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

#[async_trait]
impl PollCache for NoCache {
    fn stores(&self) -> bool {
        false
    }

    async fn lookup(&self, _key: &CacheKey) -> Result<Lookup, CacheError> {
        Ok(Lookup::Miss(FillTicket(String::new())))
    }

    async fn fill(
        &self,
        _key: &CacheKey,
        _ticket: &FillTicket,
        _value: &[u8],
    ) -> Result<bool, CacheError> {
        Ok(false)
    }

    async fn invalidate(&self, _poll_id: &str) -> Result<(), CacheError> {
        Ok(())
    }

    async fn checkpoint(&self) -> Result<Option<u64>, CacheError> {
        Ok(None)
    }

    async fn record_checkpoint(&self, _position: u64) -> Result<(), CacheError> {
        Ok(())
    }
}

/// The poll store to serve from, and the invalidation follower if any.
pub struct Wired {
    /// The store with the cache in front (reads go straight through with no cache).
    pub polls: Arc<dyn PollStore>,
    /// The task following the poll's events; `None` without a cache.
    pub follower: Option<tokio::task::JoinHandle<()>>,
}

/// Puts the configured cache in front of `store`: the read-through layer
/// over the chosen adapter, and (for a real cache) the follower of `feed`
/// that invalidates by the poll's events. The layer wakes `feed` after each
/// write, so events (and invalidations) leave at once.
pub fn wire(
    settings: &CacheSettings,
    store: Arc<dyn PollStore>,
    feed: &Feed,
) -> Result<Wired, CacheError> {
    let cache: Arc<dyn PollCache> = match settings.backend {
        CacheBackend::None => Arc::new(NoCache),
        CacheBackend::Redis => {
            let url = settings.url.as_deref().unwrap_or_default();
            let redis = redis::RedisCache::new(
                url,
                &settings.key_prefix,
                settings.ttl(),
                settings.call_timeout(),
            )?;
            let resilient =
                resilient::ResilientCache::new(Arc::new(redis), settings.call_timeout())
                    .map_err(|e| CacheError::Unavailable(e.to_string()))?;
            Arc::new(resilient)
        }
    };
    let notifier = feed.notifier();
    let reads = read_through::ReadThrough::with_write_hook(
        store,
        cache.clone(),
        read_through::Options {
            ttl: settings.ttl(),
            max_entry_bytes: settings.max_entry_bytes as usize,
            max_in_flight: settings.max_in_flight as usize,
            invalidate_on_write: settings.invalidate_on_write,
        },
        Some(Arc::new(move || notifier.poke())),
    );
    let follower = cache.stores().then(|| {
        let source = Arc::new(invalidate::OwnFeed::new(feed.clone()));
        invalidate::Invalidator::new(reads.clone(), cache, source).spawn()
    });
    if follower.is_some() {
        tracing::info!(ttl_secs = settings.ttl_secs, prefix = %settings.key_prefix, "read-through cache in Redis for GetPoll and GetResults");
    }
    Ok(Wired {
        polls: Arc::new(reads),
        follower,
    })
}
