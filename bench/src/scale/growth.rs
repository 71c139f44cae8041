//! How a cost curve grows with a scale dimension: the change per step, the change per
//! unit of the dimension, and a verdict on whether the curve grows at most linearly.
//!
//! The verdict looks at the *added* cost over the first step, `a(x) = y(x) - y(x0)`,
//! and at its log-log slope between consecutive steps,
//! `e = ln(a_i / a_{i-1}) / ln((x_i - x0) / (x_{i-1} - x0))`: 1 for a straight line,
//! 2 for a square. Steps whose added cost is within the measurement noise count as
//! flat; a step that rises out of the noise is compared against the noise level, which
//! can only underestimate its slope, so a noisy run never reads as "faster than linear"
//! because of a tiny earlier value.

/// Slopes up to 1 + this still count as linear (noise on a 2-core machine).
pub const LINEAR_SLACK: f64 = 0.25;

/// One measured point of a curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The dimension's value (connections, streams, services, bytes).
    pub x: f64,
    /// The cost there (KiB, CPU ms, ...).
    pub y: f64,
}

/// The change from the previous point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepGrowth {
    /// `y_i - y_{i-1}`.
    pub delta: f64,
    /// `delta / (x_i - x_{i-1})`: the cost of one more unit in this step.
    pub per_unit: f64,
}

/// How a curve grows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Growth {
    /// Fewer than two points: nothing to judge.
    Unknown,
    /// Never rose out of the noise over the first point.
    Flat,
    /// Rose over a single step (two points): a rise, but no shape to judge.
    OneStep,
    /// Rose, with every measured slope at most 1 + [`LINEAR_SLACK`]; the steepest slope.
    AtMostLinear(f64),
    /// Some step rose faster than linearly; the steepest slope.
    FasterThanLinear(f64),
}

impl Growth {
    /// True unless the curve grew faster than linearly (unknown counts as not judged: None).
    pub fn at_most_linear(&self) -> Option<bool> {
        match self {
            Growth::Unknown | Growth::OneStep => None,
            Growth::Flat | Growth::AtMostLinear(_) => Some(true),
            Growth::FasterThanLinear(_) => Some(false),
        }
    }

    /// A few words for the report.
    pub fn describe(&self) -> String {
        match self {
            Growth::Unknown => "not judged (fewer than two points)".into(),
            Growth::Flat => "flat (within noise)".into(),
            Growth::OneStep => "rose over its only step (more steps needed to judge)".into(),
            Growth::AtMostLinear(e) => format!("at most linear (log-log slope {e:.2})"),
            Growth::FasterThanLinear(e) => {
                format!("**faster than linear** (log-log slope {e:.2})")
            }
        }
    }
}

/// The change at each point from the one before (the first point has none).
pub fn steps(points: &[Point]) -> Vec<Option<StepGrowth>> {
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        if i == 0 {
            out.push(None);
            continue;
        }
        let prev = points[i - 1];
        let dx = p.x - prev.x;
        let delta = p.y - prev.y;
        out.push(Some(StepGrowth {
            delta,
            per_unit: if dx != 0.0 { delta / dx } else { 0.0 },
        }));
    }
    out
}

