//! One client span per outgoing gRPC call, whose context goes out as
//! `traceparent`/`tracestate`, so the callee's spans (through the sidecars)
//! join the caller's trace.

use super::propagate;
use http::{Request, Response};
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Adds [`ClientTraceService`] around a channel.
#[derive(Debug, Clone, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientTraceService { inner }
    }
}

/// Wraps each call in a `grpc.client` span and injects its context.
#[derive(Debug, Clone)]
pub struct ClientTraceService<S> {
    inner: S,
}

impl<S> ClientTraceService<S> {
    /// Traces the calls made through `inner` (e.g. a generated client's channel).
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, RB> Service<Request<B>> for ClientTraceService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = req.uri().path().trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
        );
        propagate::inject(&span.context(), req.headers_mut());
        let fut = {
            let _guard = span.enter();
            self.inner.call(req)
        };
        Box::pin(fut.instrument(span))
    }
}

/// A traced transport over `channel` for clients written against
/// `tally_authn::GrpcTransport` (the user directory).
pub fn transport(channel: tonic::transport::Channel) -> tally_authn::GrpcTransport {
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(ClientTraceLayer)
            .map_err(|e: tonic::transport::Error| tally_authn::TransportError(Box::new(e)))
            .service(channel),
    )
}
