//! The cache port behind the chassis' resilient stack (time limit, breaker,
//! bulkhead; `tally_chassis::resilience`), so a slow or down Redis answers at
//! once with [`CacheError::Unavailable`] and the read-through layer reads the
//! store instead. Cache calls are not retried: a miss is cheaper than a wait.

use super::{CacheError, CacheKey, FillTicket, Lookup, PollCache};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tally_chassis::resilience::{self, Call, ResilienceError, Resilient, Settings, SettingsError};

/// The store-client name of the cache (metric label of its breaker).
pub const CLIENT_NAME: &str = "redis-cache";

/// One cache call, as the stack sees it.
#[derive(Clone)]
pub enum CacheCall {
    /// See [`PollCache::lookup`].
    Lookup(CacheKey),
    /// See [`PollCache::fill`].
    Fill(CacheKey, FillTicket, Arc<[u8]>),
    /// See [`PollCache::invalidate`].
    Invalidate(String),
    /// See [`PollCache::checkpoint`].
    Checkpoint,
    /// See [`PollCache::record_checkpoint`].
    RecordCheckpoint(u64),
}

impl Call for CacheCall {
    fn idempotent(&self) -> bool {
        // Retries are off for the cache (see the module doc); this only
        // tells the stack which calls would be safe to repeat.
        matches!(self, CacheCall::Lookup(_) | CacheCall::Checkpoint)
    }
}

/// What a cache call returned.
pub enum CacheReply {
    /// A lookup's answer.
    Found(Lookup),
    /// Whether a fill was stored.
    Filled(bool),
    /// The checkpoint.
    At(Option<u64>),
    /// An invalidation or checkpoint write succeeded.
    Done,
}

fn is_outage(e: &CacheError) -> bool {
    matches!(e, CacheError::Unavailable(_))
}

/// A [`PollCache`] whose calls go through the resilient stack.
#[derive(Clone)]
pub struct ResilientCache {
    stack: Resilient<CacheCall, CacheReply, CacheError>,
}

impl ResilientCache {
    /// Wraps `inner` with a `call_timeout` deadline and the chassis'
    /// default breaker and bulkhead.
    pub fn new(inner: Arc<dyn PollCache>, call_timeout: Duration) -> Result<Self, SettingsError> {
        let settings = Settings {
            call_timeout,
            read_attempts: 1,
            ..Settings::default()
        };
        let svc = tower::service_fn(move |call: CacheCall| {
            let inner = inner.clone();
            let fut: BoxFuture<'static, Result<CacheReply, CacheError>> = Box::pin(async move {
                match call {
                    CacheCall::Lookup(key) => inner.lookup(&key).await.map(CacheReply::Found),
                    CacheCall::Fill(key, ticket, value) => inner
                        .fill(&key, &ticket, &value)
                        .await
                        .map(CacheReply::Filled),
                    CacheCall::Invalidate(id) => {
                        inner.invalidate(&id).await.map(|()| CacheReply::Done)
                    }
                    CacheCall::Checkpoint => inner.checkpoint().await.map(CacheReply::At),
                    CacheCall::RecordCheckpoint(p) => {
                        inner.record_checkpoint(p).await.map(|()| CacheReply::Done)
                    }
                }
            });
            fut
        });
        Ok(Self {
            stack: Resilient::new(CLIENT_NAME, &settings, svc, is_outage)?,
        })
    }

    async fn call(&self, call: CacheCall) -> Result<CacheReply, CacheError> {
        self.stack.call(call).await.map_err(|e| match e {
            ResilienceError::Application(e) => e,
            other => CacheError::Unavailable(resilience::describe(CLIENT_NAME, &other)),
        })
    }
}

fn unexpected() -> CacheError {
    CacheError::Protocol("the cache stack answered another call".into())
}

#[async_trait]
impl PollCache for ResilientCache {
    async fn lookup(&self, key: &CacheKey) -> Result<Lookup, CacheError> {
        match self.call(CacheCall::Lookup(key.clone())).await? {
            CacheReply::Found(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    async fn fill(
        &self,
        key: &CacheKey,
        ticket: &FillTicket,
        value: &[u8],
    ) -> Result<bool, CacheError> {
        match self
            .call(CacheCall::Fill(key.clone(), ticket.clone(), value.into()))
            .await?
        {
            CacheReply::Filled(stored) => Ok(stored),
            _ => Err(unexpected()),
        }
    }

    async fn invalidate(&self, poll_id: &str) -> Result<(), CacheError> {
        match self
            .call(CacheCall::Invalidate(poll_id.to_string()))
            .await?
        {
            CacheReply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn checkpoint(&self) -> Result<Option<u64>, CacheError> {
        match self.call(CacheCall::Checkpoint).await? {
            CacheReply::At(at) => Ok(at),
            _ => Err(unexpected()),
        }
    }

    async fn record_checkpoint(&self, position: u64) -> Result<(), CacheError> {
        match self.call(CacheCall::RecordCheckpoint(position)).await? {
            CacheReply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }
}
