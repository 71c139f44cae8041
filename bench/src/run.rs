//! One benchmark run: certificates once, then rounds in which every setup is
//! started fresh and measured in turn (direct, tally, envoy, direct, tally, …) so
//! slow drifts of a shared 2-core machine hit every setup alike. Every loop here is
//! bounded by the options (rounds, steps, phase lengths, timeouts).

use crate::echo::EchoServer;
use crate::error::BenchError;
use crate::load::{PhaseResult, Target, Workload, run_phase};
use crate::pki::Pki;
use crate::procstat::{self, Memory};
use crate::setup::{Kind, Programs, Running};
use std::time::Duration;
use tokio::time::Instant;

/// Everything a run needs to know; see `tally-bench --help` for the meaning of each.
#[derive(Debug, Clone)]
pub struct Options {
    pub setups: Vec<Kind>,
    pub rounds: u32,
    pub warmup: Duration,
    pub phase: Duration,
    pub unary_rate: f64,
    pub stream_rate: f64,
    pub stream_messages: u64,
    pub connections: usize,
    pub call_timeout: Duration,
    pub ramp: RampOptions,
    pub programs: Programs,
}

/// The maximum-throughput search: geometric steps up until a step fails, then a few
/// bisection steps between the last good and the first failed rate.
#[derive(Debug, Clone)]
pub struct RampOptions {
    pub enabled: bool,
    pub start_rate: f64,
    pub factor: f64,
    pub step: Duration,
    pub max_steps: u32,
    pub refine_steps: u32,
    /// A step fails when its p99 is above this.
    pub p99_limit_ms: f64,
    /// A step fails when it achieves less than this fraction of its target rate.
    pub min_achieved: f64,
    /// Repetitions of a failing step before it counts as failed.
    pub step_retries: u32,
}

