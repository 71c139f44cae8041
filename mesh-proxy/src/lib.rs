//! Tally's sidecar mesh proxy: an outbound listener that routes the local app's gRPC calls to
//! healthy endpoints of the target service, and an inbound listener that checks callers and
//! forwards to the local app. Each concern is one layer (written as `layer` describes); `stack`
//! composes them. In gateway mode (`gateway`) it also serves browsers (gRPC-Web) in front of the
//! outbound stack.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod audit;
pub mod authz;
mod balance;
mod body;
mod breaker;
mod budget;
mod bulkhead;
mod classify;
pub mod config;
mod deadline;
pub mod defaults;
mod error;
pub mod faults;
mod forward;
pub mod gateway;
pub mod grpc;
mod layer;
pub mod metrics;
mod metrics_handles;
mod observe;
mod readiness;
mod replay;
mod retry;
pub mod route;
pub mod run;
mod server;
pub mod split;
mod stack;
mod trace;
pub mod transport;

pub use error::ProxyError;

/// Request and response types shared by every layer.
pub(crate) type Req = http::Request<body::Body>;
/// Response counterpart of [`Req`].
pub(crate) type Rsp = http::Response<body::Body>;
/// A route's stack below the error-mapping layer, its type erased.
pub(crate) type BoxService = layer::Boxed<ProxyError>;
/// A finished stack, as the listeners run it.
pub(crate) type ListenerService =
    tower::util::BoxCloneSyncService<Req, Rsp, error::respond::ResetStream>;
/// Future returned by the tower services that remain (the balancer).
pub(crate) type BoxFuture<T> = futures::future::BoxFuture<'static, T>;

/// Which side of the sidecar a call is on: from the local app out, or from a peer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// A call from a peer sidecar to the local app.
    Inbound,
    /// A call from the local app to another service.
    Outbound,
}

impl Direction {
    /// The `direction` label of metrics and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The caller's verified SPIFFE id (None = anonymous), set by the listener on every request.
#[derive(Clone, Debug)]
pub(crate) struct PeerId(pub(crate) Option<String>);
