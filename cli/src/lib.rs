//! The `tally` command's library half: `tally up`, the launcher that runs the
//! whole platform (services, sidecars, gateway, mesh CA) on one machine.
//! The commands themselves live in the binary (`main.rs`, `commands/`).

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chaos;
pub mod rollout;
pub mod traces;
pub mod up;
