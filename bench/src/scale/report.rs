//! The scale run as tables people read: per dimension, each setup's memory and CPU at
//! every step, the growth per step and per unit (KiB per idle connection, per stream,
//! per service ...), Tally over Envoy where both ran, and one verdict line per dimension
//! and setup saying whether each curve grows at most linearly.

use super::growth::{Growth, Point, judge, steps};
use super::{Dimension, ScalePoint, ScaleReport};
use std::fmt::Write as _;

/// Memory rises up to this many KiB are noise (allocator arenas, page granularity).
pub const RSS_NOISE_KIB: f64 = 1024.0;
/// ... or up to this share of the first step's memory, whichever is more.
pub const RSS_NOISE_SHARE: f64 = 0.02;
/// Idle CPU rises up to this many ms per second (1 % of a core) are noise: timers, and
/// the kernel's 10 ms CPU-time ticks over a hold of a few seconds.
pub const IDLE_CPU_NOISE_MS_PER_S: f64 = 10.0;
/// Per-call CPU rises up to this share of the first step's are noise.
pub const CALL_CPU_NOISE_SHARE: f64 = 0.15;

/// The verdict of one setup along one dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionVerdict {
    /// Dimension title.
    pub dimension: String,
    /// Setup name.
    pub setup: String,
    /// How memory grows.
    pub rss: Growth,
    /// How CPU grows.
    pub cpu: Growth,
}

impl DimensionVerdict {
    /// Both curves at most linear: Some(true); one faster: Some(false); not judged: None.
    pub fn at_most_linear(&self) -> Option<bool> {
        match (self.rss.at_most_linear(), self.cpu.at_most_linear()) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            (Some(true), None) | (None, Some(true)) | (None, None) => None,
        }
    }
}

/// The points of one setup along one dimension, by increasing x.
fn series<'a>(r: &'a ScaleReport, dim: &str, setup: &str) -> Vec<&'a ScalePoint> {
    let mut v: Vec<&ScalePoint> = r
        .points
        .iter()
        .filter(|p| p.dimension == dim && p.setup == setup)
        .collect();
    v.sort_by_key(|p| p.x);
    v
}

/// Judges memory and CPU of `points` (one setup, one dimension).
pub fn verdict(dim: Dimension, setup: &str, points: &[&ScalePoint]) -> DimensionVerdict {
    let rss: Vec<Point> = points
        .iter()
        .map(|p| Point {
            x: p.x as f64,
            y: p.rss_kib as f64,
        })
        .collect();
    let cpu: Vec<Point> = points
        .iter()
        .filter_map(|p| p.cpu.map(|y| Point { x: p.x as f64, y }))
        .collect();
    let rss_noise = rss.first().map_or(RSS_NOISE_KIB, |p| {
        (p.y * RSS_NOISE_SHARE).max(RSS_NOISE_KIB)
    });
    let cpu_noise = match dim {
        Dimension::IdleConnections | Dimension::IdlePeerConnections => IDLE_CPU_NOISE_MS_PER_S,
        _ => cpu.first().map_or(0.0, |p| p.y * CALL_CPU_NOISE_SHARE),
    };
    DimensionVerdict {
        dimension: dim.title().into(),
        setup: setup.into(),
        rss: judge(&rss, rss_noise),
        cpu: judge(&cpu, cpu_noise),
    }
}

/// Every verdict of the run (dimension order, then setup order).
pub fn verdicts(r: &ScaleReport) -> Vec<DimensionVerdict> {
    let mut out = Vec::new();
    for dim in Dimension::ALL {
        for setup in setups(r) {
            let s = series(r, dim.title(), &setup);
            if !s.is_empty() {
                out.push(verdict(dim, &setup, &s));
            }
        }
    }
    out
}

fn setups(r: &ScaleReport) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &r.points {
        if !out.contains(&p.setup) {
            out.push(p.setup.clone());
        }
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The unit a per-step growth is per.
fn per_what(dim: Dimension) -> &'static str {
    match dim {
        Dimension::IdleConnections | Dimension::IdlePeerConnections => "connection",
        Dimension::Streams => "stream",
        Dimension::Services => "service",
        Dimension::Endpoints => "endpoint",
        Dimension::MessageSize => "byte",
    }
}

