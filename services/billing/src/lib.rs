//! Billing: plans, subscriptions, and the orchestrated saga that reserves a
//! seat, charges through the payment provider, activates the subscription
//! and grants its limits, compensating in reverse when a step fails.
//!
//! Layout: [`domain`] is pure (plans, the saga state machine); [`app`] holds
//! the use cases (the orchestrator that runs and persists sagas); [`store`]
//! and [`payment`] are the storage and payment adapters; [`events`] builds
//! the events billing emits; [`grpc`] is the gRPC edge; [`config`] and
//! [`run`] start it all.

pub mod app;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod payment;
pub mod run;
pub mod store;
