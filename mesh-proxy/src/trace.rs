//! Distributed tracing in the proxy: one OpenTelemetry span per hop (gateway, outbound,
//! inbound), a child of the caller's W3C `traceparent`/`tracestate`, whose own context goes
//! on downstream in those headers. The span ends when the response stream ends and carries
//! the gRPC status, the proxy error reason (`breaker-open`, `queue-full`, ... as an event)
//! and the retry count. Spans are exported over OTLP/gRPC to `[telemetry] otlp_endpoint`.
//!
//! Off (no endpoint) the layer is one branch on an `Option` per call: nothing is allocated.
//! The gateway drops trace headers from untrusted callers (`gateway::edge`), so a call from
//! outside starts a new trace here; a trusted proxy's trace is continued.

use crate::body::{self, End};
use crate::config::TelemetryConfig;
use crate::layer::{Layer, Next};
use crate::observe::CallInfo;
use crate::{Direction, Req, Rsp};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

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

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(n, v);
        }
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

    /// Starts the hop's span; returns its context and the gateway's, when there is one.
    fn start(&self, tracer: &SdkTracer, req: &mut Req) -> (Context, Option<Context>) {
        let propagator = TraceContextPropagator::new();
        let mut parent = propagator.extract(&Headers(req.headers()));
        let method = req.uri().path().trim_start_matches('/').to_string();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let through_gateway = self.direction == Direction::Outbound
            && req
                .extensions()
                .get::<crate::gateway::edge::RequestId>()
                .is_some();
        let mut gateway = None;
        if through_gateway {
            let span = tracer
                .span_builder(format!("gateway {method}"))
                .with_kind(SpanKind::Server)
                .with_attributes([KeyValue::new("rpc.method", method.clone())])
                .start_with_context(tracer, &parent);
            parent = parent.with_span(span);
            gateway = Some(parent.clone());
        }
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
        propagator.inject_context(&cx, &mut HeadersMut(req.headers_mut()));
        (cx, gateway)
    }
}

/// Ends the hop's span (and the gateway's around it, when there is one).
fn finish(cx: &Context, end: End, proxy_error: Option<&str>, retries: u32) {
    let span = cx.span();
    let code = end.code();
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if retries > 0 {
        span.set_attribute(KeyValue::new("tally.proxy.retries", i64::from(retries)));
        span.add_event(
            "retried",
            vec![KeyValue::new("retries", i64::from(retries))],
        );
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
        let (cx, gateway) = self.start(tracer, &mut req);
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
                    finish(&cx, end, proxy_error.as_deref(), retries);
                    if let Some(g) = gateway {
                        finish(&g, end, None, 0);
                    }
                }))
            }
            Err(e) => {
                finish(&cx, End::Error, Some("reset"), retries);
                if let Some(g) = gateway {
                    finish(&g, End::Error, None, 0);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Records the `traceparent` each call arrived with.
    #[derive(Clone, Default)]
    struct Leaf(Arc<Mutex<Vec<Option<String>>>>);

    impl Next for Leaf {
        type Error = ();
        async fn call(&self, req: Req) -> Result<Rsp, ()> {
            let seen = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.0.lock().push(seen);
            Ok(Rsp::new(body::empty()))
        }
    }

    fn on(direction: Direction) -> TraceLayer {
        let provider = SdkTracerProvider::builder().build();
        TraceLayer {
            tracer: Some(provider.tracer("test")),
            direction,
        }
    }

    fn request(traceparent: Option<&'static str>) -> Req {
        let mut req = Req::new(body::empty());
        *req.uri_mut() = "http://polling/tally.poll.v1.PollService/CastVote"
            .parse()
            .unwrap();
        if let Some(tp) = traceparent {
            req.headers_mut()
                .insert("traceparent", HeaderValue::from_static(tp));
        }
        req
    }

    fn parts(tp: &str) -> Vec<String> {
        tp.split('-').map(str::to_string).collect()
    }

    #[tokio::test]
    async fn off_passes_calls_through_untouched() {
        let leaf = Leaf::default();
        let layer = TraceLayer {
            tracer: None,
            direction: Direction::Inbound,
        };
        layer.handle(request(Some(PARENT)), &leaf).await.unwrap();
        layer.handle(request(None), &leaf).await.unwrap();
        assert_eq!(*leaf.0.lock(), [Some(PARENT.to_string()), None]);
    }

    #[tokio::test]
    async fn a_hop_continues_the_callers_trace_with_its_own_span() {
        let leaf = Leaf::default();
        on(Direction::Inbound)
            .handle(request(Some(PARENT)), &leaf)
            .await
            .unwrap();
        let seen = leaf.0.lock()[0].clone().expect("traceparent sent on");
        let (p, s) = (parts(PARENT), parts(&seen));
        assert_eq!(s[1], p[1], "same trace");
        assert_ne!(s[2], p[2], "the proxy's own span is the parent downstream");
        assert_eq!(s[3], "01", "sampled");
    }

    #[tokio::test]
    async fn a_call_without_context_starts_its_own_trace() {
        let leaf = Leaf::default();
        let mut req = request(None);
        req.extensions_mut()
            .insert(crate::gateway::edge::RequestId(HeaderValue::from_static(
                "id",
            )));
        on(Direction::Outbound).handle(req, &leaf).await.unwrap();
        on(Direction::Outbound)
            .handle(request(None), &leaf)
            .await
            .unwrap();
        let seen = leaf.0.lock().clone();
        let a = parts(seen[0].as_deref().expect("new trace"));
        let b = parts(seen[1].as_deref().expect("new trace"));
        assert_ne!(a[1], b[1], "each call its own trace");
    }

    #[test]
    fn the_service_name_follows_the_proxy_role() {
        let mut cfg: crate::config::Config = toml::from_str(
            "[admin]\nlisten = \"127.0.0.1:9901\"\n[outbound]\nlisten = \"127.0.0.1:4140\"\n",
        )
        .unwrap();
        assert_eq!(service_name(&cfg), SERVICE_NAME);
        cfg.telemetry.service_name = Some("edge".into());
        assert_eq!(service_name(&cfg), "edge");
    }
}
