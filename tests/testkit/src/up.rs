//! `tally up` for end-to-end tests: the real launcher on its own port range
//! (below the ephemeral range) and its own data directory, started until it
//! prints "tally up: ready" and stopped with SIGTERM on drop.

use crate::{HttpReply, Process, TALLY_UP_PORTS, admin_request, bin_path, free_port_range};
use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long `tally up` may take to print "tally up: ready" on a loaded
/// 2-core machine (it starts six services, their sidecars and the gateway).
pub const TALLY_UP_READY_TIMEOUT: Duration = Duration::from_secs(240);

/// The line `tally up` prints once every instance is serving.
pub const TALLY_UP_READY_LINE: &str = "tally up: ready";

/// Every service `tally up` runs, in the order of their ports from
/// `--base-port`.
pub const TALLY_UP_SERVICES: [&str; 6] = [
    "user",
    "polling",
    "notification",
    "analytics",
    "billing",
    "payment",
];

/// The password [`TallyUp::sign_up`] gives every account.
pub const TALLY_UP_PASSWORD: &str = "correct horse battery";

/// How to start `tally up`: extra arguments and environment, how many ports
/// it takes, and optionally a data directory or port range to reuse (to
/// restart on the same data).
#[derive(Debug, Clone)]
pub struct TallyUpBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ports: u16,
    base_port: Option<u16>,
    data_dir: Option<PathBuf>,
}

impl Default for TallyUpBuilder {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            envs: Vec::new(),
            ports: TALLY_UP_PORTS,
            base_port: None,
            data_dir: None,
        }
    }
}

impl TallyUpBuilder {
    /// Adds arguments after `tally up --data-dir D --base-port P --no-build`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for `tally up` (and so its children).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// How many ports `tally up` takes from its base port with these
    /// arguments ([`TALLY_UP_PORTS`] unless changed).
    pub fn ports(mut self, ports: u16) -> Self {
        self.ports = ports;
        self
    }

    /// Uses this base port instead of a fresh free range, e.g. to restart on
    /// the ports of an earlier run.
    pub fn base_port(mut self, base: u16) -> Self {
        self.base_port = Some(base);
        self
    }

    /// Uses this data directory (the caller keeps and removes it) instead of
    /// a fresh temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Spawns `tally up` and waits until it is ready; panics with its output
    /// if it exits first or is not ready within [`TALLY_UP_READY_TIMEOUT`].
    pub async fn start(self) -> TallyUp {
        // The services and the proxy must already be built next to `tally`.
        for service in TALLY_UP_SERVICES {
            bin_path(&format!("tally-{service}"));
        }
        bin_path("tally-proxy");
        let data = match self.data_dir {
            Some(dir) => DataDir::Given(dir),
            None => DataDir::Owned(
                tempfile::Builder::new()
                    .prefix("tally-up-")
                    .tempdir()
                    .expect("temp data dir for tally up"),
            ),
        };
        let base = self
            .base_port
            .unwrap_or_else(|| free_port_range(self.ports));
        let mut cmd = Command::new(bin_path("tally"));
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data.path())
            .arg("--base-port")
            .arg(base.to_string())
            .arg("--no-build")
            .args(&self.args)
            .envs(self.envs)
            .env_remove("CARGO");
        let mut process = Process::spawn_command(cmd);
        let ready = process
            .wait_for_stdout(TALLY_UP_READY_LINE, TALLY_UP_READY_TIMEOUT)
            .await;
        TallyUp {
            process,
            data,
            base,
            ready,
        }
    }
}

/// The data directory: a temporary one removed after the run, or the
/// caller's.
enum DataDir {
    Owned(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            Self::Owned(dir) => dir.path(),
            Self::Given(dir) => dir,
        }
    }
}

/// A running `tally up`. Derefs to its [`Process`] (output, signals, waits);
/// SIGTERM on drop, then its data directory is removed if it made one.
pub struct TallyUp {
    // Declared first so the process stops before its data directory goes.
    process: Process,
    data: DataDir,
    base: u16,
    ready: String,
}

