//! `tally chaos run <scenario.toml>`: runs a chaos experiment against a running `tally up`
//! (found through its data directory, like `tally rollout`): the scenario's load through the
//! gateway, its faults through the sidecars' admin API (with the admin token) and its kills
//! by the pid files `tally up` keeps in `<data-dir>/run/`; then prints each verdict met or
//! not, and fails when one is not. Fault settings are always put back, also when the run is
//! interrupted (Ctrl-C or SIGTERM).

pub(crate) mod control;
pub(crate) mod dlq;
pub(crate) mod load;
pub(crate) mod rotate;
pub(crate) mod saga;
pub(crate) mod scenario;
pub(crate) mod schedule;
pub(crate) mod sessions;
pub(crate) mod verdict;
pub(crate) mod watch;

use scenario::{Method, Scenario};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use verdict::{Observed, Verdict};

/// `tally chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Whether to run a scenario or only check it.
    #[command(subcommand)]
    pub command: ChaosCommand,
}

/// The `tally chaos` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ChaosCommand {
    /// Run a scenario (load, faults, kills) and check its verdicts.
    Run(RunArgs),
    /// Parse and check a scenario without running it.
    Check(CheckArgs),
}

/// What `tally chaos run` runs, and against which `tally up`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scenario file (TOML; see tests/chaos/ and the README).
    pub scenario: PathBuf,
    /// The data directory of the running `tally up`.
    #[arg(long, default_value = ".tally")]
    pub data_dir: PathBuf,
    /// Seed of the proxies' fault draws (printed by every run; pass it again to replay one).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What `tally chaos check` parses.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The scenario file (TOML) to parse and check.
    pub scenario: PathBuf,
}

/// Why a run did not end with every verdict met.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The command line named something unusable (e.g. an unreadable scenario file).
    #[error("{0}")]
    Usage(String),
    /// The scenario file is not a valid scenario.
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    /// Setting up, driving or observing the platform failed.
    #[error("the run could not be carried out: {0}")]
    Run(String),
    /// Ctrl-C or SIGTERM stopped the run; says whether the faults were put back.
    #[error("{0}")]
    Interrupted(String),
    /// The run finished but these verdicts (by name) were not met.
    #[error("verdicts not met: {}", .0.join("; "))]
    NotMet(Vec<String>),
}

/// Runs `tally chaos`.
pub async fn run(args: ChaosArgs) -> Result<(), ChaosError> {
    match args.command {
        ChaosCommand::Check(a) => {
            let s = read(&a.scenario)?;
            println!(
                "scenario {}: {} fault(s), {} kill(s), {} certificate rotation(s), {} SLO(s) over {:?}",
                s.name,
                s.faults.len(),
                s.kills.len(),
                s.rotations.len(),
                s.slos.len(),
                s.load.duration
            );
            Ok(())
        }
        ChaosCommand::Run(a) => run_scenario(&a).await,
    }
}

fn read(path: &std::path::Path) -> Result<Scenario, ChaosError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ChaosError::Usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(Scenario::parse(&path.display().to_string(), &text)?)
}

async fn run_scenario(a: &RunArgs) -> Result<(), ChaosError> {
    let s = read(&a.scenario)?;
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut ctl = control::Platform::open(&a.data_dir, &s, seed).map_err(ChaosError::Run)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let sizes = load::sizes(&s.load);
    say(&format!(
        "{}: run {run_id} (fault seed {seed}): setting up {} user(s), {} poll(s) and {} subscriber(s) through the gateway {}",
        s.name, sizes.users, sizes.polls, sizes.subscribers, ctl.gateway
    ));
    let fx = Arc::new(
        load::setup(&ctl.gateway, &run_id, sizes, s.load.timeout)
            .await
            .map_err(ChaosError::Run)?,
    );
    ctl.snapshot().await.map_err(ChaosError::Run)?;
    let dead_before = if s.invariants.dead_letters_explained {
        Some(dlq::list(&ctl.services).await.map_err(ChaosError::Run)?)
    } else {
        None
    };
    let mut watchers = Watchers::start(&s, &ctl, &fx).map_err(ChaosError::Run)?;
    // Everything from the first fault on runs under the interrupt guard.
    let outcome = tokio::select! {
        r = experiment(&s, &mut ctl, fx.clone()) => Ok(r),
        why = interrupted() => Err(why),
    };
    let restored = ctl.restore_all().await;
    let (rec, events) = match outcome {
        Ok(r) => r,
        Err(why) => {
            return Err(ChaosError::Interrupted(format!(
                "{why}; {}",
                restored.unwrap_or_else(|e| format!("NOT ALL: {e}"))
            )));
        }
    };
    let mut events = events;
    events.push(format!(
        "end: {}",
        restored.clone().unwrap_or_else(|e| format!("FAILED {e}"))
    ));
    let verdicts = judge(&s, &ctl, &fx, rec, &events, &mut watchers, dead_before).await?;
    watchers.stop();
    let report = verdict::render(&s.name, &verdicts.0, &events, &verdicts.1);
    print!("{report}");
    let not_met: Vec<String> = verdicts
        .1
        .iter()
        .filter(|v| !v.met)
        .map(|v| v.name.clone())
        .collect();
    if not_met.is_empty() {
        Ok(())
    } else {
        Err(ChaosError::NotMet(not_met))
    }
}

