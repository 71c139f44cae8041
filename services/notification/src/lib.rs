//! The notification service: clients watch a poll (or all of their own polls)
//! and receive live vote counts and close events, resumable by sequence.
//!
//! Each replica consumes polling's events into its own store (current counts
//! per poll plus a bounded per-poll log of updates keyed by sequence) and fans
//! the updates out to its watchers through an in-process broadcast, so any
//! replica can serve any watcher.
//!
//! - [`domain`]: poll state, updates and the resume rules (pure).
//! - [`projector`]: the store adapter: the consumer handler writing state
//!   and log, then publishing.
//! - [`hub`]: the in-process broadcast of committed updates.
//! - [`app`]: the use cases, one watcher's stream: catch-up from the log, then live, with a
//!   bounded buffer that ends the stream with RESOURCE_EXHAUSTED on overflow.
//! - [`grpc`]: the `tally.notification.v1.NotificationService` edge.
//! - [`config`], [`run`]: configuration and wiring.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod app;
pub mod config;
mod domain;
mod grpc;
mod hub;
mod projector;
pub mod run;
