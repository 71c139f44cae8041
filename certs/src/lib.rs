//! Mesh identity and TLS material for Tally.
//!
//! - [`SpiffeId`]: workload identities `spiffe://<td>/ns/<namespace>/sa/<service>`.
//! - [`CertAuthority`]: the mesh root CA; issues short-lived workload certificates.
//! - [`tls`]: rustls server/client configs for mutual TLS that check SPIFFE ids, and a
//!   [`tls::Reloader`] that publishes new configs when certificate files change.
//! - [`Rotator`]: renews a workload certificate at 70% of its lifetime.
//!
//! Everything uses the ring crypto provider explicitly.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod ca;
pub mod duration;
mod error;
mod files;
pub mod inspect;
mod pem;
pub mod rotate;
pub mod spiffe;
pub mod tls;

pub use ca::{CertAuthority, IssuedCert, join_bundle, rotate_root, write_workload};
pub use duration::{format_duration, parse_duration};
pub use error::CertError;
pub use inspect::{CertSummary, inspect_pem};
pub use rotate::{RotationStatus, Rotator};
pub use spiffe::{SpiffeId, SpiffeIdError};
