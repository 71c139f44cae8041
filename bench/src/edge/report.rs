//! The edge run as tables: per setup and encoding the latency at the fixed rate, the
//! latency added over plain gRPC to the echo server in the same round, closed-loop
//! throughput, CPU per 1000 calls and memory (medians of rounds), the gateway over Envoy
//! as ratios, and the browser-edge targets met or not.

use super::{EdgeMeasurement, EdgeReport};
use crate::report::{Verdict, num, write_targets};
use std::fmt::Write as _;

/// Target: the gateway's throughput ≥ this times Envoy's grpc_web.
pub const TARGET_THROUGHPUT_VS_ENVOY: f64 = 1.0;
/// Target: the gateway's CPU per call ≤ this times Envoy's.
pub const TARGET_CPU_VS_ENVOY: f64 = 0.7;

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

/// Medians of one setup in one encoding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeSummary {
    /// Setup name.
    pub setup: String,
    /// `binary`, `text` or `grpc`.
    pub mode: String,
    /// p50 and p99 at the fixed rate (ms).
    pub p50: Option<f64>,
    /// See `p50`.
    pub p99: Option<f64>,
    /// The same minus direct's in the same round (ms).
    pub added_p50: Option<f64>,
    /// See `added_p50`.
    pub added_p99: Option<f64>,
    /// Closed-loop calls per second.
    pub throughput: Option<f64>,
    /// CPU ms per 1000 calls at the fixed rate.
    pub cpu_fixed: Option<f64>,
    /// CPU ms per 1000 calls in the closed loop.
    pub cpu_max: Option<f64>,
    /// Peak memory (MiB).
    pub rss_peak_mib: Option<f64>,
    /// Failed calls over all rounds.
    pub failed: u64,
}

fn direct_of(r: &EdgeReport, round: u32) -> Option<&EdgeMeasurement> {
    r.measurements
        .iter()
        .find(|m| m.setup == "direct" && m.round == round)
}

