//! Test harness: runs the real `tally-user` and `tally-polling` binaries on
//! free ports with their own data directories, waits until their health says
//! SERVING, and kills them when dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_api::poll::v1 as pollpb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::user::v1 as userpb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::free_port;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const PASSWORD: &str = "correct horse battery staple";

/// `tally-user`, built next to this test binary by `cargo build --workspace --bins`.
pub fn user_binary() -> PathBuf {
    tally_testkit::bin_path("tally-user")
}

/// One running service process; killed when dropped.
pub struct Service {
    name: &'static str,
    binary: PathBuf,
    health_name: &'static str,
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    config_body: String,
    log: PathBuf,
}

impl Service {
    /// Starts `binary` with `[server]` on a free port plus `config_body`, in
    /// `data_dir`; waits until `health_name` is SERVING. Retries on a port race.
    pub async fn start(
        name: &'static str,
        binary: PathBuf,
        health_name: &'static str,
        data_dir: &Path,
        config_body: &str,
    ) -> Self {
        let mut last_log = String::new();
        for attempt in 1..=3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut svc = Service {
                name,
                binary: binary.clone(),
                health_name,
                child: None,
                addr,
                data_dir: data_dir.to_path_buf(),
                config_body: config_body.to_string(),
                log: data_dir.join(format!("{name}-{}.log", free_port())),
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
                "[server]\nlisten_addr = \"{}\"\ndrain_timeout_secs = 5\n{}\n",
                self.addr, self.config_body
            ),
        )
        .expect("write config");
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&config)
            .current_dir(&self.data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("create log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Stops the process gracefully and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        if !self.wait_ready().await {
            panic!("{} did not come back; log:\n{}", self.name, self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

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
                service: self.health_name.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if self.health().await == Some(ServingStatus::Serving as i32) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} never reported {status:?}", self.name);
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// SIGTERM, then wait for the drain; SIGKILL if it lingers.
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

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A user service and a polling service wired to it.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub user: Service,
    pub polling: Service,
}

impl Stack {
    /// Starts both; `polling_extra` is appended to polling's config (e.g. a
    /// `[polling]` section).
    pub async fn start(polling_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let user_dir = dir.path().join("user");
        let polling_dir = dir.path().join("polling");
        std::fs::create_dir_all(&user_dir).expect("mkdir");
        std::fs::create_dir_all(&polling_dir).expect("mkdir");
        let user = Service::start(
            "tally-user",
            user_binary(),
            "tally.user.v1.UserService",
            &user_dir,
            &format!(
                "[storage]\nbackend = \"embedded\"\npath = {:?}\n",
                user_dir.join("user.redb")
            ),
        )
        .await;
        let polling = Service::start(
            "tally-polling",
            PathBuf::from(env!("CARGO_BIN_EXE_tally-polling")),
            "tally.poll.v1.PollService",
            &polling_dir,
            &format!(
                "[storage]\nbackend = \"embedded\"\npath = {:?}\n[outbound]\nuser = \"http://{}\"\n{polling_extra}\n",
                Self::polling_db(&polling_dir),
                user.addr
            ),
        )
        .await;
        Stack { dir, user, polling }
    }

    fn polling_db(dir: &Path) -> PathBuf {
        dir.join("polling.redb")
    }

    /// The polling service's database file.
    pub fn polling_db_path(&self) -> PathBuf {
        Self::polling_db(&self.polling.data_dir)
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.user.channel().await)
    }

    pub async fn polls(&self) -> PollServiceClient<Channel> {
        PollServiceClient::new(self.polling.channel().await)
    }

    /// Signs up and logs in a user; returns (user_id, access token).
    pub async fn account(&self, email: &str) -> (String, String) {
        let mut users = self.users().await;
        let user = users
            .sign_up(userpb::SignUpRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Tester".into(),
            })
            .await
            .expect("sign up")
            .into_inner()
            .user
            .expect("user");
        let login = users
            .login(userpb::LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner();
        (user.user_id, login.access_token)
    }

    /// Creates an API key for the holder of `token`; returns its secret.
    pub async fn api_key(&self, token: &str, scopes: &[&str]) -> (String, String) {
        let mut users = self.users().await;
        let resp = users
            .create_api_key(bearer(
                userpb::CreateApiKeyRequest {
                    name: "test key".into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                },
                token,
            ))
            .await
            .expect("create api key")
            .into_inner();
        (resp.api_key.expect("api key").key_id, resp.secret)
    }
}

/// A request with `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

/// A request with `x-api-key: <secret>`.
pub fn api_key<T>(msg: T, secret: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("x-api-key", secret.parse().expect("ascii secret"));
    req
}

/// A create request with `n` options.
pub fn create_req(question: &str, n: usize) -> pollpb::CreatePollRequest {
    pollpb::CreatePollRequest {
        question: question.into(),
        options: (0..n).map(|i| format!("Option {i}")).collect(),
        closes_at: None,
    }
}

/// Asserts the call failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(s) if s.code() == code => s,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}
