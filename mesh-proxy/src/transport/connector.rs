//! The HTTP/2 client's connector for one endpoint: TCP connect with a timeout, then the
//! client transport (TLS with the target's expected identity, or plaintext). Reads pass a
//! frame scanner that notices a graceful GOAWAY (`drain`).

use super::drain::{DrainState, FrameScanner};
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

/// Most bytes one read passes through the frame scanner.
const SCAN_CHUNK: usize = 16 * 1024;

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
            Ok(Conn(TokioIo::new(io), FrameScanner::default()))
        })
    }
}

/// A connected stream the hyper client can use.
pub struct Conn(TokioIo<BoxIo>, FrameScanner);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.1.state.clone())
    }
}

/// The drain state of the connection a failed request used, if the connector made it.
pub fn drain_state(e: &hyper_util::client::legacy::Error) -> Option<DrainState> {
    let mut ext = http::Extensions::new();
    e.connect_info()?.get_extras(&mut ext);
    ext.remove::<DrainState>()
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Read into a local buffer first so the scanner sees exactly the bytes read.
        let mut local = [std::mem::MaybeUninit::<u8>::uninit(); SCAN_CHUNK];
        let want = buf.remaining().min(SCAN_CHUNK);
        let mut rb = hyper::rt::ReadBuf::uninit(&mut local[..want]);
        let this = &mut *self;
        let r = Pin::new(&mut this.0).poll_read(cx, rb.unfilled());
        if let Poll::Ready(Ok(())) = r {
            let filled = rb.filled();
            this.1.feed(filled);
            buf.put_slice(filled);
        }
        r
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
