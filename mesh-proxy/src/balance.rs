//! Load balancing over a service's endpoints: power of two choices over a peak-EWMA latency
//! estimate (times in-flight calls), with a circuit breaker per endpoint and outlier ejection.
//! Own implementation rather than tower's `p2c` + tower-resilience's outlier detector because
//! all three must share one view of each endpoint: a breaker-open or ejected endpoint is never
//! picked, failures inflate the load estimate, and the ejection floor needs the whole set.

use crate::body::{self, End};
use crate::breaker::{Admission, Breaker};
use crate::config::{LoadBalancerConfig, OutlierConfig, ServiceConfig};
use crate::defaults as d;
use crate::error::from_client_error;
use crate::metrics::{Metrics, endpoint as endpoint_labels, route as route_labels};
use crate::transport::ClientTransport;
use crate::transport::connector::Connector;
use crate::{BoxFuture, ProxyError, Req, Rsp, body::Body};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Request extension: an endpoint the next attempt should avoid if it can.
#[derive(Clone, Debug)]
pub struct AvoidEndpoint(pub String);

/// Response extension: the endpoint that answered.
#[derive(Clone, Debug)]
pub struct ServedBy(pub String);

pub type HttpClient = Client<Connector, Body>;

/// HTTP/2 client settings for connections the proxy opens.
#[derive(Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub stream_window: u32,
    pub connection_window: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_list_size: u32,
}

