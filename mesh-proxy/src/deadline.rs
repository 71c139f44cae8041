//! Deadlines: honour the caller's `grpc-timeout`, apply the route default when it is absent,
//! propagate what is left upstream, and end the call with DEADLINE_EXCEEDED when it passes —
//! including mid-stream. Also the route's stream idle timeout (no frame either way). Written
//! here rather than with a time limiter because the deadline must also travel in a header and
//! bound the response body, not only the response future.

use crate::layer::{Layer, Next};
use crate::{ProxyError, Req, Rsp, body, grpc};
use http::HeaderValue;
use std::time::Duration;
use tokio::time::Instant;

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

/// The route's default deadline and stream idle timeout.
#[derive(Clone)]
pub struct DeadlineLayer {
    default: Option<Duration>,
    idle: Option<Duration>,
}

impl DeadlineLayer {
    /// `None` means no route default deadline / no idle timeout.
    pub fn new(default: Option<Duration>, idle: Option<Duration>) -> Self {
        Self { default, idle }
    }
}

impl<N: Next<Error = ProxyError>> Layer<N> for DeadlineLayer {
    type Error = ProxyError;

    async fn handle(&self, mut req: Req, next: &N) -> Result<Rsp, ProxyError> {
        let idle = self.idle.map(|d| (d, body::Activity::new()));
        if let Some((_, a)) = &idle {
            let a = a.clone();
            req = req.map(|b| body::touching(b, a));
        }
        let deadline = requested(&req).or(self.default).map(|t| Instant::now() + t);
        let result = match deadline {
            None => next.call(req).await,
            Some(deadline) => {
                req.extensions_mut().insert(Deadline(deadline));
                set_remaining(&mut req, deadline)?;
                match tokio::time::timeout_at(deadline, next.call(req)).await {
                    Err(_elapsed) => Err(ProxyError::DeadlineExceeded),
                    Ok(r) => r,
                }
            }
        };
        result.map(|rsp| rsp.map(|b| body::with_limits(b, deadline, idle)))
    }
}
