//! The scale benchmark (`tally-bench --scale`): how the memory and CPU of a sidecar pair
//! grow with idle client connections, concurrent streams, configured services, endpoints
//! of one service, and message size. Each dimension is walked up in steps on the same
//! machine, Tally's pair beside Envoy's where the same Envoy config serves every step
//! (connections, streams, message size; services and endpoints would need a generated
//! Envoy config per step and are Tally only). Every loop is bounded by the step lists.

use crate::echo::EchoProcess;
use crate::error::BenchError;
use crate::load::{Target, Workload, run_closed};
use crate::pki::Pki;
use crate::procstat;
use crate::run::{date_and_commit, machine_line, settle, wait_path};
use crate::setup::{Kind, Programs, Running, Shape};
use std::time::Duration;
use tokio::time::Instant;

pub mod growth;
mod idle;
mod peer;
pub mod report;

/// How long idle connections are held while their CPU is measured.
pub const HOLD: Duration = Duration::from_secs(3);
/// ... with `--quick`.
pub const HOLD_QUICK: Duration = Duration::from_secs(1);
/// Length of each closed-loop step.
pub const STEP: Duration = Duration::from_secs(4);
/// ... with `--quick`.
pub const STEP_QUICK: Duration = Duration::from_secs(1);
/// Messages per call in the concurrent-streams steps (as the overhead benchmark's streams).
pub const STREAM_MESSAGES: u64 = 10;
/// Callers in the message-size steps.
pub const SIZE_CONCURRENCY: usize = 4;
/// Callers in the services and endpoints steps.
pub const CONFIG_CONCURRENCY: usize = 16;
/// Warm-up calls per endpoint before a services or endpoints step is measured.
pub const WARM_CALLS_PER_ENDPOINT: u64 = 5;
/// Longest warm-up of one step.
pub const WARM_UP_BOUND: Duration = Duration::from_secs(30);
/// The outbound sidecar's connection bound in the scale runs: above the largest idle step
/// plus the load generator's connections (the proxy's default is 10 000).
pub const SCALE_MAX_CONNECTIONS: usize = 20_000;

/// A dimension the cost is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Open, idle HTTP/2 connections from the client side (each made one call first).
    IdleConnections,
    /// Open, idle mTLS HTTP/2 connections from peers to the inbound side (each made one call).
    IdlePeerConnections,
    /// Calls in flight at once (server-streaming calls, closed loop).
    Streams,
    /// Services configured in the outbound sidecar.
    Services,
    /// Endpoints of the one called service.
    Endpoints,
    /// Bytes of each request and answer message (unary, closed loop).
    MessageSize,
}

impl Dimension {
    /// Every dimension, in report order.
    pub const ALL: [Dimension; 6] = [
        Dimension::IdleConnections,
        Dimension::IdlePeerConnections,
        Dimension::Streams,
        Dimension::Services,
        Dimension::Endpoints,
        Dimension::MessageSize,
    ];
    /// The names `--scale-dims` accepts.
    pub const NAMES: &str = "idle, idle-mtls, streams, services, endpoints, size";

    /// The dimension named on the command line.
    pub fn parse(s: &str) -> Option<Dimension> {
        match s.trim() {
            "idle" => Some(Dimension::IdleConnections),
            "idle-mtls" => Some(Dimension::IdlePeerConnections),
            "streams" => Some(Dimension::Streams),
            "services" => Some(Dimension::Services),
            "endpoints" => Some(Dimension::Endpoints),
            "size" => Some(Dimension::MessageSize),
            _ => None,
        }
    }

