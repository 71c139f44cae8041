//! The gateway's listener: HTTP/1.1 and h2c on one port (browsers speak HTTP/1.1 for
//! gRPC-Web; gRPC clients use HTTP/2), or TLS with a server certificate (ALPN h2 and
//! http/1.1). Same connection limit, handshake timeout and HTTP/2 limits as the mesh
//! listeners; on shutdown connections are closed gracefully and in-flight calls may finish.
//!
//! Connections are bounded in time: an HTTP/1.1 request head must arrive within
//! `header_read_timeout` (hyper's timer), and a connection with no request in flight for
//! `idle_timeout` is closed (HTTP/2: GOAWAY first). hyper has no idle timeout of its own for
//! HTTP/2 or for a connection that has not sent enough bytes to pick a protocol, so the
//! listener counts each connection's requests in flight and watches for idleness itself.
//!
//! A panic in a connection task or a call handler is caught, logged and counted in
//! `tally_proxy_panics_total{direction="gateway"}`, as on the mesh listeners.

use super::config::{Bounds, GatewayTls};
use super::service::Gateway;
use crate::body::{self, Body, BodyError};
use crate::config::LimitsConfig;
use crate::metrics::{DirectionLabels, Metrics};
use crate::server::{guard_panics, panic_response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Metric label of this listener.
const DIRECTION: &str = "gateway";
/// Once an idle connection has been asked to close, it is dropped when it has stayed idle
/// this much longer (a request that raced the GOAWAY may still finish).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests in flight on one connection. Every change (a request starting or ending) wakes
/// the idle watch, so a short request in between restarts the idle period.
#[derive(Clone)]
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    fn start(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            if rx.wait_for(|n| *n == 0).await.is_err() {
                return std::future::pending().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

/// One request in flight, until its response body is finished or dropped.
struct InFlightGuard(Arc<watch::Sender<usize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    inner: Body,
    _in_flight: InFlightGuard,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayTlsError {
    #[error("gateway.tls: cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("gateway.tls: certificate and key do not make a TLS config: {0}")]
    Config(String),
}

/// A TLS acceptor for `[gateway.tls]` (no client certificates: browsers have none).
pub fn tls_acceptor(tls: &GatewayTls) -> Result<tokio_rustls::TlsAcceptor, GatewayTlsError> {
    let read_err =
        |what, path: &std::path::Path, e: &dyn std::fmt::Display| GatewayTlsError::Read {
            what,
            path: path.display().to_string(),
            message: e.to_string(),
        };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| read_err("certificate", &tls.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err("certificate", &tls.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| read_err("key", &tls.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayTlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| GatewayTlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

pub struct GatewayListener {
    pub listener: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub gateway: Gateway,
    pub max_connections: usize,
    pub limits: LimitsConfig,
    pub metrics: Arc<Metrics>,
}

fn builder(l: &LimitsConfig, bounds: &Bounds) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(l.max_header_list_size)
        .max_concurrent_streams(l.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(l.http2_max_pending_accept_reset_streams)
        .initial_stream_window_size(l.http2_initial_stream_window_size)
        .initial_connection_window_size(l.http2_initial_connection_window_size)
        .keep_alive_interval(Duration::from_millis(l.http2_keepalive_interval_ms))
        .keep_alive_timeout(Duration::from_millis(l.http2_keepalive_timeout_ms));
    b
}

impl GatewayListener {
    /// Serves until `shutdown` turns true, then waits up to `grace` for connections to drain.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        if let Ok(addr) = self.listener.local_addr()
            && self.tls.is_none()
            && !addr.ip().is_loopback()
        {
            tracing::warn!(%addr, "gateway listens in PLAINTEXT on a non-loopback address: put a TLS terminator in front or set [gateway.tls]");
        }
        let conns = Arc::new(Semaphore::new(self.max_connections));
        let bounds = self.gateway.bounds();
        let builder = Arc::new(builder(&self.limits, &bounds));
        let label = DirectionLabels {
            direction: DIRECTION.into(),
        };
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = DIRECTION, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                self.metrics
                    .connections_rejected
                    .get_or_create(&label)
                    .inc();
                tracing::warn!(listener = DIRECTION, %remote, "connection refused: max_connections reached");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.clone();
            let gateway = self.gateway.clone();
            let metrics = self.metrics.clone();
            let builder = builder.clone();
            let label = label.clone();
            let mut shutdown = shutdown.clone();
            let handshake_timeout = Duration::from_millis(self.limits.tls_handshake_timeout_ms);
            let panic_metrics = self.metrics.clone();
            spawn_connection(panic_metrics, permit, async move {
                let io: crate::transport::BoxIo = match tls {
                    None => Box::new(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => Box::new(s),
                            Ok(Err(e)) => {
                                metrics.tls_handshake_failures.get_or_create(&label).inc();
                                tracing::debug!(listener = DIRECTION, %remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                metrics.tls_handshake_failures.get_or_create(&label).inc();
                                return;
                            }
                        }
                    }
                };
                let client = remote.ip();
                let in_flight = InFlight::new();
                let counter = in_flight.clone();
                let call_metrics = metrics.clone();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let gateway = gateway.clone();
                        let guard = counter.start();
                        let metrics = call_metrics.clone();
                        async move {
                            let call = gateway.handle(req.map(body::incoming), client);
                            let rsp = guard_panics(call, &metrics, DIRECTION, "call")
                                .await
                                .unwrap_or_else(panic_response);
                            Ok::<_, Infallible>(rsp.map(|inner| Tracked {
                                inner,
                                _in_flight: guard,
                            }))
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
                            tracing::debug!(listener = DIRECTION, %remote, error = %e, "connection ended with error");
                        }
                    }
                    _ = stop => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                    _ = in_flight.idle_for(bounds.idle_timeout) => {
                        tracing::debug!(listener = DIRECTION, %remote, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = in_flight.idle_for(IDLE_CLOSE_GRACE) => {}
                        }
                    }
                }
            });
        }
        crate::server::drain(&conns, self.max_connections, grace, DIRECTION).await;
    }
}

/// Runs one connection's task holding its slot; a panic in it is logged and counted under the
/// gateway's label and the slot is returned, like any other end of the connection.
fn spawn_connection(
    metrics: Arc<Metrics>,
    permit: OwnedSemaphorePermit,
    conn: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _permit = permit;
        guard_panics(conn, &metrics, DIRECTION, "connection").await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_connection_task_is_counted_logged_and_frees_its_slot() {
        let metrics = Metrics::new();
        let conns = Arc::new(Semaphore::new(1));
        let permit = conns.clone().try_acquire_owned().unwrap();
        spawn_connection(metrics.clone(), permit, async {
            panic!("boom in a gateway task")
        })
        .await
        .expect("the panic stays inside the task's guard");
        let label = DirectionLabels {
            direction: DIRECTION.into(),
        };
        assert_eq!(metrics.panics.get_or_create(&label).get(), 1);
        assert_eq!(
            conns.available_permits(),
            1,
            "the connection slot is returned"
        );
        assert!(
            metrics
                .encode()
                .contains("tally_proxy_panics_total{direction=\"gateway\"} 1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_in_flight_for_the_whole_period() {
        let in_flight = InFlight::new();
        let start = tokio::time::Instant::now();
        let watch = in_flight.clone();
        let idle = tokio::spawn(async move {
            watch.idle_for(Duration::from_secs(10)).await;
            start.elapsed()
        });
        // A request from 4 s to 30 s, then a short one at 35 s: idle from 35 s on.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let long = in_flight.start();
        tokio::time::sleep(Duration::from_secs(26)).await;
        drop(long);
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(in_flight.start());
        assert_eq!(idle.await.unwrap(), Duration::from_secs(45));
    }
}
