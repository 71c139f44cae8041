//! Deadlines: honour the caller's `grpc-timeout`, apply the route default when it is absent,
//! propagate what is left upstream, and end the call with DEADLINE_EXCEEDED when it passes —
//! including mid-stream. Also the route's stream idle timeout (no frame either way). Written here rather than with a time limiter because the deadline must
//! also travel in a header and bound the response body, not only the response future.

use crate::{BoxFuture, ProxyError, Req, Rsp, body, grpc};
use http::HeaderValue;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// The call's absolute deadline, for layers below (retry never starts an attempt past it).
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

/// The caller's requested timeout, if the header is present and well-formed.
pub fn requested(req: &Req) -> Option<Duration> {
    req.headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc::parse_timeout)
}

/// Sets `grpc-timeout` to the time left until `deadline`.
pub fn set_remaining(req: &mut Req, deadline: Instant) -> Result<(), ProxyError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ProxyError::DeadlineExceeded);
    }
    if let Ok(v) = HeaderValue::from_str(&grpc::encode_timeout(left)) {
        req.headers_mut().insert("grpc-timeout", v);
    }
    Ok(())
}

#[derive(Clone)]
pub struct DeadlineLayer {
    default: Option<Duration>,
    idle: Option<Duration>,
}

impl DeadlineLayer {
    /// `default_ms` / `idle_ms` 0 mean no route default deadline / no idle timeout.
    pub fn new(default_ms: u64, idle_ms: u64) -> Self {
        Self {
            default: (default_ms > 0).then(|| Duration::from_millis(default_ms)),
            idle: (idle_ms > 0).then(|| Duration::from_millis(idle_ms)),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService {
            inner,
            default: self.default,
            idle: self.idle,
        }
    }
}

#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    default: Option<Duration>,
    idle: Option<Duration>,
}

impl<S> Service<Req> for DeadlineService<S>
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

    fn call(&mut self, mut req: Req) -> Self::Future {
        let inner = self.inner.clone();
        let idle = self.idle.map(|d| {
            let activity = body::Activity::new();
            (d, activity)
        });
        if let Some((_, a)) = &idle {
            let a = a.clone();
            req = req.map(|b| body::touching(b, a));
        }
        let deadline = requested(&req).or(self.default).map(|t| Instant::now() + t);
        Box::pin(async move {
            let result = match deadline {
                None => inner.oneshot(req).await,
                Some(deadline) => {
                    req.extensions_mut().insert(Deadline(deadline));
                    set_remaining(&mut req, deadline)?;
                    match tokio::time::timeout_at(deadline, inner.oneshot(req)).await {
                        Err(_elapsed) => Err(ProxyError::DeadlineExceeded),
                        Ok(r) => r,
                    }
                }
            };
            result.map(|rsp| rsp.map(|b| body::with_limits(b, deadline, idle)))
        })
    }
}