impl TallyUp {
    /// `tally up` with these extra arguments on [`TALLY_UP_PORTS`] ports.
    pub async fn start(args: &[&str]) -> Self {
        Self::builder().args(args).start().await
    }

    /// A builder for other port counts, environment or a reused data dir.
    pub fn builder() -> TallyUpBuilder {
        TallyUpBuilder::default()
    }

    /// The data directory (`--data-dir`).
    pub fn data(&self) -> &Path {
        self.data.path()
    }

    /// The first port (`--base-port`).
    pub fn base_port(&self) -> u16 {
        self.base
    }

    /// Stdout up to and including the ready line.
    pub fn ready_output(&self) -> &str {
        &self.ready
    }

    /// `127.0.0.1:<port>` of a service's own gRPC port, e.g. `polling`.
    pub fn addr(&self, service: &str) -> String {
        let i = TALLY_UP_SERVICES
            .iter()
            .position(|s| *s == service)
            .unwrap_or_else(|| panic!("no service {service:?} in tally up"));
        let offset = u16::try_from(i).expect("six services");
        format!("127.0.0.1:{}", self.base + offset)
    }

    /// The generated config of an instance, e.g. `polling-proxy` or `gateway`.
    pub fn config(&self, instance: &str) -> toml::Table {
        let path = self.data().join("config").join(format!("{instance}.toml"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .parse()
            .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
    }

    /// `listen` of `section` in an instance's config, e.g.
    /// `listen("gateway", "admin")`.
    pub fn listen(&self, instance: &str, section: &str) -> String {
        self.config(instance)[section]["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("{instance}.toml has no {section}.listen"))
            .to_string()
    }

    /// The browser gateway's address (`host:port`).
    pub fn gateway_addr(&self) -> String {
        self.listen("gateway", "gateway")
    }

    /// A proxy's admin listener, e.g. `admin_addr("payment-proxy")`.
    pub fn admin_addr(&self, instance: &str) -> String {
        self.listen(instance, "admin")
    }

    /// The admin token the proxies require for changes.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data().join("admin-token"))
            .expect("admin token")
            .trim()
            .to_string()
    }

    /// A request to a proxy's admin API with the admin token, e.g.
    /// `admin("payment-proxy", "PUT", "/faults", body)`.
    pub async fn admin(&self, instance: &str, method: &str, path: &str, body: &str) -> HttpReply {
        let token = self.admin_token();
        admin_request(&self.admin_addr(instance), Some(&token), method, path, body).await
    }

    /// An instance's log so far (empty if it has none yet).
    pub fn log(&self, instance: &str) -> String {
        std::fs::read_to_string(self.data().join("logs").join(format!("{instance}.log")))
            .unwrap_or_default()
    }

    /// The process id of an instance, from its pid file.
    pub fn instance_pid(&self, instance: &str) -> u32 {
        let path = self.data().join("run").join(format!("{instance}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid file holds a number")
    }

    /// Signs up `email` (password [`TALLY_UP_PASSWORD`]) at the user service
    /// with the `tally` CLI, logs in and returns the access token.
    pub async fn sign_up(&self, email: &str) -> String {
        let user = format!("http://{}", self.addr("user"));
        let name = email.split('@').next().unwrap_or(email);
        self.tally_user(&user, &["signup", "--display-name", name], email)
            .await;
        self.tally_user(&user, &["login", "--token-only"], email)
            .await
            .trim()
            .to_string()
    }

    /// `tally user <args> --email E --password P` against `user`; its stdout.
    async fn tally_user(&self, user: &str, args: &[&str], email: &str) -> String {
        let out = tokio::process::Command::new(bin_path("tally"))
            .args(["user", "--user-addr", user])
            .args(args)
            .args(["--email", email, "--password", TALLY_UP_PASSWORD])
            .env_remove("CARGO")
            .output()
            .await
            .expect("run tally user");
        assert!(
            out.status.success(),
            "tally user {args:?} for {email} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.process.output()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Deref for TallyUp {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for TallyUp {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
