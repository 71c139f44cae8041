//! The payment provider: a small gRPC service the billing saga charges
//! through. Charges and refunds are idempotent by key, backed by the
//! service's own store, and faults (declines, latency, outages) are
//! configurable so billing's failure paths can be exercised for real.

pub mod config;
pub mod domain;
pub mod ledger;
pub mod service;
