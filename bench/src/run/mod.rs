//! One benchmark run: certificates and the echo server once, then rounds in which every
//! setup is started fresh and measured in turn (direct, floor, tally, envoy, direct, …) so
//! slow drifts of a shared 2-core machine hit every setup alike. Every loop here is
//! bounded by the options (rounds, steps, phase lengths, timeouts).

use crate::echo::EchoProcess;
use crate::error::BenchError;
use crate::load::{PhaseResult, Target, Workload, run_closed, run_phase};
use crate::pki::Pki;
use crate::procstat::{self, Memory};
use crate::setup::{Kind, Programs, Running};

mod ramp;
pub use ramp::RampOptions;
pub(crate) use ramp::Step;
use ramp::ramp;
pub(crate) use ramp::settle;
use std::time::Duration;
use tokio::time::Instant;

/// Everything a run needs to know; see `tally-bench --help` for the meaning of each.
#[derive(Debug, Clone)]
pub struct Options {
    /// Setups measured each round, in this order.
    pub setups: Vec<Kind>,
    /// Interleaved rounds; each measures every setup once.
    pub rounds: u32,
    /// Load before each measured phase, not recorded.
    pub warmup: Duration,
    /// Length of each measured open-loop phase.
    pub phase: Duration,
    /// Open-loop unary calls per second.
    pub unary_rate: f64,
    /// Open-loop server-streaming calls per second.
    pub stream_rate: f64,
    /// Messages each streaming call receives.
    pub stream_messages: u64,
    /// HTTP/2 connections the load is spread over.
    pub connections: usize,
    /// Deadline of each call; a call past it counts as failed.
    pub call_timeout: Duration,
    /// The maximum-throughput search.
    pub ramp: RampOptions,
    /// The closed-loop throughput phases.
    pub closed: ClosedOptions,
    /// Binaries the setups start, and CPU pinning.
    pub programs: Programs,
}

/// The closed-loop throughput phases (unary, then streaming).
#[derive(Debug, Clone)]
pub struct ClosedOptions {
    /// Run these phases at all.
    pub enabled: bool,
    /// Callers, each with one call in flight at a time.
    pub concurrency: usize,
    /// Length of each closed-loop phase.
    pub duration: Duration,
}

impl Options {
    pub(crate) fn validate(&self) -> Result<(), BenchError> {
        let bad = |option: &str, problem: &str| {
            Err(BenchError::Options {
                option: option.into(),
                problem: problem.into(),
            })
        };
        if self.setups.is_empty() {
            return bad("--setups", "names no setup; use e.g. direct,tally,envoy");
        }
        if self.rounds == 0 || self.rounds > 20 {
            return bad("--rounds", "must be 1..=20");
        }
        if self.phase.is_zero() || self.phase > Duration::from_secs(120) {
            return bad("--phase-secs", "must be 1..=120");
        }
        if !(self.unary_rate > 0.0 && self.stream_rate > 0.0) {
            return bad("--unary-rate / --stream-rate", "must be positive");
        }
        if self.stream_messages == 0 || self.stream_messages > crate::echo::MAX_STREAM_MESSAGES {
            return bad("--stream-messages", "must be 1..=1000");
        }
        if self.connections == 0 || self.connections > 64 {
            return bad("--connections", "must be 1..=64");
        }
        if self.closed.enabled
            && (self.closed.concurrency == 0
                || self.closed.concurrency > 10_000
                || self.closed.duration > Duration::from_secs(120))
        {
            return bad("--closed-*", "need 1..=10000 callers and at most 120 s");
        }
        let r = &self.ramp;
        if r.enabled
            && (r.start_rate <= 0.0
                || r.factor <= 1.0
                || r.max_steps == 0
                || r.max_steps > 20
                || r.refine_steps > 5
                || r.step_retries > 3)
        {
            return bad(
                "--ramp-*",
                "need start rate > 0, factor > 1, 1..=20 steps, at most 5 refinement steps and 3 step retries",
            );
        }
        Ok(())
    }
}

/// Latency and rate of one fixed-rate phase.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PhaseSummary {
    pub(crate) workload: String,
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    /// Calls the schedule held; each ends up counted once, in `ok` or in `failed`.
    pub(crate) scheduled: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Proxy CPU time (both proxies) per 1000 calls of this phase, in ms.
    pub(crate) cpu_ms_per_1k: Option<f64>,
    pub(crate) first_error: Option<String>,
}

impl PhaseSummary {
    pub(crate) fn from(r: &PhaseResult, cpu: Option<Duration>) -> PhaseSummary {
        PhaseSummary {
            workload: r.workload.label(),
            target_rate: r.target_rate,
            achieved_rate: r.achieved_rate(),
            scheduled: r.scheduled,
            ok: r.ok,
            failed: r.failed(),
            p50_ms: r.quantile_ms(0.5),
            p99_ms: r.quantile_ms(0.99),
            p999_ms: r.quantile_ms(0.999),
            max_ms: if r.hist.is_empty() {
                0.0
            } else {
                r.hist.max() as f64 / 1_000.0
            },
            cpu_ms_per_1k: cpu
                .filter(|_| r.ok > 0)
                .map(|c| c.as_secs_f64() * 1_000.0 * 1_000.0 / r.ok as f64),
            first_error: r.first_error.clone(),
        }
    }
}

