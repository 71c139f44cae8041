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
/// How long sagas may take to end after the load unless the scenario says otherwise (a
/// parked charge waits at most 20 s between attempts).
pub const DEFAULT_SAGA_WAIT: Duration = Duration::from_secs(90);
/// Instances only some `tally up` runs have, which a scenario may require (`redis`:
/// `tally up --redis`).
pub const OPTIONAL_INSTANCES: [&str; 1] = ["redis"];
/// Most calls per second one method may ask for.
pub const MAX_RATE: f64 = 500.0;

/// The methods the load can call (through the gateway, with the SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    GetPoll,
    GetResults,
    CastVote,
    /// Billing's `StartSubscription` (a saga: seat, charge, activate, limits), each by a
    /// user of its own.
    StartSubscription,
    /// The user service's `Login` of a load user (writes a session).
    Login,
    /// The user service's `RefreshAccessToken` with a session from the setup (reads it).
    RefreshAccessToken,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::GetPoll,
        Method::GetResults,
        Method::CastVote,
        Method::StartSubscription,
        Method::Login,
        Method::RefreshAccessToken,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::GetPoll => "GetPoll",
            Method::GetResults => "GetResults",
            Method::CastVote => "CastVote",
            Method::StartSubscription => "StartSubscription",
            Method::Login => "Login",
            Method::RefreshAccessToken => "RefreshAccessToken",
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
    #[serde(rename = "StartSubscription", default)]
    pub start_subscription: f64,
    #[serde(rename = "Login", default)]
    pub login: f64,
    #[serde(rename = "RefreshAccessToken", default)]
    pub refresh_access_token: f64,
}

impl Rates {
    pub fn of(&self, m: Method) -> f64 {
        match m {
            Method::GetPoll => self.get_poll,
            Method::GetResults => self.get_results,
            Method::CastVote => self.cast_vote,
            Method::StartSubscription => self.start_subscription,
            Method::Login => self.login,
            Method::RefreshAccessToken => self.refresh_access_token,
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

/// `[[rotate_cert]]`: a fresh workload certificate for one proxy instance at `at`, issued by
/// the mesh CA of `tally up` and written over the files the proxy watches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCert {
    /// A proxy instance (`polling-proxy`, `gateway`).
    pub instance: String,
    #[serde(deserialize_with = "de_duration")]
    pub at: Duration,
}

/// `[[poison]]`: dead letters the scenario expects (and so explains): those of `service`
/// (and `consumer` / `event_type` when given), at most `max` of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poison {
    /// The consuming service (`analytics`, `notification`, `polling`).
    pub service: String,
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    pub max: u32,
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
    /// Every saga the load started ends (ACTIVE, FAILED or CANCELLED) within `saga_wait`
    /// after the load, and the ledger reconciles (checked when the load starts subscriptions).
    #[serde(default = "yes")]
    pub sagas_ended: bool,
    /// How long after the load the sagas may take to end.
    #[serde(default = "saga_wait", deserialize_with = "de_duration")]
    pub saga_wait: Duration,
    /// No dead letter appeared during the run that a `[[poison]]` does not explain.
    #[serde(default = "yes")]
    pub dead_letters_explained: bool,
    /// Watchers of the load's polls saw every update, in order, resuming after each break
    /// from their last sequence (checked when the load casts votes).
    #[serde(default = "yes")]
    pub notifications_gapless: bool,
    /// Every session the setup's logins wrote still refreshes an access token after the run
    /// (checked when the load logs in or refreshes).
    #[serde(default = "yes")]
    pub sessions_survive: bool,
}

impl Default for Invariants {
    fn default() -> Self {
        Self {
            votes_counted_once: true,
            faults_cleared: true,
            sagas_ended: true,
            saga_wait: DEFAULT_SAGA_WAIT,
            dead_letters_explained: true,
            notifications_gapless: true,
            sessions_survive: true,
        }
    }
}

fn saga_wait() -> Duration {
    DEFAULT_SAGA_WAIT
}

fn yes() -> bool {
    true
}

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Optional instances the scenario needs in the running `tally up` (only `redis`, from
    /// `tally up --redis`): the run is refused without them.
    #[serde(default)]
    pub requires: Vec<String>,
    pub load: Load,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    #[serde(default, rename = "kill")]
    pub kills: Vec<Kill>,
    #[serde(default, rename = "rotate_cert")]
    pub rotations: Vec<RotateCert>,
    #[serde(default, rename = "poison")]
    pub poison: Vec<Poison>,
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
        for r in &self.requires {
            if !OPTIONAL_INSTANCES.contains(&r.as_str()) {
                return Err(format!(
                    "requires: unknown instance `{r}`; a scenario may require {}",
                    OPTIONAL_INSTANCES.join(", ")
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
        for (i, r) in self.rotations.iter().enumerate() {
            if r.at >= d {
                return Err(format!(
                    "rotate_cert[{i}] ({}): `at` must be within load.duration ({d:?})",
                    r.instance
                ));
            }
        }
        for (i, p) in self.poison.iter().enumerate() {
            if p.max == 0 {
                return Err(format!("poison[{i}] ({}): max must be above 0", p.service));
            }
        }
        for (i, s) in self.slos.iter().enumerate() {
            if s.method != "all" && s.method().is_none() {
                return Err(format!(
                    "slo[{i}]: unknown method `{}`; use one of GetPoll, GetResults, CastVote, \
                     StartSubscription, Login, RefreshAccessToken, all",
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
#[path = "scenario_tests.rs"]
mod tests;
