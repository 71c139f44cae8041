//! No TLS: for development and for running the proxy before identities exist.

use super::{BoxIo, ClientTransport, ServerTransport, TransportError};
use futures::future::BoxFuture;
use tokio::net::TcpStream;

pub struct Plaintext;

impl ServerTransport for Plaintext {
    fn accept(
        &self,
        tcp: TcpStream,
    ) -> BoxFuture<'static, Result<(BoxIo, Option<String>), TransportError>> {
        Box::pin(async move { Ok((Box::new(tcp) as BoxIo, None)) })
    }
    fn authenticates(&self) -> bool {
        false
    }
}

impl ClientTransport for Plaintext {
    fn connect(
        &self,
        tcp: TcpStream,
        _expected_id: &str,
    ) -> BoxFuture<'static, Result<BoxIo, TransportError>> {
        Box::pin(async move { Ok(Box::new(tcp) as BoxIo) })
    }
}
