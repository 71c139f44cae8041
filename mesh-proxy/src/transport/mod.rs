//! How bytes get between sidecars: the TLS seam. Listeners and the endpoint connector only see
//! these traits, so plaintext (development) and mTLS are one choice made in `transport::build`.

pub(crate) mod connector;
pub(crate) mod drain;
pub(crate) mod plaintext;
pub(crate) mod pool;
pub mod tls;

use crate::config::Config;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream after the transport handshake.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
/// A secured (or plaintext) connection, its concrete type erased.
pub type BoxIo = Box<dyn Io>;

/// Why a connection could not be secured or the identity not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer failed the TLS handshake or did not prove the expected identity.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The handshake took longer than `limits.tls_handshake_timeout_ms`.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The certificate, key or trust bundle cannot be read or used.
    #[error("identity material unusable: {0}")]
    Material(String),
}

/// Server side of the seam: accept a connection and learn who the caller is.
pub trait ServerTransport: Send + Sync + 'static {
    /// Returns the stream and the caller's verified SPIFFE id, if any.
    fn accept(
        &self,
        tcp: TcpStream,
    ) -> BoxFuture<'static, Result<(BoxIo, Option<String>), TransportError>>;
    /// True when the transport verifies caller identities.
    fn authenticates(&self) -> bool;
}

/// Client side of the seam: secure a connection to a peer that must prove `expected_id`.
pub trait ClientTransport: Send + Sync + 'static {
    /// Secures `tcp`, failing unless the peer proves `expected_id`.
    fn connect(
        &self,
        tcp: TcpStream,
        expected_id: &str,
    ) -> BoxFuture<'static, Result<BoxIo, TransportError>>;
}

/// Both sides of the seam built from one identity.
pub struct Transports {
    /// Used by the inbound and admin listeners to accept peers.
    pub server: Arc<dyn ServerTransport>,
    /// Used by the endpoint connector to reach peers.
    pub client: Arc<dyn ClientTransport>,
    /// Unix time (seconds) when the current certificate expires, for the expiry gauge.
    pub cert_not_after: Option<Arc<dyn Fn() -> i64 + Send + Sync>>,
}

/// Picks the transport from config: mTLS when `[identity]` is set, plaintext otherwise.
pub(crate) fn build(cfg: &Config) -> Result<Transports, TransportError> {
    match &cfg.identity {
        None => {
            tracing::warn!(
                "no [identity] configured: sidecars talk PLAINTEXT; callers are anonymous (development only)"
            );
            Ok(Transports {
                server: Arc::new(plaintext::Plaintext),
                client: Arc::new(plaintext::Plaintext),
                cert_not_after: None,
            })
        }
        Some(id) => tls::build(id, cfg.limits.tls_handshake_timeout_ms),
    }
}
