//! Prometheus metrics for operators: one process-wide registry and a tiny
//! HTTP endpoint (`GET /metrics`) that serves it.
//!
//! Consumers publish their position here (`tally_consumer_lag`, `_offset`,
//! `_head`, `_dead_letters`, labelled by `consumer`) whenever they compute
//! their status, so lag is visible in metrics as well as in health. The
//! endpoint runs on its own thread with its own small runtime, so it can be
//! started before (or without) the service's runtime.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

/// Content type of the Prometheus/OpenMetrics text encoding.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;
type U64Gauge = Gauge<u64, AtomicU64>;

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
    Metrics {
        registry,
        lag,
        offset,
        head,
        dead_letters,
        store_breaker,
        store_failures,
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
        let mut r = Response::new(encode());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(CONTENT_TYPE),
        );
        r
    } else {
        let mut r = Response::new("not found\n".to_string());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}
