//! Traces with no other software: the small OTLP trace receiver `tally up` runs
//! ([`receiver`]), the bounded in-memory store behind it ([`store`]), the HTTP query
//! API `tally traces` / `tally trace <id>` read it through ([`query`]), and the
//! indented tree those commands print ([`tree`]).

pub mod query;
pub(crate) mod receiver;
pub mod store;
pub mod tree;
pub(crate) mod wiring;

/// File in the data directory holding the receiver's address (`127.0.0.1:PORT`).
pub const ADDR_FILE: &str = "traces.addr";
