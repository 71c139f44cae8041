//! Load balancing over a service's endpoints: power of two choices (`p2c`) over a peak-EWMA
//! latency estimate (`ewma`) times in-flight calls, with a circuit breaker per endpoint and
//! outlier ejection (`outlier`), all moved by one failure classification (`classify`).
//! Own implementation rather than tower's `p2c` + tower-resilience's outlier detector because
//! all three must share one view of each endpoint: a breaker-open or ejected endpoint is never
//! picked, failures inflate the load estimate, and the ejection floor needs the whole set.

pub mod client;
pub mod ewma;
pub mod outlier;
pub mod p2c;

pub use client::{ClientSettings, HttpClient, http2_client, send};

use crate::body::{self, End};
use crate::breaker::{Admission, Breaker};
use crate::classify::{Classifier, Signal, Verdict};
use crate::config::ServiceConfig;
use crate::defaults as d;
use crate::error::from_client_error;
use crate::metrics::{FailureLabels, Metrics, endpoint as endpoint_labels, route as route_labels};
use crate::transport::ClientTransport;
use crate::{BoxFuture, ProxyError, Req, Rsp, grpc};
use ewma::PeakEwma;
use opentelemetry::KeyValue;
use outlier::{Availability, Outliers, Recorded};
use std::sync::Arc;
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

/// The first endpoint listed twice, if any (config validation refuses such lists).
pub fn duplicate_endpoint(endpoints: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    endpoints
        .iter()
        .find(|e| !seen.insert(e.trim().to_ascii_lowercase()))
        .map(String::as_str)
}

pub struct Endpoint {
    pub addr: String,
    index: usize,
    client: HttpClient,
    breaker: Breaker,
    ewma: PeakEwma,
    in_flight: AtomicUsize,
}

impl Endpoint {
    fn cost(&self) -> f64 {
        self.ewma.cost(self.in_flight.load(Ordering::Relaxed))
    }
}

/// All endpoints of one target service.
pub struct Pool {
    pub route: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    outliers: Outliers,
    classifier: Classifier,
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
        let endpoints = svc
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let labels = endpoint_labels(route, a);
                Arc::new(Endpoint {
                    addr: a.clone(),
                    index,
                    client: http2_client(a, expected_id, transport.clone(), settings),
                    breaker: Breaker::new(
                        svc.breaker.clone(),
                        metrics.breaker_state.get_or_create(&labels).clone(),
                        metrics.breaker_opens.get_or_create(&labels).clone(),
                        format!("{route}/{a}"),
                    ),
                    ewma: PeakEwma::from_config(&svc.load_balancer),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        let route_timeout = (svc.timeout_ms > 0).then(|| Duration::from_millis(svc.timeout_ms));
        Arc::new(Self {
            route: route.to_string(),
            outliers: Outliers::new(&svc.outlier, svc.endpoints.len()),
            classifier: Classifier::new(&svc.failure, route_timeout),
            endpoints,
            metrics,
        })
    }

    /// P2C over the endpoints neither ejected nor breaker-open (and not `avoid` when another
    /// will do); then claim the winner's breaker. The pair is sampled from the whole list, so
    /// the usual pick looks at a few endpoints, not all of them; only when sampling finds too
    /// few usable ones (most ejected or breaker-open, or only the avoided one left) does it scan
    /// them all, which also tells "no endpoints" from "breaker open".
    fn pick(&self, avoid: Option<&str>) -> Result<(Arc<Endpoint>, Admission), ProxyError> {
        let now = Instant::now();
        let usable = |k: usize| {
            let e = &self.endpoints[k];
            avoid != Some(e.addr.as_str()) && self.available(e, now) && e.breaker.available()
        };
        let sampled = p2c::sample_two(
            &mut rand::rng(),
            self.endpoints.len(),
            d::P2C_SAMPLE_TRIES,
            usable,
        );
        match sampled {
            Some((i, j)) => self.claim(&self.endpoints[i], &self.endpoints[j]),
            None => self.pick_by_scan(avoid, now),
        }
    }

    /// Whether endpoint `e` is not ejected at `now` (logging its return from an ejection).
    fn available(&self, e: &Endpoint, now: Instant) -> bool {
        match self.outliers.availability(e.index, now) {
            Availability::Ejected => false,
            Availability::Returned => {
                tracing::info!(route = %self.route, endpoint = %e.addr, "outlier returned to the load balancer");
                true
            }
            Availability::Available => true,
        }
    }

    /// The pick over the full candidate list: O(endpoints), for when sampling gave up.
    fn pick_by_scan(
        &self,
        avoid: Option<&str>,
        now: Instant,
    ) -> Result<(Arc<Endpoint>, Admission), ProxyError> {
        let mut healthy = 0;
        let mut candidates: Vec<&Arc<Endpoint>> = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            if !self.available(e, now) {
                continue;
            }
            healthy += 1;
            if e.breaker.available() {
                candidates.push(e);
            }
        }
        if let Some(a) = avoid {
            p2c::avoiding(&mut candidates, |e| e.addr == a);
        }
        let pair = p2c::two(&mut rand::rng(), candidates.len());
        let Some((i, j)) = pair else {
            return Err(if healthy == 0 {
                ProxyError::NoEndpoints(self.route.clone())
            } else {
                ProxyError::BreakerOpen(self.route.clone())
            });
        };
        self.claim(candidates[i], candidates[j])
    }

