//! Turns a run into the tables people read: medians over rounds, latency added over
//! the direct path of the same round, Tally's ratios to direct, the floor relay, Envoy and
//! a baseline build, the targets of the performance issue met or not, and every round on
//! its own so the machine's noise is visible.

use crate::run::{Measurement, RunReport};
use std::fmt::Write as _;

mod rounds;
use rounds::rounds_table;

/// Targets (same run, medians): Tally's max throughput ≥ 2× Envoy's.
pub(crate) const TARGET_THROUGHPUT_VS_ENVOY: f64 = 2.0;
/// Added p50 at the fixed rate ≤ 0.5× Envoy's.
pub(crate) const TARGET_ADDED_P50_VS_ENVOY: f64 = 0.5;
/// Added p99 ≤ 2× the floor relay's.
pub(crate) const TARGET_ADDED_P99_VS_FLOOR: f64 = 2.0;
/// Added p99.9 ≤ Envoy's.
pub(crate) const TARGET_ADDED_P999_VS_ENVOY: f64 = 1.0;
/// Proxy CPU per call (fixed rate and max) ≤ 0.5× Envoy's ...
pub(crate) const TARGET_CPU_VS_ENVOY: f64 = 0.5;
/// ... and ≤ 1.2× the floor relay's.
pub(crate) const TARGET_CPU_VS_FLOOR: f64 = 1.2;
/// RSS of the pair ≤ 1/3 of Envoy's.
pub(crate) const TARGET_RSS_VS_ENVOY: f64 = 1.0 / 3.0;

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

/// Median-based summary of one setup (latencies in ms, RSS in MiB, CPU in ms per 1000 calls).
#[derive(Debug, Clone, Default)]
pub(crate) struct SetupSummary {
    pub(crate) setup: String,
    pub(crate) unary: [Option<f64>; 3],
    pub(crate) unary_added: [Option<f64>; 3],
    pub(crate) stream: [Option<f64>; 3],
    pub(crate) stream_added: [Option<f64>; 3],
    /// Closed-loop throughput (calls per second).
    pub(crate) closed_unary: Option<f64>,
    pub(crate) closed_stream: Option<f64>,
    /// Open-loop ramp maximum (only with `--ramp`).
    pub(crate) ramp_max: Option<f64>,
    pub(crate) rss_peak_mib: Option<f64>,
    pub(crate) rss_steady_mib: Option<f64>,
    pub(crate) cpu_unary: Option<f64>,
    pub(crate) cpu_stream: Option<f64>,
    pub(crate) cpu_unary_max: Option<f64>,
    pub(crate) cpu_stream_max: Option<f64>,
    pub(crate) failed: u64,
}

pub(crate) fn summarize(r: &RunReport, setup: &str) -> SetupSummary {
    let q = |f: fn(&Measurement) -> f64| median(per_round(r, setup, |m| Some(f(m))));
    let o = |f: fn(&Measurement) -> Option<f64>| median(per_round(r, setup, f));
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
        closed_unary: o(|m| m.closed_unary.as_ref().map(|c| c.achieved_rate)),
        closed_stream: o(|m| m.closed_stream.as_ref().map(|c| c.achieved_rate)),
        ramp_max: o(|m| m.max_throughput),
        rss_peak_mib: if proxied {
            o(|m| Some(m.rss_peak_kib as f64 / 1024.0))
        } else {
            None
        },
        rss_steady_mib: if proxied {
            o(|m| Some(m.rss_steady_kib as f64 / 1024.0))
        } else {
            None
        },
        cpu_unary: o(|m| m.unary.cpu_ms_per_1k),
        cpu_stream: o(|m| m.stream.cpu_ms_per_1k),
        cpu_unary_max: o(|m| m.closed_unary.as_ref().and_then(|c| c.cpu_ms_per_1k)),
        cpu_stream_max: o(|m| m.closed_stream.as_ref().and_then(|c| c.cpu_ms_per_1k)),
        failed: r
            .measurements
            .iter()
            .filter(|m| m.setup == setup)
            .map(|m| {
                m.unary.failed
                    + m.stream.failed
                    + m.closed_unary.as_ref().map_or(0, |c| c.failed)
                    + m.closed_stream.as_ref().map_or(0, |c| c.failed)
            })
            .sum(),
    }
}

