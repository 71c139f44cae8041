//! Request ids: every call carries an `x-request-id` (the caller's, or a fresh
//! UUIDv7), logged in the call's span and echoed on the response, so one id
//! follows a call through sidecars and services.

use http::{HeaderValue, Request, Response};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The header that carries the id.
pub const HEADER: &str = "x-request-id";

/// Adds [`RequestIdService`] around a service.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// Ensures each request has an id and returns it on the response.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(HEADER).filter(|v| valid(v)) {
            Some(v) => v.clone(),
            None => {
                let fresh = HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
                req.headers_mut().insert(HEADER, fresh.clone());
                fresh
            }
        };
        let span = tracing::info_span!(
            "grpc",
            request_id = id.to_str().unwrap_or(""),
            path = req.uri().path()
        );
        let fut = {
            let _guard = span.enter();
            self.inner.call(req)
        };
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(HEADER, id);
            Ok(resp)
        })
    }
}

fn valid(v: &HeaderValue) -> bool {
    let len = v.as_bytes().len();
    (1..=128).contains(&len) && v.to_str().is_ok()
}
