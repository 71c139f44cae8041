//! The shared runtime every Tally service binary stands on.
//!
//! A service brings its domain logic and gRPC handlers; the chassis brings the
//! rest: typed configuration, logging, a server with health and reflection,
//! graceful shutdown, request ids, the storage and session ports with their
//! adapters, and the caller verifier (access tokens and API keys). Keeping
//! this in one crate means every service behaves the same to an operator.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod events;
pub mod health;
pub mod metrics;
pub mod outbound;
pub mod request_id;
pub mod resilience;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod trace;
pub mod wiring;
