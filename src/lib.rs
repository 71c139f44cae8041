//! Tally: the generated gRPC API for every bounded context, a typed client SDK,
//! and `tally up`, the launcher that runs the platform on one machine.

pub mod api;
pub mod sdk;
pub mod up;
