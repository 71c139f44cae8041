//! The polling service: polls, one vote per voter, and counts that follow
//! from an event-sourced vote log.
//!
//! - [`domain`]: the rules, pure and unit-tested.
//! - [`app`]: the use cases (create within the plan limit, vote, close, read).
//! - [`ports`]: what the use cases need from storage and plan limits.
//! - [`store`]: polls, votes and counts on the chassis storage port.
//! - [`events`]: the events published through the outbox.
//! - [`entitlements`]: plan limits consumed from billing's events.
//! - [`grpc`]: the `tally.poll.v1.PollService` edge.
//! - [`cache`]: the read-through cache of GetPoll and GetResults (port, Redis).
//! - [`config`]: the binary's typed configuration.
//! - [`run`]: wiring, so the binary and tests start the same thing.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod app;
mod cache;
pub mod config;
mod domain;
mod entitlements;
mod events;
mod grpc;
mod ports;
pub mod run;
pub mod store;
