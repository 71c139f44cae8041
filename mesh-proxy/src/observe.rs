//! Outermost layer: one structured access-log line and the request/latency metrics per call,
//! recorded when the response stream ends (the gRPC status is in the trailers).

use crate::body::{self, End};
use crate::error::respond::ResetStream;
use crate::grpc::Code;
use crate::layer::{Layer, Next};
use crate::metrics::Metrics;
use crate::metrics_handles::{CallHandles, DirectionHandles, Outcome};
use crate::{Req, Rsp};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::time::Instant;

pub(crate) use crate::Direction;

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

/// What a call's end updates: its metric handles and, when on, its access-log line.
struct Recorder {
    start: Instant,
    handles: Arc<CallHandles>,
    direction: Direction,
    /// Only kept when the access log is on.
    path: Option<String>,
    info: CallInfo,
}

impl Recorder {
    fn record(self, outcome: Outcome, proxy_error: Option<&str>) {
        let elapsed = self.start.elapsed();
        self.handles.record(outcome, elapsed.as_secs_f64());
        if let Some(path) = &self.path {
            tracing::info!(
                target: "tally_proxy::access",
                direction = self.direction.as_str(),
                caller = %self.handles.caller(),
                route = %self.handles.route(),
                path = %path,
                grpc_status = outcome.name(),
                proxy_error = proxy_error.unwrap_or(""),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                retries = self.info.retries.load(Ordering::Relaxed),
                "call"
            );
        }
    }
}

/// Records a call as CANCELLED if its future is dropped before it finished.
struct RecordGuard(Option<Recorder>);

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.record(Outcome::Code(Code::Cancelled), Some("cancelled"));
        }
    }
}

pub struct ObserveLayer {
    direction: Direction,
    handles: DirectionHandles,
}

impl ObserveLayer {
    pub fn new(direction: Direction, metrics: Arc<Metrics>) -> Self {
        Self {
            direction,
            handles: DirectionHandles::new(direction, metrics),
        }
    }
}

impl<N: Next<Error = ResetStream>> Layer<N> for ObserveLayer {
    type Error = ResetStream;

    async fn handle(&self, mut req: Req, next: &N) -> Result<Rsp, ResetStream> {
        let start = Instant::now();
        let handles = self.handles.for_call(&req);
        let path = tracing::enabled!(target: "tally_proxy::access", tracing::Level::INFO)
            .then(|| req.uri().path().to_string());
        let info = CallInfo::default();
        req.extensions_mut().insert(info.clone());
        // Calls the caller abandons before any response are logged and counted too.
        let mut guard = RecordGuard(Some(Recorder {
            start,
            handles,
            direction: self.direction,
            path,
            info,
        }));
        let result = next.call(req).await;
        let Some(recorder) = guard.0.take() else {
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
                    recorder.record(Outcome::Code(end.code()), proxy_error.as_deref());
                }))
            }
            Err(e) => {
                recorder.record(Outcome::Reset, Some("fault-reset"));
                Err(e)
            }
        }
    }
}
