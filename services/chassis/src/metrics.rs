//! Prometheus metrics for operators: one process-wide registry and a tiny
//! HTTP endpoint (`GET /metrics`) that serves it.
//!
//! Consumers publish their position here (`tally_consumer_lag`, `_offset`,
//! `_head`, `_dead_letters`, labelled by `consumer`) whenever they compute
//! their status, so lag is visible in metrics as well as in health. The
//! server records RED per gRPC method ([`grpc`]), the storage port its
//! latency ([`store`]), health each dependency (`tally_dependency_up`), and
//! sagas their transitions and outcomes. The endpoint runs on its own thread
//! with its own small runtime, so it can be started before (or without) the
//! service's runtime.

pub mod grpc;
pub mod store;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Content type of the Prometheus/OpenMetrics text encoding.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;
type U64Gauge = Gauge<u64, AtomicU64>;
type Seconds = Family<Labels, Histogram, fn() -> Histogram>;

/// Smallest latency bucket, in seconds (0.25 ms).
const LATENCY_BUCKET_START: f64 = 0.000_25;
/// Growth factor between latency buckets.
const LATENCY_BUCKET_FACTOR: f64 = 2.0;
/// Number of latency buckets (the last ends near 8 s, then +Inf).
const LATENCY_BUCKETS: u16 = 16;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_START,
        LATENCY_BUCKET_FACTOR,
        LATENCY_BUCKETS,
    ))
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The configured `metrics_addr`.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The server could not start after binding.
    #[error("cannot start the metrics server: {0}")]
    Start(std::io::Error),
}

struct Metrics {
    registry: Registry,
    lag: Family<Labels, U64Gauge>,
    offset: Family<Labels, U64Gauge>,
    head: Family<Labels, U64Gauge>,
    dead_letters: Family<Labels, U64Gauge>,
    store_breaker: Family<Labels, Gauge>,
    store_failures: Family<Labels, Counter>,
    grpc_handled: Family<Labels, Counter>,
    grpc_seconds: Seconds,
    store_seconds: Seconds,
    dependency_up: Family<Labels, U64Gauge>,
    serving: U64Gauge,
    saga_transitions: Family<Labels, Counter>,
    saga_outcomes: Family<Labels, Counter>,
    cache: [Family<Labels, Counter>; 4],
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let lag = Family::<Labels, U64Gauge>::default();
    let offset = Family::<Labels, U64Gauge>::default();
    let head = Family::<Labels, U64Gauge>::default();
    let dead_letters = Family::<Labels, U64Gauge>::default();
    registry.register(
        "tally_consumer_lag",
        "Events behind the head of the source, per consumer",
        lag.clone(),
    );
    registry.register(
        "tally_consumer_offset",
        "Greatest position processed, skipped or dead-lettered, per consumer",
        offset.clone(),
    );
    registry.register(
        "tally_consumer_head",
        "Position of the newest event of the source, per consumer",
        head.clone(),
    );
    registry.register(
        "tally_consumer_dead_letters",
        "Events in the dead-letter queue, per consumer",
        dead_letters.clone(),
    );
    let store_breaker = Family::<Labels, Gauge>::default();
    let store_failures = Family::<Labels, Counter>::default();
    registry.register(
        "tally_store_client_breaker_state",
        "Circuit breaker of a store client (0 closed, 1 open, 2 half-open), per client",
        store_breaker.clone(),
    );
    registry.register(
        "tally_store_client_failures",
        "Failed store calls by reason (circuit_open, bulkhead_full, timeout, error), per client",
        store_failures.clone(),
    );
    let grpc_handled = Family::<Labels, Counter>::default();
    registry.register(
        "tally_grpc_server_handled",
        "gRPC calls served, by service, method and final status code",
        grpc_handled.clone(),
    );
    let grpc_seconds: Seconds = Family::new_with_constructor(latency_histogram);
    registry.register(
        "tally_grpc_server_handling_seconds",
        "gRPC call duration until the end of the response stream, by service and method",
        grpc_seconds.clone(),
    );
    let store_seconds: Seconds = Family::new_with_constructor(latency_histogram);
    registry.register(
        "tally_store_operation_seconds",
        "Storage operation duration, by operation and outcome (ok, condition_failed, error)",
        store_seconds.clone(),
    );
    let dependency_up = Family::<Labels, U64Gauge>::default();
    registry.register(
        "tally_dependency_up",
        "Whether a dependency health follows is usable (1) or not (0): store, session store, peers, event sources",
        dependency_up.clone(),
    );
    let serving = U64Gauge::default();
    registry.register(
        "tally_serving",
        "Whether the service reports SERVING (1) or NOT_SERVING (0)",
        serving.clone(),
    );
    let saga_transitions = Family::<Labels, Counter>::default();
    registry.register(
        "tally_saga_transitions",
        "Saga steps persisted, by saga and the phase entered",
        saga_transitions.clone(),
    );
    let saga_outcomes = Family::<Labels, Counter>::default();
    registry.register(
        "tally_saga_outcomes",
        "Sagas that ended, by saga and outcome",
        saga_outcomes.clone(),
    );
    let cache: [Family<Labels, Counter>; 4] = Default::default();
    for (event, family) in CacheEvent::ALL.iter().zip(&cache) {
        registry.register(event.metric(), event.help(), family.clone());
    }
    Metrics {
        cache,
        registry,
        lag,
        offset,
        head,
        dead_letters,
        store_breaker,
        store_failures,
        grpc_handled,
        grpc_seconds,
        store_seconds,
        dependency_up,
        serving,
        saga_transitions,
        saga_outcomes,
    }
});

