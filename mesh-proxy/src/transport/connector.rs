//! Opens connections to one endpoint for the HTTP/2 client: TCP connect with a timeout, then
//! the client transport (TLS with the target's expected identity, or plaintext). Reads pass a
//! frame scanner that notices a graceful GOAWAY (`drain`).

use super::drain::{DrainState, FrameScanner};
use super::{BoxIo, ClientTransport};
use crate::body::BoxError;
use crate::defaults::TCP_NODELAY;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
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

impl Connector {
    /// Opens one connection: TCP (with `TCP_NODELAY`), then the client transport.
    pub async fn connect(&self) -> Result<Conn, BoxError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .map_err(|_| format!("connect to {} timed out", self.addr))??;
        tcp.set_nodelay(TCP_NODELAY)?;
        let io = self.transport.connect(tcp, &self.expected_id).await?;
        Ok(Conn(TokioIo::new(io), FrameScanner::default()))
    }
}

/// A connected stream the HTTP/2 client can use.
pub struct Conn(TokioIo<BoxIo>, FrameScanner);

impl Conn {
    /// The drain state of this connection, shared with the frame scanner that sets it.
    pub fn drain_state(&self) -> DrainState {
        self.1.state.clone()
    }
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
