//! A real `redis-server` for tests, on a free port, in a temp directory,
//! without persistence; killed when dropped.

use crate::{Process, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    port: u16,
    _process: Process,
    _dir: tempfile::TempDir,
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) and waits until it answers PING.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redis-")
            .tempdir()
            .expect("temp dir for redis");
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new("redis-server");
            cmd.current_dir(dir.path()).args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.path().display().to_string(),
            ]);
            if std::process::Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err()
            {
                panic!(
                    "redis-server is not installed; run `bash scripts/test` (installs it with apt-get) \
                     or `apt-get install -y redis-server`"
                );
            }
            let mut process = Process::spawn_command(cmd);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && process.is_running() {
                if ping(port) {
                    return Self {
                        port,
                        _process: process,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Lost a port race, or failed to start: try another port.
            eprintln!(
                "redis-server on port {port} did not start:\n{}",
                process.output()
            );
        }
        panic!("redis-server did not start after 5 attempts");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
