//! A real `redis-server` for tests, on a port from [`free_port`], in a temp
//! directory, without persistence (or with an fsync-always append-only file,
//! [`RedisServer::start_persistent`]): started and waited for without
//! blocking the async runtime, stoppable and restartable on the same port and
//! data (to test outages), killed when dropped.

use crate::{Process, READY_TIMEOUT, free_port};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Attempts on fresh ports before giving up.
const START_ATTEMPTS: usize = 5;
/// How often readiness is probed.
const PING_POLL: Duration = Duration::from_millis(50);
/// Deadline of one PING.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A running (or stopped, see [`RedisServer::stop`]) `redis-server`.
pub struct RedisServer {
    port: u16,
    process: Option<Process>,
    dir: tempfile::TempDir,
    persistent: bool,
}

async fn ping(port: u16) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(PING_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

fn ensure_installed() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "redis-server is not installed; run `bash scripts/test` (installs it with apt-get) \
             or `apt-get install -y redis-server`"
        );
    }
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Like [`RedisServer::start`], with every write in an append-only file
    /// synced at once, so data survives a kill and restart.
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Self {
        ensure_installed();
        let dir = tempfile::Builder::new()
            .prefix("redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut server = Self {
            port: 0,
            process: None,
            dir,
            persistent,
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts");
    }

    /// Spawns on `self.port`; true once it answers PING.
    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        let (appendonly, fsync) = if self.persistent {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        cmd.current_dir(self.dir.path()).args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            appendonly,
            "--appendfsync",
            fsync,
            "--dir",
            &self.dir.path().display().to_string(),
        ]);
        let mut process = Process::spawn_command(cmd);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline && process.is_running() {
            if ping(self.port).await {
                self.process = Some(process);
                return true;
            }
            tokio::time::sleep(PING_POLL).await;
        }
        eprintln!(
            "redis-server on port {} did not start:\n{}",
            self.port,
            process.output()
        );
        process.kill();
        false
    }

    /// The port redis-server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone unless it is persistent).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port; panics if it does not come back.
    pub async fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }
}
