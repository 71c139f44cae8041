//! Every failure the proxy itself produces, as one typed error, and the classification of
//! HTTP/2 client errors into it. `respond` turns these into gRPC responses and trailers; nothing
//! else writes error responses.

pub mod respond;

use crate::body::BoxError;
use crate::grpc::Code;
use crate::transport::pool::SendError;

/// A failure the proxy produced (not an answer relayed from the app); each maps to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The call's `:authority` names no configured service.
    #[error("no route for authority `{0}`")]
    NoRoute(String),
    /// Every endpoint of the service is ejected or none is configured.
    #[error("service `{0}` has no available endpoint")]
    NoEndpoints(String),
    /// Every endpoint's circuit breaker is open.
    #[error("circuit breaker open for every endpoint of `{0}`")]
    BreakerOpen(String),
    /// The route's concurrency and queue bound are both used up.
    #[error("bulkhead full for `{0}`")]
    BulkheadFull(String),
    /// The call's deadline passed while the proxy held it.
    #[error("deadline exceeded in proxy")]
    DeadlineExceeded,
    /// No frame moved in either direction for the route's idle timeout.
    #[error("stream idle timeout in proxy")]
    StreamIdleTimeout,
    /// The authorization policy does not allow this caller on this method.
    #[error("caller `{caller}` may not call `{path}`")]
    Denied {
        /// SPIFFE id of the refused caller.
        caller: String,
        /// gRPC path that was called.
        path: String,
    },
    /// An anonymous caller reached a method whose policy requires an identity.
    #[error("caller has no verified identity and `{0}` requires one")]
    Unauthenticated(String),
    /// Opening a connection (TCP or TLS) to an endpoint failed.
    #[error("connect to {endpoint} failed: {source}")]
    Connect {
        /// Address of the endpoint.
        endpoint: String,
        /// The connect or handshake error.
        source: BoxError,
    },
    /// The HTTP/2 exchange with an endpoint failed after connecting.
    #[error("upstream {endpoint} failed: {source}")]
    Upstream {
        /// Address of the endpoint.
        endpoint: String,
        /// The upstream refused the stream before processing it (safe to retry).
        refused: bool,
        /// The HTTP/2 error.
        source: BoxError,
    },
    /// The inbound side could not reach the local application.
    #[error("local application unavailable: {0}")]
    LocalApp(BoxError),
    /// An injected abort fault answered the call with this status.
    #[error("fault injected: abort with {0:?}")]
    FaultAbort(Code),
    /// An injected reset fault ended the stream.
    #[error("fault injected: stream reset")]
    FaultReset,
    /// The caller went away before the call finished.
    #[error("cancelled by the caller")]
    Cancelled,
}

impl ProxyError {
    /// The gRPC status the caller sees.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::NoRoute(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::BreakerOpen(_)
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::LocalApp(_)
            | ProxyError::FaultReset => Code::Unavailable,
            ProxyError::BulkheadFull(_) => Code::ResourceExhausted,
            ProxyError::DeadlineExceeded | ProxyError::StreamIdleTimeout => Code::DeadlineExceeded,
            ProxyError::Denied { .. } => Code::PermissionDenied,
            ProxyError::Unauthenticated(_) => Code::Unauthenticated,
            ProxyError::FaultAbort(c) => *c,
            ProxyError::Cancelled => Code::Cancelled,
        }
    }

    /// The value of the `tally-proxy-error` header.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::BreakerOpen(_) => "breaker-open",
            ProxyError::BulkheadFull(_) => "bulkhead-full",
            ProxyError::DeadlineExceeded => "deadline-exceeded",
            ProxyError::StreamIdleTimeout => "stream-idle-timeout",
            ProxyError::Denied { .. } => "unauthorized",
            ProxyError::Unauthenticated(_) => "unauthenticated",
            ProxyError::Connect { .. } => "connect-failed",
            ProxyError::Upstream { .. } => "upstream-failed",
            ProxyError::LocalApp(_) => "local-app-unavailable",
            ProxyError::FaultAbort(_) => "fault-abort",
            ProxyError::FaultReset => "fault-reset",
            ProxyError::Cancelled => "cancelled",
        }
    }

    /// True when the application certainly never saw the request, so any method may be retried.
    pub fn never_reached_app(&self) -> bool {
        match self {
            ProxyError::NoEndpoints(_)
            | ProxyError::BreakerOpen(_)
            | ProxyError::Connect { .. } => true,
            ProxyError::Upstream { refused, .. } => *refused,
            _ => false,
        }
    }
}

