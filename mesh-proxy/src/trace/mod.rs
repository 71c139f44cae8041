//! Distributed tracing in the proxy: one OpenTelemetry span per hop (gateway, outbound,
//! inbound), a child of the caller's W3C `traceparent`/`tracestate`, whose own context goes
//! on downstream in those headers. The span ends when the response stream ends and carries
//! the gRPC status, the proxy error reason (`breaker-open`, `queue-full`, ... as an event)
//! and the retry count; the layers inside add their decisions as events (see [`hop`]). The
//! gateway's span starts before authentication and rate limiting ([`GatewaySpan`]), so a
//! refused call is traced too. Spans are exported over OTLP/gRPC to `[telemetry] otlp_endpoint`.
//!
//! Off (no endpoint) the layer is one branch on an `Option` per call: nothing is allocated.
//! The gateway drops trace headers from untrusted callers (`gateway::edge`), so a call from
//! outside starts a new trace here; a trusted proxy's trace is continued.

use crate::body::{self, End};
use crate::config::TelemetryConfig;
use crate::layer::{Layer, Next};
use crate::observe::CallInfo;
use crate::{Direction, Req, Rsp};
pub use hop::{HopSpan, event, names};
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod hop;

/// Share of new traces recorded when `trace_sample_ratio` is unset.
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
/// How often finished spans are sent to the collector.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Most finished spans waiting for export; more are dropped.
pub const MAX_QUEUED_SPANS: usize = 4096;
/// Time allowed for one export call.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The `service.name` of proxy spans.
pub const SERVICE_NAME: &str = "tally-proxy";

/// The tracer of this process, when tracing is on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Flushes the spans still queued when dropped (hold it for the life of the proxy).
pub struct Flush(Option<SdkTracerProvider>);

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// Starts the exporter when `cfg` names an endpoint; call inside the runtime, before the
/// stacks are built. `proxy` names this proxy in the spans' `service.name`.
pub fn init(cfg: &TelemetryConfig, proxy: &str) -> Flush {
    let Some(endpoint) = cfg.otlp_endpoint.as_deref() else {
        return Flush(None);
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "cannot export traces; tracing is off");
            return Flush(None);
        }
    };
    let ratio = cfg.trace_sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(EXPORT_INTERVAL)
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(proxy.to_string())
                .build(),
        )
        .build();
    let _ = TRACER.set(provider.tracer(SERVICE_NAME));
    tracing::info!(endpoint, ratio, "exporting traces");
    Flush(Some(provider))
}

/// The `service.name` of this proxy's spans: configured, else the gateway's or the
/// sidecar's of the service it fronts.
pub fn service_name(cfg: &crate::config::Config) -> String {
    if let Some(name) = &cfg.telemetry.service_name {
        return name.clone();
    }
    match (&cfg.gateway, &cfg.identity) {
        (Some(_), _) => "tally-gateway".to_string(),
        (None, Some(id)) => format!("{}-sidecar", id.service),
        (None, None) => SERVICE_NAME.to_string(),
    }
}

/// The trace layer of one side of the proxy.
pub struct TraceLayer {
    tracer: Option<SdkTracer>,
    direction: Direction,
}

impl TraceLayer {
    /// Traces calls when [`init`] turned tracing on; otherwise passes them through.
    pub fn new(direction: Direction) -> Self {
        Self {
            tracer: TRACER.get().cloned(),
            direction,
        }
    }

    /// Starts the hop's span, a child of the gateway's span when the gateway started one,
    /// else of the caller's `traceparent`; sends its context on and, while it is recorded,
    /// hands it to the inner layers as a [`HopSpan`].
    fn start(&self, tracer: &SdkTracer, req: &mut Req) -> Context {
        let propagator = TraceContextPropagator::new();
        let parent = match req.extensions().get::<GatewaySpan>() {
            Some(g) => g.0.clone(),
            None => propagator.extract(&HeaderExtractor(req.headers())),
        };
        let method = req.uri().path().trim_start_matches('/').to_string();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (name, kind) = match self.direction {
            Direction::Outbound => ("outbound", SpanKind::Client),
            Direction::Inbound => ("inbound", SpanKind::Server),
        };
        let span = tracer
            .span_builder(format!("{name} {method}"))
            .with_kind(kind)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.method", method),
                KeyValue::new("server.address", authority),
                KeyValue::new("tally.proxy.direction", self.direction.as_str()),
            ])
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        propagator.inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        if cx.span().is_recording() {
            req.extensions_mut().insert(HopSpan(cx.clone()));
        }
        cx
    }
}

/// Request extension: the gateway's span, the parent of the outbound hop it leads to.
#[derive(Clone)]
pub struct GatewaySpan(Context);

impl GatewaySpan {
    /// Starts the span of one gateway call (`method` is the gRPC path without its leading
    /// `/`), a child of the caller's trace context when the edge kept one (a trusted proxy's),
    /// else the root of a new trace. `None` when tracing is off.
    pub fn start(headers: &HeaderMap, method: &str) -> Option<Self> {
        let tracer = TRACER.get()?;
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = tracer
            .span_builder(format!("gateway {method}"))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("rpc.method", method.to_string())])
            .start_with_context(tracer, &parent);
        Some(Self(parent.with_span(span)))
    }

    /// Adds an event when the span is recorded; `attributes` runs only then.
    pub fn event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        let span = self.0.span();
        if span.is_recording() {
            span.add_event(name, attributes());
        }
    }

    /// Ends the span with the call's status (`reason` names a refusal the gateway made).
    pub fn end(&self, code: crate::grpc::Code, reason: Option<&str>) {
        finish(&self.0, code, reason, 0);
    }
}

/// Ends a span with the call's status, its proxy error reason and retry count.
fn finish(cx: &Context, code: crate::grpc::Code, proxy_error: Option<&str>, retries: u32) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if retries > 0 {
        span.set_attribute(KeyValue::new("tally.proxy.retries", i64::from(retries)));
    }
    if let Some(reason) = proxy_error {
        span.add_event(
            "proxy decision",
            vec![KeyValue::new("tally.proxy.error", reason.to_string())],
        );
    }
    if code != crate::grpc::Code::Ok {
        span.set_status(Status::error(code.name()));
    }
    span.end();
}

impl<N: Next> Layer<N> for TraceLayer {
    type Error = N::Error;

    async fn handle(&self, mut req: Req, next: &N) -> Result<Rsp, N::Error> {
        let Some(tracer) = &self.tracer else {
            return next.call(req).await;
        };
        let cx = self.start(tracer, &mut req);
        let info = req.extensions().get::<CallInfo>().cloned();
        let result = next.call(req).await;
        let retries = info.map_or(0, |i| i.retries.load(Ordering::Relaxed));
        match result {
            Ok(rsp) => {
                let proxy_error = rsp
                    .headers()
                    .get(crate::defaults::PROXY_ERROR_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(body::on_end(rsp, move |end: End| {
                    finish(&cx, end.code(), proxy_error.as_deref(), retries);
                }))
            }
            Err(e) => {
                finish(&cx, End::Error.code(), Some("reset"), retries);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
