//! RED metrics of the gRPC server: a tower layer that counts every call by
//! service, method and final `grpc-status` and times it until its response
//! stream ends (trailers included), so server-streaming calls are timed to
//! their last message. tonic has no server metrics of its own.
//!
//! Label values are bounded: the service must be one this port serves and
//! the method a plain identifier of at most [`MAX_METHOD_LEN`] bytes of an
//! implemented method; anything else is counted as [`OTHER`].

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

/// Label value for a service or method outside the bounded set.
pub const OTHER: &str = "other";
/// Longest method name used as a label value.
pub const MAX_METHOD_LEN: usize = 64;
/// Code recorded when a response stream ends without any `grpc-status`.
const NO_STATUS: &str = "Unknown";
/// Code recorded when the client goes away before the stream ends.
const DROPPED: &str = "Cancelled";

/// Adds [`GrpcMetrics`] around the server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    services: Arc<BTreeSet<String>>,
}

impl GrpcMetricsLayer {
    /// Counts calls to `services` by name; others are [`OTHER`].
    pub fn new<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            services: Arc::new(services.into_iter().map(str::to_string).collect()),
        }
    }

    /// The `(service, method)` labels of a request path.
    fn labels(&self, path: &str) -> (String, String) {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or_default();
        let method = parts.next().unwrap_or_default();
        if !self.services.contains(service) {
            return (OTHER.into(), OTHER.into());
        }
        let plain = !method.is_empty()
            && method.len() <= MAX_METHOD_LEN
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let method = if plain { method } else { OTHER };
        (service.into(), method.into())
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// Records each call's outcome and duration.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S, B> Service<Request<B>> for GrpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (service, method) = self.layer.labels(req.uri().path());
        let call = Call {
            service,
            method,
            started: Instant::now(),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            let body = MeteredBody {
                inner: body,
                header_code: status_name(&parts.headers),
                call: Some(call),
            };
            Ok(Response::from_parts(parts, tonic::body::Body::new(body)))
        })
    }
}

/// The labels and start of one call, recorded once when its stream ends.
struct Call {
    service: String,
    method: String,
    started: Instant,
}

impl Call {
    fn finish(self, code: &str) {
        // An unimplemented method is a caller's typo: do not keep its name.
        let method = if code == "Unimplemented" {
            OTHER
        } else {
            &self.method
        };
        super::record_grpc_call(&self.service, method, code, self.started.elapsed());
    }
}

/// The name of the `grpc-status` in `headers`, if any (`Ok`, `NotFound`, ...).
fn status_name(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("grpc-status")?.to_str().ok()?;
    let n: i32 = raw.trim().parse().ok()?;
    Some(format!("{:?}", tonic::Code::from_i32(n)))
}

/// The response body, watched for its trailers and its end.
struct MeteredBody {
    inner: tonic::body::Body,
    header_code: Option<String>,
    call: Option<Call>,
}

impl MeteredBody {
    fn finish(&mut self, code: Option<String>) {
        if let Some(call) = self.call.take() {
            let code = code
                .or_else(|| self.header_code.take())
                .unwrap_or_else(|| NO_STATUS.into());
            call.finish(&code);
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_name(trailers);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Some("Internal".into())),
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // Trailers-only responses may be dropped without being polled to the end.
        let code = self.header_code.take().unwrap_or_else(|| DROPPED.into());
        self.finish(Some(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_to_known_services_and_plain_methods() {
        let layer = GrpcMetricsLayer::new(["tally.poll.v1.PollService"]);
        assert_eq!(
            layer.labels("/tally.poll.v1.PollService/CastVote"),
            ("tally.poll.v1.PollService".into(), "CastVote".into())
        );
        assert_eq!(
            layer.labels("/evil.Service/CastVote"),
            (OTHER.into(), OTHER.into())
        );
        assert_eq!(
            layer.labels("/tally.poll.v1.PollService/a-b"),
            ("tally.poll.v1.PollService".into(), OTHER.into())
        );
        let long = format!(
            "/tally.poll.v1.PollService/{}",
            "x".repeat(MAX_METHOD_LEN + 1)
        );
        assert_eq!(layer.labels(&long).1, OTHER);
    }

    #[test]
    fn status_names_come_from_grpc_status() {
        let mut h = HeaderMap::new();
        assert_eq!(status_name(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_name(&h).as_deref(), Some("NotFound"));
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(status_name(&h).as_deref(), Some("Ok"));
    }
}
