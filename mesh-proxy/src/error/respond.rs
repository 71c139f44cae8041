//! The one place a proxy error becomes what a caller sees: a trailers-only gRPC response
//! before any response, gRPC trailers once a response stream has started (a broken upstream
//! stream, a passed deadline), always with `tally-proxy-error: <reason>`. The mesh listeners
//! (`ErrorsLayer`), the deadline body and the gateway all build their answers here, and this
//! is where answers bound for browsers lose the detail (SPIFFE ids, endpoint addresses) that
//! only the logs may see.

use crate::balance::ServedBy;
use crate::body::{Body, BodyError};
use crate::defaults::PROXY_ERROR_HEADER;
use crate::grpc::{self, Code};
use crate::layer::{Layer, Next};
use crate::{Direction, ProxyError, Req, Rsp};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Tells the HTTP/2 server to reset the stream instead of answering (injected resets only).
#[derive(Debug, thiserror::Error)]
#[error("stream reset by fault injection")]
pub struct ResetStream;

/// A trailers-only gRPC response: HTTP 200, `grpc-status`, `grpc-message`, the reason.
pub fn grpc_response(code: Code, message: &str, reason: &'static str) -> Rsp {
    let mut rsp = grpc::trailers_only(code, message);
    rsp.headers_mut()
        .insert(PROXY_ERROR_HEADER, HeaderValue::from_static(reason));
    rsp
}

/// gRPC trailers ending a response stream that has already started.
pub fn grpc_trailers(code: Code, message: &str, reason: &'static str) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(3);
    t.insert("grpc-status", HeaderValue::from(code.as_u16()));
    if let Ok(v) = HeaderValue::from_str(&grpc::encode_message(message)) {
        t.insert("grpc-message", v);
    }
    t.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(reason));
    t
}

/// A plain HTTP error, for a request that is not a usable gRPC call at all.
pub fn http_error(status: StatusCode, message: &str, reason: &'static str) -> Rsp {
    let mut rsp = Rsp::new(crate::body::full(Bytes::from(format!("{message}\n"))));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(reason));
    rsp
}

/// The response a caller sees for a proxy error.
pub fn response(e: &ProxyError) -> Rsp {
    grpc_response(e.code(), &e.to_string(), e.reason())
}

/// The trailers that end a started response stream because of a proxy error.
pub fn trailers(e: &ProxyError) -> HeaderMap {
    grpc_trailers(e.code(), &e.to_string(), e.reason())
}

/// Logs a proxy error with its full detail: failures of the mesh at warn, refusals at debug.
fn log(e: &ProxyError, during: &'static str) {
    if matches!(
        e,
        ProxyError::Upstream { .. } | ProxyError::LocalApp(_) | ProxyError::Connect { .. }
    ) {
        tracing::warn!(error = %e, detail = ?e, reason = e.reason(), during, "call failed in the proxy");
    } else {
        tracing::debug!(error = %e, reason = e.reason(), during, "proxy error");
    }
}

/// Short texts for each reason, safe to show outside the mesh.
const PUBLIC_MESSAGES: &[(&str, &str)] = &[
    ("no-route", "no route to the service"),
    ("no-endpoints", "service unavailable: no endpoint"),
    ("breaker-open", "service unavailable: circuit open"),
    ("bulkhead-full", "service busy"),
    ("deadline-exceeded", "deadline exceeded"),
    ("stream-idle-timeout", "stream idle timeout"),
    ("unauthorized", "call not allowed"),
    ("unauthenticated", "caller not authenticated"),
    ("connect-failed", "service unreachable"),
    ("upstream-failed", "service failed during the call"),
    ("local-app-unavailable", "service failed during the call"),
    ("fault-abort", "fault injected"),
    ("fault-reset", "fault injected: stream reset"),
    ("cancelled", "call cancelled"),
];

/// What a browser may read about a proxy error with `reason`.
pub fn public_message(reason: &str) -> &'static str {
    PUBLIC_MESSAGES
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or("proxy error", |(_, m)| m)
}

