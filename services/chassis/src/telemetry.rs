//! Structured logs through `tracing`: pretty for people, JSON for machines;
//! plus, when an OTLP endpoint is configured, the OpenTelemetry layer that
//! exports the same spans as traces (see `crate::trace`).

use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber once, without trace export; later calls are ignored.
///
/// `RUST_LOG` takes precedence over `level`; the fallback is `info`.
pub fn init(service: &str, format: LogFormat, level: Option<&str>) {
    init_with_traces(service, format, level, None);
}

/// [`init`], exporting spans through `provider` when one is given.
pub fn init_with_traces(
    service: &str,
    format: LogFormat,
    level: Option<&str>,
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    // The request-id span only labels log lines; the server span already covers the call.
    let otel = provider.map(|p| {
        crate::trace::layer(service, p).with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.name() != "grpc"
        }))
    });
    let result = tracing_subscriber::registry()
        .with(otel)
        .with(fmt)
        .with(filter)
        .try_init();
    if result.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
