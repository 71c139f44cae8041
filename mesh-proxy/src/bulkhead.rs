//! Per-route bulkhead: at most `max_concurrent` calls in flight, at most `max_queue` waiting,
//! anything beyond refused at once with RESOURCE_EXHAUSTED. Own layer rather than
//! tower-resilience's bulkhead because the permit must be held until the response *stream*
//! ends (not when headers arrive) and the wait queue must have a bound.

use crate::body::{self, End};
use crate::layer::{Layer, Next};
use crate::metrics::{Metrics, route as route_labels};
use crate::{Direction, ProxyError, Req, Rsp};
use opentelemetry::KeyValue;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct BulkheadLayer {
    max_concurrent: usize,
    /// Calls admitted at most: running plus queued.
    total: usize,
    admit: Arc<Semaphore>,
    run: Arc<Semaphore>,
    route: String,
    direction: Direction,
    metrics: Arc<Metrics>,
}

impl BulkheadLayer {
    /// One layer = one shared limit; build one per route.
    pub fn new(
        max_concurrent: usize,
        max_queue: usize,
        route: &str,
        direction: Direction,
        metrics: Arc<Metrics>,
    ) -> Self {
        let total = max_concurrent
            .saturating_add(max_queue)
            .min(Semaphore::MAX_PERMITS);
        Self {
            max_concurrent: max_concurrent.min(Semaphore::MAX_PERMITS),
            total,
            admit: Arc::new(Semaphore::new(total)),
            run: Arc::new(Semaphore::new(max_concurrent.min(Semaphore::MAX_PERMITS))),
            route: route.to_string(),
            direction,
            metrics,
        }
    }
}

impl BulkheadLayer {
    /// The decision as an event on the hop's span (when recorded), with the calls in flight
    /// or queued on this route at that moment.
    fn event(&self, ext: &http::Extensions, decision: &'static str) {
        crate::trace::event(ext, crate::trace::names::BULKHEAD, || {
            let busy = self
                .max_concurrent
                .saturating_sub(self.run.available_permits());
            let held = self.total.saturating_sub(self.admit.available_permits());
            vec![
                KeyValue::new("decision", decision),
                KeyValue::new("in_flight", i64::try_from(busy).unwrap_or(i64::MAX)),
                KeyValue::new(
                    "queued",
                    i64::try_from(held.saturating_sub(busy)).unwrap_or(i64::MAX),
                ),
                KeyValue::new(
                    "limit",
                    i64::try_from(self.max_concurrent).unwrap_or(i64::MAX),
                ),
                KeyValue::new("route", self.route.clone()),
            ]
        });
    }
}

impl<N: Next<Error = ProxyError>> Layer<N> for BulkheadLayer {
    type Error = ProxyError;

    async fn handle(&self, req: Req, next: &N) -> Result<Rsp, ProxyError> {
        let Ok(admitted) = self.admit.clone().try_acquire_owned() else {
            self.event(req.extensions(), "rejected");
            self.metrics
                .bulkhead_rejections
                .get_or_create(&route_labels(self.direction.as_str(), &self.route))
                .inc();
            return Err(ProxyError::BulkheadFull(self.route.clone()));
        };
        self.event(req.extensions(), "admitted");
        let running = self
            .run
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProxyError::BulkheadFull(self.route.clone()))?;
        let rsp = next.call(req).await?;
        Ok(body::on_end(rsp, move |_: End| {
            drop(running);
            drop(admitted);
        }))
    }
}