/// A message shown at the edge, naming the call's request id (the id in the gateway's logs).
pub fn with_request_id(message: &str, request_id: &str) -> String {
    format!("{message} (request id {request_id})")
}

/// Replaces the message of a proxy error (found by its reason, in headers or trailers) with
/// the public text and the request id, logging the original. False when `map` holds none.
fn redact(map: &mut HeaderMap, request_id: &str) -> bool {
    let Some(reason) = map.get(PROXY_ERROR_HEADER) else {
        return false;
    };
    let reason = reason.to_str().unwrap_or("");
    let public = public_message(reason);
    let detail = map
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(
        request_id,
        reason,
        detail,
        "proxy error returned to a browser"
    );
    let message = with_request_id(public, request_id);
    match HeaderValue::from_str(&grpc::encode_message(&message)) {
        Ok(v) => map.insert("grpc-message", v),
        Err(_) => map.remove("grpc-message"),
    };
    true
}

/// Rewrites a response bound for a browser: proxy errors keep their status and reason and
/// carry the request id, never identities or addresses.
pub fn for_browser(rsp: Rsp, request_id: &str) -> Rsp {
    let (mut parts, body) = rsp.into_parts();
    if redact(&mut parts.headers, request_id) || grpc::status_of(&parts.headers).is_some() {
        return Rsp::from_parts(parts, body);
    }
    let body = Redacting {
        inner: body,
        request_id: request_id.to_string(),
    };
    Rsp::from_parts(parts, body.boxed_unsync())
}

/// Redacts proxy errors in a response's trailers.
struct Redacting {
    inner: Body,
    request_id: String,
}

impl HttpBody for Redacting {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|f| {
            f.map(|f| match f.into_trailers() {
                Ok(mut t) => {
                    redact(&mut t, &self.request_id);
                    Frame::trailers(t)
                }
                Err(f) => f,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The final layer of a mesh listener: every proxy error becomes a gRPC answer, and a
/// response stream that breaks midway ends with gRPC trailers instead of a stream reset. Only
/// an injected reset stays an error, so the listener resets the stream.
pub struct ErrorsLayer {
    direction: Direction,
}

impl ErrorsLayer {
    pub fn new(direction: Direction) -> Self {
        Self { direction }
    }
}

impl<N: Next<Error = ProxyError>> Layer<N> for ErrorsLayer {
    type Error = ResetStream;

    async fn handle(&self, req: Req, next: &N) -> Result<Rsp, ResetStream> {
        match next.call(req).await {
            Ok(rsp) => Ok(self.guard(rsp)),
            Err(ProxyError::FaultReset) => Err(ResetStream),
            Err(e) => {
                log(&e, "request");
                Ok(response(&e))
            }
        }
    }
}

impl ErrorsLayer {
    /// Makes a gRPC response stream end with trailers should it break.
    fn guard(&self, rsp: Rsp) -> Rsp {
        if rsp.status() != StatusCode::OK
            || grpc::status_of(rsp.headers()).is_some()
            || rsp.body().is_end_stream()
        {
            return rsp;
        }
        let endpoint = match self.direction {
            Direction::Outbound => rsp.extensions().get::<ServedBy>().map(|s| s.0.clone()),
            Direction::Inbound => None,
        };
        let direction = self.direction;
        rsp.map(|inner| {
            EndWithTrailers {
                inner: Some(inner),
                direction,
                endpoint,
            }
            .boxed_unsync()
        })
    }
}

/// What broke a response stream, as a proxy error.
fn stream_error(direction: Direction, endpoint: Option<String>, e: BodyError) -> ProxyError {
    if super::is_cancellation(&e) {
        return ProxyError::Cancelled;
    }
    match direction {
        Direction::Inbound => ProxyError::LocalApp(Box::new(e)),
        Direction::Outbound => ProxyError::Upstream {
            endpoint: endpoint.unwrap_or_else(|| "unknown".into()),
            refused: false,
            source: Box::new(e),
        },
    }
}

/// A response body whose failure becomes gRPC trailers (as linkerd2-proxy does).
struct EndWithTrailers {
    inner: Option<Body>,
    direction: Direction,
    endpoint: Option<String>,
}

impl HttpBody for EndWithTrailers {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Err(e)) => {
                self.inner = None;
                let err = stream_error(self.direction, self.endpoint.take(), e);
                log(&err, "response stream");
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&err)))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::layer::{Layers, Service};

