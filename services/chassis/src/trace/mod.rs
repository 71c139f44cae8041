//! Distributed tracing: OpenTelemetry spans exported over OTLP/gRPC, W3C
//! `traceparent`/`tracestate` propagation on every gRPC call, and the span
//! helpers the rest of the chassis uses (server and client calls, store
//! calls, event publish and consume).
//!
//! Services keep writing `tracing` spans; when `[telemetry] otlp_endpoint`
//! is set, `tracing-opentelemetry` turns them into OpenTelemetry spans and a
//! batch exporter ships them. When it is unset nothing is exported and no
//! exporter runs.

pub mod client;
pub mod events;
pub mod propagate;
pub mod saga;
pub mod server;
pub mod store;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::Deserialize;
use std::sync::OnceLock;
use std::time::Duration;

/// Default share of new traces recorded (`[telemetry] trace_sample_ratio`);
/// a call that arrives with a sampled parent is always recorded.
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
/// How often finished spans are sent to the collector.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Most finished spans waiting for export; more are dropped (and counted by the SDK).
pub const MAX_QUEUED_SPANS: usize = 4096;
/// Time allowed for one export call.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tracing part of `[telemetry]`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC collector, e.g. `"http://127.0.0.1:4317"`; no export when unset.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces to record, 0.0..=1.0 (parent-based: a caller's
    /// sampling decision wins). Default [`DEFAULT_SAMPLE_RATIO`].
    #[serde(default)]
    pub trace_sample_ratio: Option<f64>,
}

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The configured sample ratio is outside 0.0..=1.0.
    #[error("`telemetry.trace_sample_ratio` must be between 0 and 1, got {0}")]
    Ratio(f64),
    /// The OTLP exporter could not be built for the configured endpoint.
    #[error("cannot build the OTLP exporter for `{endpoint}`: {message}")]
    Exporter {
        /// The collector endpoint from `[telemetry] otlp_endpoint`.
        endpoint: String,
        /// Why the exporter builder refused it.
        message: String,
    },
}

/// The provider of this process, kept so the last spans are flushed at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The sampler for `ratio`: parent-based, ratio for new traces.
pub fn sampler(ratio: f64) -> Result<Sampler, TraceError> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TraceError::Ratio(ratio));
    }
    Ok(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        ratio,
    ))))
}

/// Builds the tracer provider exporting to `settings.otlp_endpoint`, or `None`
/// when no endpoint is set. Must run inside a Tokio runtime (the OTLP channel
/// is created there; it connects lazily, so no collector is needed to start).
pub fn provider(
    service: &str,
    settings: &TraceSettings,
) -> Result<Option<SdkTracerProvider>, TraceError> {
    let Some(endpoint) = settings.otlp_endpoint.as_deref() else {
        return Ok(None);
    };
    let sampler = sampler(settings.trace_sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TraceError::Exporter {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(EXPORT_INTERVAL)
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build(),
    ))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`,
/// and remembers the provider for [`flush`].
pub fn layer<S>(
    service: &str,
    provider: SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer(service.to_string());
    let _ = PROVIDER.set(provider);
    // Spans carry what an operator reads; source locations, thread ids and
    // busy/idle times stay out of them.
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
}

/// Exports the spans still queued; call before the process exits.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_outside_zero_to_one_is_refused() {
        assert!(sampler(1.5).is_err());
        assert!(sampler(-0.1).is_err());
        assert!(sampler(0.25).is_ok());
    }

    #[tokio::test]
    async fn no_endpoint_means_no_provider() {
        let settings = TraceSettings::default();
        assert!(provider("svc", &settings).ok().flatten().is_none());
        let on = TraceSettings {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            trace_sample_ratio: None,
        };
        assert!(provider("svc", &on).ok().flatten().is_some());
    }
}
