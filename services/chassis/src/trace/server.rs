//! One server span per incoming gRPC call, a child of the caller's W3C trace
//! context, so the handler's own spans (store calls, outgoing calls, event
//! publishes) nest under it.

use super::propagate;
use http::{Request, Response};
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Adds [`ServerTraceService`] around a tonic server.
#[derive(Debug, Clone, Default)]
pub struct ServerTraceLayer;

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTraceService { inner }
    }
}

/// Runs each call inside a `grpc.server` span parented by the caller's context.
#[derive(Debug, Clone)]
pub struct ServerTraceService<S> {
    inner: S,
}

/// Services whose calls are probes and tooling, not work: no span, so health checks
/// every few seconds do not crowd out the traces of real calls.
const UNTRACED_PREFIXES: [&str; 2] = ["/grpc.health.v1.", "/grpc.reflection."];

/// The span of one server call for `path` (`/pkg.Service/Method`).
pub fn server_span(path: &str) -> tracing::Span {
    if UNTRACED_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "grpc.server",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

impl<S, B, RB> Service<Request<B>> for ServerTraceService<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let span = server_span(req.uri().path());
        let _ = span.set_parent(propagate::extract(req.headers()));
        let fut = {
            let _guard = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let rsp = fut.await?;
                // Trailers-only answers (errors) carry the status in the headers.
                if let Some(code) = rsp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                {
                    tracing::Span::current().record("rpc.grpc.status_code", code);
                }
                Ok(rsp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_reflection_get_no_span() {
        assert!(server_span("/grpc.health.v1.Health/Check").is_none());
        assert!(server_span("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").is_none());
    }
}
