//! The analytics service: a CQRS read model of polling, built only from the
//! events polling publishes (PollCreated, PollVoted, PollClosed) and
//! rebuildable from scratch by replaying them.
//!
//! - [`domain`]: the read model's values and how events fold into them (pure).
//! - [`projector`]: the store adapter that writes the read model: the
//!   consumer handler, one transaction per event, through the chassis
//!   consumer runtime.
//! - [`ports`]: the read model as the use cases see it.
//! - [`store`]: that port's adapter over the chassis storage port.
//! - [`app`]: the use cases: reads of the read model, with pagination.
//! - [`grpc`]: the `tally.analytics.v1.AnalyticsService` edge.
//! - [`config`]: the binary's typed configuration.
//! - [`run`]: wiring, so the binary and tests start the same thing.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod app;
pub mod config;
mod domain;
mod grpc;
mod ports;
mod projector;
pub mod run;
mod store;
