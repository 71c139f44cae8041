//! Billing: plans, subscriptions, and the orchestrated saga that reserves a
//! seat, charges through the payment provider, activates the subscription
//! and grants its limits, compensating in reverse when a step fails.
//!
//! Layout: [`domain`] is pure (plans, the saga state machine); [`app`] holds
//! the use cases (the orchestrator that runs and persists sagas); [`store`]
//! and [`payment`] are the storage and payment adapters; [`events`] builds
//! the events billing emits; [`grpc`] is the gRPC edge; [`config`] and
//! [`run`] start it all.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod app;
pub mod config;
mod domain;
mod events;
mod grpc;
mod payment;
pub mod run;
mod store;
