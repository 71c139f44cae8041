//! `tally-bench`: measures what the mesh sidecars cost. An open-loop gRPC load
//! generator drives the same workload through a direct path, a Tally sidecar pair
//! and an Envoy pair (both with mTLS), interleaved and repeated, and reports the
//! latency each adds, its maximum throughput, memory and CPU, and Tally/Envoy ratios.
//! Two further runs: `scale` (how memory and CPU grow with connections, streams,
//! services, endpoints and message size) and `edge` (the gateway against Envoy's
//! gRPC-Web edge).

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod echo;
pub mod edge;
mod error;
pub mod floor;
pub mod limits;
mod load;
pub mod pin;
mod pki;
mod procstat;
pub mod report;
pub mod run;
pub mod scale;
pub mod setup;

pub use error::BenchError;