    /// Name in the report.
    pub fn title(&self) -> &'static str {
        match self {
            Dimension::IdleConnections => "idle client connections",
            Dimension::IdlePeerConnections => "idle peer connections (mTLS)",
            Dimension::Streams => "concurrent streams",
            Dimension::Services => "configured services",
            Dimension::Endpoints => "endpoints of the called service",
            Dimension::MessageSize => "message size (bytes)",
        }
    }

    /// The steps walked up (full run or `--quick`).
    pub fn steps(&self, quick: bool) -> Vec<u64> {
        match (self, quick) {
            (Dimension::IdleConnections | Dimension::IdlePeerConnections, false) => {
                vec![1, 1_000, 10_000]
            }
            (Dimension::IdleConnections | Dimension::IdlePeerConnections, true) => {
                vec![1, 100, 1_000]
            }
            (Dimension::Streams, false) => vec![1, 10, 100, 1_000],
            (Dimension::Streams, true) => vec![1, 10, 100],
            (Dimension::Services | Dimension::Endpoints, false) => vec![1, 10, 100, 1_000],
            (Dimension::Services | Dimension::Endpoints, true) => vec![1, 10, 100],
            (Dimension::MessageSize, false) => vec![128, 1_024, 16_384, 131_072, 1_048_576],
            (Dimension::MessageSize, true) => vec![128, 16_384, 1_048_576],
        }
    }

    /// The CPU measure of this dimension: idle connections cost CPU per second of holding
    /// them; every other step runs calls, so its CPU is per 1000 calls.
    pub fn cpu_label(&self) -> &'static str {
        match self {
            Dimension::IdleConnections | Dimension::IdlePeerConnections => "CPU ms/s idle",
            _ => "CPU ms / 1k calls",
        }
    }

    /// Whether `kind` is measured along this dimension (Envoy only where its one config
    /// serves every step).
    pub fn measures(&self, kind: Kind) -> bool {
        match kind {
            Kind::Tally | Kind::TallyBase => true,
            Kind::Envoy | Kind::Floor => matches!(
                self,
                Dimension::IdleConnections
                    | Dimension::IdlePeerConnections
                    | Dimension::Streams
                    | Dimension::MessageSize
            ),
            Kind::Direct => false,
        }
    }
}

/// Options of a scale run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// The smaller `--quick` steps.
    pub quick: bool,
    /// Setups measured (tally, and envoy where cheap).
    pub setups: Vec<Kind>,
    /// Dimensions walked.
    pub dimensions: Vec<Dimension>,
    /// Idle steps: how long CPU is measured while the connections are held.
    pub hold: Duration,
    /// Call steps: length of each closed-loop phase.
    pub phase: Duration,
    /// Load-generator connections for the call steps.
    pub connections: usize,
    /// Deadline of each call.
    pub call_timeout: Duration,
    /// The open-file soft limit in force (caps the idle steps).
    pub nofile: u64,
    /// Binaries and pinning.
    pub programs: Programs,
}

/// One measured step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScalePoint {
    pub(crate) dimension: String,
    pub(crate) setup: String,
    pub(crate) x: u64,
    /// Resident memory of the pair after the step (KiB).
    pub(crate) rss_kib: u64,
    /// Peak resident memory of the pair so far (KiB).
    pub(crate) hwm_kib: u64,
    /// CPU of the pair: ms per second held (idle) or ms per 1000 calls.
    pub(crate) cpu: Option<f64>,
    /// Calls per second completed in the step (call steps).
    pub(crate) rate: Option<f64>,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    /// CPU used by processes outside the benchmark meanwhile, in cores.
    pub(crate) other_cpu_cores: f64,
    pub(crate) load: f64,
}

/// A whole scale run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleReport {
    pub(crate) date: String,
    pub(crate) commit: String,
    pub(crate) machine: String,
    pub(crate) settings: String,
    pub(crate) points: Vec<ScalePoint>,
}

impl ScaleReport {
    /// The most CPU other processes used during any step, in cores.
    pub fn busiest_other_cpu(&self) -> f64 {
        self.points
            .iter()
            .map(|p| p.other_cpu_cores)
            .fold(0.0, f64::max)
    }
}

/// CPU used outside the benchmark over a stretch of time.
pub(crate) struct OtherCpu {
    wall0: Instant,
    busy0: Option<Duration>,
    ours0: Duration,
}

impl OtherCpu {
    pub(crate) fn start(ours: &[u32]) -> OtherCpu {
        OtherCpu {
            wall0: Instant::now(),
            busy0: procstat::machine_busy(),
            ours0: procstat::cpu_total(ours),
        }
    }

    /// Cores used by other processes since `start`.
    pub(crate) fn cores(&self, ours: &[u32]) -> f64 {
        match (self.busy0, procstat::machine_busy()) {
            (Some(b0), Some(b1)) => {
                let mine = procstat::cpu_total(ours).saturating_sub(self.ours0);
                let other = b1.saturating_sub(b0).saturating_sub(mine);
                other.as_secs_f64() / self.wall0.elapsed().as_secs_f64().max(0.001)
            }
            _ => 0.0,
        }
    }
}

