//! The browser-edge benchmark (`tally-bench --edge`): the same gRPC-Web load (binary and
//! text, with an access token and a CORS origin on every call) through `tally-proxy` in
//! gateway mode and through Envoy with `grpc_web` + `cors`, both in front of the same
//! echo server, plus plain gRPC straight to the echo server as the baseline the "added"
//! latency is taken over. Setups run interleaved for several rounds, like the overhead
//! benchmark; each is started fresh for its measurement.

use crate::echo::EchoProcess;
use crate::error::BenchError;
use crate::load::{Target, Workload, run_closed, run_phase};
use crate::procstat;
use crate::run::{PhaseSummary, date_and_commit, machine_line, settle, wait_path_with};
use crate::scale::OtherCpu;
use crate::setup::{Programs, Running};
use std::fmt;
use std::time::Duration;
use web::Mode;

pub mod report;
pub mod token;
pub mod web;

/// `:authority` of the edge calls (both edges route on the path, not the host).
pub const EDGE_AUTHORITY: &str = "edge.bench";

/// A path of the edge benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Plain gRPC straight to the echo server: the baseline.
    Direct,
    /// `tally-proxy` in gateway mode.
    Gateway,
    /// Envoy with `grpc_web` and `cors`.
    Envoy,
}

impl EdgeKind {
    /// All three, in run order.
    pub const ALL: [EdgeKind; 3] = [EdgeKind::Direct, EdgeKind::Gateway, EdgeKind::Envoy];
}

impl fmt::Display for EdgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EdgeKind::Direct => "direct",
            EdgeKind::Gateway => "gateway",
            EdgeKind::Envoy => "envoy",
        })
    }
}

/// Options of an edge run.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Interleaved rounds.
    pub rounds: u32,
    /// Load before each measured fixed-rate phase.
    pub warmup: Duration,
    /// Length of each fixed-rate phase.
    pub phase: Duration,
    /// Calls per second of the fixed-rate phases.
    pub rate: f64,
    /// Closed-loop callers (None: no closed loop).
    pub closed_concurrency: Option<usize>,
    /// Length of each closed-loop phase.
    pub closed: Duration,
    /// HTTP/2 connections from the load generator.
    pub connections: usize,
    /// Deadline of each call.
    pub call_timeout: Duration,
    /// gRPC-Web encodings measured.
    pub modes: Vec<Mode>,
    /// Envoy also checks the tokens (`jwt_authn`) and keeps a non-binding rate limit.
    pub envoy_auth: bool,
    /// Binaries and pinning.
    pub programs: Programs,
}

/// One setup in one encoding in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeMeasurement {
    pub(crate) round: u32,
    pub(crate) setup: String,
    /// `binary`, `text`, or `grpc` for the direct baseline.
    pub(crate) mode: String,
    pub(crate) fixed: PhaseSummary,
    pub(crate) closed: Option<PhaseSummary>,
    /// The edge process's memory after the phases (KiB): current and peak.
    pub(crate) rss_kib: u64,
    pub(crate) rss_peak_kib: u64,
    pub(crate) other_cpu_cores: f64,
    pub(crate) load: f64,
}

/// A whole edge run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeReport {
    pub(crate) date: String,
    pub(crate) commit: String,
    pub(crate) machine: String,
    pub(crate) settings: String,
    pub(crate) rounds: u32,
    pub(crate) measurements: Vec<EdgeMeasurement>,
}

impl EdgeReport {
    /// The most CPU other processes used during any measurement, in cores.
    pub fn busiest_other_cpu(&self) -> f64 {
        self.measurements
            .iter()
            .map(|m| m.other_cpu_cores)
            .fold(0.0, f64::max)
    }
}

