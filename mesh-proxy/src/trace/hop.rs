//! The hop's span as a request extension, so the layers inside the trace layer (retry,
//! bulkhead, the balancer's breaker) add their decisions to it as span events. The extension
//! is present only while the span is recorded: an untraced or unsampled call pays one failed
//! extension lookup per decision and allocates nothing.

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};

/// Request extension: the recorded span of this hop.
#[derive(Clone)]
pub struct HopSpan(pub(super) Context);

/// Event names and attribute keys, shared with the tests that read them back.
pub mod names {
    /// One per attempt the retry layer made: `attempt`, `outcome`, `next`, `backoff_ms`.
    pub const ATTEMPT: &str = "retry attempt";
    /// One per endpoint pick: `decision` (`admitted`/`rejected`), `state`, `endpoint`.
    pub const BREAKER: &str = "breaker";
    /// One per bulkhead check: `decision` (`admitted`/`rejected`), `in_flight`, `limit`.
    pub const BULKHEAD: &str = "bulkhead";
    /// Gateway authentication: `outcome` (`ok`/`refused`), `reason`.
    pub const AUTHENTICATE: &str = "authenticate";
    /// Gateway rate limiting: `outcome` (`admitted`/`limited`), `scope`.
    pub const RATE_LIMIT: &str = "rate limit";
}

/// Adds event `name` to the recorded hop span of the request with `extensions`, if any;
/// `attributes` is only called when there is one.
pub fn event(
    extensions: &http::Extensions,
    name: &'static str,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) {
    if let Some(hop) = extensions.get::<HopSpan>() {
        hop.0.span().add_event(name, attributes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    #[test]
    fn without_a_recorded_span_attributes_are_never_built() {
        let ext = http::Extensions::new();
        event(&ext, names::BULKHEAD, || panic!("built for nothing"));
    }

    #[test]
    fn with_a_recorded_span_the_event_is_added() {
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("test");
        let cx = Context::new().with_span(tracer.start("hop"));
        let mut ext = http::Extensions::new();
        ext.insert(HopSpan(cx));
        let mut built = false;
        event(&ext, names::BULKHEAD, || {
            built = true;
            vec![KeyValue::new("decision", "admitted")]
        });
        assert!(built);
    }
}
