//! Test support shared by the integration tests: the real `tally-user`
//! binary and a `redis-server`, both run by tally-testkit (free ports below
//! the ephemeral range, graceful stop, restart on the same port), with the
//! user-specific calls on top.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::{READY_TIMEOUT, ServiceProcess};
use tokio::time::Instant;
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;

/// How often health is polled while waiting for a status.
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// A running `tally-user`; killed when dropped.
pub struct UserProcess {
    inner: ServiceProcess,
    pub addr: SocketAddr,
}

impl UserProcess {
    /// Starts the binary with data under `data_dir` and `extra` appended to
    /// its config file; waits until health reports SERVING.
    pub async fn start(data_dir: &Path, extra: &str) -> Self {
        let db = data_dir.join("user.redb");
        let inner = ServiceProcess::start(
            "user",
            env!("CARGO_BIN_EXE_tally-user").into(),
            "tally.user.v1.UserService",
            data_dir,
            &format!("[storage]\nbackend = \"embedded\"\npath = {db:?}\n{extra}\n"),
        )
        .await;
        let addr = inner.addr;
        Self { inner, addr }
    }

    /// The same data directory, a fresh process.
    pub async fn restart(mut self, extra: &str) -> Self {
        self.inner.stop().await;
        let dir = self.inner.data_dir.clone();
        drop(self);
        Self::start(&dir, extra).await
    }

    pub fn log_text(&self) -> String {
        self.inner.log_text()
    }

    /// The service's health status, or `None` when it does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        ServingStatus::try_from(self.inner.health().await?).ok()
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
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    pub async fn client(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.inner.channel().await)
    }

    /// Asks the process to stop (SIGTERM) and waits; kills it if it lingers.
    pub async fn stop(&mut self) {
        self.inner.stop().await;
    }
}

/// A throw-away `redis-server` (testkit's) with a client connection helper.
pub struct RedisServer {
    inner: tally_testkit::RedisServer,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self {
            inner: tally_testkit::RedisServer::start().await,
        }
    }

    pub fn url(&self) -> String {
        self.inner.url()
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
        self.inner.stop();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.inner.restart().await;
    }
}