/// Runs every dimension for every setup that measures it; `progress` gets one line per step.
pub async fn run(
    opts: &ScaleOptions,
    mut progress: impl FnMut(&str),
) -> Result<ScaleReport, BenchError> {
    for kind in &opts.setups {
        opts.programs.check(*kind)?;
    }
    let pki_dir = tempfile::Builder::new()
        .prefix("tally-bench-pki-")
        .tempdir()
        .map_err(|e| BenchError::io("creating the certificate directory", e))?;
    let pki = Pki::create(pki_dir.path())?;
    let (date, commit) = date_and_commit();
    let echo = EchoProcess::start(opts.programs.sut_cpus.as_deref())?;
    let mut points = Vec::new();
    for dim in &opts.dimensions {
        for kind in opts.setups.iter().filter(|k| dim.measures(**k)) {
            let started = Instant::now();
            let got = match dim {
                Dimension::IdleConnections | Dimension::IdlePeerConnections => {
                    idle::walk(opts, *dim, *kind, &echo, &pki).await?
                }
                Dimension::Streams | Dimension::MessageSize => {
                    calls_walk(opts, *dim, *kind, &echo, &pki).await?
                }
                Dimension::Services | Dimension::Endpoints => {
                    config_walk(opts, *dim, *kind, &echo, &pki).await?
                }
            };
            for p in &got {
                progress(&format!(
                    "{} {:>6} {:>8}: RSS {:.1} MiB, {} {}, {} calls/s, {} failed, other CPU {:.2} cores",
                    p.dimension,
                    p.setup,
                    p.x,
                    p.rss_kib as f64 / 1024.0,
                    dim.cpu_label(),
                    p.cpu.map_or("-".into(), |c| format!("{c:.1}")),
                    p.rate.map_or("-".into(), |r| format!("{r:.0}")),
                    p.failed,
                    p.other_cpu_cores
                ));
            }
            progress(&format!(
                "{} {kind}: done in {:.0} s",
                dim.title(),
                started.elapsed().as_secs_f64()
            ));
            points.extend(got);
        }
    }
    drop(echo);
    Ok(ScaleReport {
        date,
        commit,
        machine: machine_line(),
        settings: settings_line(opts),
        points,
    })
}

/// The shape every scale setup starts from (a raised connection bound).
fn base_shape() -> Shape {
    Shape {
        max_connections: Some(SCALE_MAX_CONNECTIONS),
        ..Shape::default()
    }
}

/// Concurrent streams or message sizes: one setup, a closed loop per step.
async fn calls_walk(
    opts: &ScaleOptions,
    dim: Dimension,
    kind: Kind,
    echo: &EchoProcess,
    pki: &Pki,
) -> Result<Vec<ScalePoint>, BenchError> {
    let mut running =
        Running::start_shaped(kind, echo.addr, pki, &opts.programs, &base_shape()).await?;
    let pids = running.pids();
    let target = Target::connect(running.entry, &running.authority, opts.connections).await?;
    wait_path(&target).await?;
    let mut out = Vec::new();
    for x in dim.steps(opts.quick) {
        let (workload, concurrency) = match dim {
            Dimension::Streams => (
                Workload::Stream {
                    messages: STREAM_MESSAGES,
                },
                x as usize,
            ),
            _ => (Workload::Sized { bytes: x as usize }, SIZE_CONCURRENCY),
        };
        out.push(
            closed_step(
                opts,
                dim,
                kind,
                x,
                &target,
                &pids,
                workload,
                concurrency,
                echo,
            )
            .await,
        );
        running.check_alive()?;
        settle().await;
    }
    Ok(out)
}

