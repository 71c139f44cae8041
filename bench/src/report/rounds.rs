//! The per-round part of the report: every measurement on its own line, the ramp steps and
//! the first error of each phase, so the noise between rounds stays visible.

use super::num;
use crate::run::{PhaseSummary, RunReport};
use std::fmt::Write as _;

pub(super) fn rounds_table(s: &mut String, r: &RunReport) {
    let _ = writeln!(s, "\n### Every round\n");
    let _ = writeln!(
        s,
        "| round | setup | unary p50 / p99 / p99.9 (ms) | stream p50 / p99 (ms) | closed unary / stream (calls/s) | RSS peak / steady (MiB) | CPU ms/1k unary / streams (fixed; max) | failed | load avg before→after | other CPU (cores) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for m in &r.measurements {
        let closed = |c: &Option<PhaseSummary>| {
            c.as_ref()
                .map_or("-".into(), |c| format!("{:.0}", c.achieved_rate))
        };
        let closed_cpu =
            |c: &Option<PhaseSummary>| num(c.as_ref().and_then(|c| c.cpu_ms_per_1k), 1);
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} | {} / {} | {:.1} / {:.1} | {} / {}; {} / {} | {} | {:.1}→{:.1} | {:.2} |",
            m.round,
            m.setup,
            m.unary.p50_ms,
            m.unary.p99_ms,
            m.unary.p999_ms,
            m.stream.p50_ms,
            m.stream.p99_ms,
            closed(&m.closed_unary),
            closed(&m.closed_stream),
            m.rss_peak_kib as f64 / 1024.0,
            m.rss_steady_kib as f64 / 1024.0,
            num(m.unary.cpu_ms_per_1k, 1),
            num(m.stream.cpu_ms_per_1k, 1),
            closed_cpu(&m.closed_unary),
            closed_cpu(&m.closed_stream),
            m.unary.failed + m.stream.failed,
            m.load_before,
            m.load_after,
            m.other_cpu_cores,
        );
    }
    if r.measurements.iter().any(|m| !m.steps.is_empty()) {
        let _ = writeln!(
            s,
            "\nOpen-loop ramp steps (target→achieved calls/s, p99 ms, ✗ failed):\n"
        );
        for m in r.measurements.iter().filter(|m| !m.steps.is_empty()) {
            let steps: Vec<String> = m
                .steps
                .iter()
                .map(|st| {
                    format!(
                        "{:.0}→{:.0} {:.1}{}",
                        st.target_rate,
                        st.achieved_rate,
                        st.p99_ms,
                        if st.passed { "" } else { " ✗" }
                    )
                })
                .collect();
            let _ = writeln!(s, "- round {} {}: {}", m.round, m.setup, steps.join("; "));
        }
    }
    let errors: Vec<String> = r
        .measurements
        .iter()
        .flat_map(|m| {
            [
                Some(&m.unary),
                Some(&m.stream),
                m.closed_unary.as_ref(),
                m.closed_stream.as_ref(),
            ]
            .into_iter()
            .flatten()
            .filter_map(move |p| {
                p.first_error
                    .as_ref()
                    .map(|e| format!("round {} {} {}: {e}", m.round, m.setup, p.workload))
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nFirst error per phase:\n");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
    }
}