    /// The cheaper of `a` and `b` by load estimate, or the other if its breaker refuses.
    fn claim(
        &self,
        a: &Arc<Endpoint>,
        b: &Arc<Endpoint>,
    ) -> Result<(Arc<Endpoint>, Admission), ProxyError> {
        if Arc::ptr_eq(a, b) {
            // One candidate (a service with one usable endpoint): nothing to compare.
            return a
                .breaker
                .try_acquire()
                .map(|adm| (a.clone(), adm))
                .ok_or_else(|| ProxyError::BreakerOpen(self.route.clone()));
        }
        let pair = [a, b];
        let (best, other) = p2c::cheaper(0, 1, |k| pair[k].cost());
        for ep in [pair[best], pair[other]] {
            if let Some(adm) = ep.breaker.try_acquire() {
                return Ok((ep.clone(), adm));
            }
        }
        Err(ProxyError::BreakerOpen(self.route.clone()))
    }

    /// Accounts for one finished call: in-flight count, then breaker, outlier detector and
    /// load estimate, all from the one classification of `signal`.
    fn finish(&self, ep: &Endpoint, adm: Admission, signal: Signal) {
        ep.in_flight.fetch_sub(1, Ordering::Relaxed);
        let verdict = self.classifier.classify(signal);
        ep.breaker.record(adm, verdict.as_failed());
        if verdict == Verdict::Failure {
            tracing::debug!(route = %self.route, endpoint = %ep.addr, ?signal, "endpoint failure");
            ep.ewma.observe_failure();
            self.metrics
                .endpoint_failures
                .get_or_create(&FailureLabels {
                    route: self.route.clone(),
                    endpoint: ep.addr.clone(),
                    kind: signal.kind(),
                })
                .inc();
        }
        let Some(failed) = verdict.as_failed() else {
            return;
        };
        match self.outliers.record(ep.index, failed, Instant::now()) {
            Recorded::Nothing => {}
            Recorded::Ejected(time) => {
                tracing::warn!(route = %self.route, endpoint = %ep.addr, ejection_ms = time.as_millis() as u64, "outlier ejected");
                self.metrics
                    .outlier_ejections
                    .get_or_create(&endpoint_labels(&self.route, &ep.addr))
                    .inc();
            }
            Recorded::FloorReached { ejected, limit } => {
                tracing::warn!(route = %self.route, endpoint = %ep.addr, ejected, limit, "outlier not ejected: ejection floor reached");
                self.metrics
                    .outlier_ejection_floor
                    .get_or_create(&route_labels("outbound", &self.route))
                    .inc();
            }
        }
    }
}

