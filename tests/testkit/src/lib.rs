//! Test helpers shared by every Tally crate's integration tests.
//!
//! Tests here run real processes on real sockets: the service binaries built by
//! `cargo build --workspace --bins`, a real `redis-server`, the real `grpcurl`, a real Kafka-protocol broker (`tansu`).
//! Helpers panic with a message that says what to do, since they only run in
//! tests.

#![deny(missing_docs)]

mod health;
mod http;
mod kafka;
pub mod otlp;
mod paths;
mod ports;
mod process;
mod redis;
mod service;
mod services;
mod up;

pub use health::{is_serving, wait_for_health};
pub use http::{
    HTTP_ANSWER_TIMEOUT, HTTP_CONNECT_WITHIN, HttpReply, admin_request, http_get, http_request,
};
pub use kafka::{KafkaBroker, tansu_path};
pub use paths::{bin_path, grpcurl, repo_root};
pub use ports::{
    TALLY_UP_PORTS, TALLY_UP_PORTS_PER_EXTRA_INSTANCE, TALLY_UP_REDIS_PORTS, free_port,
    free_port_range,
};
pub use process::Process;
pub use redis::RedisServer;
pub use service::{CALL_TIMEOUT, ServiceProcess};
pub use services::{Platform, start_polling, start_user};
pub use up::{
    TALLY_UP_PASSWORD, TALLY_UP_READY_LINE, TALLY_UP_READY_TIMEOUT, TALLY_UP_SERVICES, TallyUp,
    TallyUpBuilder,
};

/// A generous default for "wait until ready" loops on a loaded 2-core machine.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);
