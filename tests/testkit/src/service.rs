//! One Tally service binary under test: a config file with `[server]` on a
//! port from [`free_port`] plus the test's TOML, its own data directory, its
//! health; stopped gracefully, force-killed, and restarted on the same port
//! and data, so tests can take a dependency down and bring it back.

use crate::{Process, READY_TIMEOUT, free_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Ports tried before giving up on a start.
const START_ATTEMPTS: usize = 3;
/// Deadline of calls on [`ServiceProcess::channel`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop waits for the drain before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is probed.
const HEALTH_POLL: Duration = Duration::from_millis(100);
/// The drain timeout written into every test config.
const DRAIN_TIMEOUT_SECS: u64 = 5;

/// One running service process; killed when dropped.
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    health_name: String,
    process: Option<Process>,
    /// The gRPC address the service listens on.
    pub addr: SocketAddr,
    /// The service's own data directory (stores, keys).
    pub data_dir: PathBuf,
    config_body: String,
}

impl ServiceProcess {
    /// Starts `binary` with `[server]` on a free port plus `config_body`, in
    /// `data_dir`; waits until `health_name` is SERVING. Another port is
    /// tried if the process exits before it is ready.
    pub async fn start(
        name: &str,
        binary: PathBuf,
        health_name: &str,
        data_dir: &Path,
        config_body: &str,
    ) -> Self {
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut svc = Self {
                name: name.to_string(),
                binary: binary.clone(),
                health_name: health_name.to_string(),
                process: None,
                addr: ([127, 0, 0, 1], free_port()).into(),
                data_dir: data_dir.to_path_buf(),
                config_body: config_body.to_string(),
            };
            svc.spawn();
            if svc.wait_ready().await {
                return svc;
            }
            last_log = svc.log_text();
            svc.kill();
            eprintln!("{name} did not become ready (attempt {attempt}); log:\n{last_log}");
        }
        panic!("{name} never became ready; last log:\n{last_log}");
    }

    fn spawn(&mut self) {
        let config = self.data_dir.join(format!("{}.toml", self.name));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten_addr = \"{}\"\ndrain_timeout_secs = {DRAIN_TIMEOUT_SECS}\n{}\n",
                self.addr, self.config_body
            ),
        )
        .expect("write config");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&config)
            .current_dir(&self.data_dir)
            .env("RUST_LOG", "info");
        self.process = Some(Process::spawn_command(cmd));
    }

    /// Stops the process gracefully and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn();
        if !self.wait_ready().await {
            panic!("{} did not come back; log:\n{}", self.name, self.log_text());
        }
    }

    /// What the process wrote (stdout and stderr), for failure messages.
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.output())
            .unwrap_or_default()
    }

    /// The health status it reports now, if it answers.
    pub async fn health(&self) -> Option<i32> {
        let ch = Endpoint::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: self.health_name.clone(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(p) = self.process.as_mut()
                && !p.is_running()
            {
                return false;
            }
            if self.health().await == Some(ServingStatus::Serving as i32) {
                return true;
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
        false
    }

    /// Waits (generously) until health reports `status`.
    pub async fn wait_health(&self, status: ServingStatus) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.health().await == Some(status as i32) {
                return;
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
        panic!("{} never reported {status:?}", self.name);
    }

    /// A connected channel with a generous call deadline.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// SIGTERM, then waits for the drain; SIGKILL if it lingers.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(STOP_TIMEOUT).await;
        }
    }

    /// SIGKILL now (a crash), without a drain.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
