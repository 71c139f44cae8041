//! Channels to peer services, always through the configured outbound address
//! (the local mesh sidecar in a mesh, or the peer itself without one).
//!
//! Channels connect lazily, so a service starts even while a peer is down;
//! the call then fails with UNAVAILABLE and health shows the dependency down.

use crate::config::OutboundSettings;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Errors building an outbound channel.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No `[outbound]` address for this target.
    #[error("no outbound address configured for `{0}`; set `outbound.{0}`")]
    Missing(String),
    /// The address is not a valid URI.
    #[error("outbound address for `{target}` is invalid: {source}")]
    Invalid {
        /// The target named in `[outbound]`.
        target: String,
        /// Why the address was refused.
        source: tonic::transport::Error,
    },
}

/// A lazily connecting channel to `target` via its outbound address.
///
/// The channel's `:authority` is the target's service name, so a sidecar can
/// route by it even though the socket goes to the sidecar.
pub fn channel(settings: &OutboundSettings, target: &str) -> Result<Channel, OutboundError> {
    let addr = settings
        .address(target)
        .ok_or_else(|| OutboundError::Missing(target.to_string()))?;
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|source| OutboundError::Invalid {
            target: target.to_string(),
            source,
        })?
        .origin(origin(target)?)
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

fn origin(target: &str) -> Result<http::Uri, OutboundError> {
    format!("http://{target}")
        .parse()
        .map_err(|_| OutboundError::Missing(target.to_string()))
}
