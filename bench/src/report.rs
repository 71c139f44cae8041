//! Turns a run into the tables people read: medians over rounds, latency added over
//! the direct path of the same round, the Tally/Envoy ratios against the targets of
//! the mesh issue, and every round on its own so the machine's noise is visible.

use crate::run::{Measurement, RunReport};
use std::fmt::Write as _;

/// Targets (same run, ratios Tally / Envoy).
pub const TARGET_ADDED_P99_RATIO: f64 = 0.5;
pub const TARGET_THROUGHPUT_RATIO: f64 = 1.3;
pub const TARGET_RSS_RATIO: f64 = 1.0 / 3.0;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The setups in the order they ran.
fn setups(r: &RunReport) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in &r.measurements {
        if !out.contains(&m.setup) {
            out.push(m.setup.clone());
        }
    }
    out
}

fn find<'a>(r: &'a RunReport, setup: &str, round: u32) -> Option<&'a Measurement> {
    r.measurements
        .iter()
        .find(|m| m.setup == setup && m.round == round)
}

/// Per-round values of `f` for `setup`.
fn per_round(r: &RunReport, setup: &str, f: impl Fn(&Measurement) -> Option<f64>) -> Vec<f64> {
    r.measurements
        .iter()
        .filter(|m| m.setup == setup)
        .filter_map(f)
        .collect()
}

/// Per-round `f(setup) - f(direct)`; absolute values when direct was not measured.
fn added(r: &RunReport, setup: &str, f: impl Fn(&Measurement) -> f64) -> Vec<f64> {
    r.measurements
        .iter()
        .filter(|m| m.setup == setup)
        .map(|m| match find(r, "direct", m.round) {
            Some(d) => f(m) - f(d),
            None => f(m),
        })
        .collect()
}

/// Median-based summary of one setup.
#[derive(Debug, Clone, Default)]
pub struct SetupSummary {
    pub setup: String,
    pub unary: [Option<f64>; 3],
    pub unary_added: [Option<f64>; 3],
    pub stream: [Option<f64>; 3],
    pub stream_added: [Option<f64>; 3],
    pub max_throughput: Option<f64>,
    /// Rounds in which some ramp step passed (the median is over those).
    pub throughput_rounds: usize,
    pub capped: bool,
    pub rss_peak_mib: Option<f64>,
    pub rss_steady_mib: Option<f64>,
    pub cpu_unary: Option<f64>,
    pub cpu_stream: Option<f64>,
    pub failed: u64,
}

