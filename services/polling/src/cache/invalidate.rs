//! Invalidation by the poll's own events: a follower of polling's event feed
//! that, for every event (PollCreated, PollVoted, PollClosed, ...), drops
//! the cached reads of the event's poll (its aggregate id).
//!
//! It reads the feed in process ([`OwnFeed`], the same `Feed` consumers
//! subscribe to, over the store's outbox), so every replica sharing a store
//! sees every event whatever the event transport. A failed invalidation is
//! retried with backoff until it lands, in order; meanwhile reads skip the
//! cache. The position applied is kept in the cache (`checkpoint`), so a
//! restarted process resumes after it and misses no event; with no
//! checkpoint (a fresh cache holds nothing) it starts at the head.

use super::PollCache;
use super::read_through::ReadThrough;
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tally_api::events::v1::SubscribeRequest;
use tally_api::events::v1::event_feed_service_server::EventFeedService;
use tally_chassis::events::{BusError, Delivery, DeliveryStream, EventSource, Feed, Subscription};

/// The subscriber name in the feed's logs.
pub const CONSUMER: &str = "polling-cache";
/// First pause after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(8);
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Polling's own event feed as an [`EventSource`], read in process.
#[derive(Clone)]
pub struct OwnFeed {
    feed: Feed,
}

impl OwnFeed {
    /// A source over `feed`.
    pub fn new(feed: Feed) -> Self {
        Self { feed }
    }
}

#[async_trait]
impl EventSource for OwnFeed {
    fn describe(&self) -> String {
        format!("own-feed:{}", crate::events::PRODUCER)
    }

    async fn subscribe(&self, sub: Subscription) -> Result<DeliveryStream, BusError> {
        let request = tonic::Request::new(SubscribeRequest {
            from_offset: sub.after,
            consumer: sub.consumer,
            event_types: sub.event_types,
        });
        let stream = EventFeedService::subscribe(&self.feed, request)
            .await
            .map_err(|s| BusError::Unavailable(s.message().to_string()))?
            .into_inner();
        Ok(Box::pin(stream.map(|item| {
            match item {
                Ok(r) => r
                    .event
                    .map(|envelope| Delivery {
                        position: r.offset,
                        envelope,
                    })
                    .ok_or_else(|| {
                        BusError::Invalid(format!("feed entry {} has no event", r.offset))
                    }),
                Err(s) => Err(BusError::Unavailable(s.message().to_string())),
            }
        })))
    }