/// Classifies an error from the HTTP/2 client talking to an endpoint.
pub fn from_client_error(endpoint: &str, e: SendError) -> ProxyError {
    if e.is_connect() {
        return ProxyError::Connect {
            endpoint: endpoint.to_string(),
            source: Box::new(e),
        };
    }
    if cancelled_by_us(&e) {
        return ProxyError::Cancelled;
    }
    let refused = refused_stream(&e) || drained_before_response(&e);
    ProxyError::Upstream {
        endpoint: endpoint.to_string(),
        refused,
        source: Box::new(e),
    }
}

/// True when the local app certainly never received the request: the connection could not be
/// made, the app refused the stream (REFUSED_STREAM), its GOAWAY came before our stream, the
/// connection closed before the request was sent, or the connection ended after a graceful
/// GOAWAY before any response to it. Such a request may always be retried.
pub fn local_app_never_saw(e: &SendError) -> bool {
    e.is_connect() || (!cancelled_by_us(e) && (refused_stream(e) || drained_before_response(e)))
}

/// True when the request failed because its connection ended (closed or broken socket) after
/// the peer had announced a graceful shutdown with GOAWAY, and before any response headers.
/// A peer that drains finishes every stream it accepted before closing, so this one was never
/// accepted: Envoy's `reset_before_request`. A connection that ends with no GOAWAY (a crash)
/// does not qualify: the peer may have processed the request.
fn drained_before_response(e: &SendError) -> bool {
    !cancelled_by_us(e) && connection_ended(e) && e.drained()
}

/// True when the error chain says the connection itself ended (EOF, reset, broken pipe).
fn connection_ended(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
            )
        {
            return true;
        }
        if let Some(h2e) = err.downcast_ref::<h2::Error>()
            && h2e.is_io()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Classifies an error from the HTTP/2 client talking to the local app.
pub fn from_local_app_error(e: SendError) -> ProxyError {
    if cancelled_by_us(&e) {
        return ProxyError::Cancelled;
    }
    ProxyError::LocalApp(Box::new(e))
}

/// True when the proxy itself reset the upstream stream with CANCEL, which happens when the
/// downstream caller went away (its request stream broke). Says nothing about the upstream.
fn cancelled_by_us(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // The request body we were forwarding failed: the caller's stream broke.
        if err.downcast_ref::<crate::body::BodyError>().is_some() {
            return true;
        }
        if let Some(he) = err.downcast_ref::<hyper::Error>()
            && he.is_user()
            && !he.is_canceled()
        {
            return true;
        }
        if let Some(h2e) = err.downcast_ref::<h2::Error>()
            && h2e.reason() == Some(h2::Reason::CANCEL)
            && !h2e.is_remote()
            && !h2e.is_library()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// True when an HTTP/2 stream was reset with CANCEL (by either side): someone gave up on the
/// call, which says nothing about the endpoint's health.
pub fn is_cancellation(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2e) = err.downcast_ref::<h2::Error>()
            && h2e.reason() == Some(h2::Reason::CANCEL)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Walks an error chain looking for an HTTP/2 REFUSED_STREAM (or a GOAWAY that never saw the stream).
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            // REFUSED_STREAM, or a stream above the last id of a GOAWAY from the peer:
            // HTTP/2 guarantees the peer did not process it.
            if h2e.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2e.is_go_away() && h2e.is_remote())
            {
                return true;
            }
        }
        if let Some(he) = err.downcast_ref::<hyper::Error>()
            && he.is_canceled()
        {
            return true;
        }
        cur = err.source();
    }
    false
}
