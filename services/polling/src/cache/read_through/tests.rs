//! Tests of the read-through layer, driven through the cache port with a
//! store whose reads the test can hold: single flight, the fill/invalidate
//! race (on an in-memory model of the port and on the Redis adapter over a
//! real redis-server), and degrading to the store when Redis is down.

use super::*;
use crate::cache::redis::RedisCache;
use crate::cache::resilient::ResilientCache;
use crate::cache::{FillTicket, NoCache};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use tokio::sync::oneshot;

const POLL: &str = "p-1";

fn poll() -> Poll {
    Poll {
        poll_id: POLL.into(),
        owner_id: "owner".into(),
        question: "Lunch?".into(),
        options: vec![],
        created_at: 1,
        closes_at: None,
        closed_at: None,
    }
}

fn tally(votes: u64) -> Tally {
    Tally {
        version: votes + 1,
        votes,
        counts: BTreeMap::new(),
    }
}

type Gate = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// A store whose vote count the test sets, counting reads; an armed gate
/// holds the next read after it took its snapshot.
#[derive(Default)]
struct HeldStore {
    votes: AtomicU64,
    reads: AtomicUsize,
    gate: Mutex<Option<Gate>>,
}

impl HeldStore {
    /// Arms the gate: returns (entered, release).
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.gate.lock() = Some((entered_tx, release_rx));
        (entered_rx, release_tx)
    }
}

fn unused() -> PollingError {
    PollingError::Store(StoreError::Unavailable("not used by these tests".into()))
}

#[async_trait]
impl PollStore for HeldStore {
    async fn create(&self, _: &Poll, _: Option<u32>, _: Millis) -> Result<(), PollingError> {
        Err(unused())
    }
    async fn get(&self, _: &str) -> Result<Option<Poll>, PollingError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(poll()))
    }
    async fn list(
        &self,
        _: &ListFilter,
        _: Option<String>,
        _: usize,
        _: Millis,
    ) -> Result<Page, PollingError> {
        Err(unused())
    }
    async fn close(&self, _: &str, _: &str, _: Millis) -> Result<Poll, PollingError> {
        Err(unused())
    }
    async fn cast_vote(&self, _: &VoteRequest, _: Millis) -> Result<CastOutcome, PollingError> {
        Err(unused())
    }
    async fn results(&self, _: &str) -> Result<(Poll, Tally), PollingError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let snapshot = tally(self.votes.load(Ordering::SeqCst));
        let gate = self.gate.lock().take();
        if let Some((entered, release)) = gate {
            let _ = entered.send(());
            let _ = release.await;
        }
        Ok((poll(), snapshot))
    }
}

/// The port's contract in memory. `naive` stores every fill, ignoring the
/// ticket: the mistake the race test must catch.
#[derive(Default)]
struct ModelCache {
    naive: bool,
    entries: Mutex<HashMap<CacheKey, Vec<u8>>>,
    gens: Mutex<HashMap<String, u64>>,
    seq: AtomicU64,
}

#[async_trait]
impl PollCache for ModelCache {
    async fn lookup(&self, key: &CacheKey) -> Result<Lookup, CacheError> {
        if let Some(v) = self.entries.lock().get(key) {
            return Ok(Lookup::Hit(v.clone()));
        }
        let g = *self
            .gens
            .lock()
            .entry(key.poll_id.clone())
            .or_insert_with(|| self.seq.fetch_add(1, Ordering::SeqCst));
        Ok(Lookup::Miss(FillTicket(g.to_string())))
    }
    async fn fill(&self, key: &CacheKey, t: &FillTicket, v: &[u8]) -> Result<bool, CacheError> {
        let current = self.gens.lock().get(&key.poll_id).map(|g| g.to_string());
        if self.naive || current.as_ref() == Some(&t.0) {
            self.entries.lock().insert(key.clone(), v.to_vec());
            return Ok(true);
        }
        Ok(false)
    }
    async fn invalidate(&self, poll_id: &str) -> Result<(), CacheError> {
        let g = self.seq.fetch_add(1, Ordering::SeqCst);
        self.gens.lock().insert(poll_id.to_string(), g);
        self.entries.lock().retain(|k, _| k.poll_id != poll_id);
        Ok(())
    }
    async fn checkpoint(&self) -> Result<Option<u64>, CacheError> {
        Ok(None)
    }
    async fn record_checkpoint(&self, _: u64) -> Result<(), CacheError> {
        Ok(())
    }
}

