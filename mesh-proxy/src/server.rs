//! Listeners: accept with a connection limit, run the transport handshake (counting failures),
//! then serve HTTP/2 with deliberate limits (header list size, concurrent streams, the
//! rapid-reset guard). On shutdown, connections get a GOAWAY and in-flight calls may finish.

use crate::body;
use crate::config::LimitsConfig;
use crate::metrics::{DirectionLabels, Metrics};
use crate::observe::Direction;
use crate::transport::ServerTransport;
use crate::{ListenerService, PeerId};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

pub struct Listener {
    pub direction: Direction,
    pub listener: TcpListener,
    pub transport: Arc<dyn ServerTransport>,
    pub service: ListenerService,
    pub max_connections: usize,
    pub limits: LimitsConfig,
    pub metrics: Arc<Metrics>,
}

fn h2_builder(l: &LimitsConfig) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(l.max_header_list_size)
        .max_concurrent_streams(l.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(l.http2_max_pending_accept_reset_streams)
        .initial_stream_window_size(l.http2_initial_stream_window_size)
        .initial_connection_window_size(l.http2_initial_connection_window_size)
        .keep_alive_interval(Duration::from_millis(l.http2_keepalive_interval_ms))
        .keep_alive_timeout(Duration::from_millis(l.http2_keepalive_timeout_ms));
    b
}

impl Listener {
    /// Serves until `shutdown` turns true, then waits up to `grace` for connections to drain.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let conns = Arc::new(Semaphore::new(self.max_connections));
        let builder = Arc::new(h2_builder(&self.limits));
        let dir = self.direction.as_str();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = dir, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                self.metrics
                    .connections_rejected
                    .get_or_create(&DirectionLabels {
                        direction: dir.into(),
                    })
                    .inc();
                tracing::warn!(listener = dir, %remote, "connection refused: max_connections reached");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let transport = self.transport.clone();
            let service = self.service.clone();
            let metrics = self.metrics.clone();
            let builder = builder.clone();
            let mut shutdown = shutdown.clone();
            let _ = &mut shutdown;
            let first_bytes_timeout = Duration::from_millis(self.limits.tls_handshake_timeout_ms);
            tokio::spawn(async move {
                let _permit = permit;
                // A connection that never sends a byte would hold a slot forever.
                let mut probe = [0u8; 1];
                if !matches!(tokio::time::timeout(first_bytes_timeout, tcp.peek(&mut probe)).await, Ok(Ok(n)) if n > 0)
                {
                    tracing::debug!(listener = dir, %remote, "connection closed: nothing sent");
                    return;
                }
                let handshake =
                    match tokio::time::timeout(first_bytes_timeout, transport.accept(tcp)).await {
                        Ok(r) => r,
                        Err(_) => Err(crate::transport::TransportError::Timeout),
                    };
                let (io, peer) = match handshake {
                    Ok(x) => x,
                    Err(e) => {
                        metrics
                            .tls_handshake_failures
                            .get_or_create(&DirectionLabels {
                                direction: dir.into(),
                            })
                            .inc();
                        tracing::warn!(listener = dir, %remote, error = %e, "handshake failed");
                        return;
                    }
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        let peer = peer.clone();
                        async move {
                            let mut req = req.map(body::incoming);
                            req.extensions_mut().insert(PeerId(peer));
                            service.oneshot(req).await
                        }
                    });
                let conn = builder.serve_connection(TokioIo::new(io), svc);
                tokio::pin!(conn);
                let stop = async move {
                    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
                };
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(listener = dir, %remote, error = %e, "connection ended with error");
                        }
                    }
                    _ = stop => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drain(&conns, self.max_connections, grace, dir).await;
    }
}

/// Waits up to `grace` until every connection task has returned its permit
/// to `conns` (a semaphore of `max_connections` permits), for a listener's shutdown.
pub(crate) async fn drain(
    conns: &Semaphore,
    max_connections: usize,
    grace: Duration,
    listener: &str,
) {
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, conns.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            listener,
            "shutdown grace period over with connections still open"
        );
    }
}