    async fn head(&self) -> Result<u64, BusError> {
        self.feed
            .head()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

/// The follower.
pub struct Invalidator {
    reads: ReadThrough,
    cache: Arc<dyn PollCache>,
    source: Arc<dyn EventSource>,
}

impl Invalidator {
    /// Invalidates `reads` (whose port is `cache`) for every event of `source`.
    pub fn new(
        reads: ReadThrough,
        cache: Arc<dyn PollCache>,
        source: Arc<dyn EventSource>,
    ) -> Self {
        Self {
            reads,
            cache,
            source,
        }
    }

    /// Runs on a task until the process ends.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Where to start: after the checkpoint (never past the head), else the head.
    async fn start(&self) -> u64 {
        let mut failures = 0;
        loop {
            let found = async {
                let head = self.source.head().await.map_err(|e| e.to_string())?;
                let checkpoint = self.cache.checkpoint().await.map_err(|e| e.to_string())?;
                Ok::<u64, String>(checkpoint.map_or(head, |c| c.min(head)))
            };
            match found.await {
                Ok(at) => return at,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cache invalidation cannot find its start; reads skip the cache");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Applies one delivery, retrying until the invalidation lands.
    async fn apply(&self, delivery: &Delivery) {
        let poll_id = &delivery.envelope.aggregate_id;
        if !poll_id.is_empty() {
            let mut failures = 0;
            while self.reads.invalidate(poll_id).await.is_err() {
                failures += 1;
                self.reads.hold(true);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
        self.reads.hold(false);
        if let Err(e) = self.cache.record_checkpoint(delivery.position).await {
            tracing::debug!(error = %e, "cache checkpoint not recorded");
        }
    }

    async fn run(self) {
        if !self.cache.stores() {
            return;
        }
        // Until the follower knows where it stands, reads skip the cache.
        self.reads.hold(true);
        let mut after = self.start().await;
        self.reads.hold(false);
        tracing::info!(after, source = %self.source.describe(), "cache invalidation follows the poll events");
        let mut failures = 0;
        loop {
            let sub = Subscription {
                consumer: CONSUMER.to_string(),
                after,
                event_types: Vec::new(),
            };
            match self.source.subscribe(sub).await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(delivery) => {
                                failures = 0;
                                self.apply(&delivery).await;
                                after = after.max(delivery.position);
                            }
                            Err(e) => tracing::warn!(error = %e, "cache invalidation feed error"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cache invalidation cannot subscribe"),
            }
            failures += 1;
            tokio::time::sleep(backoff(failures)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::read_through::Options;
    use crate::cache::{CacheError, CacheKey, FillTicket, Lookup};
    use crate::ports::MockPollStore;
    use parking_lot::Mutex;
    use tally_api::events::v1::EventEnvelope;
    use tokio::sync::{mpsc, watch};

    /// A cache that fails its first `failures` invalidations and reports
    /// the ones that landed and the checkpoint.
    struct Recording {
        failures: Mutex<usize>,
        landed: watch::Sender<Vec<String>>,
        checkpoint: Mutex<Option<u64>>,
    }

    #[async_trait]
    impl PollCache for Recording {
        async fn lookup(&self, _: &CacheKey) -> Result<Lookup, CacheError> {
            Ok(Lookup::Miss(FillTicket(String::new())))
        }
        async fn fill(&self, _: &CacheKey, _: &FillTicket, _: &[u8]) -> Result<bool, CacheError> {
            Ok(false)
        }
        async fn invalidate(&self, poll_id: &str) -> Result<(), CacheError> {
            let mut failures = self.failures.lock();
            if *failures > 0 {
                *failures -= 1;
                return Err(CacheError::Unavailable("down".into()));
            }
            self.landed.send_modify(|l| l.push(poll_id.to_string()));
            Ok(())
        }
        async fn checkpoint(&self) -> Result<Option<u64>, CacheError> {
            Ok(*self.checkpoint.lock())
        }
        async fn record_checkpoint(&self, position: u64) -> Result<(), CacheError> {
            *self.checkpoint.lock() = Some(position);
            Ok(())
        }
    }

    /// Deliveries the test sends; remembers where the follower subscribed.
    struct Scripted {
        head: u64,
        rx: Mutex<Option<mpsc::Receiver<Result<Delivery, BusError>>>>,
        after: Mutex<Option<u64>>,
    }

    #[async_trait]
    impl EventSource for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        async fn subscribe(&self, sub: Subscription) -> Result<DeliveryStream, BusError> {
            *self.after.lock() = Some(sub.after);
            let rx = self
                .rx
                .lock()
                .take()
                .ok_or(BusError::Unavailable("once".into()))?;
            Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })))
        }
        async fn head(&self) -> Result<u64, BusError> {
            Ok(self.head)
        }
    }

    fn delivery(position: u64, poll_id: &str) -> Delivery {
        Delivery {
            position,
            envelope: EventEnvelope {
                aggregate_id: poll_id.into(),
                ..Default::default()
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_delivered_event_invalidates_its_poll_retrying_until_it_lands() {
        let (landed, mut seen) = watch::channel(Vec::new());
        let cache = Arc::new(Recording {
            failures: Mutex::new(3),
            landed,
            checkpoint: Mutex::new(Some(3)),
        });
        let (tx, rx) = mpsc::channel(8);
        let source = Arc::new(Scripted {
            head: 9,
            rx: Mutex::new(Some(rx)),
            after: Mutex::new(None),
        });
        let reads = ReadThrough::with_write_hook(
            Arc::new(MockPollStore::new()),
            cache.clone(),
            Options {
                ttl: Duration::from_secs(60),
                max_entry_bytes: 1024,
                max_in_flight: 8,
                invalidate_on_write: false,
            },
            None,
        );
        let task = Invalidator::new(reads, cache.clone(), source.clone()).spawn();
        tx.send(Ok(delivery(4, "p-a"))).await.expect("send");
        tx.send(Ok(delivery(5, "p-b"))).await.expect("send");
        seen.wait_for(|l| l.len() == 2).await.expect("landed");
        assert_eq!(
            *seen.borrow(),
            vec!["p-a".to_string(), "p-b".to_string()],
            "in order, after 3 failures"
        );
        assert_eq!(
            *source.after.lock(),
            Some(3),
            "resumed after the checkpoint"
        );
        while *cache.checkpoint.lock() != Some(5) {
            tokio::task::yield_now().await;
        }
        task.abort();
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), MIN_BACKOFF);
        assert_eq!(backoff(2), MIN_BACKOFF * 2);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
