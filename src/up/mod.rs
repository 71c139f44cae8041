//! `tally up`: runs the whole platform on one machine.
//!
//! It reads the platform description ([`platform`]), plans instances, ports
//! and config files ([`plan`]), checks the ports are free, builds the binaries
//! when run under cargo, starts every instance as its own process in
//! dependency order ([`supervisor`]), waits for each to report SERVING over
//! `grpc.health.v1`, prints where everything is, restarts what crashes, and on
//! Ctrl-C or SIGTERM stops everything in reverse order and exits 0.

mod binaries;
mod health;
pub mod plan;
pub mod platform;
mod ports;
mod supervisor;

use plan::{Instance, ReplicaArg};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `tally up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where configs, logs, pid files and each instance's database live.
    #[arg(long, default_value = ".tally")]
    pub data_dir: PathBuf,
    /// First port to hand out; instances get consecutive ports from here
    /// (user 50051, polling 50052 by default).
    #[arg(long, default_value_t = platform::DEFAULT_BASE_PORT,
          value_parser = clap::value_parser!(u16).range(1024..))]
    pub base_port: u16,
    /// Instances per service: `N` for every service or `SERVICE=N` (repeatable).
    /// With embedded storage each instance keeps its own data.
    #[arg(long = "replicas", value_name = "N|SERVICE=N", value_parser = plan::parse_replicas)]
    pub replicas: Vec<ReplicaArg>,
    /// Service log format.
    #[arg(long, default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
    /// Seconds each instance may take to report SERVING at start.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ready_timeout: u64,
    /// Directory holding the service binaries (default: next to `tally`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` first, even under `cargo run`.
    #[arg(long)]
    pub no_build: bool,
}

