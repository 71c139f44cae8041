//! A chaos scenario as written in TOML: the load (calls per second by method, for how long),
//! the faults and kills at their offsets, and the verdicts to check afterwards. Parsing is
//! strict (unknown keys are refused by name) and [`Scenario::parse`] checks what serde cannot:
//! offsets inside the run, percentages, no two faults on one route at once.

use serde::Deserialize;
use std::time::Duration;

/// gRPC code of an injected abort unless the scenario says otherwise (UNAVAILABLE).
pub const DEFAULT_ABORT_GRPC_STATUS: u16 = 14;
/// Deadline of each load call unless the scenario says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest load a scenario may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most calls per second one method may ask for.
pub const MAX_RATE: f64 = 500.0;

/// The methods the load can call (through the gateway, with the SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    GetPoll,
    GetResults,
    CastVote,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::GetPoll, Method::GetResults, Method::CastVote];

    pub fn name(self) -> &'static str {
        match self {
            Method::GetPoll => "GetPoll",
            Method::GetResults => "GetResults",
            Method::CastVote => "CastVote",
        }
    }
}

/// `[load.rate]`: calls per second of each method (absent = not called).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    #[serde(rename = "GetPoll", default)]
    pub get_poll: f64,
    #[serde(rename = "GetResults", default)]
    pub get_results: f64,
    #[serde(rename = "CastVote", default)]
    pub cast_vote: f64,
}

impl Rates {
    pub fn of(&self, m: Method) -> f64 {
        match m {
            Method::GetPoll => self.get_poll,
            Method::GetResults => self.get_results,
            Method::CastVote => self.cast_vote,
        }
    }
    pub fn total(&self) -> f64 {
        Method::ALL.iter().map(|m| self.of(*m)).sum()
    }
}

/// `[load]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(deserialize_with = "de_duration")]
    pub duration: Duration,
    /// Deadline of each call.
    #[serde(default = "call_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    pub rate: Rates,
}

fn call_timeout() -> Duration {
    DEFAULT_CALL_TIMEOUT
}

/// `[[fault]]`: fault settings on one route of one sidecar, from `at` to `until` (default:
/// the end of the load). The route's previous settings come back afterwards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// A proxy instance of `tally up` (`polling-proxy`, `user-1-proxy`, `gateway`).
    pub sidecar: String,
    /// `inbound`, or the name of a target service for a caller's outbound route.
    pub route: String,
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub until: Option<Duration>,
    #[serde(default)]
    pub abort_percent: f64,
    #[serde(default = "abort_status")]
    pub abort_grpc_status: u16,
    #[serde(default)]
    pub delay_percent: f64,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub reset_percent: f64,
}

fn abort_status() -> u16 {
    DEFAULT_ABORT_GRPC_STATUS
}

/// The signal a kill sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Signal {
    #[serde(rename = "SIGKILL")]
    Kill,
    #[serde(rename = "SIGTERM")]
    Term,
}

/// `[[kill]]`: a signal to one instance of `tally up` at `at` (`tally up` restarts it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kill {
    pub instance: String,
    pub signal: Signal,
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
}

/// `[[slo]]`: objectives for one method's calls (or `all`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// `GetPoll`, `GetResults`, `CastVote` or `all`.
    pub method: String,
    /// Fraction of calls that must succeed (0.99 = 99 %).
    #[serde(default)]
    pub min_success_rate: Option<f64>,
    /// Highest allowed 99th-percentile latency.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_p99: Option<Duration>,
}

impl Slo {
    /// The method, or `None` for `all`.
    pub fn method(&self) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == self.method)
    }
}

/// `[invariants]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invariants {
    /// Every vote the platform accepted is counted exactly once in polling's results.
    #[serde(default = "yes")]
    pub votes_counted_once: bool,
    /// Every sidecar touched has its original fault settings back after the run.
    #[serde(default = "yes")]
    pub faults_cleared: bool,
}