fn options() -> Options {
    Options {
        ttl: Duration::from_secs(60),
        max_entry_bytes: 64 * 1024,
        max_in_flight: 16,
        // Only the delivered invalidation acts in these tests.
        invalidate_on_write: false,
    }
}

fn layer(store: Arc<HeldStore>, cache: Arc<dyn PollCache>) -> ReadThrough {
    ReadThrough::with_write_hook(store, cache, options(), None)
}

#[tokio::test]
async fn concurrent_misses_for_one_key_read_the_store_once() {
    let store = Arc::new(HeldStore::default());
    store.votes.store(3, Ordering::SeqCst);
    let reads = layer(store.clone(), Arc::new(ModelCache::default()));
    let (entered, release) = store.arm();
    let readers = futures::future::join_all((0..16).map(|_| reads.results(POLL)));
    let driver = async {
        entered.await.expect("the store read started");
        release.send(()).expect("release");
    };
    let (answers, ()) = tokio::join!(readers, driver);
    for a in answers {
        assert_eq!(a.expect("read").1.votes, 3);
    }
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        1,
        "one store read for 16 misses"
    );
    // The flight is over and the entry filled: the next read is a hit.
    assert_eq!(reads.results(POLL).await.expect("hit").1.votes, 3);
    assert_eq!(store.reads.load(Ordering::SeqCst), 1);
}

/// The race: a reader reads the old value from the store, the write's
/// invalidation is delivered, then the reader fills. Returns the vote count
/// a read sees once it is all over, and what the cache holds for the key.
async fn race(cache: Arc<dyn PollCache>) -> (u64, Option<u64>) {
    let store = Arc::new(HeldStore::default());
    let reads = layer(store.clone(), cache.clone());
    let (entered, release) = store.arm();
    let reader = tokio::spawn({
        let reads = reads.clone();
        async move { reads.results(POLL).await }
    });
    entered
        .await
        .expect("the reader took its snapshot (0 votes)");
    // The write commits, and its event's invalidation is delivered.
    store.votes.store(1, Ordering::SeqCst);
    reads.invalidate(POLL).await.expect("invalidation");
    // A read that starts now does not join the held read.
    let fresh = tokio::time::timeout(Duration::from_secs(10), reads.results(POLL))
        .await
        .expect("a read after the invalidation does not wait for the held one")
        .expect("read");
    assert_eq!(fresh.1.votes, 1);
    // Whatever that read filled, the held reader now fills its old snapshot.
    cache.invalidate(POLL).await.expect("clear the fresh fill");
    release.send(()).expect("release");
    let old = reader.await.expect("join").expect("read");
    assert_eq!(
        old.1.votes, 0,
        "the held reader saw the state before the write"
    );
    let cached = match cache
        .lookup(&CacheKey::new(Kind::Results, POLL))
        .await
        .expect("lookup")
    {
        Lookup::Hit(bytes) => <(Poll, Tally)>::decode(&bytes).map(|v| v.1.votes),
        Lookup::Miss(_) => None,
    };
    let after = reads.results(POLL).await.expect("read").1.votes;
    (after, cached)
}

#[tokio::test]
async fn a_fill_that_lost_the_race_with_an_invalidation_is_refused() {
    let (after, cached) = race(Arc::new(ModelCache::default())).await;
    assert_eq!(cached, None, "the old snapshot was not stored");
    assert_eq!(after, 1);
}

#[tokio::test]
async fn the_race_test_catches_a_cache_that_ignores_tickets() {
    let naive = ModelCache {
        naive: true,
        ..ModelCache::default()
    };
    let (after, cached) = race(Arc::new(naive)).await;
    assert_eq!(cached, Some(0), "a naive fill leaves the old snapshot");
    assert_eq!(
        after, 0,
        "and reads serve it: the stale entry outlived the invalidation"
    );
}

