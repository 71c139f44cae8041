//! Per-route bulkhead: at most `max_concurrent` calls in flight, at most `max_queue` waiting,
//! anything beyond refused at once with RESOURCE_EXHAUSTED. Own layer rather than
//! tower-resilience's bulkhead because the permit must be held until the response *stream*
//! ends (not when headers arrive) and the wait queue must have a bound.

use crate::body::{self, End};
use crate::metrics::{Metrics, route as route_labels};
use crate::{BoxFuture, ProxyError, Req, Rsp};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

#[derive(Clone)]
pub struct BulkheadLayer {
    admit: Arc<Semaphore>,
    run: Arc<Semaphore>,
    route: String,
    direction: &'static str,
    metrics: Arc<Metrics>,
}

impl BulkheadLayer {
    /// One layer = one shared limit; build one per route.
    pub fn new(
        max_concurrent: usize,
        max_queue: usize,
        route: &str,
        direction: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let total = max_concurrent
            .saturating_add(max_queue)
            .min(Semaphore::MAX_PERMITS);
        Self {
            admit: Arc::new(Semaphore::new(total)),
            run: Arc::new(Semaphore::new(max_concurrent.min(Semaphore::MAX_PERMITS))),
            route: route.to_string(),
            direction,
            metrics,
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;
    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Bulkhead<S> {
    inner: S,
    layer: BulkheadLayer,
}

impl<S> Service<Req> for Bulkhead<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Rsp, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            let Ok(admitted) = layer.admit.clone().try_acquire_owned() else {
                layer
                    .metrics
                    .bulkhead_rejections
                    .get_or_create(&route_labels(layer.direction, &layer.route))
                    .inc();
                return Err(ProxyError::BulkheadFull(layer.route.clone()));
            };
            let running = layer
                .run
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ProxyError::BulkheadFull(layer.route.clone()))?;
            let rsp = inner.oneshot(req).await?;
            Ok(body::on_end(rsp, move |_: End| {
                drop(running);
                drop(admitted);
            }))
        })
    }
}
