//! How bytes get between sidecars: the TLS seam. Listeners and the endpoint connector only see
//! these traits, so plaintext (development) and mTLS are one choice made in `transport::build`.

pub mod connector;
pub mod drain;
pub mod plaintext;
pub mod tls;

use crate::config::Config;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream after the transport handshake.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("TLS handshake timed out")]
    Timeout,
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
    fn connect(
        &self,
        tcp: TcpStream,
        expected_id: &str,
    ) -> BoxFuture<'static, Result<BoxIo, TransportError>>;
}

pub struct Transports {
    pub server: Arc<dyn ServerTransport>,
    pub client: Arc<dyn ClientTransport>,
    /// Unix time (seconds) when the current certificate expires, for the expiry gauge.
    pub cert_not_after: Option<Arc<dyn Fn() -> i64 + Send + Sync>>,
}

/// Picks the transport from config: mTLS when `[identity]` is set, plaintext otherwise.
pub fn build(cfg: &Config) -> Result<Transports, TransportError> {
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
