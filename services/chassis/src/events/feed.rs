//! The embedded event bus, producer side: a service's outbox served as
//! `tally.events.v1.EventFeedService`, so consumers need nothing but the
//! producer (reached through the mesh like any other call).
//!
//! `Subscribe(from_offset)` replays the outbox after `from_offset` in offset
//! order, then follows new commits live. How it learns about new commits:
//! one poller task per [`Feed`] probes the outbox head every `idle_poll`
//! (default 50 ms; a probe is one `read_outbox(head, 1)`), and publishes it in
//! a `tokio::sync::watch`; idle subscribers wait on that watch, so the store
//! is polled once per feed, not once per subscriber. A producer that wants
//! lower latency can call [`FeedNotifier::poke`] after a commit to wake the
//! poller at once; it is optional because the storage port has no commit hook.
//!
//! Each subscriber gets a bounded channel (`buffer` entries, default 256); a
//! slow client slows only its own reader task (the gRPC stream's flow control
//! pushes back), never grows memory.
//!
//! A feed stream never ends by itself, so a server draining for shutdown
//! would wait out its whole drain timeout for them. [`Feed::close_streams`]
//! (called by the chassis server when it starts draining, for feeds mounted
//! with `Routes::add_feed`) ends every stream at once; consumers resubscribe
//! from their durable offset, so nothing is lost.
//!
//! Mount it next to the service with one line:
//! `routes.add_feed(&Feed::new(store.clone()));`

use crate::events::envelope;
use crate::storage::{OutboxEntry, Store, StoreError};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tally_api::events::v1::event_feed_service_server::{EventFeedService, EventFeedServiceServer};
use tally_api::events::v1::{
    EventEnvelope, GetHeadRequest, GetHeadResponse, SubscribeRequest, SubscribeResponse,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const READ_CHUNK: usize = 256;

/// A producer's outbox as an event feed. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    head: watch::Sender<u64>,
    poke: Arc<Notify>,
    poller: OnceLock<()>,
    idle_poll: Duration,
    buffer: usize,
    /// True once the feed is shutting down: every stream ends.
    closing: watch::Sender<bool>,
}

/// Wakes a feed's poller right after a commit (optional; see module docs).
#[derive(Clone)]
pub struct FeedNotifier {
    poke: Arc<Notify>,
}

impl FeedNotifier {
    /// Tells the feed new outbox entries may exist.
    pub fn poke(&self) {
        self.poke.notify_one();
    }
}

impl Feed {
    /// A feed over `store`'s outbox with the default poll interval and buffer.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_options(store, Duration::from_millis(50), 256)
    }

    /// A feed polling the outbox head every `idle_poll` while idle, buffering at
    /// most `buffer` entries per subscriber.
    pub fn with_options(store: Arc<dyn Store>, idle_poll: Duration, buffer: usize) -> Self {
        let (head, _) = watch::channel(0);
        let (closing, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                store,
                head,
                poke: Arc::new(Notify::new()),
                poller: OnceLock::new(),
                idle_poll: idle_poll.max(Duration::from_millis(1)),
                buffer: buffer.max(1),
                closing,
            }),
        }
    }

    /// The tonic service to mount.
    pub fn server(&self) -> EventFeedServiceServer<Feed> {
        EventFeedServiceServer::new(self.clone())
    }

    /// A handle to wake the poller after commits.
    pub fn notifier(&self) -> FeedNotifier {
        FeedNotifier {
            poke: self.inner.poke.clone(),
        }
    }

    /// Ends every subscriber's stream now and refuses new subscriptions with
    /// UNAVAILABLE (a draining server must not wait for endless streams).
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The newest outbox offset, read from the store now.
    pub async fn head(&self) -> Result<u64, StoreError> {
        let known = *self.inner.head.borrow();
        let head = find_head(self.inner.store.as_ref(), known).await?;
        self.inner.head.send_if_modified(|h| {
            let newer = head > *h;
            if newer {
                *h = head;
            }
            newer
        });
        Ok(head)
    }

    /// Starts the shared poller on first use (inside a runtime by then).
    fn ensure_poller(&self) {
        self.inner.poller.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            let poke = self.inner.poke.clone();
            let idle = self.inner.idle_poll;
            tokio::spawn(poll_head(weak, poke, idle));
        });
    }
}

