//! The payment provider: a small gRPC service the billing saga charges
//! through. Charges and refunds are idempotent by key, backed by the
//! service's own store, and faults (declines, latency, outages) are
//! configurable so billing's failure paths can be exercised for real.
//!
//! Layout: [`domain`] holds the charge rules (no I/O); [`app`] the use cases
//! with fault injection; [`store`] the ledger over the chassis storage port;
//! [`grpc`] the gRPC edge; [`config`] and [`run`] start it all.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod app;
pub mod config;
mod domain;
mod grpc;
pub mod run;
mod store;
