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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::PROXY_ERROR_HEADER;
    use crate::grpc::Code;
    use crate::layer::Layers;
    use http_body_util::BodyExt;
    use parking_lot::Mutex;
    use std::sync::Arc;

    /// Never answers.
    struct Silent;

    impl Next for Silent {
        type Error = ProxyError;
        async fn call(&self, _req: Req) -> Result<Rsp, ProxyError> {
            std::future::pending().await
        }
    }

    /// Answers headers at once, then never sends a frame; keeps the `grpc-timeout` it got.
    #[derive(Default)]
    struct Stalls(Arc<Mutex<Option<String>>>);

    impl Next for Stalls {
        type Error = ProxyError;
        async fn call(&self, req: Req) -> Result<Rsp, ProxyError> {
            let sent = req.headers().get("grpc-timeout");
            *self.0.lock() = sent.map(|v| v.to_str().unwrap().to_string());
            let never = futures::stream::pending::<Result<http_body::Frame<bytes::Bytes>, _>>();
            Ok(Rsp::new(
                http_body_util::StreamBody::new(never).boxed_unsync(),
            ))
        }
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_default_bounds_a_call_without_grpc_timeout() {
        let stack = Layers::new()
            .push(DeadlineLayer::new(ms(100), None))
            .over(Silent);
        let start = Instant::now();
        let r = stack.call(Req::new(body::empty())).await;
        assert!(matches!(r, Err(ProxyError::DeadlineExceeded)));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_travels_on_and_ends_a_stalled_stream_with_trailers() {
        let seen = Arc::new(Mutex::new(None));
        let stack = Layers::new()
            .push(DeadlineLayer::new(ms(10_000), None))
            .over(Stalls(seen.clone()));
        let mut req = Req::new(body::empty());
        req.headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("50m"));
        let start = Instant::now();
        let rsp = stack.call(req).await.unwrap();
        // What is left of the caller's deadline went upstream, not the route default.
        let sent = seen.lock().clone().unwrap();
        assert_eq!(grpc::parse_timeout(&sent), Some(Duration::from_millis(50)));
        let t = rsp.into_body().collect().await.unwrap().trailers().cloned();
        let t = t.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!(grpc::status_of(&t), Some(Code::DeadlineExceeded));
        assert_eq!(t[PROXY_ERROR_HEADER], "deadline-exceeded");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_ends_after_the_idle_timeout() {
        let stack = Layers::new()
            .push(DeadlineLayer::new(None, ms(30)))
            .over(Stalls::default());
        let start = Instant::now();
        let rsp = stack.call(Req::new(body::empty())).await.unwrap();
        let t = rsp.into_body().collect().await.unwrap().trailers().cloned();
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        assert_eq!(t.unwrap()[PROXY_ERROR_HEADER], "stream-idle-timeout");
    }
}
