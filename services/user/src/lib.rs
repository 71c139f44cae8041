//! The Tally user service: accounts, login sessions, EdDSA access tokens and
//! API keys, served as `tally.user.v1.UserService`.
//!
//! Layout (hexagonal): [`domain`] holds the rules and has no I/O; [`ports`]
//! says what the application needs; [`adapters`] implement the ports over the
//! chassis store, argon2id and Ed25519; [`app`] composes them into use cases;
//! [`grpc`] is the wire edge and [`admin`] the operator edge; [`keys`]
//! rotates the signing key; [`config`] and [`run`] start it all.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod adapters;
mod admin;
mod app;
pub mod config;
mod domain;
mod grpc;
mod keys;
mod ports;
pub mod retry_info;
pub mod run;