impl RunReport {
    /// The most CPU (in cores) that processes outside the benchmark used during any
    /// measurement of this run.
    pub fn busiest_other_cpu(&self) -> f64 {
        self.measurements
            .iter()
            .map(|m| m.other_cpu_cores)
            .fold(0.0, f64::max)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3}"))
}

/// `v` with `digits` decimals, `-` when absent.
pub(crate) fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn ratio(t: Option<f64>, e: Option<f64>) -> Option<f64> {
    match (t, e) {
        (Some(t), Some(e)) if e > 0.0 => Some(t / e),
        _ => None,
    }
}

/// One row of the comparison table: a name and how to read it from a summary.
type Measure = (&'static str, fn(&SetupSummary) -> Option<f64>);

const MEASURES: &[Measure] = &[
    ("throughput unary, closed loop (calls/s)", |s| {
        s.closed_unary
    }),
    ("throughput streams, closed loop (calls/s)", |s| {
        s.closed_stream
    }),
    ("max rate, open-loop ramp (calls/s)", |s| s.ramp_max),
    ("added unary p50 (ms)", |s| s.unary_added[0]),
    ("added unary p99 (ms)", |s| s.unary_added[1]),
    ("added unary p99.9 (ms)", |s| s.unary_added[2]),
    ("added stream p50 (ms)", |s| s.stream_added[0]),
    ("added stream p99 (ms)", |s| s.stream_added[1]),
    ("added stream p99.9 (ms)", |s| s.stream_added[2]),
    ("CPU ms / 1k unary, fixed rate", |s| s.cpu_unary),
    ("CPU ms / 1k streams, fixed rate", |s| s.cpu_stream),
    ("CPU ms / 1k unary, at max", |s| s.cpu_unary_max),
    ("CPU ms / 1k streams, at max", |s| s.cpu_stream_max),
    ("RSS peak, pair (MiB)", |s| s.rss_peak_mib),
    ("RSS steady, pair (MiB)", |s| s.rss_steady_mib),
];

/// One target: Tally's value over a reference setup's, against a bound.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    pub(crate) name: String,
    pub(crate) ratio: Option<f64>,
    /// `<= x` or `>= x`.
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

impl Verdict {
    /// `ratio` judged against `bound`: at least it when `at_least`, else at most it.
    pub(crate) fn judge(name: String, ratio: Option<f64>, bound: f64, at_least: bool) -> Verdict {
        Verdict {
            name,
            ratio,
            target: format!("{} {bound:.2}", if at_least { ">=" } else { "<=" }),
            met: ratio.map(|x| if at_least { x >= bound } else { x <= bound }),
        }
    }
}

/// The rows of a targets table: ratio, bound and met for each verdict.
pub(crate) fn write_targets(s: &mut String, verdicts: &[Verdict]) {
    let _ = writeln!(s, "| target | ratio | bound | met |");
    let _ = writeln!(s, "|---|---|---|---|");
    for v in verdicts {
        let met = match v.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {met} |",
            v.name,
            num(v.ratio, 2),
            v.target
        );
    }
}

