//! `tally rollout`: moves traffic to a canary started with `tally up --canary SERVICE` in
//! steps (5 → 25 → 50 → 100 % by default) through the callers' admin API (`PUT /split`),
//! comparing the canary's error rate and p99 with the stable version's from the sidecars'
//! own `/metrics`, and sets the weight back to 0 by itself when the canary breaches a
//! threshold. `tally rollout status` prints the steps and the evidence, kept in
//! `<data-dir>/rollout/<service>.json`.

pub(crate) mod admin;
pub(crate) mod judge;
pub(crate) mod metrics;
pub(crate) mod record;
pub(crate) mod steps;
pub(crate) mod topology;

use judge::Thresholds;
use metrics::Reading;
use record::{Record, State};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The weights a rollout goes through by default.
pub const DEFAULT_STEPS: &str = "5,25,50,100";
/// How long each step must stay healthy by default.
pub const DEFAULT_STEP_TIME: &str = "30s";
/// How often the evidence is read (and a breach can be seen) by default.
pub const DEFAULT_INTERVAL: &str = "1s";

/// `tally rollout`.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Whether to start a rollout or show the last one.
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The `tally rollout` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Shift calls to the canary of SERVICE step by step; roll back on a breach.
    Start(StartArgs),
    /// Show the steps and the evidence of SERVICE's last rollout.
    Status(StatusArgs),
}

/// Which canary `tally rollout start` promotes, and the steps and thresholds it uses.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The service whose canary `tally up --canary SERVICE` started.
    pub service: String,
    /// The data directory of the running `tally up`.
    #[arg(long, default_value = ".tally")]
    pub data_dir: PathBuf,
    /// Percent of calls to the canary at each step, ascending, ending at 100.
    #[arg(long, default_value = DEFAULT_STEPS, value_delimiter = ',',
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub steps: Vec<u8>,
    /// How long each step must stay healthy before the next (e.g. 30s, 2m, 500ms).
    #[arg(long, default_value = DEFAULT_STEP_TIME, value_parser = parse_duration)]
    pub step_time: Duration,
    /// How often the evidence is read.
    #[arg(long, default_value = DEFAULT_INTERVAL, value_parser = parse_duration)]
    pub interval: Duration,
    /// Canary calls needed before a step can be judged.
    #[arg(long, default_value_t = judge::DEFAULT_MIN_CALLS)]
    pub min_calls: u64,
    /// Allowed increase of the canary's server-error rate over the stable one's (0.05 = 5 points).
    #[arg(long, default_value_t = judge::DEFAULT_MAX_ERROR_RATE_INCREASE)]
    pub max_error_rate_increase: f64,
    /// Allowed ratio of the canary's p99 to the stable one's.
    #[arg(long, default_value_t = judge::DEFAULT_MAX_P99_RATIO)]
    pub max_p99_ratio: f64,
}

/// Whose rollout record `tally rollout status` prints.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The service whose last rollout to show.
    pub service: String,
    /// The data directory of the `tally up` that ran the rollout.
    #[arg(long, default_value = ".tally")]
    pub data_dir: PathBuf,
}

/// Why a rollout stopped short of promoting the canary.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The rollout cannot go ahead as asked (bad steps, unreadable admin token, unprintable record).
    #[error("{0}")]
    Usage(String),
    /// The running platform's layout (callers, sidecars) could not be read.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// A caller's admin API refused or failed to change the split.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The rollout record could not be read or written.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The canary breached a threshold and its weight was set back to 0.
    #[error("rolled back {service} at {weight}%: {reason}")]
    RolledBack {
        /// The service whose canary was rolled back.
        service: String,
        /// The canary's percent of calls when the breach was seen.
        weight: u8,
        /// Which threshold was breached, with the evidence.
        reason: String,
    },
}

