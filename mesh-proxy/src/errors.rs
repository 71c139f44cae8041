//! The one place proxy errors become gRPC: a trailers-only response (HTTP 200, `grpc-status`,
//! `grpc-message`) plus `tally-proxy-error: <reason>`. Only an injected reset stays an error,
//! so the listener resets the stream.

use crate::defaults::PROXY_ERROR_HEADER;
use crate::{BoxFuture, ProxyError, Req, Rsp, grpc};
use http::HeaderValue;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// Tells the HTTP/2 server to reset the stream instead of answering.
#[derive(Debug, thiserror::Error)]
#[error("stream reset by fault injection")]
pub struct ResetStream;

#[derive(Clone, Default)]
pub struct ErrorsLayer;

impl<S> Layer<S> for ErrorsLayer {
    type Service = Errors<S>;
    fn layer(&self, inner: S) -> Errors<S> {
        Errors { inner }
    }
}

#[derive(Clone)]
pub struct Errors<S> {
    inner: S,
}

/// Builds the response a caller sees for a proxy error.
pub fn to_response(e: &ProxyError) -> Rsp {
    let mut rsp = grpc::trailers_only(e.code(), &e.to_string());
    rsp.headers_mut()
        .insert(PROXY_ERROR_HEADER, HeaderValue::from_static(e.reason()));
    rsp
}

impl<S> Service<Req> for Errors<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Rsp;
    type Error = ResetStream;
    type Future = BoxFuture<Result<Rsp, ResetStream>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResetStream>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            match inner.oneshot(req).await {
                Ok(rsp) => Ok(rsp),
                Err(ProxyError::FaultReset) => Err(ResetStream),
                Err(e) => {
                    if matches!(
                        e,
                        ProxyError::Upstream { .. }
                            | ProxyError::LocalApp(_)
                            | ProxyError::Connect { .. }
                    ) {
                        tracing::warn!(error = %e, detail = ?e, reason = e.reason(), "call failed in the proxy");
                    } else {
                        tracing::debug!(error = %e, reason = e.reason(), "proxy error");
                    }
                    Ok(to_response(&e))
                }
            }
        })
    }
}