/// The medians of `setup` in `mode`.
pub fn summarize(r: &EdgeReport, setup: &str, mode: &str) -> EdgeSummary {
    let ms: Vec<&EdgeMeasurement> = r
        .measurements
        .iter()
        .filter(|m| m.setup == setup && m.mode == mode)
        .collect();
    let med = |f: &dyn Fn(&EdgeMeasurement) -> Option<f64>| {
        median(ms.iter().filter_map(|m| f(m)).collect())
    };
    let added = |f: &dyn Fn(&EdgeMeasurement) -> f64| {
        median(
            ms.iter()
                .filter_map(|m| direct_of(r, m.round).map(|d| f(m) - f(d)))
                .collect(),
        )
    };
    let proxied = setup != "direct";
    EdgeSummary {
        setup: setup.into(),
        mode: mode.into(),
        p50: med(&|m| Some(m.fixed.p50_ms)),
        p99: med(&|m| Some(m.fixed.p99_ms)),
        added_p50: added(&|m| m.fixed.p50_ms),
        added_p99: added(&|m| m.fixed.p99_ms),
        throughput: med(&|m| m.closed.as_ref().map(|c| c.achieved_rate)),
        cpu_fixed: med(&|m| m.fixed.cpu_ms_per_1k),
        cpu_max: med(&|m| m.closed.as_ref().and_then(|c| c.cpu_ms_per_1k)),
        rss_peak_mib: if proxied {
            med(&|m| Some(m.rss_peak_kib as f64 / 1024.0))
        } else {
            None
        },
        failed: ms
            .iter()
            .map(|m| m.fixed.failed + m.closed.as_ref().map_or(0, |c| c.failed))
            .sum(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The targets for every encoding measured.
pub(crate) fn verdicts(r: &EdgeReport) -> Vec<Verdict> {
    let mut out = Vec::new();
    for mode in modes(r) {
        let g = summarize(r, "gateway", &mode);
        let e = summarize(r, "envoy", &mode);
        let mut add = |name: String, ratio: Option<f64>, bound: f64, at_least: bool| {
            out.push(Verdict::judge(name, ratio, bound, at_least));
        };
        add(
            format!("gateway throughput / Envoy grpc_web ({mode})"),
            ratio(g.throughput, e.throughput),
            TARGET_THROUGHPUT_VS_ENVOY,
            true,
        );
        add(
            format!("gateway CPU per call at max / Envoy ({mode})"),
            ratio(g.cpu_max, e.cpu_max),
            TARGET_CPU_VS_ENVOY,
            false,
        );
        add(
            format!("gateway CPU per call at the fixed rate / Envoy ({mode})"),
            ratio(g.cpu_fixed, e.cpu_fixed),
            TARGET_CPU_VS_ENVOY,
            false,
        );
    }
    out
}

/// The gRPC-Web encodings in the run, in order.
fn modes(r: &EdgeReport) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in r.measurements.iter().filter(|m| m.setup != "direct") {
        if !out.contains(&m.mode) {
            out.push(m.mode.clone());
        }
    }
    out
}

/// The whole edge report as Markdown.
pub fn markdown(r: &EdgeReport) -> String {
    let mut s = String::new();
    let busy = r.busiest_other_cpu();
    let _ = writeln!(s, "Date: {}; commit: {}  ", r.date, r.commit);
    let _ = writeln!(s, "Machine: {}  ", r.machine);
    let _ = writeln!(
        s,
        "Load: 1-minute load average up to {:.1}; processes outside the benchmark used up to {busy:.2} cores during a measurement{}  ",
        r.measurements.iter().map(|m| m.load).fold(0.0, f64::max),
        if busy > 0.25 {
            " (**a busy machine: absolute numbers are noisy**)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Settings: {}\n", r.settings);
    let _ = writeln!(
        s,
        "\"Added\" latency is the setup's minus plain gRPC straight to the echo server in the same round; \
CPU and memory are the edge process's. Medians over {} round(s).\n",
        r.rounds
    );
    let _ = writeln!(
        s,
        "| setup | encoding | p50 (ms) | p99 (ms) | added p50 | added p99 | throughput (calls/s) | CPU ms / 1k, fixed rate | CPU ms / 1k, at max | RSS peak (MiB) | failed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = vec![summarize(r, "direct", "grpc")];
    for mode in modes(r) {
        for setup in ["gateway", "envoy"] {
            rows.push(summarize(r, setup, &mode));
        }
    }
    for m in &rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.setup,
            m.mode,
            num(m.p50, 3),
            num(m.p99, 3),
            num(m.added_p50, 3),
            num(m.added_p99, 3),
            num(m.throughput, 0),
            num(m.cpu_fixed, 1),
            num(m.cpu_max, 1),
            num(m.rss_peak_mib, 1),
            m.failed
        );
    }
    let _ = writeln!(s, "\n### Gateway / Envoy\n");
    let _ = writeln!(
        s,
        "| encoding | throughput | added p50 | added p99 | CPU per call, fixed rate | CPU per call, at max | RSS peak |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for mode in modes(r) {
        let g = summarize(r, "gateway", &mode);
        let e = summarize(r, "envoy", &mode);
        let _ = writeln!(
            s,
            "| {mode} | {} | {} | {} | {} | {} | {} |",
            num(ratio(g.throughput, e.throughput), 2),
            num(ratio(g.added_p50, e.added_p50), 2),
            num(ratio(g.added_p99, e.added_p99), 2),
            num(ratio(g.cpu_fixed, e.cpu_fixed), 2),
            num(ratio(g.cpu_max, e.cpu_max), 2),
            num(ratio(g.rss_peak_mib, e.rss_peak_mib), 2),
        );
    }
    let _ = writeln!(s, "\n### Browser-edge targets\n");
    write_targets(&mut s, &verdicts(r));
    let _ = writeln!(s, "\n### Every measurement\n");
    let _ = writeln!(
        s,
        "| round | setup | encoding | p50 / p99 (ms) | closed (calls/s) | CPU ms/1k fixed / max | RSS / peak (MiB) | failed | first error | other CPU |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for m in &r.measurements {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} / {:.3} | {} | {} / {} | {:.1} / {:.1} | {} | {} | {:.2} |",
            m.round,
            m.setup,
            m.mode,
            m.fixed.p50_ms,
            m.fixed.p99_ms,
            num(m.closed.as_ref().map(|c| c.achieved_rate), 0),
            num(m.fixed.cpu_ms_per_1k, 1),
            num(m.closed.as_ref().and_then(|c| c.cpu_ms_per_1k), 1),
            m.rss_kib as f64 / 1024.0,
            m.rss_peak_kib as f64 / 1024.0,
            m.fixed.failed + m.closed.as_ref().map_or(0, |c| c.failed),
            m.fixed
                .first_error
                .as_deref()
                .or(m.closed.as_ref().and_then(|c| c.first_error.as_deref()))
                .unwrap_or("-"),
            m.other_cpu_cores
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::PhaseSummary;

    fn phase(p50: f64, p99: f64, rate: f64, cpu: Option<f64>) -> PhaseSummary {
        PhaseSummary {
            workload: "w".into(),
            target_rate: 0.0,
            achieved_rate: rate,
            scheduled: 100,
            ok: 100,
            failed: 0,
            p50_ms: p50,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
            cpu_ms_per_1k: cpu,
            first_error: None,
        }
    }

    fn m(
        round: u32,
        setup: &str,
        mode: &str,
        p50: f64,
        thr: f64,
        cpu: Option<f64>,
    ) -> EdgeMeasurement {
        EdgeMeasurement {
            round,
            setup: setup.into(),
            mode: mode.into(),
            fixed: phase(p50, p50 * 3.0, 1000.0, cpu),
            closed: Some(phase(p50, p50 * 3.0, thr, cpu.map(|c| c / 4.0))),
            rss_kib: 10_240,
            rss_peak_kib: if setup == "envoy" { 51_200 } else { 10_240 },
            other_cpu_cores: 0.1,
            load: 0.5,
        }
    }

    fn report() -> EdgeReport {
        let mut ms = Vec::new();
        for round in 1..=3 {
            ms.push(m(round, "direct", "grpc", 0.2, 9000.0, None));
            ms.push(m(round, "gateway", "binary", 0.5, 6000.0, Some(120.0)));
            ms.push(m(round, "envoy", "binary", 0.8, 5000.0, Some(200.0)));
            ms.push(m(round, "gateway", "text", 0.6, 4000.0, Some(160.0)));
            ms.push(m(round, "envoy", "text", 0.7, 5000.0, Some(200.0)));
        }
        EdgeReport {
            date: "d".into(),
            commit: "c".into(),
            machine: "m".into(),
            settings: "s".into(),
            rounds: 3,
            measurements: ms,
        }
    }

    #[test]
    fn added_latency_is_over_direct_of_the_same_round() {
        let g = summarize(&report(), "gateway", "binary");
        assert!((g.added_p50.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(g.throughput, Some(6000.0));
        assert_eq!(g.rss_peak_mib, Some(10.0));
        assert_eq!(summarize(&report(), "direct", "grpc").rss_peak_mib, None);
    }

    #[test]
    fn targets_are_judged_per_encoding() {
        let v = verdicts(&report());
        assert_eq!(v.len(), 6);
        let get = |name: &str| v.iter().find(|v| v.name == name).unwrap();
        let t = get("gateway throughput / Envoy grpc_web (binary)");
        assert_eq!((t.ratio, t.met), (Some(1.2), Some(true)));
        assert_eq!(
            get("gateway throughput / Envoy grpc_web (text)").met,
            Some(false)
        );
        let c = get("gateway CPU per call at max / Envoy (binary)");
        assert_eq!(c.met, Some(true));
        assert!((c.ratio.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(
            get("gateway CPU per call at max / Envoy (text)").met,
            Some(false)
        );
    }

    #[test]
    fn the_markdown_has_ratios_targets_and_every_round() {
        let md = markdown(&report());
        assert!(
            md.contains("| binary | 1.20 | 0.50 | 0.50 | 0.60 | 0.60 | 0.20 |"),
            "{md}"
        );
        assert!(
            md.contains("| gateway throughput / Envoy grpc_web (text) | 0.80 | >= 1.00 | **no** |"),
            "{md}"
        );
        assert_eq!(md.matches("\n| 2 | ").count(), 5, "{md}");
    }
}