/// Runs every round; `progress` gets one line per measurement.
pub async fn run(
    opts: &EdgeOptions,
    mut progress: impl FnMut(&str),
) -> Result<EdgeReport, BenchError> {
    opts.programs.check(crate::setup::Kind::Tally)?;
    opts.programs.check(crate::setup::Kind::Envoy)?;
    let creds = token::issue("bench-user")?;
    let (date, commit) = date_and_commit();
    let echo = EchoProcess::start(opts.programs.sut_cpus.as_deref())?;
    let mut measurements = Vec::new();
    for round in 1..=opts.rounds {
        for kind in EdgeKind::ALL {
            let mut running = Running::empty(format!("edge-{kind}"), echo.addr, &opts.programs)?;
            match kind {
                EdgeKind::Direct => {}
                EdgeKind::Gateway => {
                    running
                        .start_gateway(echo.addr, &creds.jwks_json, &opts.programs)
                        .await?
                }
                EdgeKind::Envoy => {
                    let auth = opts.envoy_auth.then_some(creds.jwks_json.as_str());
                    running
                        .start_envoy_edge(echo.addr, &opts.programs, auth)
                        .await?
                }
            }
            let modes: Vec<Option<Mode>> = match kind {
                EdgeKind::Direct => vec![None],
                _ => opts.modes.iter().copied().map(Some).collect(),
            };
            for mode in modes {
                let m = measure(opts, round, kind, mode, &running, &echo, &creds).await?;
                progress(&format!(
                    "round {round} {kind:>8} {:>6}: p50 {:.3} p99 {:.3} ms ({} ok, {} failed); closed {} calls/s; CPU {} / {} ms per 1k (fixed / max); RSS {:.1} MiB; other CPU {:.2} cores",
                    m.mode,
                    m.fixed.p50_ms,
                    m.fixed.p99_ms,
                    m.fixed.ok,
                    m.fixed.failed,
                    m.closed
                        .as_ref()
                        .map_or("-".into(), |c| format!("{:.0}", c.achieved_rate)),
                    m.fixed
                        .cpu_ms_per_1k
                        .map_or("-".into(), |c| format!("{c:.1}")),
                    m.closed
                        .as_ref()
                        .and_then(|c| c.cpu_ms_per_1k)
                        .map_or("-".into(), |c| format!("{c:.1}")),
                    m.rss_peak_kib as f64 / 1024.0,
                    m.other_cpu_cores
                ));
                measurements.push(m);
                running.check_alive()?;
            }
            running.stop();
        }
    }
    drop(echo);
    Ok(EdgeReport {
        date,
        commit,
        machine: machine_line(),
        settings: settings_line(opts),
        rounds: opts.rounds,
        measurements,
    })
}

async fn measure(
    opts: &EdgeOptions,
    round: u32,
    kind: EdgeKind,
    mode: Option<Mode>,
    running: &Running,
    echo: &EchoProcess,
    creds: &token::Credentials,
) -> Result<EdgeMeasurement, BenchError> {
    let pids = running.pids();
    let ours = crate::scale::ours(&pids, echo);
    let other = OtherCpu::start(&ours);
    let (target, workload) = match mode {
        None => (
            Target::connect(running.entry, &running.authority, opts.connections).await?,
            Workload::Unary,
        ),
        Some(mode) => (
            Target::connect_web(
                running.entry,
                EDGE_AUTHORITY,
                &creds.authorization,
                opts.connections,
            )
            .await?,
            Workload::Web { mode },
        ),
    };
    wait_path_with(&target, workload).await?;
    run_phase(&target, workload, opts.rate, opts.warmup, opts.call_timeout).await;
    let cpu0 = procstat::cpu_total(&pids);
    let fixed = run_phase(&target, workload, opts.rate, opts.phase, opts.call_timeout).await;
    let cpu_fixed = (!pids.is_empty()).then(|| procstat::cpu_total(&pids).saturating_sub(cpu0));
    let steady = procstat::memory_total(&pids);
    let closed = match opts.closed_concurrency {
        Some(c) => {
            settle().await;
            let cpu0 = procstat::cpu_total(&pids);
            let r = run_closed(&target, workload, c, opts.closed, opts.call_timeout).await;
            let cpu = (!pids.is_empty()).then(|| procstat::cpu_total(&pids).saturating_sub(cpu0));
            Some(PhaseSummary::from(&r, cpu))
        }
        None => None,
    };
    let peak = procstat::memory_total(&pids);
    Ok(EdgeMeasurement {
        round,
        setup: kind.to_string(),
        mode: mode.map_or("grpc", |m| m.label()).to_string(),
        fixed: PhaseSummary::from(&fixed, cpu_fixed),
        closed,
        rss_kib: steady.rss_kib,
        rss_peak_kib: peak.hwm_kib,
        other_cpu_cores: other.cores(&ours),
        load: procstat::load_average().unwrap_or(0.0),
    })
}

fn settings_line(o: &EdgeOptions) -> String {
    let modes: Vec<&str> = o.modes.iter().map(|m| m.label()).collect();
    format!(
        "rounds {}; warm-up {} s + phase {} s at {} calls/s; closed loop {}; {} h2c client connections; gRPC-Web {}; every call carries a bearer token (EdDSA) and an Origin; Envoy: grpc_web + cors{}; {} worker thread(s) per edge (Envoy --concurrency, tally-proxy TOKIO_WORKER_THREADS); access logs {}; {}",
        o.rounds,
        o.warmup.as_secs_f64(),
        o.phase.as_secs_f64(),
        o.rate,
        o.closed_concurrency.map_or("off".into(), |c| format!(
            "{c} callers x {} s",
            o.closed.as_secs_f64()
        )),
        o.connections,
        modes.join(" and "),
        if o.envoy_auth {
            " + jwt_authn + local_ratelimit (non-binding)"
        } else {
            " (no token check, no rate limit)"
        },
        o.programs.proxy_threads,
        if o.programs.access_logs { "on" } else { "off" },
        match &o.programs.sut_cpus {
            Some(c) =>
                format!("echo server and edge pinned to CPU {c}, load generator to the others"),
            None => "no pinning".into(),
        }
    )
}