impl Default for Invariants {
    fn default() -> Self {
        Self {
            votes_counted_once: true,
            faults_cleared: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub load: Load,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    #[serde(default, rename = "kill")]
    pub kills: Vec<Kill>,
    #[serde(default, rename = "slo")]
    pub slos: Vec<Slo>,
    #[serde(default)]
    pub invariants: Invariants,
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("scenario {file}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub message: String,
}

impl Scenario {
    /// Parses and checks `text` (`file` names it in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, ScenarioError> {
        let err = |message: String| ScenarioError {
            file: file.to_string(),
            message,
        };
        let s: Scenario = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        s.check().map_err(err)?;
        Ok(s)
    }

    /// When a fault ends.
    pub fn fault_end(&self, f: &Fault) -> Duration {
        f.until.unwrap_or(self.load.duration)
    }

    fn check(&self) -> Result<(), String> {
        let d = self.load.duration;
        if d.is_zero() || d > MAX_DURATION {
            return Err(format!(
                "load.duration must be above 0 and at most {MAX_DURATION:?}"
            ));
        }
        if self.load.timeout.is_zero() {
            return Err("load.timeout must be above 0".into());
        }
        for m in Method::ALL {
            let r = self.load.rates_of(m);
            if !(0.0..=MAX_RATE).contains(&r) {
                return Err(format!(
                    "load.rate.{}: {r} is not between 0 and {MAX_RATE}",
                    m.name()
                ));
            }
        }
        if self.load.rate.total() <= 0.0 {
            return Err("load.rate: give at least one method a rate above 0".into());
        }
        for (i, f) in self.faults.iter().enumerate() {
            let at = format!("fault[{i}] ({} {})", f.sidecar, f.route);
            let end = self.fault_end(f);
            if f.at >= end || end > d {
                return Err(format!(
                    "{at}: `at` must come before `until`, both within load.duration ({d:?})"
                ));
            }
            for (k, p) in [
                ("abort_percent", f.abort_percent),
                ("delay_percent", f.delay_percent),
                ("reset_percent", f.reset_percent),
            ] {
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("{at}: {k} {p} is not between 0 and 100"));
                }
            }
            if f.abort_percent + f.delay_percent + f.reset_percent <= 0.0 {
                return Err(format!("{at}: sets no fault (all percentages are 0)"));
            }
            for g in &self.faults[..i] {
                if g.sidecar == f.sidecar
                    && g.route == f.route
                    && g.at < end
                    && f.at < self.fault_end(g)
                {
                    return Err(format!(
                        "{at}: overlaps an earlier fault on the same route; merge them"
                    ));
                }
            }
        }
        for (i, k) in self.kills.iter().enumerate() {
            if k.at >= d {
                return Err(format!(
                    "kill[{i}] ({}): `at` must be within load.duration ({d:?})",
                    k.instance
                ));
            }
        }
        for (i, s) in self.slos.iter().enumerate() {
            if s.method != "all" && s.method().is_none() {
                return Err(format!(
                    "slo[{i}]: unknown method `{}`; use one of GetPoll, GetResults, CastVote, all",
                    s.method
                ));
            }
            if s.min_success_rate.is_none() && s.max_p99.is_none() {
                return Err(format!(
                    "slo[{i}] ({}): set min_success_rate or max_p99",
                    s.method
                ));
            }
            if let Some(r) = s.min_success_rate
                && !(0.0..=1.0).contains(&r)
            {
                return Err(format!(
                    "slo[{i}] ({}): min_success_rate {r} is a fraction between 0 and 1",
                    s.method
                ));
            }
        }
        Ok(())
    }
}

impl Load {
    fn rates_of(&self, m: Method) -> f64 {
        self.rate.of(m)
    }
}

/// `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("`{s}`: add a unit (ms, s or m)"))?;
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("`{s}`: use ms, s or m")),
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "abort storm"
[load]
duration = "20s"
rate = { GetPoll = 10, CastVote = 2.5 }

[[fault]]
sidecar = "polling-proxy"
route = "inbound"
at = "2s"
until = "15s"
abort_percent = 20

[[fault]]
sidecar = "polling-proxy"
route = "inbound"
at = "15s"
delay_percent = 50
delay_ms = 100

[[kill]]
instance = "analytics"
signal = "SIGKILL"
at = "5s"

[[slo]]
method = "GetPoll"
min_success_rate = 0.95
max_p99 = "500ms"