/// Why `tally up` could not start or keep the platform running.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Usage(String),
    #[error("platform description: {0}")]
    Platform(String),
    #[error(
        "port {port} (for {instance}) is already in use on 127.0.0.1 ({reason}); stop what is \
         using it (another `tally up`?) or choose other ports with --base-port <PORT>"
    )]
    PortInUse {
        port: u16,
        instance: String,
        reason: String,
    },
    #[error(
        "binary `{binary}` not found in {dir}; build it with `cargo build --workspace --bins` \
         (add --release for a release `tally`) or point --bin-dir at it"
    )]
    BinaryMissing { binary: String, dir: PathBuf },
    #[error("build failed: {0}")]
    Build(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{instance} did not start ({reason}); its log {log} ends with:\n{tail}")]
    StartFailed {
        instance: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
}

/// Prints one `tally up:` line on stdout; a closed stdout is not an error.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tally up: {line}");
    let _ = out.flush();
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    let what = what.into();
    move |source| UpError::Io { what, source }
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let tail = all[start..].join("\n");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. Handlers are installed when this
/// is called, not when first polled, so an early signal is not lost.
fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, UpError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(io("cannot handle SIGINT"))?;
        let mut term = signal(SignalKind::terminate()).map_err(io("cannot handle SIGTERM"))?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

async fn wait_ready(handle: &supervisor::Handle, timeout: Duration) -> Result<(), UpError> {
    let inst = &handle.instance;
    let Some(probe) = inst.probe.clone() else {
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    loop {
        if handle.state.exits() > 0 {
            // Give the log a moment to receive the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(UpError::StartFailed {
                instance: inst.name.clone(),
                reason: handle.state.last_exit().unwrap_or_else(|| "exited".into()),
                log: inst.log_path.clone(),
                tail: log_tail(&inst.log_path, 20),
            });
        }
        if health::is_serving(probe.addr, &probe.service).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(UpError::StartFailed {
                instance: inst.name.clone(),
                reason: format!(
                    "not SERVING on {} after {}s; raise --ready-timeout if the machine is slow",
                    probe.addr,
                    timeout.as_secs()
                ),
                log: inst.log_path.clone(),
                tail: log_tail(&inst.log_path, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops every instance, the last started first, and waits for them.
async fn stop_all(mut handles: Vec<supervisor::Handle>) {
    handles.sort_by_key(|h| std::cmp::Reverse(h.instance.stage));
    while let Some(stage) = handles.first().map(|h| h.instance.stage) {
        let split = handles
            .iter()
            .position(|h| h.instance.stage != stage)
            .unwrap_or(handles.len());
        let rest = handles.split_off(split);
        for h in &handles {
            h.request_stop();
        }
        for h in handles {
            h.join().await;
        }
        handles = rest;
    }
}

fn print_table(handles: &[supervisor::Handle]) {
    let mut rows: Vec<&supervisor::Handle> = handles.iter().collect();
    rows.sort_by_key(|h| h.instance.ports.values().min().copied());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "  {:<16} {:<22} {:<8} LOG",
        "INSTANCE", "ADDRESS", "PID"
    );
    for h in rows {
        let addr = h
            .instance
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<8} {}",
            h.instance.name,
            addr,
            h.state.pid(),
            h.instance.log_path.display()
        );
    }
    let _ = out.flush();
}

fn write_files(plan: &plan::Plan) -> Result<(), UpError> {
    for d in plan::directories(&plan.data_dir) {
        std::fs::create_dir_all(&d).map_err(io(format!("cannot create {}", d.display())))?;
    }
    for inst in &plan.instances {
        let state = plan.data_dir.join("data").join(&inst.name);
        std::fs::create_dir_all(&state)
            .map_err(io(format!("cannot create {}", state.display())))?;
        std::fs::write(&inst.config_path, &inst.config)
            .map_err(io(format!("cannot write {}", inst.config_path.display())))?;
    }
    Ok(())
}

/// Runs `tally up` until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> Result<(), UpError> {
    let data_dir = std::path::absolute(&args.data_dir).map_err(io(format!(
        "cannot resolve --data-dir {}",
        args.data_dir.display()
    )))?;
    let plan = plan::build(
        &platform::platform(),
        &plan::Options {
            data_dir,
            base_port: args.base_port,
            replicas: args.replicas.clone(),
            log_format: args.log_format.clone(),
        },
    )?;
    ports::check_free(&plan)?;

    let bin_dir = binaries::dir(args.bin_dir.as_deref())?;
    if !args.no_build {
        binaries::build_if_under_cargo(&bin_dir).await?;
    }
    let binaries: Vec<PathBuf> = plan
        .instances
        .iter()
        .map(|i| binaries::locate(&bin_dir, &i.binary))
        .collect::<Result<_, _>>()?;
    // A build can take minutes: check again right before binding.
    ports::check_free(&plan)?;
    write_files(&plan)?;

    // From here on Ctrl-C and SIGTERM mean "stop the children, then exit";
    // before, they simply end `tally up` (and a running build).
    let stop = shutdown_signal()?;
    tokio::pin!(stop);

    let timeout = Duration::from_secs(args.ready_timeout);
    let mut handles: Vec<supervisor::Handle> = Vec::new();
    let mut by_name: Vec<(Instance, PathBuf)> =
        plan.instances.iter().cloned().zip(binaries).collect();
    let stages = plan.stages().len();
    for stage in 0..=plan.instances.iter().map(|i| i.stage).max().unwrap_or(0) {
        let (now, later): (Vec<_>, Vec<_>) =
            by_name.into_iter().partition(|(i, _)| i.stage == stage);
        by_name = later;
        if now.is_empty() {
            continue;
        }
        let first_new = handles.len();
        for (inst, bin) in now {
            say(&format!(
                "starting {} ({}) on {}",
                inst.name,
                inst.binary,
                inst.addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into())
            ));
            handles.push(supervisor::start(inst, bin));
        }
        let ready = async {
            for h in &handles[first_new..] {
                wait_ready(h, timeout).await?;
                say(&format!("{} is SERVING", h.instance.name));
            }
            Ok::<(), UpError>(())
        };
        tokio::select! {
            res = ready => {
                if let Err(e) = res {
                    say("start failed; stopping what was started");
                    stop_all(handles).await;
                    return Err(e);
                }
            }
            sig = &mut stop => {
                say(&format!("{sig} received during start; stopping"));
                stop_all(handles).await;
                return Ok(());
            }
        }
    }

    print_table(&handles);
    say(&format!(
        "ready: {} instance{} in {} stage{} SERVING; data in {}; Ctrl-C stops everything",
        handles.len(),
        if handles.len() == 1 { "" } else { "s" },
        stages,
        if stages == 1 { "" } else { "s" },
        plan.data_dir.display()
    ));
    if let Some(first) = handles.first().and_then(|h| h.instance.addr) {
        say(&format!("try: grpcurl -plaintext {first} list"));
    }

    let sig = stop.await;
    say(&format!(
        "{sig} received; stopping {} instances",
        handles.len()
    ));
    stop_all(handles).await;
    say("stopped");
    Ok(())
}
