//! The Tally user service: accounts, login sessions, EdDSA access tokens and
//! API keys, served as `tally.user.v1.UserService`.
//!
//! Layout (hexagonal): [`domain`] holds the rules and has no I/O; [`ports`]
//! says what the application needs; [`adapters`] implement the ports over the
//! chassis store, argon2id and Ed25519; [`app`] composes them into use cases;
//! [`grpc`] is the wire edge and [`admin`] the operator edge; [`keys`]
//! rotates the signing key; [`config`] and [`run`] start it all.

pub mod adapters;
pub mod admin;
pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod keys;
pub mod ports;
pub mod retry_info;
pub mod run;