    struct Broken;

    impl Next for Broken {
        type Error = ProxyError;
        async fn call(&self, _req: Req) -> Result<Rsp, ProxyError> {
            let frames: Vec<Result<Frame<Bytes>, BodyError>> = vec![
                Ok(Frame::data(Bytes::from_static(b"part"))),
                Err(BodyError("connection reset".into())),
            ];
            let b = http_body_util::StreamBody::new(futures::stream::iter(frames));
            let mut rsp = Rsp::new(b.boxed_unsync());
            rsp.extensions_mut()
                .insert(ServedBy("10.0.0.7:4143".into()));
            Ok(rsp)
        }
    }

    struct Refuses(fn() -> ProxyError);

    impl Next for Refuses {
        type Error = ProxyError;
        async fn call(&self, _req: Req) -> Result<Rsp, ProxyError> {
            Err((self.0)())
        }
    }

    async fn call<N: Next>(n: N) -> Result<Rsp, N::Error> {
        let mut svc = Service::new(n);
        tower::Service::call(&mut svc, Req::new(body::empty())).await
    }

    #[tokio::test]
    async fn a_broken_response_stream_ends_with_trailers() {
        let stack = Layers::new()
            .push(ErrorsLayer::new(Direction::Outbound))
            .over(Broken);
        let rsp = call(stack).await.unwrap();
        let collected = rsp.into_body().collect().await.unwrap();
        let t = collected.trailers().cloned().unwrap();
        assert_eq!(grpc::status_of(&t), Some(Code::Unavailable));
        assert_eq!(t[PROXY_ERROR_HEADER], "upstream-failed");
        assert!(
            t["grpc-message"]
                .to_str()
                .unwrap()
                .contains("10.0.0.7:4143")
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"part"));
    }

    #[tokio::test]
    async fn errors_become_trailers_only_and_injected_resets_stay_resets() {
        let rsp = call(
            Layers::new()
                .push(ErrorsLayer::new(Direction::Inbound))
                .over(Refuses(|| ProxyError::BulkheadFull("echo".into()))),
        )
        .await
        .unwrap();
        assert_eq!(
            grpc::status_of(rsp.headers()),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "bulkhead-full");
        let reset = call(
            Layers::new()
                .push(ErrorsLayer::new(Direction::Inbound))
                .over(Refuses(|| ProxyError::FaultReset)),
        )
        .await;
        assert!(reset.is_err());
    }

    #[tokio::test]
    async fn browsers_see_status_reason_and_request_id_only() {
        let denied = ProxyError::Denied {
            caller: "spiffe://tally.local/ns/t/sa/a".into(),
            path: "/x.Y/Z".into(),
        };
        let rsp = for_browser(response(&denied), "abc123");
        let h = rsp.headers();
        assert_eq!(grpc::status_of(h), Some(Code::PermissionDenied));
        assert_eq!(h[PROXY_ERROR_HEADER], "unauthorized");
        assert_eq!(h["grpc-message"], "call not allowed (request id abc123)");

        // In trailers, after a started stream.
        let stack = Layers::new()
            .push(ErrorsLayer::new(Direction::Outbound))
            .over(Broken);
        let rsp = for_browser(call(stack).await.unwrap(), "abc123");
        let t = rsp.into_body().collect().await.unwrap().trailers().cloned();
        let t = t.unwrap();
        let msg = t["grpc-message"].to_str().unwrap();
        assert!(!msg.contains("10.0.0.7"), "{msg}");
        assert!(msg.contains("abc123"), "{msg}");
    }
}