/// The load and the schedule together; the recording and the schedule's log.
async fn experiment(
    s: &Scenario,
    ctl: &mut control::Platform,
    fx: Arc<load::Fixture>,
) -> (load::Recording, Vec<String>) {
    let rec = Arc::new(Mutex::new(load::Recording::default()));
    let start = tokio::time::Instant::now();
    let until = start + s.load.duration;
    let mut drivers = tokio::task::JoinSet::new();
    for m in Method::ALL {
        drivers.spawn(load::drive(
            m,
            s.load.rate.of(m),
            until,
            fx.clone(),
            rec.clone(),
        ));
    }
    let steps = schedule::timeline(s);
    let log = schedule::run(&steps, start, ctl).await;
    while drivers.join_next().await.is_some() {}
    let rec = match Arc::try_unwrap(rec) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner())),
    };
    (rec, log)
}

/// The notification watchers of a run (none when the invariant is off or nothing votes).
struct Watchers {
    stop: tokio::sync::watch::Sender<bool>,
    seen: Vec<(String, tokio::sync::watch::Receiver<watch::Seen>)>,
}

impl Watchers {
    fn start(s: &Scenario, ctl: &control::Platform, fx: &load::Fixture) -> Result<Self, String> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut seen = Vec::new();
        if s.invariants.notifications_gapless && s.load.rate.cast_vote > 0.0 {
            let gateway =
                tonic::transport::Endpoint::from_shared(tally_sdk::normalize_addr(&ctl.gateway))
                    .map_err(|e| format!("gateway {}: {e}", ctl.gateway))?
                    .connect_lazy();
            for (i, (poll, _)) in fx.polls.iter().take(watch::MAX_WATCHED).enumerate() {
                let (tx, rx) = tokio::sync::watch::channel(watch::Seen::default());
                tokio::spawn(watch::follow(
                    gateway.clone(),
                    fx.users[i % fx.users.len()].clone(),
                    poll.clone(),
                    tx,
                    stopped.clone(),
                ));
                seen.push((poll.clone(), rx));
            }
        }
        Ok(Self { stop, seen })
    }

    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// SLOs on the calls, then the invariants (after the votes are settled).
async fn judge(
    s: &Scenario,
    ctl: &control::Platform,
    fx: &load::Fixture,
    mut rec: load::Recording,
    events: &[String],
    watchers: &mut Watchers,
    dead_before: Option<std::collections::BTreeSet<dlq::DeadLetter>>,
) -> Result<(Observed, Vec<Verdict>), ChaosError> {
    let observed = Observed {
        calls: std::mem::take(&mut rec.calls),
    };
    let mut verdicts = verdict::slo_verdicts(&s.slos, &observed);
    let failed: Vec<&String> = events.iter().filter(|e| e.contains("FAILED")).collect();
    verdicts.push(Verdict {
        name: "every scheduled fault carried out".into(),
        met: failed.is_empty(),
        detail: if failed.is_empty() {
            format!("{} step(s)", events.len())
        } else {
            let lines: Vec<&str> = failed.iter().map(|e| e.trim()).collect();
            format!(
                "{} of {} failed: {}",
                failed.len(),
                events.len(),
                lines.join("; ")
            )
        },
    });
    let votes = s.invariants.votes_counted_once && s.load.rate.cast_vote > 0.0;
    if votes || !watchers.seen.is_empty() {
        load::settle(fx, &mut rec.votes).await;
        let unsettled = rec.votes.iter().filter(|v| v.accepted.is_none()).count();
        let results = load::results(fx).await.map_err(ChaosError::Run)?;
        if votes {
            verdicts.push(verdict::votes_counted_once(
                &load::accepted(&rec.votes),
                &results,
                unsettled,
            ));
        }
        if !watchers.seen.is_empty() {
            verdicts.push(watch::gapless(&mut watchers.seen, &results).await);
        }
    }
    if s.invariants.sagas_ended && s.load.rate.start_subscription > 0.0 {
        saga::settle(&fx.subscribers, &mut rec.started).await;
        let unknown = rec.started.iter().filter(|s| s.id.is_none()).count();
        let payment = ctl
            .services
            .get("payment")
            .ok_or_else(|| ChaosError::Run("no `payment` instance to read the ledger".into()))?;
        let ended = saga::observe(
            &fx.subscribers,
            &rec.started,
            payment,
            s.invariants.saga_wait,
        )
        .await
        .map_err(ChaosError::Run)?;
        verdicts.push(saga::sagas_ended(&ended, unknown, s.invariants.saga_wait));
    }
    let rate = &s.load.rate;
    if s.invariants.sessions_survive && (rate.login > 0.0 || rate.refresh_access_token > 0.0) {
        verdicts.push(sessions::survived(&sessions::check(fx).await));
    }
    if s.invariants.faults_cleared {
        verdicts.push(ctl.faults_cleared().await);
    }
    if let Some(before) = dead_before {
        let after = dlq::list(&ctl.services).await.map_err(ChaosError::Run)?;
        verdicts.push(dlq::explained(&before, &after, &s.poison));
    }
    Ok((observed, verdicts))
}

/// Resolves on Ctrl-C or SIGTERM, naming it.
async fn interrupted() -> String {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return "interrupted (Ctrl-C)".into(),
                _ = term.recv() => return "terminated (SIGTERM)".into(),
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted (Ctrl-C)".into()
}

fn say(line: &str) {
    println!("tally chaos: {line}");
}
