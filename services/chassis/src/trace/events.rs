//! Spans for the event bus: a short producer span when an event is written
//! to the outbox (its context is what the envelope's `traceparent` stores),
//! and a consumer span per delivery, a child of and linked to that producer
//! span, so `tally traces` shows the consumer under the call that caused it.

use super::propagate;
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Records that `event_type` is published now (into the outbox, under the
/// current span) and returns the `traceparent` to store in its envelope;
/// empty when tracing is off or the current call is not sampled.
pub fn publish(event_type: &str) -> String {
    let span = tracing::info_span!(
        "event.publish",
        otel.name = format!("publish {event_type}"),
        otel.kind = "producer",
        messaging.operation = "publish",
        messaging.message.type = event_type,
    );
    propagate::traceparent_of(&span)
}

/// The span one consumer runs a delivery in: a child of the producer span
/// named by `traceparent` (when there is one) with a link to it.
pub fn consume(
    consumer: &str,
    event_type: &str,
    event_id: &str,
    traceparent: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "event.consume",
        otel.name = format!("consume {event_type}"),
        otel.kind = "consumer",
        messaging.operation = "process",
        messaging.consumer.group.name = consumer,
        messaging.message.id = event_id,
    );
    let producer = propagate::from_traceparent(traceparent);
    let producer_span = producer.span().span_context().clone();
    if producer_span.is_valid() {
        let _ = span.set_parent(producer);
        span.add_link(producer_span);
    }
    span
}