fn labels(consumer: &str) -> Labels {
    vec![("consumer".to_string(), consumer.to_string())]
}

/// Publishes a consumer's status. An unknown head (source unreachable)
/// removes the head and lag series rather than reporting a stale value.
pub fn record_consumer(status: &crate::events::consumer::ConsumerStatus) {
    let m = &*METRICS;
    let l = labels(&status.consumer);
    m.offset.get_or_create(&l).set(status.offset);
    m.dead_letters.get_or_create(&l).set(status.dead_letters);
    match (status.head, status.lag) {
        (Some(head), Some(lag)) => {
            m.head.get_or_create(&l).set(head);
            m.lag.get_or_create(&l).set(lag);
        }
        _ => {
            m.head.remove(&l);
            m.lag.remove(&l);
        }
    }
}

/// Publishes a consumer's offset alone (cheap; after each applied event).
pub fn record_consumer_offset(consumer: &str, offset: u64) {
    METRICS.offset.get_or_create(&labels(consumer)).set(offset);
}

/// Publishes the breaker state of store client `client` (see `crate::resilience`).
pub fn record_store_breaker(client: &str, state: i64) {
    let l = vec![("client".to_string(), client.to_string())];
    METRICS.store_breaker.get_or_create(&l).set(state);
}

/// Counts a failed call of store client `client`.
pub fn count_store_failure(client: &str, reason: &str) {
    let l = vec![
        ("client".to_string(), client.to_string()),
        ("reason".to_string(), reason.to_string()),
    ];
    METRICS.store_failures.get_or_create(&l).inc();
}