/// Follows the outbox head until the feed is dropped.
async fn poll_head(feed: Weak<Inner>, poke: Arc<Notify>, idle: Duration) {
    loop {
        {
            let Some(inner) = feed.upgrade() else { return };
            let known = *inner.head.borrow();
            match find_head(inner.store.as_ref(), known).await {
                Ok(head) if head > known => {
                    inner.head.send_replace(head);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "event feed cannot read the outbox head"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(idle) => {}
            _ = poke.notified() => {}
        }
    }
}

/// The greatest outbox offset, at least `known`: a gallop then a binary
/// search, each probe a one-row `read_outbox` (logarithmic in the new entries).
pub(crate) async fn find_head(store: &dyn Store, known: u64) -> Result<u64, StoreError> {
    let Some(first) = next_after(store, known).await? else {
        return Ok(known);
    };
    // Invariant: some entry has offset `lo` and none has an offset above `hi`.
    let mut lo = first;
    let mut hi;
    let mut probe = lo.saturating_mul(2).max(lo.saturating_add(1));
    loop {
        match next_after(store, probe).await? {
            Some(offset) => {
                lo = offset;
                if probe == u64::MAX {
                    return Ok(lo);
                }
                probe = lo.saturating_mul(2).max(lo.saturating_add(1));
            }
            None => {
                hi = probe;
                break;
            }
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match next_after(store, mid).await? {
            Some(offset) => lo = offset.max(mid + 1),
            None => hi = mid,
        }
    }
    Ok(lo)
}

async fn next_after(store: &dyn Store, after: u64) -> Result<Option<u64>, StoreError> {
    Ok(store
        .read_outbox(after, 1)
        .await?
        .first()
        .map(|entry| entry.offset))
}

fn to_response(entry: OutboxEntry) -> SubscribeResponse {
    let event = match envelope::decode(&entry.event.payload) {
        Ok(env) => env,
        Err(e) => {
            // Keep offsets flowing: consumers skip an envelope without payload.
            tracing::error!(offset = entry.offset, error = %e, "outbox entry is not a valid EventEnvelope");
            EventEnvelope {
                event_type: entry.event.event_type,
                aggregate_id: entry.event.aggregate_id,
                ..Default::default()
            }
        }
    };
    SubscribeResponse {
        offset: entry.offset,
        event: Some(event),
    }
}

/// Sends `store`'s outbox after `cursor` to `tx`, then follows new commits,
/// until the subscriber goes away or the store fails.
async fn follow(
    store: Arc<dyn Store>,
    tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
    mut head: watch::Receiver<u64>,
    types: HashSet<String>,
    mut cursor: u64,
) {
    loop {
        let entries = match store.read_outbox(cursor, READ_CHUNK).await {
            Ok(entries) => entries,
            Err(e) => {
                let _ = tx.send(Err(crate::status::store(e))).await;
                return;
            }
        };
        if entries.is_empty() {
            tokio::select! {
                _ = tx.closed() => return,
                changed = head.wait_for(|h| *h > cursor) => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        for entry in entries {
            cursor = entry.offset;
            if !types.is_empty() && !types.contains(&entry.event.event_type) {
                continue;
            }
            if tx.send(Ok(to_response(entry))).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl EventFeedService for Feed {
    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.ensure_poller();
        let req = request.into_inner();
        let types: HashSet<String> = req.event_types.into_iter().collect();
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let store = self.inner.store.clone();
        let head = self.inner.head.subscribe();
        tracing::info!(consumer = %req.consumer, from = req.from_offset, "event feed subscriber joined");
        let mut closing = self.inner.closing.subscribe();
        if *closing.borrow_and_update() {
            return Err(Status::unavailable(
                "the event feed is shutting down; subscribe again from the same offset",
            ));
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = closing.wait_for(|closed| *closed) => {
                    tracing::info!(consumer = %req.consumer, "event feed closed the stream for shutdown");
                }
                _ = follow(store, tx, head, types, req.from_offset) => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_head(
        &self,
        _request: Request<GetHeadRequest>,
    ) -> Result<Response<GetHeadResponse>, Status> {
        let head_offset = self.head().await.map_err(crate::status::store)?;
        Ok(Response::new(GetHeadResponse { head_offset }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::EmbeddedStore;
    use crate::storage::{OutboxEvent, WriteBatch};

    async fn store_with(n: u64) -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("f.redb"))
            .await
            .expect("open");
        let mut b = WriteBatch::new();
        for i in 0..n {
            b.emit(OutboxEvent {
                aggregate_id: format!("a{i}"),
                event_type: "T".into(),
                payload: vec![],
            });
        }
        store.commit(b).await.expect("commit");
        (dir, Arc::new(store))
    }

    #[tokio::test]
    async fn head_is_found_for_many_sizes() {
        for n in [0u64, 1, 2, 3, 7, 8, 9, 100, 1025] {
            let (_d, store) = store_with(n).await;
            assert_eq!(
                find_head(store.as_ref(), 0).await.expect("head"),
                n,
                "n={n}"
            );
            if n > 2 {
                assert_eq!(find_head(store.as_ref(), n - 2).await.expect("head"), n);
            }
        }
    }
}