/// Everything measured for one setup in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Measurement {
    pub(crate) round: u32,
    pub(crate) setup: String,
    pub(crate) unary: PhaseSummary,
    pub(crate) stream: PhaseSummary,
    /// Closed-loop unary and streaming phases (None: `--no-closed`); their rate is the
    /// throughput, their CPU per 1000 calls the cost at maximum load.
    pub(crate) closed_unary: Option<PhaseSummary>,
    pub(crate) closed_stream: Option<PhaseSummary>,
    /// Highest achieved rate of a passing ramp step (None: ramp off or no step passed).
    pub(crate) max_throughput: Option<f64>,
    /// True when the ramp ran out of steps while still passing (the maximum is higher).
    pub(crate) max_throughput_capped: bool,
    pub(crate) steps: Vec<Step>,
    /// Both proxies, after the fixed-rate phases (KiB).
    pub(crate) rss_steady_kib: u64,
    /// Both proxies' peak resident memory over the whole measurement (KiB).
    pub(crate) rss_peak_kib: u64,
    /// The machine's 1-minute load average before and after the measurement.
    pub(crate) load_before: f64,
    pub(crate) load_after: f64,
    /// CPU used by processes outside the benchmark during the measurement, in cores
    /// (machine busy time minus that of tally-bench, the echo server and the proxies,
    /// over wall time).
    pub(crate) other_cpu_cores: f64,
}

/// A whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// When the run started (UTC) and the commit of the working tree it ran from.
    pub(crate) date: String,
    pub(crate) commit: String,
    pub(crate) rounds: u32,
    pub(crate) measurements: Vec<Measurement>,
    pub(crate) settings: String,
    pub(crate) machine: String,
}

/// Runs every round; `progress` gets one line per finished measurement.
pub async fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Result<RunReport, BenchError> {
    opts.validate()?;
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
    let mut measurements = Vec::new();
    for round in 1..=opts.rounds {
        for kind in &opts.setups {
            let started = Instant::now();
            let m = measure(opts, *kind, round, &echo, &pki).await?;
            progress(&format!(
                "round {round} {kind:>10}: unary p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({} ok, {} failed); stream p99 {:.3} ms; closed {} rps; ramp {} rps; RSS peak {:.1} MiB; CPU {} ms/1k; other CPU {:.2} cores  [{:.0} s]",
                m.unary.p50_ms,
                m.unary.p99_ms,
                m.unary.p999_ms,
                m.unary.ok,
                m.unary.failed,
                m.stream.p99_ms,
                m.closed_unary
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.0}", c.achieved_rate)),
                m.max_throughput.map_or("-".into(), |t| format!(
                    "{t:.0}{}",
                    if m.max_throughput_capped { "+" } else { "" }
                )),
                m.rss_peak_kib as f64 / 1024.0,
                m.unary
                    .cpu_ms_per_1k
                    .map_or("-".into(), |c| format!("{c:.1}")),
                m.other_cpu_cores,
                started.elapsed().as_secs_f64(),
            ));
            measurements.push(m);
        }
    }
    drop(echo);
    Ok(RunReport {
        date,
        commit,
        rounds: opts.rounds,
        measurements,
        settings: settings_line(opts),
        machine: machine_line(),
    })
}

