//! Test support shared by the integration tests: spawning the real
//! `tally-user` binary on a free port, waiting for it to report SERVING,
//! and killing it on drop.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::free_port;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `tally-user`; killed when dropped.
pub struct UserProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl UserProcess {
    /// Starts the binary with data under `data_dir` and `extra` appended to
    /// its config file; waits until health reports SERVING.
    pub async fn start(data_dir: &Path, extra: &str) -> Self {
        let mut last_log = String::new();
        for attempt in 1..=3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let config = data_dir.join("user.toml");
            let db = data_dir.join("user.redb");
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten_addr = \"{addr}\"\ndrain_timeout_secs = 2\n\
                     [storage]\nbackend = \"embedded\"\npath = {db:?}\n{extra}\n"
                ),
            )
            .expect("write config");
            let log = data_dir.join(format!("tally-user-{}.log", free_port()));
            let child = Command::new(env!("CARGO_BIN_EXE_tally-user"))
                .arg("--config")
                .arg(&config)
                .current_dir(data_dir)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create log file"))
                .spawn()
                .expect("spawn tally-user");
            let mut p = UserProcess {
                child: Some(child),
                addr,
                data_dir: data_dir.to_path_buf(),
                log,
            };
            if p.wait_ready().await {
                return p;
            }
            last_log = p.log_text();
            p.kill();
            eprintln!("tally-user did not become ready (attempt {attempt}); log:\n{last_log}");
        }
        panic!("tally-user never became ready; last log:\n{last_log}");
    }

    /// The same data directory, a fresh process.
    pub async fn restart(mut self, extra: &str) -> Self {
        self.stop();
        let dir = self.data_dir.clone();
        drop(self);
        Self::start(&dir, extra).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if self.health().await == Some(ServingStatus::Serving) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The service's health status, or `None` when it does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        let ch = Endpoint::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        let status = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: "tally.user.v1.UserService".into(),
            })
            .await
            .ok()?
            .into_inner()
            .status;
        ServingStatus::try_from(status).ok()
    }

    /// Polls health until it reports `want`; panics after a generous timeout.
    pub async fn wait_health(&self, want: ServingStatus) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let got = self.health().await;
            if got == Some(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "health stayed {got:?}, wanted {want:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn client(&self) -> UserServiceClient<Channel> {
        let ch = Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .expect("connect to tally-user");
        UserServiceClient::new(ch)
    }

    /// Asks the process to stop (SIGTERM) and waits; kills it if it lingers.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for UserProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throw-away `redis-server` on a free port (no persistence), killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = redis::Client::open(self.url()).expect("redis url");
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
