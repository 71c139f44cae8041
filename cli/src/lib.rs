//! The `tally` command's library half: `tally up`, the launcher that runs the
//! whole platform (services, sidecars, gateway, mesh CA) on one machine.
//! The commands themselves live in the binary (`main.rs`, `commands/`).

pub mod chaos;
pub mod rollout;
pub mod up;