/// The whole scale report as Markdown.
pub fn markdown(r: &ScaleReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Date: {}; commit: {}  ", r.date, r.commit);
    let _ = writeln!(s, "Machine: {}  ", r.machine);
    let busy = r.busiest_other_cpu();
    let loads: Vec<f64> = r.points.iter().map(|p| p.load).collect();
    let _ = writeln!(
        s,
        "Load: 1-minute load average up to {:.1}; processes outside the benchmark used up to {busy:.2} cores during a step{}  ",
        loads.iter().copied().fold(0.0, f64::max),
        if busy > 0.25 {
            " (**a busy machine: absolute numbers are noisy**)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "Settings: {}\n", r.settings);
    let _ = writeln!(
        s,
        "Memory is both proxies' `VmRSS` after the step (peak `VmHWM` in the last column); CPU is both proxies' \
user+system time. \"Δ\" is the change from the previous step, \"per unit\" that change over the change of the \
dimension (KiB per connection, per stream, ...). A curve grows at most linearly when the log-log slope of its \
rise over the first step stays at most {:.2} (1 is a straight line, 2 a square; rises within the noise count as flat).\n",
        1.0 + super::growth::LINEAR_SLACK
    );
    let names = setups(r);
    summary(&mut s, r, &names);
    for dim in Dimension::ALL {
        let present: Vec<&String> = names
            .iter()
            .filter(|n| !series(r, dim.title(), n).is_empty())
            .collect();
        if present.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {}\n", dim.title());
        let _ = writeln!(
            s,
            "| setup | {} | RSS (MiB) | Δ RSS (KiB) | KiB per {} | {} | Δ CPU | calls/s | failed | RSS peak (MiB) | other CPU |",
            dim.title(),
            per_what(dim),
            dim.cpu_label()
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for setup in &present {
            let pts = series(r, dim.title(), setup);
            let rss: Vec<Point> = pts
                .iter()
                .map(|p| Point {
                    x: p.x as f64,
                    y: p.rss_kib as f64,
                })
                .collect();
            let growth = steps(&rss);
            for (i, p) in pts.iter().enumerate() {
                let cpu_delta = if i == 0 {
                    None
                } else {
                    p.cpu.zip(pts[i - 1].cpu).map(|(a, b)| a - b)
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} |",
                    p.setup,
                    p.x,
                    p.rss_kib as f64 / 1024.0,
                    opt(growth[i].map(|g| g.delta), 0),
                    opt(growth[i].map(|g| g.per_unit), 3),
                    opt(p.cpu, 1),
                    opt(cpu_delta, 1),
                    opt(p.rate, 0),
                    p.failed,
                    p.hwm_kib as f64 / 1024.0,
                    p.other_cpu_cores
                );
            }
        }
        let _ = writeln!(s);
        ratio_lines(&mut s, r, dim);
        for setup in &present {
            let pts = series(r, dim.title(), setup);
            let v = verdict(dim, setup, &pts);
            let met = match v.at_most_linear() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                s,
                "- Verdict, {} ({}): RSS {}; CPU {}. Grows at most linearly: {met}.",
                dim.title(),
                v.setup,
                v.rss.describe(),
                v.cpu.describe()
            );
        }
        let errors: Vec<String> = names
            .iter()
            .flat_map(|n| series(r, dim.title(), n))
            .filter_map(|p| {
                p.first_error
                    .as_ref()
                    .map(|e| format!("{} at {}: {e}", p.setup, p.x))
            })
            .collect();
        for e in errors {
            let _ = writeln!(s, "- First error: {e}");
        }
        let _ = writeln!(s);
    }
    s
}

/// One line per dimension and setup: memory per unit over the last step, and the verdicts.
fn summary(s: &mut String, r: &ScaleReport, names: &[String]) {
    let _ = writeln!(s, "### Summary\n");
    let _ = writeln!(
        s,
        "| dimension | setup | steps | RSS growth over the last step | RSS | CPU | grows at most linearly |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for dim in Dimension::ALL {
        for setup in names {
            let pts = series(r, dim.title(), setup);
            let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
                continue;
            };
            let rss: Vec<Point> = pts
                .iter()
                .map(|p| Point {
                    x: p.x as f64,
                    y: p.rss_kib as f64,
                })
                .collect();
            let per_unit = steps(&rss)
                .last()
                .copied()
                .flatten()
                .map_or("-".into(), |g| {
                    format!("{:.3} KiB per {}", g.per_unit, per_what(dim))
                });
            let v = verdict(dim, setup, &pts);
            let met = match v.at_most_linear() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                s,
                "| {} | {setup} | {}–{} | {per_unit} | {} | {} | {met} |",
                dim.title(),
                first.x,
                last.x,
                v.rss.describe(),
                v.cpu.describe()
            );
        }
    }
    let _ = writeln!(s);
}

