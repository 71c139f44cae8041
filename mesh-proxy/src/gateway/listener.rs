//! The gateway's listener: HTTP/1.1 and h2c on one port (browsers speak HTTP/1.1 for
//! gRPC-Web; gRPC clients use HTTP/2), or TLS with a server certificate (ALPN h2 and
//! http/1.1). Same connection limit, handshake timeout and HTTP/2 limits as the mesh
//! listeners; on shutdown connections are closed gracefully and in-flight calls may finish.

use super::config::GatewayTls;
use super::service::Gateway;
use crate::body;
use crate::config::LimitsConfig;
use crate::defaults as d;
use crate::metrics::{DirectionLabels, Metrics};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Metric label of this listener.
const DIRECTION: &str = "gateway";

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

fn builder(l: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(d::GATEWAY_HEADER_READ_TIMEOUT_MS));
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
        let builder = Arc::new(builder(&self.limits));
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
            tokio::spawn(async move {
                let _permit = permit;
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
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let gateway = gateway.clone();
                        async move {
                            Ok::<_, Infallible>(
                                gateway.handle(req.map(body::incoming), client).await,
                            )
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
                }
            });
        }
        crate::server::drain(&conns, self.max_connections, grace, DIRECTION).await;
    }
}