fn pairs(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Records one finished gRPC call (see [`grpc`]).
pub(crate) fn record_grpc_call(service: &str, method: &str, code: &str, took: Duration) {
    let m = &*METRICS;
    m.grpc_handled
        .get_or_create(&pairs(&[
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", code),
        ]))
        .inc();
    m.grpc_seconds
        .get_or_create(&pairs(&[
            ("grpc_service", service),
            ("grpc_method", method),
        ]))
        .observe(took.as_secs_f64());
}

/// Records one storage operation (see [`store`]).
pub(crate) fn record_store_operation(op: &str, outcome: &str, took: Duration) {
    METRICS
        .store_seconds
        .get_or_create(&pairs(&[("op", op), ("outcome", outcome)]))
        .observe(took.as_secs_f64());
}

/// Publishes whether `dependency` is up, and whether the service is serving.
pub(crate) fn record_health(dependency: Option<(&str, bool)>, serving: bool) {
    let m = &*METRICS;
    if let Some((name, up)) = dependency {
        m.dependency_up
            .get_or_create(&pairs(&[("dependency", name)]))
            .set(u64::from(up));
    }
    m.serving.set(u64::from(serving));
}

/// Records that saga `saga` persisted a step into `phase` (a fixed set of
/// names per saga), and its `outcome` when that step ended it.
pub fn record_saga_transition(saga: &str, phase: &str, outcome: Option<&str>) {
    let m = &*METRICS;
    m.saga_transitions
        .get_or_create(&pairs(&[("saga", saga), ("phase", phase)]))
        .inc();
    if let Some(outcome) = outcome {
        m.saga_outcomes
            .get_or_create(&pairs(&[("saga", saga), ("outcome", outcome)]))
            .inc();
    }
}

/// What happened to one read or invalidation of a service's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// A read answered from the cache.
    Hit,
    /// A read the cache could not answer (the store was read).
    Miss,
    /// Entries dropped because their source changed.
    Invalidation,
    /// A cache call failed (the store was read instead).
    Error,
}

impl CacheEvent {
    const ALL: [CacheEvent; 4] = [
        CacheEvent::Hit,
        CacheEvent::Miss,
        CacheEvent::Invalidation,
        CacheEvent::Error,
    ];

    fn metric(self) -> &'static str {
        match self {
            CacheEvent::Hit => "tally_cache_hits",
            CacheEvent::Miss => "tally_cache_misses",
            CacheEvent::Invalidation => "tally_cache_invalidations",
            CacheEvent::Error => "tally_cache_errors",
        }
    }

    fn help(self) -> &'static str {
        match self {
            CacheEvent::Hit => "Reads answered from the cache, per cache",
            CacheEvent::Miss => "Reads the cache could not answer, per cache",
            CacheEvent::Invalidation => "Invalidations applied to the cache, per cache",
            CacheEvent::Error => "Failed cache calls (the store answered instead), per cache",
        }
    }
}

/// Counts one `event` of cache `cache`.
pub fn count_cache(cache: &str, event: CacheEvent) {
    let index = match event {
        CacheEvent::Hit => 0,
        CacheEvent::Miss => 1,
        CacheEvent::Invalidation => 2,
        CacheEvent::Error => 3,
    };
    if let Some(family) = METRICS.cache.get(index) {
        family.get_or_create(&pairs(&[("cache", cache)])).inc();
    }
}

/// The registry in the text exposition format.
pub fn encode() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry) {
        // Writing to a String cannot fail; kept for completeness.
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// Starts the metrics endpoint on `addr` (port 0 picks one) and returns the
/// bound address. It serves `GET /metrics`, 404 for anything else, on a
/// dedicated thread until the process ends.
pub fn serve(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    let local = std_listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    std_listener
        .set_nonblocking(true)
        .map_err(MetricsError::Start)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MetricsError::Start)?;
    std::thread::Builder::new()
        .name("tally-metrics".into())
        .spawn(move || runtime.block_on(accept_loop(std_listener)))
        .map_err(MetricsError::Start)?;
    Ok(local)
}

async fn accept_loop(std_listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener unusable");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req| async move {
                Ok::<_, std::convert::Infallible>(respond(&req))
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond(req: &Request<Incoming>) -> Response<String> {
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (body, content_type) = if tally_exposition::wanted(accept) {
            (
                tally_exposition::from_open_metrics(&encode()),
                tally_exposition::CONTENT_TYPE,
            )
        } else {
            (encode(), CONTENT_TYPE)
        };
        let mut r = Response::new(body);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        r
    } else {
        let mut r = Response::new("not found\n".to_string());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}
