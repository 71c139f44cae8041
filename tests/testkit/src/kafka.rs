//! A real Kafka-protocol broker for tests: `tansu` (a Kafka-compatible broker
//! written in Rust, in-memory storage), on a port from [`free_port`], waited
//! for with a Kafka `ApiVersions` request (not just a TCP connect), killed
//! when dropped.
//!
//! The binary is `<repo>/.tools/tansu/bin/tansu` (`bash scripts/test`
//! installs it there with `cargo install`), else `$TALLY_TANSU`, else the
//! first `tansu` on PATH.

use crate::{Process, READY_TIMEOUT, free_port, repo_root};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Attempts on fresh ports before giving up.
const START_ATTEMPTS: usize = 5;
/// How often readiness is probed.
const PROBE_POLL: Duration = Duration::from_millis(50);
/// Deadline of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `ApiVersions` (key 18) version 0, correlation id 7, null client id.
const API_VERSIONS_V0: [u8; 14] = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];

/// A running Kafka-protocol broker.
pub struct KafkaBroker {
    port: u16,
    process: Process,
}

/// The `tansu` binary to run.
pub fn tansu_path() -> PathBuf {
    let installed = repo_root().join(".tools/tansu/bin/tansu");
    if installed.is_file() {
        return installed;
    }
    if let Some(path) = std::env::var_os("TALLY_TANSU") {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "tansu not found at {} or on PATH; run `bash scripts/test` once (it installs it), or \
         `cargo install tansu --locked --debug --no-default-features --features dynostore --root .tools/tansu`",
        installed.display()
    );
}

/// True once the broker answers an `ApiVersions` request without error.
async fn answers(port: u16) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(&API_VERSIONS_V0).await.ok()?;
        let mut head = [0u8; 10];
        s.read_exact(&mut head).await.ok()?;
        // size (4), correlation id (4) = 7, error code (2) = 0.
        Some(head[4..8] == [0, 0, 0, 7] && head[8..10] == [0, 0])
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

impl KafkaBroker {
    /// Starts `tansu broker` with in-memory storage and waits until it answers.
    pub async fn start() -> Self {
        let program = tansu_path();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut cmd = Command::new(&program);
            cmd.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]);
            let mut process = Process::spawn_command(cmd);
            let deadline = Instant::now() + READY_TIMEOUT;
            while Instant::now() < deadline && process.is_running() {
                if answers(port).await {
                    return Self { port, process };
                }
                tokio::time::sleep(PROBE_POLL).await;
            }
            eprintln!("tansu on port {port} did not start:\n{}", process.output());
            process.kill();
        }
        panic!("tansu did not start after {START_ATTEMPTS} attempts");
    }

    /// The port the broker listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as a bootstrap broker.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's output so far (for failure messages).
    pub fn output(&self) -> String {
        self.process.output()
    }
}
