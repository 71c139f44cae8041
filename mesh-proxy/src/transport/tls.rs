//! Mutual TLS with SPIFFE identities, on top of `tally-certs`: the server requires a client
//! certificate from the mesh bundle and reads the caller's SPIFFE id from it; the client
//! accepts a server only if it proves the target's SPIFFE id. Certificates are re-read when
//! their files change; new connections use the newest configs, existing ones keep theirs.

use super::{BoxIo, ClientTransport, ServerTransport, TransportError, Transports};
use crate::config::IdentityConfig;
use futures::future::BoxFuture;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_certs::SpiffeId;
use tally_certs::tls::{
    DEFAULT_POLL_INTERVAL, IdentityPaths, Reloader, TlsConfigs, peer_spiffe_id, server_name_for,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct MeshTls {
    configs: watch::Receiver<Arc<TlsConfigs>>,
    handshake_timeout: Duration,
    /// Keeps the file-watching task alive as long as the transport.
    _reloader: Arc<Reloader>,
}

impl MeshTls {
    fn current(&self) -> Arc<TlsConfigs> {
        self.configs.borrow().clone()
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl ServerTransport for MeshTls {
    fn accept(
        &self,
        tcp: TcpStream,
    ) -> BoxFuture<'static, Result<(BoxIo, Option<String>), TransportError>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current().server.clone());
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
                .await
                .map_err(|_| TransportError::Timeout)?
                .map_err(|e| TransportError::Handshake(e.to_string()))?;
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(peer_spiffe_id)
                .map(|id| id.to_string());
            if peer.is_none() {
                return Err(TransportError::Handshake(
                    "client certificate has no SPIFFE id".into(),
                ));
            }
            Ok((Box::new(tls) as BoxIo, peer))
        })
    }

    fn authenticates(&self) -> bool {
        true
    }
}

impl ClientTransport for MeshTls {
    fn connect(
        &self,
        tcp: TcpStream,
        expected_id: &str,
    ) -> BoxFuture<'static, Result<BoxIo, TransportError>> {
        let connector = tokio_rustls::TlsConnector::from(self.current().client.clone());
        let timeout = self.handshake_timeout;
        let expected = SpiffeId::from_str(expected_id)
            .map_err(|e| TransportError::Material(format!("target identity `{expected_id}`: {e}")));
        Box::pin(async move {
            let name = server_name_for(&expected?);
            let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| TransportError::Timeout)?
                .map_err(|e| TransportError::Handshake(e.to_string()))?;
            Ok(Box::new(tls) as BoxIo)
        })
    }
}

/// SIGHUP re-reads the certificate files at once (they are also polled for changes).
fn spawn_sighup_reload(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; certificates reload on file change only");
            return;
        };
        let weak = Arc::downgrade(&reloader);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let Some(r) = weak.upgrade() else { return };
                match r.reload_now() {
                    Ok(c) => {
                        tracing::info!(generation = c.generation, "certificates reloaded on SIGHUP")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP reload failed; keeping current certificates")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Every certificate reload (file change or SIGHUP) goes to the audit log.
fn spawn_audit_reloads(mut configs: watch::Receiver<Arc<TlsConfigs>>, identity: String) {
    tokio::spawn(async move {
        while configs.changed().await.is_ok() {
            let generation = configs.borrow().generation;
            crate::audit::record(
                crate::audit::Event::new(identity.clone(), "cert.reload", identity.clone(), "ok")
                    .with_detail(format!("generation {generation}")),
            );
        }
    });
}

/// Builds the mTLS transports from `[identity]`, reloading the certificate when its files change.
pub fn build(id: &IdentityConfig, handshake_timeout_ms: u64) -> Result<Transports, TransportError> {
    let paths = IdentityPaths {
        bundle: id.bundle.clone(),
        cert: id.cert.clone(),
        key: id.key.clone(),
    };
    let reloader = Reloader::start(paths, DEFAULT_POLL_INTERVAL)
        .map_err(|e| TransportError::Material(format!("[identity] files: {e}")))?;
    let configs = reloader.subscribe();
    let current = reloader.current();
    let own = current.material.identity().to_string();
    let expected = format!(
        "spiffe://{}/ns/{}/sa/{}",
        crate::defaults::TRUST_DOMAIN,
        id.namespace,
        id.service
    );
    if own != expected {
        tracing::warn!(certificate = %own, configured = %expected, "workload certificate identity differs from [identity] namespace/service");
    }
    tracing::info!(identity = %own, generation = current.generation, "mTLS identity loaded");
    let reloader = Arc::new(reloader);
    spawn_sighup_reload(reloader.clone());
    spawn_audit_reloads(configs.clone(), own.clone());
    let tls = Arc::new(MeshTls {
        configs: configs.clone(),
        handshake_timeout: Duration::from_millis(handshake_timeout_ms),
        _reloader: reloader,
    });
    let expiry_rx = configs;
    Ok(Transports {
        server: tls.clone(),
        client: tls,
        cert_not_after: Some(Arc::new(move || {
            unix_secs(expiry_rx.borrow().material.not_after())
        })),
    })
}
