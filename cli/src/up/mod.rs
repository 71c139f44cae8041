//! `tally up`: runs the whole platform on one machine.
//!
//! It reads the platform description ([`platform`]), plans instances, ports
//! and config files ([`plan`]), checks the ports are free, builds the binaries
//! when run under cargo, starts every instance as its own process in
//! dependency order ([`supervisor`]), waits for each to report SERVING over
//! `grpc.health.v1`, prints where everything is, restarts what crashes, and on
//! Ctrl-C or SIGTERM stops everything in reverse order and exits 0.
//!
//! By default every service instance gets a `tally-proxy` sidecar and all
//! service-to-service calls go through the mesh over mutual TLS ([`mesh`]:
//! configs, certificates, policy); `--no-mesh` lets services call each other
//! directly. Every instance serves Prometheus metrics, and `tally up` writes
//! the scrape config for all of them ([`scrape`]).

mod binaries;
pub mod canary;
mod health;
pub(crate) mod mesh;
pub(crate) mod plan;
pub(crate) mod platform;
mod ports;
mod private_fs;
mod redis;
pub mod scrape;
mod supervisor;
mod table;

pub use plan::AUDIT_DIR;
use plan::{Instance, ReplicaArg};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

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
    /// Refused for a service on embedded storage (each replica would keep
    /// its own data): replicas need a shared store.
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
    /// Run without mesh sidecars: services call each other directly, in
    /// plaintext.
    #[arg(long)]
    pub no_mesh: bool,
    /// Lifetime of the mesh workload certificates (e.g. 24h, 15m, 90s; at
    /// least 1m); each is renewed at 70% of it while `tally up` runs.
    #[arg(long, default_value = mesh::DEFAULT_CERT_VALIDITY, value_parser = mesh::parse_validity)]
    pub cert_validity: Duration,
    /// Which service, if any, gets a canary version beside its stable one.
    #[command(flatten)]
    pub canary: canary::CanaryArgs,
    /// Also run a redis-server (from PATH, persisting to an append-only
    /// file) for the user service's sessions and polling's read cache.
    #[arg(long)]
    pub redis: bool,
    /// Send traces to this OTLP/gRPC collector instead of the embedded receiver
    /// (`tally traces` then has nothing to show).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Why `tally up` could not start or keep the platform running.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The flags contradict each other or are out of range.
    #[error("{0}")]
    Usage(String),
    /// The platform description (instances, ports) cannot be built.
    #[error("platform description: {0}")]
    Platform(String),
    /// Another process holds a port an instance needs.
    #[error(
        "port {port} (for {instance}) is already in use on 127.0.0.1 ({reason}); stop what is \
         using it (another `tally up`?) or choose other ports with --base-port <PORT>"
    )]
    PortInUse {
        /// The port asked for.
        port: u16,
        /// The instance that needs it.
        instance: String,
        /// What binding it said.
        reason: String,
    },
    /// A binary to run is not built.
    #[error(
        "binary `{binary}` not found in {dir}; build it with `cargo build --workspace --bins` \
         (add --release for a release `tally`) or point --bin-dir at it"
    )]
    BinaryMissing {
        /// The binary's file name.
        binary: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// `cargo build` of the binaries failed.
    #[error("build failed: {0}")]
    Build(String),
    /// The mesh CA or a workload certificate could not be made.
    #[error("mesh certificates: {0}")]
    Mesh(String),
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `cannot write <path>`.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An instance exited or never became healthy while starting.
    #[error("{instance} did not start ({reason}); its log {log} ends with:\n{tail}")]
    StartFailed {
        /// The instance, e.g. `polling-1`.
        instance: String,
        /// How it failed.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
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
fn shutdown_signal() -> Result<impl Future<Output = &'static str>, UpError> {
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
        if health::check(&probe).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(UpError::StartFailed {
                instance: inst.name.clone(),
                reason: format!(
                    "not {} on {} after {}s; raise --ready-timeout if the machine is slow",
                    probe.ready_word(),
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

fn write_files(plan: &plan::Plan) -> Result<(), UpError> {
    // Keys, tokens and every store live below the data directory: only the
    // owner may enter it, and what `tally up` owns inside it is 0700 / 0600,
    // even when it existed before.
    private_fs::private_dir(&plan.data_dir)
        .map_err(io(format!("cannot create {}", plan.data_dir.display())))?;
    let mut dirs = plan::directories(&plan.data_dir).to_vec();
    // The mesh CA key and workload keys are written below `mesh/` (0600 each);
    // a run without sidecars has no mesh and no such directory.
    if plan.instances.iter().any(|i| i.binary == "tally-proxy") {
        dirs.push(plan.data_dir.join("mesh"));
    }
    dirs.extend(
        plan.instances
            .iter()
            .map(|inst| plan.data_dir.join("data").join(&inst.name)),
    );
    for d in &dirs {
        private_fs::private_dir(d).map_err(io(format!("cannot create {}", d.display())))?;
    }
    for inst in &plan.instances {
        private_fs::private_file(&inst.config_path, &inst.config)
            .map_err(io(format!("cannot write {}", inst.config_path.display())))?;
    }
    let scrape_config = plan.data_dir.join(scrape::FILE);
    private_fs::private_file(&scrape_config, &scrape::render(plan))
        .map_err(io(format!("cannot write {}", scrape_config.display())))?;
    Ok(())
}

/// Runs `tally up` until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> Result<(), UpError> {
    let data_dir = std::path::absolute(&args.data_dir).map_err(io(format!(
        "cannot resolve --data-dir {}",
        args.data_dir.display()
    )))?;
    let platform = if args.no_mesh {
        platform::platform().without_mesh()
    } else {
        platform::platform()
    };
    let replicas = match &args.canary.canary {
        Some(service) => canary::with_canary_replica(&args.replicas, service),
        None => args.replicas.clone(),
    };
    let mut plan = plan::build(
        &platform,
        &plan::Options {
            data_dir,
            base_port: args.base_port,
            replicas,
            log_format: args.log_format.clone(),
        },
    )?;
    if let Some(name) = canary::apply(&mut plan, &args.canary)? {
        say(&format!(
            "canary: {name} gets {}% of the calls to {} (change it with `tally rollout`)",
            args.canary.canary_weight,
            args.canary.canary.as_deref().unwrap_or_default()
        ));
    }
    plan::refuse_split_state(&plan, &platform)?;
    if args.redis {
        redis::add(&mut plan, args.base_port)?;
    }
    ports::check_free(&plan)?;

    let bin_dir = binaries::dir(args.bin_dir.as_deref())?;
    if !args.no_build {
        binaries::build_if_under_cargo(&bin_dir).await?;
    }
    let binaries: Vec<PathBuf> = plan
        .instances
        .iter()
        .map(|i| match i.binary.as_str() {
            redis::BINARY => redis::locate(),
            bin => binaries::locate(&bin_dir, bin),
        })
        .collect::<Result<_, _>>()?;
    // A build can take minutes: check again right before binding.
    ports::check_free(&plan)?;
    let receiver = crate::traces::wiring::start(&mut plan, args.otlp_endpoint.as_deref()).await?;
    write_files(&plan)?;
    crate::traces::wiring::serve(receiver, &plan.data_dir)?;

    // Mesh identities: the CA (created once), a fresh certificate per
    // service, and a task per service renewing it while `tally up` runs.
    let meshed: Vec<&str> = if platform.sidecar.is_some() {
        platform
            .services
            .iter()
            .filter(|s| s.sidecar)
            .map(|s| s.name)
            .collect()
    } else {
        Vec::new()
    };
    // Every mesh identity: the sidecars' and the gateway's.
    let identities: Vec<&str> = if platform.sidecar.is_some() {
        platform
            .services
            .iter()
            .filter(|s| s.sidecar || s.mesh_only)
            .map(|s| s.name)
            .collect()
    } else {
        Vec::new()
    };
    let mut renewals = Vec::new();
    if !identities.is_empty() {
        let token = mesh::admin_token::generate(&plan.data_dir)?;
        say(&format!(
            "admin token of the sidecars' and the gateway's admin APIs (changes such as \
             PUT /faults need `authorization: Bearer <token>`): {} (0600)",
            token.display()
        ));
        let rotators = mesh::issue_certificates(&plan.data_dir, &identities, args.cert_validity)?;
        say(&format!(
            "issued mesh certificates for {} (valid {}, renewed at 70%) in {}",
            identities.join(", "),
            tally_certs::format_duration(args.cert_validity),
            mesh::certs_dir(&plan.data_dir).display()
        ));
        for (service, rotator) in rotators {
            renewals.push(tokio::spawn(mesh::renew(service, rotator)));
        }
    }
    let stop_renewals = move || {
        for task in &renewals {
            task.abort();
        }
    };

    // From here on Ctrl-C and SIGTERM mean "stop the children, then exit";
    // before, they simply end `tally up` (and a running build).
    let stop = shutdown_signal()?;
    tokio::pin!(stop);

    let timeout = Duration::from_secs(args.ready_timeout);
    let mut handles: Vec<supervisor::Handle> = Vec::new();
    let mut by_name: Vec<(Instance, PathBuf)> =
        plan.instances.iter().cloned().zip(binaries).collect();
    let stages = plan.stages().len();
    let mut waves: Vec<(usize, u8)> = plan.instances.iter().map(supervisor::wave).collect();
    waves.sort();
    waves.dedup();
    for w in waves {
        let (now, later): (Vec<_>, Vec<_>) = by_name
            .into_iter()
            .partition(|(i, _)| supervisor::wave(i) == w);
        by_name = later;
        if now.is_empty() {
            continue;
        }
        let first_new = handles.len();
        for (inst, bin) in now {
            match &inst.sidecar_of {
                Some(app) => say(&format!(
                    "starting {} ({}) beside {app}: {}",
                    inst.name,
                    inst.binary,
                    table::address_column(&inst)
                )),
                None => say(&format!(
                    "starting {} ({}) on {}",
                    inst.name,
                    inst.binary,
                    table::address_column(&inst)
                )),
            }
            handles.push(supervisor::start(inst, bin));
        }
        let ready = async {
            for h in &handles[first_new..] {
                wait_ready(h, timeout).await?;
                let word = h
                    .instance
                    .probe
                    .as_ref()
                    .map(|p| p.ready_word())
                    .unwrap_or("started");
                say(&format!("{} is {word}", h.instance.name));
            }
            Ok::<(), UpError>(())
        };
        tokio::select! {
            res = ready => {
                if let Err(e) = res {
                    say("start failed; stopping what was started");
                    supervisor::stop_all(handles).await;
                    stop_renewals();
                    return Err(e);
                }
            }
            sig = &mut stop => {
                say(&format!("{sig} received during start; stopping"));
                supervisor::stop_all(handles).await;
                stop_renewals();
                return Ok(());
            }
        }
    }

    table::print(&handles);
    if !meshed.is_empty() {
        say(&format!(
            "mesh: every service-to-service call goes through the sidecars over mTLS \
             (spiffe://{}/ns/{}/sa/<service>); the ADDRESS of a service is its own port, \
             for operators and clients; inbound sidecars allow only:",
            mesh::TRUST_DOMAIN,
            mesh::NAMESPACE
        ));
        for line in mesh::policy_lines(&meshed) {
            say(&format!("  {line}"));
        }
    }
    match plan.instances.iter().find(|i| i.name == "gateway") {
        Some(gw) => say(&format!(
            "browsers: gRPC-Web (and gRPC) at http://{}:{} (the gateway; SignUp, Login, \
             GetJwks, RefreshAccessToken public, the rest needs `authorization: Bearer <token>`)",
            platform::HOST,
            gw.ports.get("gateway").copied().unwrap_or_default()
        )),
        None => say("no browser gateway: it runs only with the mesh (without --no-mesh)"),
    }
    say(&format!(
        "ready: {} instance{} in {} stage{} SERVING; data in {}; Ctrl-C stops everything",
        handles.len(),
        if handles.len() == 1 { "" } else { "s" },
        stages,
        if stages == 1 { "" } else { "s" },
        plan.data_dir.display()
    ));
    let unscraped = handles
        .iter()
        .filter(|h| scrape::url(&h.instance).is_none())
        .count();
    say(&format!(
        "metrics: {} serve{} Prometheus metrics (METRICS column); scrape config for them: {}",
        if unscraped == 0 {
            "every instance"
        } else {
            "the instances with a METRICS url"
        },
        if unscraped == 0 { "s" } else { "" },
        plan.data_dir.join(scrape::FILE).display()
    ));
    if let Some(first) = handles.first().and_then(|h| h.instance.addr) {
        say(&format!("try: grpcurl -plaintext {first} list"));
    }

    let sig = stop.await;
    say(&format!(
        "{sig} received; stopping {} instances",
        handles.len()
    ));
    supervisor::stop_all(handles).await;
    stop_renewals();
    say("stopped");
    Ok(())
}