impl Options {
    pub fn validate(&self) -> Result<(), BenchError> {
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
pub struct PhaseSummary {
    pub workload: String,
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Calls the schedule held; each ends up counted once, in `ok` or in `failed`.
    pub scheduled: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Proxy CPU time (both proxies) per 1000 calls of this phase, in ms.
    pub cpu_ms_per_1k: Option<f64>,
    pub first_error: Option<String>,
}

impl PhaseSummary {
    fn from(r: &PhaseResult, cpu: Option<Duration>) -> PhaseSummary {
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

/// One step of the throughput search.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub p99_ms: f64,
    pub failed: u64,
    pub passed: bool,
}

/// Everything measured for one setup in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub round: u32,
    pub setup: String,
    pub unary: PhaseSummary,
    pub stream: PhaseSummary,
    /// Highest achieved rate of a passing ramp step (None: ramp off or no step passed).
    pub max_throughput: Option<f64>,
    /// True when the ramp ran out of steps while still passing (the maximum is higher).
    pub max_throughput_capped: bool,
    pub steps: Vec<Step>,
    /// Both proxies, after the fixed-rate phases (KiB).
    pub rss_steady_kib: u64,
    /// Both proxies' peak resident memory over the whole measurement (KiB).
    pub rss_peak_kib: u64,
    /// The machine's 1-minute load average before and after the measurement.
    pub load_before: f64,
    pub load_after: f64,
}

/// A whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub rounds: u32,
    pub measurements: Vec<Measurement>,
    pub settings: String,
    pub machine: String,
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
    let echo = EchoServer::start().await?;
    let mut measurements = Vec::new();
    for round in 1..=opts.rounds {
        for kind in &opts.setups {
            let started = Instant::now();
            let m = measure(opts, *kind, round, echo.addr, &pki).await?;
            progress(&format!(
                "round {round} {kind:>6}: unary p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({} ok, {} failed); stream p99 {:.3} ms; max {} rps; RSS peak {:.1} MiB; CPU {} ms/1k  [{:.0} s]",
                m.unary.p50_ms,
                m.unary.p99_ms,
                m.unary.p999_ms,
                m.unary.ok,
                m.unary.failed,
                m.stream.p99_ms,
                m.max_throughput.map_or("-".into(), |t| format!(
                    "{t:.0}{}",
                    if m.max_throughput_capped { "+" } else { "" }
                )),
                m.rss_peak_kib as f64 / 1024.0,
                m.unary
                    .cpu_ms_per_1k
                    .map_or("-".into(), |c| format!("{c:.1}")),
                started.elapsed().as_secs_f64(),
            ));
            measurements.push(m);
        }
    }
    drop(echo);
    Ok(RunReport {
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
    upstream: std::net::SocketAddr,
    pki: &Pki,
) -> Result<Measurement, BenchError> {
    let load_before = procstat::load_average().unwrap_or(0.0);
    let mut running = Running::start(kind, upstream, pki, &opts.programs).await?;
    let pids = running.pids();
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

    let (steps, max_throughput, capped) = if opts.ramp.enabled {
        ramp(&target, &opts.ramp, opts.call_timeout).await
    } else {
        (Vec::new(), None, false)
    };
    let peak = procstat::memory_total(&pids);
    running.check_alive()?;
    drop(target);
    running.stop();
    Ok(Measurement {
        round,
        setup: kind.to_string(),
        unary: PhaseSummary::from(&unary, cpu_unary),
        stream: PhaseSummary::from(&stream, cpu_stream),
        max_throughput,
        max_throughput_capped: capped,
        steps,
        rss_steady_kib: steady.rss_kib,
        rss_peak_kib: peak.hwm_kib,
        load_before,
        load_after: procstat::load_average().unwrap_or(0.0),
    })
}

/// Sends single calls until one succeeds end to end (proxies connect lazily).
async fn wait_path(target: &Target) -> Result<(), BenchError> {
    let mut last = None;
    for _ in 0..100 {
        let r = run_phase(
            target,
            Workload::Unary,
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

fn step_of(r: &PhaseResult, ramp: &RampOptions) -> Step {
    let achieved = r.achieved_rate();
    let p99 = r.quantile_ms(0.99);
    // More than 0.1 % failed calls, too little throughput, or a p99 past the limit.
    let passed = r.ok > 0
        && r.failed() * 1_000 <= r.scheduled
        && achieved >= ramp.min_achieved * r.target_rate
        && p99 <= ramp.p99_limit_ms;
    Step {
        target_rate: r.target_rate,
        achieved_rate: achieved,
        p99_ms: p99,
        failed: r.failed(),
        passed,
    }
}

async fn ramp(
    target: &Target,
    ramp: &RampOptions,
    call_timeout: Duration,
) -> (Vec<Step>, Option<f64>, bool) {
    let mut steps = Vec::new();
    let mut best: Option<f64> = None;
    let mut good_rate: Option<f64> = None;
    let mut bad_rate: Option<f64> = None;
    let mut rate = ramp.start_rate;
    let mut record = |step: Step, best: &mut Option<f64>| {
        if step.passed {
            *best = Some(best.map_or(step.achieved_rate, |b: f64| b.max(step.achieved_rate)));
        }
        steps.push(step);
    };
    for _ in 0..ramp.max_steps {
        let passed = run_step(target, ramp, rate, call_timeout, &mut record, &mut best).await;
        if passed {
            good_rate = Some(rate);
            rate *= ramp.factor;
        } else {
            bad_rate = Some(rate);
            break;
        }
    }
    let capped = bad_rate.is_none();
    if let (Some(mut good), Some(mut bad)) = (good_rate, bad_rate) {
        for _ in 0..ramp.refine_steps {
            let mid = (good * bad).sqrt();
            if run_step(target, ramp, mid, call_timeout, &mut record, &mut best).await {
                good = mid;
            } else {
                bad = mid;
            }
        }
    }
    (steps, best, capped)
}

/// Runs one step at `rate`; a failing step is repeated up to `ramp.step_retries` times,
/// so a burst of noise from other processes on the machine does not end the search
/// (a saturated setup fails every repetition).
async fn run_step(
    target: &Target,
    ramp: &RampOptions,
    rate: f64,
    call_timeout: Duration,
    record: &mut impl FnMut(Step, &mut Option<f64>),
    best: &mut Option<f64>,
) -> bool {
    for _ in 0..=ramp.step_retries {
        let r = run_phase(target, Workload::Unary, rate, ramp.step, call_timeout).await;
        let step = step_of(&r, ramp);
        let passed = step.passed;
        record(step, best);
        settle().await;
        if passed {
            return true;
        }
    }
    false
}

/// A pause between steps so the backlog of an overloaded step is gone.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn settings_line(o: &Options) -> String {
    format!(
        "rounds {}, warm-up {} s + phase {} s; unary {} rps; stream {} rps x {} messages; {} client connections; ramp from {} rps x{} per {} s step (max {} steps + {} refinements, a failing step repeated {} time(s); a step passes with >= {:.0}% of target, p99 <= {} ms, <= 0.1% failed); {} worker thread(s) per proxy (Envoy --concurrency, tally-proxy TOKIO_WORKER_THREADS); access logs {}",
        o.rounds,
        o.warmup.as_secs_f64(),
        o.phase.as_secs_f64(),
        o.unary_rate,
        o.stream_rate,
        o.stream_messages,
        o.connections,
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
    )
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
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