#[tokio::test]
async fn redis_refuses_a_fill_that_lost_the_race() {
    let redis = tally_testkit::RedisServer::start().await;
    let cache = RedisCache::new(
        &redis.url(),
        "test:race:",
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .expect("client");
    let (after, cached) = race(Arc::new(cache)).await;
    assert_eq!(cached, None, "the old snapshot was not stored in Redis");
    assert_eq!(after, 1);
}

#[tokio::test]
async fn redis_serves_hits_and_invalidates_both_kinds() {
    let redis = tally_testkit::RedisServer::start().await;
    let cache: Arc<dyn PollCache> = Arc::new(
        RedisCache::new(
            &redis.url(),
            "test:hits:",
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .expect("client"),
    );
    let store = Arc::new(HeldStore::default());
    let reads = layer(store.clone(), cache.clone());
    reads.results(POLL).await.expect("miss");
    reads.get(POLL).await.expect("miss");
    assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    assert_eq!(reads.results(POLL).await.expect("hit").1.votes, 0);
    assert_eq!(reads.get(POLL).await.expect("hit"), Some(poll()));
    assert_eq!(store.reads.load(Ordering::SeqCst), 2, "both were hits");
    store.votes.store(2, Ordering::SeqCst);
    reads.invalidate(POLL).await.expect("invalidate");
    assert_eq!(reads.results(POLL).await.expect("miss").1.votes, 2);
    reads.get(POLL).await.expect("miss");
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        4,
        "both kinds were dropped"
    );
    cache.record_checkpoint(7).await.expect("checkpoint");
    cache.record_checkpoint(5).await.expect("checkpoint");
    assert_eq!(
        cache.checkpoint().await.expect("read"),
        Some(7),
        "never moves back"
    );
    let text = tally_chassis::metrics::encode();
    assert!(
        text.contains("tally_cache_hits_total{cache=\"polls\"}"),
        "{text}"
    );
    assert!(
        text.contains("tally_cache_invalidations_total{cache=\"polls\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_down_redis_degrades_to_store_reads_never_to_errors() {
    // Nothing listens on this port.
    let url = format!("redis://127.0.0.1:{}", tally_testkit::free_port());
    let timeout = Duration::from_millis(200);
    let redis =
        RedisCache::new(&url, "test:down:", Duration::from_secs(60), timeout).expect("client");
    let cache = Arc::new(ResilientCache::new(Arc::new(redis), timeout).expect("stack"));
    let store = Arc::new(HeldStore::default());
    let reads = layer(store.clone(), cache);
    for _ in 0..2 * tally_chassis::resilience::DEFAULT_CONSECUTIVE_FAILURES {
        let started = Instant::now();
        assert_eq!(reads.results(POLL).await.expect("store answers").1.votes, 0);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by the call timeout"
        );
    }
    assert!(
        reads.invalidate(POLL).await.is_err(),
        "the invalidation did not land"
    );
    assert!(reads.skips(POLL), "so reads of that poll skip the cache");
    assert!(tally_chassis::metrics::encode().contains("tally_cache_errors_total{cache=\"polls\"}"));
}

#[tokio::test]
async fn no_cache_reads_the_store_every_time() {
    let store = Arc::new(HeldStore::default());
    let reads = layer(store.clone(), Arc::new(NoCache));
    for _ in 0..3 {
        reads.results(POLL).await.expect("read");
    }
    assert_eq!(store.reads.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_pending_invalidation_skips_the_cache_for_one_ttl() {
    let store = Arc::new(HeldStore::default());
    let reads = layer(store, Arc::new(ModelCache::default()));
    reads.mark_pending(POLL);
    assert!(reads.skips(POLL));
    assert!(!reads.skips("p-2"));
    tokio::time::advance(options().ttl).await;
    assert!(!reads.skips(POLL), "any stale entry has expired by now");
    reads.hold(true);
    assert!(reads.skips("p-2"));
}

#[tokio::test]
async fn beyond_max_in_flight_a_read_goes_alone() {
    let store = Arc::new(HeldStore::default());
    let reads = ReadThrough::with_write_hook(
        store.clone(),
        Arc::new(ModelCache::default()),
        Options {
            max_in_flight: 1,
            ..options()
        },
        None,
    );
    let (entered, release) = store.arm();
    let held = tokio::spawn({
        let reads = reads.clone();
        async move { reads.results(POLL).await }
    });
    entered.await.expect("the first key's read is in flight");
    assert_eq!(reads.inner.results.map.lock().len(), 1);
    // Another key finds the map full and reads without a flight.
    let other = tokio::time::timeout(Duration::from_secs(10), reads.results("p-2"))
        .await
        .expect("not blocked")
        .expect("read");
    assert_eq!(other.1.votes, 0);
    assert_eq!(reads.inner.results.map.lock().len(), 1, "bounded");
    release.send(()).expect("release");
    held.await.expect("join").expect("read");
    assert!(
        reads.inner.results.map.lock().is_empty(),
        "finished flights leave the map"
    );
}
