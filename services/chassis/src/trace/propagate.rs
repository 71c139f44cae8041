//! W3C trace context in and out of HTTP/2 headers (through
//! `opentelemetry-http`'s carriers) and event envelopes.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header that carries trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";

/// The caller's trace context from `traceparent`/`tracestate` (empty when absent or malformed).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `cx` as `traceparent`/`tracestate` (nothing when `cx` has no valid span).
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The `traceparent` of `span`, or an empty string when it is not recorded.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// The `traceparent` of the current span (empty when tracing is off).
pub fn current_traceparent() -> String {
    traceparent_of(&tracing::Span::current())
}

/// The trace context a stored `traceparent` names (empty when blank or malformed).
pub fn from_traceparent(traceparent: &str) -> Context {
    let mut carrier = HashMap::new();
    carrier.insert(TRACEPARENT.to_string(), traceparent.to_string());
    TraceContextPropagator::new().extract(&carrier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use opentelemetry::trace::TraceContextExt as _;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_round_trip_the_context() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        h.insert("tracestate", HeaderValue::from_static("a=b"));
        let cx = extract(&h);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out[TRACEPARENT], PARENT);
        assert_eq!(out["tracestate"], "a=b");
    }

    #[test]
    fn malformed_or_missing_context_is_empty() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-zz-yy-01"));
        assert!(!extract(&h).span().span_context().is_valid());
        assert!(!from_traceparent("").span().span_context().is_valid());
        assert!(from_traceparent(PARENT).span().span_context().is_valid());
        let mut out = HeaderMap::new();
        inject(&Context::new(), &mut out);
        assert!(out.is_empty());
    }
}
