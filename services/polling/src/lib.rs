//! The polling service: polls, one vote per voter, and counts that follow
//! from an event-sourced vote log.
//!
//! - [`domain`]: the rules, pure and unit-tested.
//! - [`app`]: the use cases (create within the plan limit, vote, close, read).
//! - [`store`]: polls, votes and counts on the chassis storage port.
//! - [`events`]: the events published through the outbox.
//! - [`entitlements`]: plan limits consumed from billing's events.
//! - [`grpc`]: the `tally.poll.v1.PollService` edge.
//! - [`config`]: the binary's typed configuration.
//! - [`run`]: wiring, so the binary and tests start the same thing.

pub mod app;
pub mod config;
pub mod domain;
pub mod entitlements;
pub mod events;
pub mod grpc;
pub mod run;
pub mod store;
