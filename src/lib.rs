//! Tally: the generated gRPC API for every bounded context, a typed client SDK,
//! and the pieces of the `tally` command line.

pub mod api;