/// The targets of the performance issue, each met or not (n/a when a setup is missing).
pub(crate) fn verdicts(r: &RunReport) -> Vec<Verdict> {
    let t = summarize(r, "tally");
    let e = summarize(r, "envoy");
    let f = summarize(r, "floor");
    let mut out = Vec::new();
    let mut add = |name: &str, ratio: Option<f64>, bound: f64, at_least: bool| {
        out.push(Verdict::judge(name.to_string(), ratio, bound, at_least));
    };
    let thr = |s: &SetupSummary| s.closed_unary.or(s.ramp_max);
    add(
        "throughput (unary) / Envoy",
        ratio(thr(&t), thr(&e)),
        TARGET_THROUGHPUT_VS_ENVOY,
        true,
    );
    add(
        "added p50 / Envoy",
        ratio(t.unary_added[0], e.unary_added[0]),
        TARGET_ADDED_P50_VS_ENVOY,
        false,
    );
    add(
        "added p99 / floor",
        ratio(t.unary_added[1], f.unary_added[1]),
        TARGET_ADDED_P99_VS_FLOOR,
        false,
    );
    add(
        "added p99.9 / Envoy",
        ratio(t.unary_added[2], e.unary_added[2]),
        TARGET_ADDED_P999_VS_ENVOY,
        false,
    );
    add(
        "CPU/1k at fixed rate / Envoy",
        ratio(t.cpu_unary, e.cpu_unary),
        TARGET_CPU_VS_ENVOY,
        false,
    );
    add(
        "CPU/1k at fixed rate / floor",
        ratio(t.cpu_unary, f.cpu_unary),
        TARGET_CPU_VS_FLOOR,
        false,
    );
    add(
        "CPU/1k at max / Envoy",
        ratio(t.cpu_unary_max, e.cpu_unary_max),
        TARGET_CPU_VS_ENVOY,
        false,
    );
    add(
        "CPU/1k at max / floor",
        ratio(t.cpu_unary_max, f.cpu_unary_max),
        TARGET_CPU_VS_FLOOR,
        false,
    );
    add(
        "RSS peak / Envoy",
        ratio(t.rss_peak_mib, e.rss_peak_mib),
        TARGET_RSS_VS_ENVOY,
        false,
    );
    out
}

/// The whole report as Markdown.
pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let names = setups(r);
    let sums: Vec<SetupSummary> = names.iter().map(|n| summarize(r, n)).collect();
    let _ = writeln!(s, "Date: {}; commit: {}  ", r.date, r.commit);
    let _ = writeln!(s, "Machine: {}  ", r.machine);
    let loads: Vec<f64> = r
        .measurements
        .iter()
        .flat_map(|m| [m.load_before, m.load_after])
        .collect();
    let _ = writeln!(
        s,
        "Load: 1-minute load average {:.1}–{:.1} during the run; processes outside the benchmark used up to {:.2} cores during a measurement{}  ",
        loads
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(99.0),
        loads.iter().copied().fold(0.0, f64::max),
        r.busiest_other_cpu(),
        if r.busiest_other_cpu() > 0.25 {
            " (**a busy machine: absolute numbers are noisy**)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Settings: {}\n", r.settings);
    let _ = writeln!(
        s,
        "Latency is measured at the fixed rates from each call's scheduled send time (open loop, coordinated omission corrected); \
\"added\" is the setup minus direct in the same round. Throughput and CPU \"at max\" come from the closed-loop phases. \
Medians over {} round(s).\n",
        r.rounds
    );

    let _ = writeln!(s, "### Latency at the fixed rates (ms, median of rounds)\n");
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

    // Every measure for every setup, then Tally over each reference setup.
    let refs: Vec<&SetupSummary> = sums.iter().filter(|m| m.setup != "tally").collect();
    let tally = sums.iter().find(|m| m.setup == "tally");
    let _ = writeln!(
        s,
        "\n### Every measure (median of rounds; proxies summed) and Tally's ratios\n"
    );
    let mut header = String::from("| measure |");
    let mut rule = String::from("|---|");
    for m in &sums {
        let _ = write!(header, " {} |", m.setup);
        rule.push_str("---|");
    }
    if tally.is_some() {
        for m in &refs {
            let _ = write!(header, " tally / {} |", m.setup);
            rule.push_str("---|");
        }
    }
    let _ = writeln!(s, "{header}\n{rule}");
    for (name, get) in MEASURES {
        if sums.iter().all(|m| get(m).is_none()) {
            continue;
        }
        let mut row = format!("| {name} |");
        for m in &sums {
            let _ = write!(row, " {} |", num(get(m), 3));
        }
        if let Some(t) = tally {
            for m in &refs {
                let _ = write!(row, " {} |", num(ratio(get(t), get(m)), 2));
            }
        }
        let _ = writeln!(s, "{row}");
    }

    if tally.is_some() {
        let _ = writeln!(
            s,
            "\n### Targets (Tally over the reference setup, from the medians)\n"
        );
        write_targets(&mut s, &verdicts(r));
    }
    rounds_table(&mut s, r);
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
