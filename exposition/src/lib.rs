//! The Prometheus text format (0.0.4) for callers that ask for it with
//! `Accept: text/plain`, such as `promtool check metrics`: prometheus-client
//! writes only OpenMetrics, whose counter families are named without the
//! `_total` their samples carry, and which ends with `# EOF`. The services'
//! chassis and the proxy both serve `/metrics` through it; it is its own
//! crate because the proxy does not depend on the chassis.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// Content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when the `Accept` header asks for the text format and not for
/// OpenMetrics (which stays the default).
pub fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("text/plain") && !a.contains("application/openmetrics-text"))
}

/// `open_metrics` rewritten in the Prometheus text format.
pub fn from_open_metrics(open_metrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let name = rest.split(' ').next().unwrap_or_default();
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total{}", &rest[name.len()..]));
                } else {
                    out.push_str(line);
                }
            }
            None => {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let created = name
                    .strip_suffix("_created")
                    .is_some_and(|base| counters.contains(base));
                if created {
                    continue;
                }
                out.push_str(line);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_and_eof_goes() {
        let om = "# HELP a Calls.\n# TYPE a counter\na_total{x=\"1\"} 2\na_created{x=\"1\"} 1.5\n\
                  # HELP g Level.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            from_open_metrics(om),
            "# HELP a_total Calls.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
             # HELP g Level.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn only_an_explicit_text_request_gets_text() {
        assert!(!wanted(None));
        assert!(wanted(Some("text/plain")));
        assert!(!wanted(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
    }
}