/// The verdict for `points` (sorted by `x`, increasing), where rises of at most `noise`
/// (in `y`'s unit) are not told apart from measurement noise.
pub fn judge(points: &[Point], noise: f64) -> Growth {
    if points.len() < 2 {
        return Growth::Unknown;
    }
    let noise = noise.max(f64::MIN_POSITIVE);
    let base = points[0];
    let added: Vec<(f64, f64)> = points[1..]
        .iter()
        .map(|p| (p.x - base.x, p.y - base.y))
        .collect();
    if added.iter().all(|(_, a)| *a <= noise) {
        return Growth::Flat;
    }
    let mut steepest: Option<f64> = None;
    for pair in added.windows(2) {
        let ((dx0, a0), (dx1, a1)) = (pair[0], pair[1]);
        if a1 <= noise || dx0 <= 0.0 || dx1 <= dx0 {
            continue;
        }
        // An earlier value inside the noise is raised to the noise level: the slope
        // computed from there is a lower bound, never an overestimate.
        let a0 = a0.max(noise);
        if a1 <= a0 {
            steepest = Some(steepest.map_or(0.0, |s: f64| s.max(0.0)));
            continue;
        }
        let e = (a1 / a0).ln() / (dx1 / dx0).ln();
        steepest = Some(steepest.map_or(e, |s| s.max(e)));
    }
    match steepest {
        Some(e) if e > 1.0 + LINEAR_SLACK => Growth::FasterThanLinear(e),
        Some(e) => Growth::AtMostLinear(e),
        // No pair of steps to compare: two points only, or every later step fell back
        // into the noise.
        None if added.len() == 1 => Growth::OneStep,
        None => Growth::Flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(xs: &[f64], f: impl Fn(f64) -> f64) -> Vec<Point> {
        xs.iter().map(|&x| Point { x, y: f(x) }).collect()
    }

    const XS: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];

    #[test]
    fn a_straight_line_is_at_most_linear_with_slope_one() {
        let g = judge(&curve(&XS, |x| 5000.0 + 8.0 * x), 100.0);
        match g {
            Growth::AtMostLinear(e) => assert!((e - 1.0).abs() < 0.05, "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(g.at_most_linear(), Some(true));
    }

    #[test]
    fn a_square_is_faster_than_linear() {
        let g = judge(&curve(&XS, |x| 5000.0 + 0.5 * x * x), 100.0);
        match g {
            Growth::FasterThanLinear(e) => assert!(e > 1.8, "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(g.at_most_linear(), Some(false));
    }

    #[test]
    fn a_square_root_is_at_most_linear() {
        let g = judge(&curve(&XS, |x| 1000.0 + 400.0 * x.sqrt()), 100.0);
        assert!(matches!(g, Growth::AtMostLinear(e) if e < 0.7), "{g:?}");
    }

    #[test]
    fn noise_and_falling_curves_are_flat() {
        assert_eq!(
            judge(&curve(&XS, |x| 1000.0 + (x % 3.0) * 10.0), 100.0),
            Growth::Flat
        );
        assert_eq!(judge(&curve(&XS, |x| 1000.0 - x), 100.0), Growth::Flat);
    }

    #[test]
    fn a_rise_over_one_step_or_one_that_falls_back_is_not_a_shape() {
        let two = curve(&[1.0, 100.0], |x| 10.0 * x);
        assert_eq!(judge(&two, 1.0), Growth::OneStep);
        assert_eq!(Growth::OneStep.at_most_linear(), None);
        let back = [
            Point { x: 1.0, y: 0.0 },
            Point { x: 100.0, y: 10.0 },
            Point { x: 1000.0, y: 0.0 },
        ];
        assert_eq!(judge(&back, 5.0), Growth::Flat);
    }

    #[test]
    fn one_point_is_not_judged() {
        assert_eq!(judge(&curve(&[1.0], |x| x), 1.0), Growth::Unknown);
        assert_eq!(Growth::Unknown.at_most_linear(), None);
    }

    #[test]
    fn a_jump_out_of_the_noise_is_measured_from_the_noise_level() {
        // Flat up to 100, then +100 000 at 1000: from the noise level (100) that is a
        // slope of ln(1000)/ln(999/99) ≈ 2.98, not a division by a tiny number.
        let pts = [
            Point { x: 1.0, y: 10.0 },
            Point { x: 10.0, y: 12.0 },
            Point { x: 100.0, y: 15.0 },
            Point {
                x: 1000.0,
                y: 100_010.0,
            },
        ];
        match judge(&pts, 100.0) {
            Growth::FasterThanLinear(e) => assert!((2.5..3.5).contains(&e), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_last_step_above_noise_and_linear_from_the_noise_level() {
        // 1, 1000, 10 000 idle connections: +50 KiB (noise) then +900 KiB.
        let pts = [
            Point { x: 1.0, y: 9000.0 },
            Point {
                x: 1000.0,
                y: 9050.0,
            },
            Point {
                x: 10_000.0,
                y: 9900.0,
            },
        ];
        assert_eq!(judge(&pts, 100.0).at_most_linear(), Some(true));
    }

    #[test]
    fn steps_give_delta_and_per_unit() {
        let pts = curve(&[1.0, 1001.0, 10_001.0], |x| 2.0 * x);
        let s = steps(&pts);
        assert_eq!(s[0], None);
        assert_eq!(
            s[1],
            Some(StepGrowth {
                delta: 2000.0,
                per_unit: 2.0
            })
        );
        assert_eq!(s[2].map(|g| g.delta), Some(18_000.0));
    }
}
