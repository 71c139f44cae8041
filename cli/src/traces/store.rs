//! Recent traces in memory, bounded: at most [`MAX_TRACES`] traces (the oldest goes
//! first) of at most [`MAX_SPANS_PER_TRACE`] spans each, attributes capped in number and
//! length. Spans arrive as OTLP `ResourceSpans` and are kept in a flat, printable form.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Most traces kept.
pub const MAX_TRACES: usize = 500;
/// Most spans kept per trace; later ones are dropped.
pub const MAX_SPANS_PER_TRACE: usize = 2000;
/// Most attributes (and events, and links) kept per span.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute value kept, in bytes.
pub const MAX_VALUE_LEN: usize = 256;

/// One finished span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The trace it belongs to, lowercase hex.
    pub trace_id: String,
    /// Its own id, lowercase hex.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The operation, e.g. `tally.poll.v1.PollService/Vote` (truncated to [`MAX_VALUE_LEN`]).
    pub name: String,
    /// The `service.name` of the process that recorded it.
    pub service: String,
    /// `server`, `client`, `producer`, `consumer`, `internal` or `unspecified`.
    pub kind: String,
    /// When it started, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// When it ended, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// `ok`, `error` or `unset`.
    pub status: String,
    /// The error description that came with the status, if any.
    pub status_message: String,
    /// Key and value text of its attributes, at most [`MAX_ATTRIBUTES`].
    pub attributes: Vec<(String, String)>,
    /// Names of the events recorded in it, at most [`MAX_ATTRIBUTES`].
    pub events: Vec<String>,
    /// `(trace_id, span_id)` of each linked span.
    pub links: Vec<(String, String)>,
}

impl SpanRecord {
    /// How long it ran, in milliseconds (0 if the clock went backwards).
    pub fn duration_ms(&self) -> f64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos) as f64 / 1e6
    }
}

/// A line of `tally traces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// The trace's id, lowercase hex.
    pub trace_id: String,
    /// Name of its first root span (`?` while no root has arrived).
    pub root: String,
    /// The services that recorded its spans, sorted, each once.
    pub services: Vec<String>,
    /// Spans received for it.
    pub spans: usize,
    /// Start of its earliest span, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// From its earliest start to its latest end, in milliseconds.
    pub duration_ms: f64,
    /// Spans whose status is `error`.
    pub errors: usize,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<String, Vec<SpanRecord>>,
    /// Trace ids, oldest first.
    order: VecDeque<String>,
}

/// The store; shared by the OTLP service and the query API.
#[derive(Default)]
pub struct TraceStore {
    inner: Mutex<Inner>,
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_VALUE_LEN {
        let mut end = MAX_VALUE_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn value_text(v: &Option<AnyValue>) -> String {
    let text = match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(_) => "…".to_string(),
        None => String::new(),
    };
    truncate(text)
}

fn attributes(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| (truncate(kv.key.clone()), value_text(&kv.value)))
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn status_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

/// Flattens one OTLP export into span records.
pub fn records(resource_spans: &[ResourceSpans]) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for rs in resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| value_text(&kv.value))
            .unwrap_or_else(|| "unknown".to_string());
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let status = s.status.as_ref();
                out.push(SpanRecord {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    name: truncate(s.name.clone()),
                    service: service.clone(),
                    kind: kind_name(s.kind).to_string(),
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    status: status_name(status.map_or(0, |st| st.code)).to_string(),
                    status_message: truncate(
                        status.map(|st| st.message.clone()).unwrap_or_default(),
                    ),
                    attributes: attributes(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .take(MAX_ATTRIBUTES)
                        .map(|e| {
                            let attrs: Vec<String> = attributes(&e.attributes)
                                .into_iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect();
                            truncate(format!("{} {}", e.name, attrs.join(" ")).trim().to_string())
                        })
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .take(MAX_ATTRIBUTES)
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    out
}

impl TraceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds spans, evicting the oldest traces beyond [`MAX_TRACES`].
    pub fn insert(&self, spans: Vec<SpanRecord>) {
        let mut inner = self.lock();
        for span in spans {
            let Inner { traces, order } = &mut *inner;
            let trace = match traces.get_mut(&span.trace_id) {
                Some(t) => t,
                None => {
                    while order.len() >= MAX_TRACES {
                        if let Some(old) = order.pop_front() {
                            traces.remove(&old);
                        }
                    }
                    order.push_back(span.trace_id.clone());
                    traces.entry(span.trace_id.clone()).or_default()
                }
            };
            if trace.len() < MAX_SPANS_PER_TRACE {
                trace.push(span);
            }
        }
    }

    /// The spans of one trace (a unique id prefix is enough), in start order.
    pub fn trace(&self, id: &str) -> Option<Vec<SpanRecord>> {
        let inner = self.lock();
        let id = id.to_ascii_lowercase();
        let mut found = inner.traces.iter().filter(|(k, _)| k.starts_with(&id));
        let (_, spans) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        let mut spans = spans.clone();
        spans.sort_by_key(|s| s.start_unix_nanos);
        Some(spans)
    }

    /// Every trace kept, newest first.
    pub fn summaries(&self) -> Vec<TraceSummary> {
        let inner = self.lock();
        let mut out: Vec<TraceSummary> = inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.traces.get(id).map(|spans| summary(id, spans)))
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.start_unix_nanos));
        out
    }
}

