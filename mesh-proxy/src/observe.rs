//! Outermost layer: one structured access-log line and the request/latency metrics per call,
//! recorded when the response stream ends (the gRPC status is in the trailers).

use crate::body::{self, End};
use crate::error::respond::ResetStream;
use crate::layer::{Layer, Next};
use crate::metrics::{CallLabels, Metrics, OTHER, route as route_labels};
use crate::{PeerId, Req, Rsp, grpc};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::time::Instant;

pub use crate::Direction;

/// Per-call facts other layers add to (the retry layer counts its retries here).
#[derive(Clone, Default)]
pub struct CallInfo {
    pub retries: Arc<AtomicU32>,
}

impl CallInfo {
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

type Record = Box<dyn FnOnce(&str, Option<String>) + Send>;

/// Records a call as CANCELLED if its future is dropped before it finished.
struct RecordGuard(Option<Record>);

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record("CANCELLED", Some("cancelled".into()));
        }
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    direction: Direction,
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(direction: Direction, metrics: Arc<Metrics>) -> Self {
        Self { direction, metrics }
    }
}

/// The route label of a call: the configured target service outbound, the gRPC service
/// inbound when the config names it; anything else is `other` (labels stay bounded).
pub fn route_of(direction: Direction, req: &Req, metrics: &Metrics) -> String {
    let labels = &metrics.labels;
    match direction {
        Direction::Outbound => crate::route::service_name(req)
            .map_or_else(|| OTHER.to_string(), |h| labels.outbound_route(&h)),
        Direction::Inbound => grpc::split_path(req.uri().path())
            .map_or_else(|| OTHER.to_string(), |(s, _)| labels.inbound.get(s)),
    }
}

impl<N: Next<Error = ResetStream>> Layer<N> for ObserveLayer {
    type Error = ResetStream;

    async fn handle(&self, mut req: Req, next: &N) -> Result<Rsp, ResetStream> {
        let start = Instant::now();
        let direction = self.direction;
        let metrics = self.metrics.clone();
        let route = route_of(direction, &req, &metrics);
        let caller = match (direction, req.extensions().get::<PeerId>()) {
            (Direction::Outbound, _) => "local".to_string(),
            (Direction::Inbound, Some(PeerId(Some(id)))) => metrics.labels.callers.get(id),
            (Direction::Inbound, _) => "anonymous".to_string(),
        };
        let path = req.uri().path().to_string();
        let info = CallInfo::default();
        req.extensions_mut().insert(info.clone());
        let record = move |status: &str, proxy_error: Option<String>| {
            let elapsed = start.elapsed();
            let retries = info.retries.load(Ordering::Relaxed);
            metrics
                .requests
                .get_or_create(&CallLabels {
                    direction: direction.as_str().into(),
                    route: route.clone(),
                    caller: caller.clone(),
                    grpc_status: status.to_string(),
                })
                .inc();
            metrics
                .latency
                .get_or_create(&route_labels(direction.as_str(), &route))
                .observe(elapsed.as_secs_f64());
            tracing::info!(
                target: "tally_proxy::access",
                direction = direction.as_str(),
                caller = %caller,
                route = %route,
                path = %path,
                grpc_status = status,
                proxy_error = proxy_error.as_deref().unwrap_or(""),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                retries,
                "call"
            );
        };
        // Calls the caller abandons before any response are logged and counted too.
        let mut guard = RecordGuard(Some(Box::new(record)));
        let result = next.call(req).await;
        let Some(record) = guard.0.take() else {
            return result;
        };
        match result {
            Ok(rsp) => {
                let proxy_error = rsp
                    .headers()
                    .get(crate::defaults::PROXY_ERROR_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(body::on_end(rsp, move |end: End| {
                    record(end.code().name(), proxy_error);
                }))
            }
            Err(e) => {
                record("RESET", Some("fault-reset".into()));
                Err(e)
            }
        }
    }
}
