//! Starting the real Tally service binaries with generated configs, each on a
//! free port with its own data directory.

use crate::{Process, READY_TIMEOUT, bin_path, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;

fn write_config(dir: &Path, name: &str, port: u16, extra: &str) -> PathBuf {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).expect("state dir");
    let text = format!(
        "[server]\nlisten_addr = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 2\n\n\
         [storage]\nbackend = \"embedded\"\npath = \"{}\"\n\n\
         [telemetry]\nlog_format = \"pretty\"\n\n{extra}",
        state.join(format!("{name}.redb")).display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn spawn_service(binary: &str, config: &Path, env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(bin_path(binary));
    cmd.arg("--config").arg(config);
    for var in ["TALLY_USER_ADDR", "TALLY_POLL_ADDR"] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Process::spawn_command(cmd)
}

/// Starts `tally-user` in `dir` on a free port and waits for SERVING.
/// `extra_toml` is appended to its config (e.g. a `[user]` section).
pub async fn start_user(dir: &Path, extra_toml: &str) -> (Process, String) {
    let port = free_port();
    let config = write_config(dir, "user", port, extra_toml);
    let mut p = spawn_service("tally-user", &config, &[]);
    let addr = format!("127.0.0.1:{port}");
    p.wait_healthy(&addr, "tally.user.v1.UserService", READY_TIMEOUT)
        .await;
    (p, addr)
}

/// Starts `tally-polling` in `dir` on a free port, calling the user service
/// at `user_addr`, and waits for SERVING.
pub async fn start_polling(dir: &Path, user_addr: &str, extra_toml: &str) -> (Process, String) {
    let port = free_port();
    let extra = format!("[outbound]\nuser = \"http://{user_addr}\"\n\n{extra_toml}");
    let config = write_config(dir, "polling", port, &extra);
    let mut p = spawn_service("tally-polling", &config, &[]);
    let addr = format!("127.0.0.1:{port}");
    p.wait_healthy(&addr, "tally.poll.v1.PollService", READY_TIMEOUT)
        .await;
    (p, addr)
}

/// The user and polling services, started in a temp directory.
pub struct Platform {
    /// The user service process.
    pub user: Process,
    /// The user service's `host:port`.
    pub user_addr: String,
    /// The polling service process.
    pub polling: Process,
    /// The polling service's `host:port`.
    pub poll_addr: String,
    /// Holds both services' data; removed when the platform is dropped.
    pub dir: tempfile::TempDir,
}

impl Platform {
    /// Starts user, then polling pointed at it; both SERVING on return.
    pub async fn start() -> Self {
        Self::start_with("", "").await
    }

    /// Like [`Platform::start`], appending TOML to each service's config,
    /// e.g. `"[auth]\napi_key_cache_ttl_secs = 1\n"`.
    pub async fn start_with(user_toml: &str, polling_toml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tally-platform-")
            .tempdir()
            .expect("temp dir");
        let (user, user_addr) = start_user(dir.path(), user_toml).await;
        let (polling, poll_addr) = start_polling(dir.path(), &user_addr, polling_toml).await;
        Self {
            user,
            user_addr,
            polling,
            poll_addr,
            dir,
        }
    }

    /// The user service's address as an `http://` URI for clients.
    pub fn user_uri(&self) -> String {
        format!("http://{}", self.user_addr)
    }

    /// The polling service's address as an `http://` URI for clients.
    pub fn poll_uri(&self) -> String {
        format!("http://{}", self.poll_addr)
    }
}
