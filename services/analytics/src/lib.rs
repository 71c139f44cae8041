//! The analytics service: a CQRS read model of polling, built only from the
//! events polling publishes (PollCreated, PollVoted, PollClosed) and
//! rebuildable from scratch by replaying them.
//!
//! - [`domain`]: the read model's values and how events fold into them (pure).
//! - [`projector`]: the store adapter that writes the read model: the
//!   consumer handler, one transaction per event, through the chassis
//!   consumer runtime.
//! - [`app`]: the use cases: reads of the read model, with pagination.
//! - [`grpc`]: the `tally.analytics.v1.AnalyticsService` edge.
//! - [`config`]: the binary's typed configuration.
//! - [`run`]: wiring, so the binary and tests start the same thing.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod projector;
pub mod run;