async fn measure(
    opts: &Options,
    kind: Kind,
    round: u32,
    echo: &EchoProcess,
    pki: &Pki,
) -> Result<Measurement, BenchError> {
    let load_before = procstat::load_average().unwrap_or(0.0);
    let mut running = Running::start(kind, echo.addr, pki, &opts.programs).await?;
    let pids = running.pids();
    let mut ours = pids.clone();
    ours.extend([std::process::id(), echo.pid()]);
    let wall0 = Instant::now();
    let (busy0, ours0) = (procstat::machine_busy(), procstat::cpu_total(&ours));
    let target = Target::connect(running.entry, &running.authority, opts.connections).await?;
    wait_path(&target).await?;

    // Fixed-rate unary phase (after a warm-up at the same rate), proxy CPU measured over it.
    run_phase(
        &target,
        Workload::Unary,
        opts.unary_rate,
        opts.warmup,
        opts.call_timeout,
    )
    .await;
    let cpu0 = procstat::cpu_total(&pids);
    let unary = run_phase(
        &target,
        Workload::Unary,
        opts.unary_rate,
        opts.phase,
        opts.call_timeout,
    )
    .await;
    let cpu_unary = (!pids.is_empty()).then(|| procstat::cpu_total(&pids).saturating_sub(cpu0));

    let stream_load = Workload::Stream {
        messages: opts.stream_messages,
    };
    run_phase(
        &target,
        stream_load,
        opts.stream_rate,
        opts.warmup,
        opts.call_timeout,
    )
    .await;
    let cpu1 = procstat::cpu_total(&pids);
    let stream = run_phase(
        &target,
        stream_load,
        opts.stream_rate,
        opts.phase,
        opts.call_timeout,
    )
    .await;
    let cpu_stream = (!pids.is_empty()).then(|| procstat::cpu_total(&pids).saturating_sub(cpu1));
    let steady: Memory = procstat::memory_total(&pids);
    running.check_alive()?;

    let (closed_unary, closed_stream) = if opts.closed.enabled {
        let c = &opts.closed;
        let mut out = Vec::new();
        for load in [Workload::Unary, stream_load] {
            let cpu0 = procstat::cpu_total(&pids);
            let r = run_closed(&target, load, c.concurrency, c.duration, opts.call_timeout).await;
            let cpu = (!pids.is_empty()).then(|| procstat::cpu_total(&pids).saturating_sub(cpu0));
            out.push(Some(PhaseSummary::from(&r, cpu)));
            settle().await;
        }
        (out[0].take(), out[1].take())
    } else {
        (None, None)
    };

    let (steps, max_throughput, capped) = if opts.ramp.enabled {
        ramp(&target, &opts.ramp, opts.call_timeout).await
    } else {
        (Vec::new(), None, false)
    };
    let peak = procstat::memory_total(&pids);
    running.check_alive()?;
    let other_cpu_cores = match (busy0, procstat::machine_busy()) {
        (Some(b0), Some(b1)) => {
            let ours = procstat::cpu_total(&ours).saturating_sub(ours0);
            let other = b1.saturating_sub(b0).saturating_sub(ours);
            other.as_secs_f64() / wall0.elapsed().as_secs_f64().max(0.001)
        }
        _ => 0.0,
    };
    drop(target);
    running.stop();
    Ok(Measurement {
        round,
        setup: kind.to_string(),
        unary: PhaseSummary::from(&unary, cpu_unary),
        stream: PhaseSummary::from(&stream, cpu_stream),
        closed_unary,
        closed_stream,
        max_throughput,
        max_throughput_capped: capped,
        steps,
        rss_steady_kib: steady.rss_kib,
        rss_peak_kib: peak.hwm_kib,
        load_before,
        load_after: procstat::load_average().unwrap_or(0.0),
        other_cpu_cores,
    })
}

/// When a run starts (UTC) and the commit it runs from (`TALLY_BENCH_COMMIT` overrides).
pub(crate) fn date_and_commit() -> (String, String) {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = std::env::var("TALLY_BENCH_COMMIT").unwrap_or_else(|_| {
        command_output(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ],
        )
    });
    (date, commit)
}

/// Sends single calls until one succeeds end to end (proxies connect lazily).
pub(crate) async fn wait_path(target: &Target) -> Result<(), BenchError> {
    wait_path_with(target, Workload::Unary).await
}

/// Sends single `workload` calls until one succeeds end to end.
pub(crate) async fn wait_path_with(target: &Target, workload: Workload) -> Result<(), BenchError> {
    let mut last = None;
    for _ in 0..100 {
        let r = run_phase(
            target,
            workload,
            1_000.0,
            Duration::from_millis(1),
            Duration::from_secs(5),
        )
        .await;
        if r.ok > 0 {
            return Ok(());
        }
        last = r.first_error;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::NotReady {
        name: "the call path".into(),
        detail: format!("no call succeeded; last error: {last:?}"),
    })
}

fn settings_line(o: &Options) -> String {
    format!(
        "rounds {}, warm-up {} s + phase {} s; unary {} rps; stream {} rps x {} messages; {} client connections; closed loop {}; ramp {}from {} rps x{} per {} s step (max {} steps + {} refinements, a failing step repeated {} time(s); a step passes with >= {:.0}% of target, p99 <= {} ms, <= 0.1% failed); {} worker thread(s) per proxy (Envoy --concurrency, tally-proxy TOKIO_WORKER_THREADS; the floor relay: 1); access logs {}; {}",
        o.rounds,
        o.warmup.as_secs_f64(),
        o.phase.as_secs_f64(),
        o.unary_rate,
        o.stream_rate,
        o.stream_messages,
        o.connections,
        if o.closed.enabled {
            format!(
                "{} callers x {} s",
                o.closed.concurrency,
                o.closed.duration.as_secs_f64()
            )
        } else {
            "off".into()
        },
        if o.ramp.enabled { "" } else { "off; would go " },
        o.ramp.start_rate,
        o.ramp.factor,
        o.ramp.step.as_secs_f64(),
        o.ramp.max_steps,
        o.ramp.refine_steps,
        o.ramp.step_retries,
        o.ramp.min_achieved * 100.0,
        o.ramp.p99_limit_ms,
        o.programs.proxy_threads,
        if o.programs.access_logs { "on" } else { "off" },
        match &o.programs.sut_cpus {
            Some(cpus) => format!(
                "echo server and proxies pinned to CPU {cpus}, load generator to the others"
            ),
            None => "no CPU pinning".into(),
        },
    )
}

/// The first line a command prints, or `unknown`.
pub(crate) fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().next().map(str::to_string))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn machine_line() -> String {
    // Online CPUs of the machine (this process may be pinned to fewer).
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} cores, {model}, Linux {kernel}")
}