/// Tally over Envoy at every step both measured (memory and CPU).
fn ratio_lines(s: &mut String, r: &ScaleReport, dim: Dimension) {
    let t = series(r, dim.title(), "tally");
    let e = series(r, dim.title(), "envoy");
    if t.is_empty() || e.is_empty() {
        return;
    }
    let mut parts = Vec::new();
    for p in &t {
        if let Some(q) = e.iter().find(|q| q.x == p.x) {
            let rss = (q.rss_kib > 0).then(|| p.rss_kib as f64 / q.rss_kib as f64);
            let cpu = match (p.cpu, q.cpu) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            parts.push(format!("{}: RSS {}, CPU {}", p.x, opt(rss, 2), opt(cpu, 2)));
        }
    }
    let _ = writeln!(s, "Tally / Envoy at each step: {}.\n", parts.join("; "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(dim: Dimension, setup: &str, x: u64, rss_kib: u64, cpu: f64) -> ScalePoint {
        ScalePoint {
            dimension: dim.title().into(),
            setup: setup.into(),
            x,
            rss_kib,
            hwm_kib: rss_kib + 100,
            cpu: Some(cpu),
            rate: None,
            ok: x,
            failed: 0,
            first_error: None,
            other_cpu_cores: 0.1,
            load: 1.0,
        }
    }

    fn report(points: Vec<ScalePoint>) -> ScaleReport {
        ScaleReport {
            date: "d".into(),
            commit: "c".into(),
            machine: "m".into(),
            settings: "s".into(),
            points,
        }
    }

    #[test]
    fn idle_connections_report_kib_per_connection_and_a_verdict() {
        let d = Dimension::IdleConnections;
        let r = report(vec![
            point(d, "tally", 1, 20_000, 0.5),
            point(d, "tally", 1_000, 29_000, 0.6),
            point(d, "tally", 10_000, 110_000, 0.7),
            point(d, "envoy", 1, 130_000, 1.0),
            point(d, "envoy", 1_000, 160_000, 1.0),
            point(d, "envoy", 10_000, 430_000, 1.0),
        ]);
        let md = markdown(&r);
        assert!(
            md.contains("| idle client connections | tally | 1–10000 | 9.000 KiB per connection | at most linear"),
            "{md}"
        );
        // 81 000 KiB over 9 000 connections.
        assert!(
            md.contains("| tally | 10000 | 107.4 | 81000 | 9.000 |"),
            "{md}"
        );
        assert!(
            md.contains("Tally / Envoy at each step: 1: RSS 0.15"),
            "{md}"
        );
        assert!(
            md.contains("- Verdict, idle client connections (tally): RSS at most linear"),
            "{md}"
        );
        assert!(
            md.contains("CPU flat (within noise). Grows at most linearly: yes."),
            "{md}"
        );
        let v = verdicts(&r);
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.at_most_linear() == Some(true)));
    }

    #[test]
    fn a_quadratic_memory_curve_fails_its_dimension() {
        let d = Dimension::Services;
        let pts: Vec<ScalePoint> = [1u64, 10, 100, 1000]
            .iter()
            .map(|&x| point(d, "tally", x, 20_000 + x * x, 90.0))
            .collect();
        let r = report(pts);
        let v = verdicts(&r);
        assert_eq!(v[0].at_most_linear(), Some(false));
        assert!(markdown(&r).contains("Grows at most linearly: **no**."));
    }

    #[test]
    fn per_call_cpu_noise_is_relative() {
        let d = Dimension::Streams;
        let series = [
            point(d, "tally", 1, 20_000, 100.0),
            point(d, "tally", 10, 20_100, 110.0),
            point(d, "tally", 100, 20_300, 95.0),
        ];
        let refs: Vec<&ScalePoint> = series.iter().collect();
        let v = verdict(d, "tally", &refs);
        assert_eq!(v.cpu, Growth::Flat);
        assert_eq!(v.rss, Growth::Flat);
    }

    #[test]
    fn one_step_is_not_judged() {
        let d = Dimension::MessageSize;
        let series = [point(d, "tally", 128, 20_000, 100.0)];
        let refs: Vec<&ScalePoint> = series.iter().collect();
        assert_eq!(verdict(d, "tally", &refs).at_most_linear(), None);
    }
}