/// Services or endpoints: a fresh Tally pair per step with a generated config.
async fn config_walk(
    opts: &ScaleOptions,
    dim: Dimension,
    kind: Kind,
    echo: &EchoProcess,
    pki: &Pki,
) -> Result<Vec<ScalePoint>, BenchError> {
    let mut out = Vec::new();
    for x in dim.steps(opts.quick) {
        let mut shape = base_shape();
        match dim {
            Dimension::Services => shape.services = x as usize,
            _ => shape.endpoints = x as usize,
        }
        let mut running =
            Running::start_shaped(kind, echo.addr, pki, &opts.programs, &shape).await?;
        let pids = running.pids();
        let target = Target::connect(running.entry, &running.authority, opts.connections).await?;
        wait_path(&target).await?;
        warm_up(opts, &target, shape.endpoints as u64).await;
        out.push(
            closed_step(
                opts,
                dim,
                kind,
                x,
                &target,
                &pids,
                Workload::Unary,
                CONFIG_CONCURRENCY,
                echo,
            )
            .await,
        );
        running.check_alive()?;
        drop(target);
        running.stop();
    }
    Ok(out)
}

/// Unmeasured calls before a services or endpoints step, so that the measured pass costs
/// calls, not connection set-up: at least one phase, and until [`WARM_CALLS_PER_ENDPOINT`]
/// calls per endpoint were made (the balancer then has picked, and connected to, every
/// endpoint with near certainty), for at most [`WARM_UP_BOUND`].
async fn warm_up(opts: &ScaleOptions, target: &Target, endpoints: u64) {
    let started = Instant::now();
    let mut calls = 0;
    loop {
        let r = run_closed(
            target,
            Workload::Unary,
            CONFIG_CONCURRENCY,
            opts.phase,
            opts.call_timeout,
        )
        .await;
        calls += r.ok;
        if calls >= WARM_CALLS_PER_ENDPOINT * endpoints || started.elapsed() >= WARM_UP_BOUND {
            break;
        }
    }
    settle().await;
}

/// One closed-loop step: the pair's CPU per 1000 calls and its memory afterwards.
#[allow(clippy::too_many_arguments)]
async fn closed_step(
    opts: &ScaleOptions,
    dim: Dimension,
    kind: Kind,
    x: u64,
    target: &Target,
    pids: &[u32],
    workload: Workload,
    concurrency: usize,
    echo: &EchoProcess,
) -> ScalePoint {
    let ours = ours(pids, echo);
    let other = OtherCpu::start(&ours);
    let cpu0 = procstat::cpu_total(pids);
    let r = run_closed(target, workload, concurrency, opts.phase, opts.call_timeout).await;
    let cpu = procstat::cpu_total(pids).saturating_sub(cpu0);
    let mem = procstat::memory_total(pids);
    ScalePoint {
        dimension: dim.title().into(),
        setup: kind.to_string(),
        x,
        rss_kib: mem.rss_kib,
        hwm_kib: mem.hwm_kib,
        cpu: (r.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / r.ok as f64),
        rate: Some(r.achieved_rate()),
        ok: r.ok,
        failed: r.failed(),
        first_error: r.first_error.clone(),
        other_cpu_cores: other.cores(&ours),
        load: procstat::load_average().unwrap_or(0.0),
    }
}

/// The processes of the benchmark itself: the pair, the echo server, this process.
pub(crate) fn ours(pids: &[u32], echo: &EchoProcess) -> Vec<u32> {
    let mut v = pids.to_vec();
    v.extend([std::process::id(), echo.pid()]);
    v
}

fn settings_line(o: &ScaleOptions) -> String {
    let steps: Vec<String> = o
        .dimensions
        .iter()
        .map(|d| {
            let s: Vec<String> = d.steps(o.quick).iter().map(u64::to_string).collect();
            format!("{} [{}]", d.title(), s.join(", "))
        })
        .collect();
    format!(
        "{}; idle hold {} s; call steps {} s closed loop (streams: as many callers as the step, each with one server-streaming call of {} messages in flight; message sizes: {} callers; services and endpoints: {} callers of unary calls); {} load-generator connections; outbound max_connections {}; open-file limit {}; {} worker thread(s) per proxy; {}",
        steps.join("; "),
        o.hold.as_secs_f64(),
        o.phase.as_secs_f64(),
        STREAM_MESSAGES,
        SIZE_CONCURRENCY,
        CONFIG_CONCURRENCY,
        o.connections,
        SCALE_MAX_CONNECTIONS,
        o.nofile,
        o.programs.proxy_threads,
        match &o.programs.sut_cpus {
            Some(c) =>
                format!("echo server and proxies pinned to CPU {c}, load generator to the others"),
            None => "no pinning".into(),
        }
    )
}
