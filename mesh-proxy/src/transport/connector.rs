//! The HTTP/2 client's connector for one endpoint: TCP connect with a timeout, then the
//! client transport (TLS with the target's expected identity, or plaintext).

use super::{BoxIo, ClientTransport};
use crate::body::BoxError;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Clone)]
pub struct Connector {
    pub addr: String,
    pub expected_id: String,
    pub transport: Arc<dyn ClientTransport>,
    pub connect_timeout: Duration,
}

impl tower::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(
                this.connect_timeout,
                tokio::net::TcpStream::connect(&this.addr),
            )
            .await
            .map_err(|_| format!("connect to {} timed out", this.addr))??;
            let _ = tcp.set_nodelay(true);
            let io = this.transport.connect(tcp, &this.expected_id).await?;
            Ok(Conn(TokioIo::new(io)))
        })
    }
}

/// A connected stream the hyper client can use.
pub struct Conn(TokioIo<BoxIo>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
