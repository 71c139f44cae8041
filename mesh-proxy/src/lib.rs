//! Tally's sidecar mesh proxy: an outbound listener that routes the local app's gRPC calls to
//! healthy endpoints of the target service, and an inbound listener that checks callers and
//! forwards to the local app. Each concern is one layer (written as `layer` describes); `stack`
//! composes them. In gateway mode (`gateway`) it also serves browsers (gRPC-Web) in front of the
//! outbound stack.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod audit;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod classify;
pub mod config;
pub mod deadline;
pub mod defaults;
pub mod error;
pub mod faults;
pub mod forward;
pub mod gateway;
pub mod grpc;
pub mod layer;
pub mod metrics;
pub mod metrics_handles;
pub mod observe;
pub mod readiness;
pub mod replay;
pub mod retry;
pub mod route;
pub mod run;
pub mod server;
pub mod split;
pub mod stack;
pub mod trace;
pub mod transport;

pub use error::ProxyError;

/// Request and response types shared by every layer.
pub type Req = http::Request<body::Body>;
pub type Rsp = http::Response<body::Body>;
/// A route's stack below the error-mapping layer, its type erased.
pub type BoxService = layer::Boxed<ProxyError>;
/// A finished stack, as the listeners run it.
pub type ListenerService = tower::util::BoxCloneSyncService<Req, Rsp, error::respond::ResetStream>;
/// Future returned by the tower services that remain (the balancer).
pub type BoxFuture<T> = futures::future::BoxFuture<'static, T>;

/// Which side of the sidecar a call is on: from the local app out, or from a peer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    /// The `direction` label of metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The caller's verified SPIFFE id (None = anonymous), set by the listener on every request.
#[derive(Clone, Debug)]
pub struct PeerId(pub Option<String>);