pub fn summarize(r: &RunReport, setup: &str) -> SetupSummary {
    let q = |f: fn(&Measurement) -> f64| median(per_round(r, setup, |m| Some(f(m))));
    let a = |f: fn(&Measurement) -> f64| median(added(r, setup, f));
    let proxied = setup != "direct";
    SetupSummary {
        setup: setup.to_string(),
        unary: [
            q(|m| m.unary.p50_ms),
            q(|m| m.unary.p99_ms),
            q(|m| m.unary.p999_ms),
        ],
        unary_added: [
            a(|m| m.unary.p50_ms),
            a(|m| m.unary.p99_ms),
            a(|m| m.unary.p999_ms),
        ],
        stream: [
            q(|m| m.stream.p50_ms),
            q(|m| m.stream.p99_ms),
            q(|m| m.stream.p999_ms),
        ],
        stream_added: [
            a(|m| m.stream.p50_ms),
            a(|m| m.stream.p99_ms),
            a(|m| m.stream.p999_ms),
        ],
        max_throughput: median(per_round(r, setup, |m| m.max_throughput)),
        throughput_rounds: per_round(r, setup, |m| m.max_throughput).len(),
        capped: r
            .measurements
            .iter()
            .any(|m| m.setup == setup && m.max_throughput_capped),
        rss_peak_mib: proxied
            .then(|| {
                median(per_round(r, setup, |m| {
                    Some(m.rss_peak_kib as f64 / 1024.0)
                }))
            })
            .flatten(),
        rss_steady_mib: proxied
            .then(|| {
                median(per_round(r, setup, |m| {
                    Some(m.rss_steady_kib as f64 / 1024.0)
                }))
            })
            .flatten(),
        cpu_unary: median(per_round(r, setup, |m| m.unary.cpu_ms_per_1k)),
        cpu_stream: median(per_round(r, setup, |m| m.stream.cpu_ms_per_1k)),
        failed: r
            .measurements
            .iter()
            .filter(|m| m.setup == setup)
            .map(|m| m.unary.failed + m.stream.failed)
            .sum(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3}"))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn ratio(t: Option<f64>, e: Option<f64>) -> Option<f64> {
    match (t, e) {
        (Some(t), Some(e)) if e > 0.0 => Some(t / e),
        _ => None,
    }
}

/// One ratio against its target: the value and whether it is met.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

pub fn verdicts(r: &RunReport) -> Vec<Verdict> {
    let t = summarize(r, "tally");
    let e = summarize(r, "envoy");
    let p99 = ratio(t.unary_added[1], e.unary_added[1]);
    let thr = ratio(t.max_throughput, e.max_throughput);
    let rss = ratio(t.rss_peak_mib, e.rss_peak_mib);
    vec![
        Verdict {
            name: "added unary p99",
            ratio: p99,
            target: format!("<= {TARGET_ADDED_P99_RATIO}"),
            met: p99.map(|x| x <= TARGET_ADDED_P99_RATIO),
        },
        Verdict {
            name: "max throughput",
            ratio: thr,
            target: format!(">= {TARGET_THROUGHPUT_RATIO}"),
            met: thr.map(|x| x >= TARGET_THROUGHPUT_RATIO),
        },
        Verdict {
            name: "RSS (peak, both proxies)",
            ratio: rss,
            target: "<= 0.333".into(),
            met: rss.map(|x| x <= TARGET_RSS_RATIO),
        },
    ]
}

/// The whole report as Markdown.
pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let names = setups(r);
    let sums: Vec<SetupSummary> = names.iter().map(|n| summarize(r, n)).collect();
    let _ = writeln!(s, "Machine: {}  ", r.machine);
    let _ = writeln!(s, "Settings: {}\n", r.settings);
    let _ = writeln!(
        s,
        "Latency is measured from each call's scheduled send time (open loop, coordinated omission corrected); \
\"added\" is the setup minus direct in the same round. Medians over {} round(s).\n",
        r.rounds
    );

    let _ = writeln!(s, "### Latency (ms, median of rounds)\n");
    let _ = writeln!(
        s,
        "| setup | unary p50 | unary p99 | unary p99.9 | added p50 | added p99 | added p99.9 | stream p50 | stream p99 | stream p99.9 | added stream p50 | added stream p99 | failed calls |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in &sums {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.setup,
            ms(m.unary[0]),
            ms(m.unary[1]),
            ms(m.unary[2]),
            added_cell(m, m.unary_added[0]),
            added_cell(m, m.unary_added[1]),
            added_cell(m, m.unary_added[2]),
            ms(m.stream[0]),
            ms(m.stream[1]),
            ms(m.stream[2]),
            added_cell(m, m.stream_added[0]),
            added_cell(m, m.stream_added[1]),
            m.failed
        );
    }

    let _ = writeln!(
        s,
        "\n### Capacity and cost (median of rounds; proxies summed)\n"
    );
    let _ = writeln!(
        s,
        "| setup | max throughput (unary rps) | RSS peak (MiB) | RSS steady (MiB) | CPU ms / 1k unary | CPU ms / 1k streams |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for m in &sums {
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} |",
            m.setup,
            num(m.max_throughput, 0),
            if m.capped {
                " (ramp ceiling reached)"
            } else {
                ""
            },
            num(m.rss_peak_mib, 1),
            num(m.rss_steady_mib, 1),
            num(m.cpu_unary, 1),
            num(m.cpu_stream, 1),
        );
    }

    if names.iter().any(|n| n == "tally") && names.iter().any(|n| n == "envoy") {
        let t = summarize(r, "tally");
        let e = summarize(r, "envoy");
        let _ = writeln!(s, "\n### Tally / Envoy (from the medians)\n");
        let _ = writeln!(s, "| measure | Tally | Envoy | ratio | target | met |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for v in verdicts(r) {
            let (tv, ev) = match v.name {
                "added unary p99" => (ms(t.unary_added[1]), ms(e.unary_added[1])),
                "max throughput" => (num(t.max_throughput, 0), num(e.max_throughput, 0)),
                _ => (num(t.rss_peak_mib, 1), num(e.rss_peak_mib, 1)),
            };
            let met = match v.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                s,
                "| {} | {tv} | {ev} | {} | {} | {met} |",
                v.name,
                num(v.ratio, 2),
                v.target
            );
        }
        for (name, tv, ev) in [
            ("added unary p50", t.unary_added[0], e.unary_added[0]),
            ("added unary p99.9", t.unary_added[2], e.unary_added[2]),
            ("added stream p99", t.stream_added[1], e.stream_added[1]),
            ("RSS steady", t.rss_steady_mib, e.rss_steady_mib),
            ("CPU per 1k unary", t.cpu_unary, e.cpu_unary),
            ("CPU per 1k streams", t.cpu_stream, e.cpu_stream),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | - | - |",
                num(tv, 3),
                num(ev, 3),
                num(ratio(tv, ev), 2)
            );
        }
    }

    let _ = writeln!(s, "\n### Every round\n");
    let _ = writeln!(
        s,
        "| round | setup | unary p50 / p99 / p99.9 (ms) | stream p50 / p99 (ms) | max rps | ramp steps (target→achieved, p99 ms) | RSS peak / steady (MiB) | CPU ms/1k unary / streams | failed | load avg before→after |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for m in &r.measurements {
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
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} | {}{} | {} | {:.1} / {:.1} | {} / {} | {} | {:.1}→{:.1} |",
            m.round,
            m.setup,
            m.unary.p50_ms,
            m.unary.p99_ms,
            m.unary.p999_ms,
            m.stream.p50_ms,
            m.stream.p99_ms,
            match (m.max_throughput, m.steps.first()) {
                (Some(t), _) => format!("{t:.0}"),
                (None, Some(first)) => format!("< {:.0}", first.target_rate),
                (None, None) => "-".into(),
            },
            if m.max_throughput_capped { "+" } else { "" },
            steps.join("; "),
            m.rss_peak_kib as f64 / 1024.0,
            m.rss_steady_kib as f64 / 1024.0,
            num(m.unary.cpu_ms_per_1k, 1),
            num(m.stream.cpu_ms_per_1k, 1),
            m.unary.failed + m.stream.failed,
            m.load_before,
            m.load_after,
        );
    }
    let errors: Vec<String> = r
        .measurements
        .iter()
        .flat_map(|m| {
            [&m.unary, &m.stream].into_iter().filter_map(move |p| {
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
    s
}

fn added_cell(m: &SetupSummary, v: Option<f64>) -> String {
    if m.setup == "direct" {
        "0".into()
    } else {
        ms(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
