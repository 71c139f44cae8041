//! Billing: plans, subscriptions, and the orchestrated saga that reserves a
//! seat, charges through the payment provider, activates the subscription
//! and grants its limits, compensating in reverse when a step fails.
//!
//! Layout: `domain` is pure (plans, the saga state machine); `records` and
//! `payment` are the storage and payment adapters; `orchestrator` runs and
//! persists sagas; `api` is the gRPC edge.

pub mod api;
pub mod config;
pub mod domain;
pub mod events;
pub mod orchestrator;
pub mod payment;
pub mod records;