impl ClientSettings {
    pub fn from_limits(l: &crate::config::LimitsConfig) -> Self {
        Self {
            connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            stream_window: l.http2_initial_stream_window_size,
            connection_window: l.http2_initial_connection_window_size,
            keepalive_interval: Duration::from_millis(l.http2_keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(l.http2_keepalive_timeout_ms),
            max_header_list_size: l.max_header_list_size,
        }
    }
}

/// An HTTP/2-only client that dials `addr` through `transport`, expecting `expected_id`.
pub fn http2_client(
    addr: &str,
    expected_id: &str,
    transport: Arc<dyn ClientTransport>,
    s: &ClientSettings,
) -> HttpClient {
    let connector = Connector {
        addr: addr.to_string(),
        expected_id: expected_id.to_string(),
        transport,
        connect_timeout: s.connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_initial_stream_window_size(s.stream_window)
        .http2_initial_connection_window_size(s.connection_window)
        .http2_keep_alive_interval(s.keepalive_interval)
        .http2_keep_alive_timeout(s.keepalive_timeout)
        .http2_max_header_list_size(s.max_header_list_size)
        .build(connector)
}

/// Sends `req` to `addr` over `client` (rewriting the URI so the pool keys on the endpoint).
pub async fn send(
    client: &HttpClient,
    addr: &str,
    req: Req,
) -> Result<Rsp, hyper_util::client::legacy::Error> {
    let (mut parts, b) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = format!("http://{addr}{pq}").parse() {
        parts.uri = uri;
    }
    parts.version = http::Version::HTTP_2;
    parts.headers.remove(http::header::HOST);
    let rsp = client.request(Req::from_parts(parts, b)).await?;
    Ok(rsp.map(body::incoming))
}

/// Peak-EWMA round-trip estimate.
struct Ewma {
    estimate_ns: f64,
    updated: Instant,
}

pub struct Endpoint {
    pub addr: String,
    lb: LoadBalancerConfig,
    client: HttpClient,
    breaker: Breaker,
    ewma: Mutex<Ewma>,
    in_flight: AtomicUsize,
    outlier: Mutex<OutlierState>,
}

#[derive(Default)]
struct OutlierState {
    consecutive: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    returned_at: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Endpoint {
    fn observe_rtt(&self, rtt: Duration, failed: bool) {
        let mut rtt_ns = rtt.as_nanos() as f64;
        if failed {
            rtt_ns =
                rtt_ns.max(Duration::from_millis(self.lb.failure_penalty_ms).as_nanos() as f64);
        }
        let mut e = lock(&self.ewma);
        let now = Instant::now();
        if rtt_ns > e.estimate_ns {
            // Peak: a slower observation takes effect at once.
            e.estimate_ns = rtt_ns;
        } else {
            let w = self.decay_weight(now.duration_since(e.updated));
            e.estimate_ns = e.estimate_ns * w + rtt_ns * (1.0 - w);
        }
        e.updated = now;
    }

    fn decay_weight(&self, elapsed: Duration) -> f64 {
        let tau = Duration::from_millis(self.lb.decay_ms.max(1)).as_nanos() as f64;
        (-(elapsed.as_nanos() as f64) / tau).exp()
    }

    /// Load estimate: the RTT estimate (decaying while the endpoint is idle, so an endpoint
    /// that was slow or failing is tried again eventually) times the calls in flight plus one.
    fn cost(&self) -> f64 {
        let est = {
            let e = lock(&self.ewma);
            e.estimate_ns * self.decay_weight(e.updated.elapsed())
        };
        est * (self.in_flight.load(Ordering::Relaxed) as f64 + 1.0)
    }

    fn is_ejected(&self, now: Instant, interval: Duration) -> bool {
        let mut o = lock(&self.outlier);
        match o.ejected_until {
            Some(t) if now < t => true,
            Some(_) => {
                o.ejected_until = None;
                o.consecutive = 0;
                o.returned_at = Some(now);
                tracing::info!(endpoint = %self.addr, "outlier returned to the load balancer");
                false
            }
            None => {
                // Envoy-style decay: each healthy interval after a return forgives one ejection.
                if let Some(r) = o.returned_at
                    && o.times_ejected > 0
                    && now.duration_since(r) >= interval
                {
                    o.times_ejected -= 1;
                    o.returned_at = Some(now);
                }
                false
            }
        }
    }
}

/// All endpoints of one target service.
pub struct Pool {
    pub route: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    outlier: OutlierConfig,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(
        route: &str,
        svc: &ServiceConfig,
        expected_id: &str,
        transport: Arc<dyn ClientTransport>,
        settings: &ClientSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (addrs, breaker, outlier, lb) = (
            &svc.endpoints,
            &svc.breaker,
            &svc.outlier,
            &svc.load_balancer,
        );
        let endpoints = addrs
            .iter()
            .map(|a| {
                let labels = endpoint_labels(route, a);
                Arc::new(Endpoint {
                    addr: a.clone(),
                    lb: lb.clone(),
                    client: http2_client(a, expected_id, transport.clone(), settings),
                    breaker: Breaker::new(
                        breaker.clone(),
                        metrics.breaker_state.get_or_create(&labels).clone(),
                        metrics.breaker_opens.get_or_create(&labels).clone(),
                        format!("{route}/{a}"),
                    ),
                    ewma: Mutex::new(Ewma {
                        estimate_ns: Duration::from_millis(lb.default_rtt_ms).as_nanos() as f64,
                        updated: Instant::now(),
                    }),
                    in_flight: AtomicUsize::new(0),
                    outlier: Mutex::new(OutlierState::default()),
                })
            })
            .collect();
        Arc::new(Self {
            route: route.to_string(),
            endpoints,
            outlier: outlier.clone(),
            metrics,
        })
    }

    /// P2C: two random candidates, the cheaper wins; then claim its breaker.
    fn pick(&self, avoid: Option<&str>) -> Result<(Arc<Endpoint>, Admission), ProxyError> {
        let now = Instant::now();
        let interval = Duration::from_millis(self.outlier.interval_ms);
        let healthy: Vec<&Arc<Endpoint>> = self
            .endpoints
            .iter()
            .filter(|e| !e.is_ejected(now, interval))
            .collect();
        let mut candidates: Vec<&Arc<Endpoint>> = healthy
            .iter()
            .copied()
            .filter(|e| e.breaker.available())
            .collect();
        if candidates.is_empty() {
            return Err(if healthy.is_empty() {
                ProxyError::NoEndpoints(self.route.clone())
            } else {
                ProxyError::BreakerOpen(self.route.clone())
            });
        }
        if let Some(a) = avoid
            && candidates.len() > 1
        {
            candidates.retain(|e| e.addr != a);
        }
        let (first, second) = {
            let mut rng = rand::rng();
            let n = candidates.len();
            let i = rng.random_range(0..n);
            let j = if n > 1 {
                (i + rng.random_range(1..n)) % n
            } else {
                i
            };
            (candidates[i], candidates[j])
        };
        let (best, other) = if second.cost() < first.cost() {
            (second, first)
        } else {
            (first, second)
        };
        for ep in [best, other] {
            if let Some(adm) = ep.breaker.try_acquire() {
                return Ok((ep.clone(), adm));
            }
        }
        Err(ProxyError::BreakerOpen(self.route.clone()))
    }

    /// Outlier bookkeeping for one finished call.
    fn record_outlier(&self, ep: &Endpoint, failed: bool) {
        let now = Instant::now();
        let mut o = lock(&ep.outlier);
        if !failed {
            o.consecutive = 0;
            return;
        }
        o.consecutive += 1;
        if o.consecutive < self.outlier.consecutive_5xx || o.ejected_until.is_some() {
            return;
        }
        drop(o);
        // Floor rule: never eject more than max_ejection_percent (but at least one may go),
        // and always keep one endpoint in the set.
        let n = self.endpoints.len();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| lock(&e.outlier).ejected_until.is_some_and(|t| t > now))
            .count();
        let max_by_percent =
            ((n as u64 * u64::from(self.outlier.max_ejection_percent)) / 100).max(1) as usize;
        let limit = max_by_percent.min(n.saturating_sub(1));
        let mut o = lock(&ep.outlier);
        if ejected >= limit {
            o.consecutive = 0;
            tracing::warn!(route = %self.route, endpoint = %ep.addr, ejected, limit, "outlier not ejected: ejection floor reached");
            self.metrics
                .outlier_ejection_floor
                .get_or_create(&route_labels("outbound", &self.route))
                .inc();
            return;
        }
        o.times_ejected += 1;
        let base = Duration::from_millis(self.outlier.base_ejection_time_ms);
        let time = base
            .saturating_mul(o.times_ejected)
            .min(Duration::from_millis(d::OUTLIER_MAX_EJECTION_TIME_MS).max(base));
        o.ejected_until = Some(now + time);
        o.consecutive = 0;
        tracing::warn!(route = %self.route, endpoint = %ep.addr, ejection_ms = time.as_millis() as u64, "outlier ejected");
        self.metrics
            .outlier_ejections
            .get_or_create(&endpoint_labels(&self.route, &ep.addr))
            .inc();
    }

    fn finish(&self, ep: &Endpoint, adm: Admission, end: End) {
        ep.in_flight.fetch_sub(1, Ordering::Relaxed);
        let failed = match end {
            End::Dropped => None,
            e => Some(e.is_endpoint_failure()),
        };
        ep.breaker.record(adm, failed);
        if let Some(f) = failed {
            self.record_outlier(ep, f);
            if f {
                ep.observe_rtt(Duration::ZERO, true);
            }
        }
    }
}

/// Finishes a call whose future was dropped before the endpoint answered.
struct FinishGuard {
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    adm: Admission,
    armed: bool,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if self.armed {
            self.pool.finish(&self.ep, self.adm, End::Dropped);
        }
    }
}

/// The balancer as a service.
#[derive(Clone)]
pub struct Balance {
    pool: Arc<Pool>,
}

impl Balance {
    pub fn new(pool: Arc<Pool>) -> Self {
        Self { pool }
    }
}

impl tower::Service<Req> for Balance {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Rsp, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let avoid = req.extensions().get::<AvoidEndpoint>().map(|a| a.0.clone());
            let (ep, adm) = pool.pick(avoid.as_deref())?;
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            // If the caller goes away while we wait, the call still has to be accounted for
            // (in-flight count, and a half-open probe slot must not stay taken).
            let mut guard = FinishGuard {
                pool: pool.clone(),
                ep: ep.clone(),
                adm,
                armed: true,
            };
            let start = Instant::now();
            let result = send(&ep.client, &ep.addr, req).await;
            guard.armed = false;
            match result {
                Err(e) => {
                    let err = from_client_error(&ep.addr, e);
                    // A stream the endpoint refused unprocessed (e.g. after its GOAWAY), or one
                    // the caller cancelled, says nothing about its health; connect failures and
                    // broken streams do.
                    let neutral = matches!(err, ProxyError::Cancelled)
                        || (err.never_reached_app() && !matches!(err, ProxyError::Connect { .. }));
                    let end = if neutral { End::Dropped } else { End::Error };
                    pool.finish(&ep, adm, end);
                    Err(err)
                }
                Ok(mut rsp) => {
                    ep.observe_rtt(start.elapsed(), false);
                    rsp.extensions_mut().insert(ServedBy(ep.addr.clone()));
                    let (pool2, ep2) = (pool.clone(), ep.clone());
                    Ok(body::on_end(rsp, move |end| pool2.finish(&ep2, adm, end)))
                }
            }
        })
    }
}