fn summary(id: &str, spans: &[SpanRecord]) -> TraceSummary {
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_unix_nanos)
        .max()
        .unwrap_or(start);
    let root = crate::traces::tree::roots(spans)
        .first()
        .map_or_else(|| "?".to_string(), |s| s.name.clone());
    let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    TraceSummary {
        trace_id: id.to_string(),
        root,
        services,
        spans: spans.len(),
        start_unix_nanos: start,
        duration_ms: end.saturating_sub(start) as f64 / 1e6,
        errors: spans.iter().filter(|s| s.status == "error").count(),
    }
}

#[cfg(test)]
pub(crate) fn span(
    trace: &str,
    id: &str,
    parent: &str,
    name: &str,
    start: u64,
    end: u64,
) -> SpanRecord {
    SpanRecord {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.into(),
        name: name.into(),
        service: "svc".into(),
        kind: "server".into(),
        start_unix_nanos: start,
        end_unix_nanos: end,
        status: "unset".into(),
        status_message: String::new(),
        attributes: vec![],
        events: vec![],
        links: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_traces_are_evicted_beyond_the_bound() {
        let store = TraceStore::new();
        for i in 0..MAX_TRACES + 3 {
            store.insert(vec![span(
                &format!("{i:032x}"),
                "01",
                "",
                "root",
                i as u64,
                i as u64 + 1,
            )]);
        }
        let all = store.summaries();
        assert_eq!(all.len(), MAX_TRACES);
        assert_eq!(all[0].trace_id, format!("{:032x}", MAX_TRACES + 2));
        assert!(store.trace(&format!("{:032x}", 0)).is_none());
        assert!(store.trace(&format!("{:032x}", 3)).is_some());
    }

    #[test]
    fn spans_per_trace_are_bounded_and_prefixes_find_a_trace() {
        let store = TraceStore::new();
        let t = "ab".repeat(16);
        let spans = (0..MAX_SPANS_PER_TRACE + 5)
            .map(|i| span(&t, &format!("{i:016x}"), "", "s", 0, 1))
            .collect();
        store.insert(spans);
        assert_eq!(
            store.trace("abab").map(|s| s.len()),
            Some(MAX_SPANS_PER_TRACE)
        );
        store.insert(vec![span(&"ac".repeat(16), "01", "", "s", 0, 1)]);
        // "a" is ambiguous now.
        assert!(store.trace("a").is_none());
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(MAX_VALUE_LEN));
        assert!(s.len() <= MAX_VALUE_LEN && s.chars().all(|c| c == 'é'));
    }
}