[[slo]]
method = "all"
max_p99 = "2s"
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse("t.toml", text)
    }

    #[test]
    fn a_full_scenario_parses_with_its_defaults() {
        let s = parse(GOOD).expect("parses");
        assert_eq!(s.load.duration, Duration::from_secs(20));
        assert_eq!(s.load.timeout, DEFAULT_CALL_TIMEOUT);
        assert_eq!(s.load.rate.of(Method::GetPoll), 10.0);
        assert_eq!(s.load.rate.of(Method::GetResults), 0.0);
        assert_eq!(s.faults[0].abort_grpc_status, DEFAULT_ABORT_GRPC_STATUS);
        assert_eq!(s.fault_end(&s.faults[0]), Duration::from_secs(15));
        assert_eq!(s.fault_end(&s.faults[1]), Duration::from_secs(20));
        assert_eq!(s.kills[0].signal, Signal::Kill);
        assert_eq!(s.slos[0].method(), Some(Method::GetPoll));
        assert_eq!(s.slos[1].method(), None);
        assert_eq!(s.invariants, Invariants::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (bad, word) in [
            (
                "name = \"x\"\ncolour = 1\n[load]\nduration=\"1s\"\nrate={GetPoll=1}",
                "colour",
            ),
            (
                "name = \"x\"\n[load]\nduration=\"1s\"\nrate={GetPol=1}",
                "GetPol",
            ),
            (
                "name = \"x\"\n[load]\nduration=\"1s\"\nrate={GetPoll=1}\n[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"0s\"\nabort_pct=5",
                "abort_pct",
            ),
            (
                "name = \"x\"\n[load]\nduration=\"1s\"\nrate={GetPoll=1}\n[invariants]\nno_leaks=true",
                "no_leaks",
            ),
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("unknown field") && e.contains(word), "{e}");
            assert!(e.starts_with("scenario t.toml:"), "{e}");
        }
    }

    #[test]
    fn values_serde_cannot_check_are_refused_with_the_reason() {
        let base = "name = \"x\"\n[load]\nduration=\"10s\"\nrate={GetPoll=1}\n";
        for (extra, why) in [
            (
                "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"11s\"\nabort_percent=5",
                "within load.duration",
            ),
            (
                "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"1s\"\nabort_percent=500",
                "not between 0 and 100",
            ),
            (
                "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"1s\"",
                "sets no fault",
            ),
            (
                "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"1s\"\nabort_percent=5\n\
                 [[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"3s\"\nabort_percent=5",
                "overlaps",
            ),
            (
                "[[kill]]\ninstance=\"a\"\nsignal=\"SIGHUP\"\nat=\"1s\"",
                "SIGHUP",
            ),
            (
                "[[slo]]\nmethod=\"Login\"\nmax_p99=\"1s\"",
                "unknown method `Login`",
            ),
            ("[[slo]]\nmethod=\"all\"", "set min_success_rate or max_p99"),
            ("[[slo]]\nmethod=\"all\"\nmin_success_rate=99", "fraction"),
        ] {
            let e = parse(&format!("{base}{extra}"))
                .expect_err(extra)
                .to_string();
            assert!(e.contains(why), "{extra}: {e}");
        }
        let e = parse("name=\"x\"\n[load]\nduration=\"10\"\nrate={GetPoll=1}").expect_err("unit");
        assert!(e.to_string().contains("add a unit"), "{e}");
        let e = parse("name=\"x\"\n[load]\nduration=\"1s\"\nrate={}").expect_err("no load");
        assert!(e.to_string().contains("at least one method"), "{e}");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        for (file, text) in [
            (
                "abort-storm-polling",
                include_str!("../../../tests/chaos/abort-storm-polling.toml"),
            ),
            (
                "delay-storm-polling",
                include_str!("../../../tests/chaos/delay-storm-polling.toml"),
            ),
            (
                "kill-polling",
                include_str!("../../../tests/chaos/kill-polling.toml"),
            ),
            (
                "impossible-slo",
                include_str!("../../../tests/chaos/impossible-slo.toml"),
            ),
        ] {
            let s = Scenario::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!s.slos.is_empty(), "{file}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
