//! Spans for sagas: one per saga run (under the call that started it, when
//! there is one) and one per step inside it.

/// The span a saga run executes in; its parent is the current span.
pub fn run(saga: &'static str, id: &str) -> tracing::Span {
    tracing::info_span!(
        "saga",
        otel.name = format!("saga {saga}"),
        saga.name = saga,
        saga.id = id,
    )
}

/// The span of one step of the current saga run.
pub fn step(step: &str) -> tracing::Span {
    tracing::info_span!(
        "saga.step",
        otel.name = format!("saga step {step}"),
        saga.step = step
    )
}
