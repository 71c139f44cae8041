//! Shared helpers for the event backbone tests: temp stores, a gRPC server on
//! a free port, a producer writing votes, a counting read-model handler, and
//! a real `redis-server` on a free port.

#![allow(dead_code)]

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tally_api::events::v1::PollVoted;
use tally_api::events::v1::event_envelope::Payload;
use tally_chassis::config::OutboundSettings;
use tally_chassis::events::bus::Delivery;
use tally_chassis::events::consumer::{Handler, HandlerError, RetryPolicy, clear_partition};
use tally_chassis::events::envelope;
use tally_chassis::storage::embedded::EmbeddedStore;
use tally_chassis::storage::{Store, WriteBatch};
use tokio::task::JoinHandle;

pub async fn temp_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb"))
        .await
        .expect("open store");
    (dir, Arc::new(store))
}

/// A gRPC server on 127.0.0.1 (port 0 = any free one); aborted on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(routes: tonic::service::Routes, port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(incoming)
                .await;
        });
        Self { addr, task }
    }

    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    pub fn outbound(&self, target: &str) -> OutboundSettings {
        let mut map = BTreeMap::new();
        map.insert(target.to_string(), format!("http://{}", self.addr));
        OutboundSettings(map)
    }
}

/// Commits `count` votes on `poll` (one event per commit, as the polling
/// service does), options cycling through `options`. Returns the event ids.
pub async fn produce_votes(
    store: &dyn Store,
    poll: &str,
    options: &[&str],
    count: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let option = options[i % options.len()];
        let env = envelope::new_envelope(
            "polling",
            poll,
            i as u64 + 1,
            Payload::PollVoted(PollVoted {
                poll_id: poll.to_string(),
                vote_id: format!("{poll}-v{i}"),
                option_id: option.to_string(),
                voter_id: format!("voter-{i}"),
                cast_at: None,
            }),
        );
        ids.push(env.event_id.clone());
        let mut batch = WriteBatch::new();
        batch
            .put("votes", poll, format!("v{i}"), option.as_bytes().to_vec())
            .emit(envelope::outbox_event(&env));
        store.commit(batch).await.expect("commit vote");
    }
    ids
}

pub const COUNTS: &str = "test_counts";
const ALL: &str = "all";

/// A read model: votes per `poll:option`, read-modify-write with `expect`.
/// Votes for option `poison` fail while `poisoned` is set.
pub struct CountingHandler {
    pub name: String,
    pub poisoned: AtomicBool,
    pub calls: AtomicU64,
    pub committed: AtomicU64,
    /// When `calls` reaches this (0: never), `handle` hangs forever.
    pub hang_at: AtomicU64,
    /// Once: a concurrent writer changes the row between read and commit.
    pub interfere_once: AtomicBool,
    /// `max_schema_version` (0: accept all).
    pub max_schema: AtomicU32,
}

impl CountingHandler {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            poisoned: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            hang_at: AtomicU64::new(0),
            interfere_once: AtomicBool::new(false),
            max_schema: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Handler for CountingHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn event_types(&self) -> Vec<String> {
        vec!["tally.events.v1.PollVoted".to_string()]
    }

    fn max_schema_version(&self) -> Option<u32> {
        match self.max_schema.load(Ordering::SeqCst) {
            0 => None,
            v => Some(v),
        }
    }

    async fn handle(
        &self,
        delivery: &Delivery,
        batch: &mut WriteBatch,
        store: &dyn Store,
    ) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call == self.hang_at.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let Some(Payload::PollVoted(vote)) = &delivery.envelope.payload else {
            return Err(HandlerError::Skip("not a vote".into()));
        };
        if vote.option_id == "poison" && self.poisoned.load(Ordering::SeqCst) {
            return Err(HandlerError::Transient(
                "cannot count option `poison`".into(),
            ));
        }
        let key = format!("{}:{}", vote.poll_id, vote.option_id);
        let current = store.get(COUNTS, ALL, &key).await?;
        let n: u64 = current
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if self.interfere_once.swap(false, Ordering::SeqCst) {
            let mut other = WriteBatch::new();
            other.put(COUNTS, ALL, key.clone(), (n + 100).to_string().into_bytes());
            store.commit(other).await?;
        }
        batch.expect(COUNTS, ALL, key.clone(), current).put(
            COUNTS,
            ALL,
            key,
            (n + 1).to_string().into_bytes(),
        );
        Ok(())
    }

    async fn reset(&self, store: &dyn Store) -> Result<(), HandlerError> {
        clear_partition(store, COUNTS, ALL).await?;
        Ok(())
    }

    async fn committed(&self, _delivery: &Delivery) {
        self.committed.fetch_add(1, Ordering::SeqCst);
    }
}

/// The whole read model as `poll:option -> count`.
pub async fn counts(store: &dyn Store) -> BTreeMap<String, u64> {
    store
        .scan(COUNTS, ALL, None, 10_000)
        .await
        .expect("scan counts")
        .into_iter()
        .map(|row| {
            let n = std::str::from_utf8(&row.value)
                .expect("utf8")
                .parse()
                .expect("number");
            (row.key, n)
        })
        .collect()
}

pub fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// Fast retries for tests.
pub fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_conflicts: 32,
    }
}

/// Polls `check` every 50 ms until it is true; panics with `what` after 60 s.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throw-away `redis-server` on a free port (from tally-testkit), killed on drop.
pub struct RedisServer {
    pub url: String,
    _server: tally_testkit::RedisServer,
}

impl RedisServer {
    pub async fn start() -> Self {
        let server = tally_testkit::RedisServer::start().await;
        Self {
            url: server.url(),
            _server: server,
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

/// A TCP forwarder in front of a server whose connections a test can cut,
/// as a restarting sidecar or a network blip would.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("lock").push(task);
            }
        });
        Self {
            addr,
            accept,
            conns,
        }
    }

    /// Drops every open connection (new ones are still accepted).
    pub fn cut(&self) -> usize {
        let mut conns = self.conns.lock().expect("lock");
        let n = conns.iter().filter(|t| !t.is_finished()).count();
        for task in conns.drain(..) {
            task.abort();
        }
        n
    }

    pub fn outbound(&self, target: &str) -> OutboundSettings {
        let mut map = BTreeMap::new();
        map.insert(target.to_string(), format!("http://{}", self.addr));
        OutboundSettings(map)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Wraps a source and records the `after` of every subscription.
pub struct RecordingSource {
    pub inner: Arc<dyn tally_chassis::events::EventSource>,
    pub afters: std::sync::Mutex<Vec<u64>>,
}

impl RecordingSource {
    pub fn new(inner: Arc<dyn tally_chassis::events::EventSource>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            afters: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn afters(&self) -> Vec<u64> {
        self.afters.lock().expect("lock").clone()
    }
}

#[async_trait]
impl tally_chassis::events::EventSource for RecordingSource {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn subscribe(
        &self,
        subscription: tally_chassis::events::Subscription,
    ) -> Result<tally_chassis::events::DeliveryStream, tally_chassis::events::BusError> {
        self.afters.lock().expect("lock").push(subscription.after);
        self.inner.subscribe(subscription).await
    }

    async fn head(&self) -> Result<u64, tally_chassis::events::BusError> {
        self.inner.head().await
    }

    async fn ack(
        &self,
        consumer: &str,
        position: u64,
    ) -> Result<(), tally_chassis::events::BusError> {
        self.inner.ack(consumer, position).await
    }

    async fn rewind(
        &self,
        consumer: &str,
        after: u64,
    ) -> Result<(), tally_chassis::events::BusError> {
        self.inner.rewind(consumer, after).await
    }
}