/// The signal of a call whose client request failed before any response.
fn error_signal(err: &ProxyError) -> Signal {
    match err {
        ProxyError::Cancelled => Signal::Neutral,
        ProxyError::Connect { .. } => Signal::ConnectFailure,
        ProxyError::Upstream { refused: true, .. } => Signal::RefusedStream,
        _ => Signal::Reset,
    }
}

/// The signal of a call from how its response ended; `http` is set for a non-gRPC answer.
fn end_signal(http: Option<u16>, end: End) -> Signal {
    if let Some(s) = http {
        return Signal::Http(s);
    }
    match end {
        End::Status(c) => Signal::Grpc(c),
        End::Error => Signal::ResetDuringResponse,
        End::NoStatus | End::Dropped => Signal::Neutral,
    }
}

/// Finishes a call whose future was dropped before the endpoint answered: a response-header
/// timeout when the route's own timeout had passed, otherwise the caller's choice (neutral).
struct FinishGuard {
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    adm: Admission,
    start: Instant,
    armed: bool,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if self.armed {
            let timed_out = self
                .pool
                .classifier
                .route_timeout()
                .is_some_and(|t| self.start.elapsed() >= t);
            let signal = if timed_out {
                Signal::Timeout
            } else {
                Signal::Neutral
            };
            self.pool.finish(&self.ep, self.adm, signal);
        }
    }
}

/// The breaker's decision on this pick as an event on the hop's span, when recorded:
/// admitted (closed, or the half-open probe) by which endpoint, or rejected and why.
fn breaker_event(ext: &http::Extensions, picked: &Result<(Arc<Endpoint>, Admission), ProxyError>) {
    crate::trace::event(ext, crate::trace::names::BREAKER, || match picked {
        Ok((ep, adm)) => vec![
            KeyValue::new("decision", "admitted"),
            KeyValue::new(
                "state",
                match adm {
                    Admission::Normal => "closed",
                    Admission::Probe => "half-open",
                },
            ),
            KeyValue::new("endpoint", ep.addr.clone()),
        ],
        Err(e) => vec![
            KeyValue::new("decision", "rejected"),
            KeyValue::new(
                "state",
                match e {
                    ProxyError::BreakerOpen(_) => "open",
                    _ => "ejected",
                },
            ),
            KeyValue::new("reason", e.reason()),
        ],
    });
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
            let picked = pool.pick(avoid.as_deref());
            breaker_event(req.extensions(), &picked);
            let (ep, adm) = picked?;
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            // If the caller goes away while we wait, the call still has to be accounted for
            // (in-flight count, and a half-open probe slot must not stay taken).
            let start = Instant::now();
            let mut guard = FinishGuard {
                pool: pool.clone(),
                ep: ep.clone(),
                adm,
                start,
                armed: true,
            };
            let result = send(&ep.client, &ep.addr, req).await;
            guard.armed = false;
            match result {
                Err(e) => {
                    let err = from_client_error(&ep.addr, e);
                    pool.finish(&ep, adm, error_signal(&err));
                    Err(err)
                }
                Ok(mut rsp) => {
                    ep.ewma.observe(start.elapsed());
                    rsp.extensions_mut().insert(ServedBy(ep.addr.clone()));
                    let has_grpc_status = grpc::status_of(rsp.headers()).is_some();
                    let http = (!has_grpc_status && rsp.status() != http::StatusCode::OK)
                        .then(|| rsp.status().as_u16());
                    // A half-open probe is settled by its head, not a long stream's end.
                    let adm = ep
                        .breaker
                        .on_response_head(adm, rsp.status(), has_grpc_status);
                    let (pool2, ep2) = (pool.clone(), ep.clone());
                    Ok(body::on_end(rsp, move |end| {
                        pool2.finish(&ep2, adm, end_signal(http, end))
                    }))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
