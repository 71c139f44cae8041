//! A trace as an indented tree: each span under its parent, siblings in start order,
//! with its service, duration, status and links. Spans whose parent is not in the trace
//! (not exported, or still running) are printed as roots.

use super::store::{SpanRecord, TraceSummary};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// Deepest nesting printed; deeper spans are printed at this depth.
pub const MAX_DEPTH: usize = 64;

/// Spans without a parent in `spans`, in start order.
pub fn roots(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut roots: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
        .collect();
    roots.sort_by_key(|s| s.start_unix_nanos);
    roots
}

fn line(out: &mut String, span: &SpanRecord, depth: usize, names: &HashMap<&str, &str>) {
    let indent = "  ".repeat(depth.min(MAX_DEPTH));
    let _ = write!(
        out,
        "{indent}{}  [{}] {:.2} ms",
        span.name,
        span.service,
        span.duration_ms()
    );
    if span.status == "error" {
        let _ = write!(out, "  ERROR {}", span.status_message);
    }
    for (trace, id) in &span.links {
        let target = names.get(id.as_str()).copied().unwrap_or("another trace");
        let _ = write!(out, "  (linked to {target} {}/{})", short(trace), short(id));
    }
    out.push('\n');
    for event in &span.events {
        let _ = writeln!(out, "{indent}  · {event}");
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The tree of one trace's spans.
pub fn render(spans: &[SpanRecord]) -> String {
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    for s in spans {
        children
            .entry(s.parent_span_id.as_str())
            .or_default()
            .push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nanos);
    }
    let names: HashMap<&str, &str> = spans
        .iter()
        .map(|s| (s.span_id.as_str(), s.name.as_str()))
        .collect();
    let mut out = String::new();
    // Depth-first with an explicit stack; a span is printed once even if ids repeat.
    let mut seen: HashSet<&str> = HashSet::new();
    // Roots first, then anything a parent cycle left unreached.
    let mut by_start: Vec<&SpanRecord> = spans.iter().collect();
    by_start.sort_by_key(|s| s.start_unix_nanos);
    let starts = roots(spans).into_iter().chain(by_start);
    for start in starts {
        let mut stack = vec![(start, 0usize)];
        while let Some((span, depth)) = stack.pop() {
            if !seen.insert(span.span_id.as_str()) {
                continue;
            }
            line(&mut out, span, depth, &names);
            if let Some(kids) = children.get(span.span_id.as_str()) {
                stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
            }
        }
    }
    out
}

/// The lines of `tally traces`.
pub fn render_list(traces: &[TraceSummary]) -> String {
    let mut out = String::new();
    for t in traces {
        let _ = write!(
            out,
            "{}  {:>9.2} ms  {:>3} spans  {}  [{}]",
            t.trace_id,
            t.duration_ms,
            t.spans,
            t.root,
            t.services.join(", ")
        );
        if t.errors > 0 {
            let _ = write!(out, "  {} error(s)", t.errors);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::store::span;

    #[test]
    fn children_are_indented_under_their_parent_in_start_order() {
        let t = "t";
        let mut consumer = span(t, "05", "04", "consume PollVoted", 50, 60);
        consumer.links.push(("t".into(), "04".into()));
        let spans = vec![
            span(t, "02", "01", "outbound CastVote", 1_000_000, 9_000_000),
            span(t, "01", "", "gateway CastVote", 0, 10_000_000),
            span(t, "04", "03", "publish PollVoted", 40, 41),
            span(t, "03", "02", "inbound CastVote", 2_000_000, 8_000_000),
            consumer,
            span(t, "06", "01", "later sibling", 9_500_000, 9_600_000),
            span(t, "07", "99", "orphan", 5, 6),
        ];
        let text = render(&spans);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "gateway CastVote  [svc] 10.00 ms");
        assert_eq!(lines[1], "  outbound CastVote  [svc] 8.00 ms");
        assert_eq!(lines[2], "    inbound CastVote  [svc] 6.00 ms");
        assert!(lines[3].starts_with("      publish PollVoted"));
        assert!(lines[4].starts_with("        consume PollVoted"));
        assert!(lines[4].contains("linked to publish PollVoted"));
        assert!(lines[5].starts_with("  later sibling"));
        assert!(lines[6].starts_with("orphan"));
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn a_span_naming_itself_as_parent_is_printed_once() {
        let spans = vec![span("t", "01", "01", "loop", 0, 1)];
        assert_eq!(render(&spans).lines().count(), 1);
    }
}