/// `500ms`, `10s`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("`{s}`: add a unit (ms, s or m)"))?;
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}`: use ms, s or m")),
    }
}

/// Runs `tally rollout`; with `json`, `status` prints the record as JSON.
pub async fn run(json: bool, args: RolloutArgs) -> Result<(), RolloutError> {
    match args.command {
        RolloutCommand::Start(a) => start(a).await.map(|_| ()),
        RolloutCommand::Status(a) => {
            let r = Record::load(&a.data_dir, &a.service)?;
            if json {
                let text = serde_json::to_string_pretty(&r)
                    .map_err(|e| RolloutError::Usage(format!("cannot print the record: {e}")))?;
                println!("{text}");
            } else {
                print!("{}", r.render());
            }
            Ok(())
        }
    }
}

/// The summed inbound reading of `sidecars`.
async fn read(sidecars: &[SocketAddr]) -> Result<Reading, RolloutError> {
    let mut all = Vec::new();
    for a in sidecars {
        all.push(Reading::parse(
            &admin::request(*a, "GET", "/metrics", None, "").await?,
        ));
    }
    Ok(Reading::sum(all))
}

/// Sets the canary weight on every caller.
async fn set_weight(
    callers: &[SocketAddr],
    token: &str,
    service: &str,
    weight: u8,
) -> Result<(), RolloutError> {
    let body = serde_json::json!({ "service": service, "weight": weight }).to_string();
    for c in callers {
        admin::request(*c, "PUT", "/split", Some(token), &body).await?;
    }
    Ok(())
}

fn check_steps(steps: &[u8]) -> Result<(), RolloutError> {
    if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) || steps.last() != Some(&100) {
        return Err(RolloutError::Usage(format!(
            "--steps {steps:?}: give ascending percentages ending at 100, e.g. {DEFAULT_STEPS}"
        )));
    }
    Ok(())
}

/// The proxies of a `tally up` rollout, through their admin APIs.
struct AdminControl {
    topo: topology::Topology,
    token: String,
    service: String,
    data_dir: PathBuf,
}

impl steps::Control for AdminControl {
    async fn set_weight(&mut self, weight: u8) -> Result<(), String> {
        set_weight(&self.topo.callers, &self.token, &self.service, weight)
            .await
            .map_err(|e| e.to_string())
    }
    async fn canary(&mut self) -> Result<Reading, String> {
        read(&self.topo.canary).await.map_err(|e| e.to_string())
    }
    async fn stable(&mut self) -> Result<Reading, String> {
        read(&self.topo.stable).await.map_err(|e| e.to_string())
    }
    fn progress(&mut self, record: &Record, line: Option<String>) {
        if let Err(e) = record.save(&self.data_dir) {
            tracing::warn!(error = %e, "cannot save the rollout record");
        }
        if let Some(line) = line {
            say(&format!("{}: {line}", self.service));
        }
    }
}

/// Runs the rollout to promotion (Ok) or rollback (Err), recording every reading.
pub async fn start(a: StartArgs) -> Result<Record, RolloutError> {
    check_steps(&a.steps)?;
    let topo = topology::read(&a.data_dir, &a.service)?;
    let token = std::fs::read_to_string(crate::up::mesh::admin_token::path(&a.data_dir))
        .map_err(|e| RolloutError::Usage(format!("cannot read the admin token: {e}")))?
        .trim()
        .to_string();
    let plan = steps::Plan {
        steps: a.steps.clone(),
        step_time: a.step_time,
        interval: a.interval,
        thresholds: Thresholds {
            min_calls: a.min_calls,
            max_error_rate_increase: a.max_error_rate_increase,
            max_p99_ratio: a.max_p99_ratio,
            ..Thresholds::default()
        },
    };
    let mut rec = Record::new(&a.service, plan.thresholds);
    rec.save(&a.data_dir)?;
    let mut control = AdminControl {
        topo,
        token,
        service: a.service.clone(),
        data_dir: a.data_dir.clone(),
    };
    steps::run(&mut control, &plan, &mut rec).await;
    rec.save(&a.data_dir)?;
    match rec.state {
        State::RolledBack => Err(RolloutError::RolledBack {
            service: a.service.clone(),
            weight: rec.steps.last().map(|s| s.weight).unwrap_or(0),
            reason: rec.reason.clone().unwrap_or_default(),
        }),
        _ => Ok(rec),
    }
}

fn say(line: &str) {
    println!("tally rollout: {line}");
}

/// Where a service's rollout record lives.
pub fn record_path(data_dir: &Path, service: &str) -> PathBuf {
    data_dir.join("rollout").join(format!("{service}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_steps_are_checked() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(check_steps(&[5, 25, 50, 100]).is_ok());
        assert!(check_steps(&[25, 5, 100]).is_err());
        assert!(check_steps(&[5, 50]).is_err());
        assert!(check_steps(&[]).is_err());
    }
}
