//! Metric names on both sides of the dashboards: the names an endpoint's
//! exposition text exports, and the names the PromQL in `deploy/grafana/`
//! uses. A hand-written PromQL tokenizer is enough here: it drops strings,
//! label matchers, ranges and grouping clauses, and what is left that is not
//! a function, keyword or number is a metric name.

use std::collections::BTreeSet;
use std::path::Path;

/// Names Prometheus itself provides for every target.
const PROMETHEUS_NAMES: [&str; 2] = ["up", "scrape_duration_seconds"];
/// PromQL words that are not metric names.
const KEYWORDS: [&str; 12] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
];
/// Aggregation operators, which may take `by (...)` before their argument.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// Every sample name in `text`, with the suffixes its `# TYPE` implies.
pub fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The metric names one PromQL expression uses.
pub fn used(expr: &str) -> BTreeSet<String> {
    // Drop strings, then label matchers, ranges and grouping clause lists.
    let mut plain = String::new();
    let mut quote: Option<char> = None;
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth_brace += 1,
            (None, '}') => depth_brace -= 1,
            (None, '[') => depth_bracket += 1,
            (None, ']') => depth_bracket -= 1,
            (None, c) if depth_brace == 0 && depth_bracket == 0 => plain.push(c),
            (None, _) => {}
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_ascii_lowercase();
            if KEYWORDS.contains(&lower.as_str()) {
                skip_group = matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                continue;
            }
            if AGGREGATIONS.contains(&lower.as_str()) {
                continue;
            }
            skip_group = false;
            if next == Some(&'(') || word.starts_with('$') {
                continue; // a function call or a dashboard variable
            }
            out.insert(word);
        } else if c == '(' && skip_group {
            // `by (label, ...)`: labels, not metrics.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
            i += 1;
        } else {
            if !c.is_whitespace() {
                skip_group = false;
            }
            if c.is_ascii_digit() || c == '.' {
                // A number, possibly with an exponent: skip it whole.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Every dashboard in `dir` (each must be valid JSON with a title and
/// panels) with the metric names its queries use.
pub fn dashboards(dir: &Path) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        assert!(v["title"].is_string(), "{name} has no title");
        assert!(
            v["panels"].as_array().is_some_and(|p| !p.is_empty()),
            "{name} has no panels"
        );
        let mut all = Vec::new();
        exprs(&v, &mut all);
        let used: BTreeSet<String> = all.iter().flat_map(|e| used(e)).collect();
        out.push((name, used));
    }
    out.sort();
    out
}

/// Panics naming every dashboard metric not in `exported`.
pub fn check_dashboards(dir: &Path, exported: &BTreeSet<String>) {
    let mut missing = Vec::new();
    for (file, used) in dashboards(dir) {
        for name in used {
            if !exported.contains(&name) && !PROMETHEUS_NAMES.contains(&name.as_str()) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboards use metric names the platform does not export:\n{}",
        missing.join("\n")
    );
}

#[test]
fn promql_names_are_told_from_functions_labels_and_numbers() {
    let got = used(
        "histogram_quantile(0.99, sum by (le, grpc_service) (rate(tally_grpc_server_handling_seconds_bucket{grpc_service=~\"$service\"}[$__rate_interval]))) / on (x) group_left tally_serving > 1e3",
    );
    let want: BTreeSet<String> = ["tally_grpc_server_handling_seconds_bucket", "tally_serving"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
}

#[test]
fn exposition_names_include_type_suffixes() {
    let names = exported(
        "# TYPE a counter\na_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE g gauge\n# EOF\n",
    );
    for n in ["a_total", "h_bucket", "h_count", "g"] {
        assert!(names.contains(n), "{n}");
    }
}

/// Every family name registered in the Rust sources under `dir` (a call
/// `register("name", ...)`, with `prefix` when the registry adds one), with
/// the sample suffixes any metric type may add. Families with no series yet
/// (no breaker opened, no saga ended) are absent from a live `/metrics`, so
/// the dashboards are checked against this listing as well.
pub fn registered(dir: &Path, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for chunk in text.split("register(").skip(1) {
                let Some(rest) = chunk.trim_start().strip_prefix('"') else {
                    continue;
                };
                let Some((name, _)) = rest.split_once('"') else {
                    continue;
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    continue;
                }
                let full = if name.starts_with("tally_") {
                    name.to_string()
                } else {
                    format!("{prefix}{name}")
                };
                for suffix in ["", "_total", "_bucket", "_sum", "_count", "_created"] {
                    names.insert(format!("{full}{suffix}"));
                }
            }
        }
    }
    names
}
