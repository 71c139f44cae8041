//! Starting and stopping the proxy: bind listeners, build stacks, announce addresses, serve
//! until the shutdown signal, then drain.

use crate::Direction;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::defaults as d;
use crate::faults::{FaultStore, INBOUND_ROUTE};
use crate::metrics::Metrics;
use crate::server::Listener;
use crate::stack::{self, Shared};
use crate::transport;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the proxy could not start; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// Config key that named the address.
        key: &'static str,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mTLS identity could not be loaded.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The admin token file is missing, unreadable or too open.
    #[error(transparent)]
    AdminToken(#[from] admin::AdminTokenError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] tally_audit::AuditError),
    /// The gateway's TLS certificate or key could not be loaded.
    #[error(transparent)]
    GatewayTls(#[from] crate::gateway::listener::GatewayTlsError),
}

/// The bound addresses, printed as one JSON line on stdout at start (useful with port 0).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Bound {
    pub(crate) admin: SocketAddr,
    pub(crate) inbound: Option<SocketAddr>,
    pub(crate) outbound: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gateway: Option<SocketAddr>,
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { key, addr, source })
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

/// Runs the configured listeners until `shutdown_signal` resolves, then drains in-flight calls.
pub async fn run(cfg: Config, shutdown_signal: impl Future<Output = ()>) -> Result<(), RunError> {
    let admin_auth = Arc::new(admin::AdminAuth::load(&cfg.admin)?);
    if let Some(path) = &cfg.admin.audit_file {
        crate::audit::init(path)?;
    }
    let _traces = crate::trace::init(&cfg.telemetry, &crate::trace::service_name(&cfg));
    let metrics = Metrics::for_config(&cfg);
    let transports = transport::build(&cfg)?;
    if let Some(expiry) = transports.cert_not_after.clone() {
        // Keep the expiry gauge current across certificate reloads.
        let gauge = metrics.cert_expiry.clone();
        gauge.set(expiry());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(d::CERT_EXPIRY_REFRESH);
            loop {
                tick.tick().await;
                gauge.set(expiry());
            }
        });
    }
    let faults = FaultStore::default();
    let splits = crate::split::SplitStore::default();
    let mut routes = BTreeSet::new();
    for (name, s) in &cfg.services {
        faults.set(name, s.faults.clone());
        routes.insert(name.clone());
    }
    if let Some(i) = &cfg.inbound {
        faults.set(INBOUND_ROUTE, i.faults.clone());
        routes.insert(INBOUND_ROUTE.to_string());
    }
    let shared = Shared {
        metrics: metrics.clone(),
        faults: faults.clone(),
        client_transport: transports.client.clone(),
        splits: splits.clone(),
    };

    let admin_l = bind("admin.listen", cfg.admin.listen).await?;
    let outbound_l = match &cfg.outbound {
        Some(o) => Some(bind("outbound.listen", o.listen).await?),
        None => None,
    };
    let inbound_l = match &cfg.inbound {
        Some(i) => Some(bind("inbound.listen", i.listen).await?),
        None => None,
    };
    let gateway_l = match &cfg.gateway {
        Some(g) => Some(bind("gateway.listen", g.listen).await?),
        None => None,
    };
    let gateway_tls = match cfg.gateway.as_ref().and_then(|g| g.tls.as_ref()) {
        Some(t) => Some(crate::gateway::listener::tls_acceptor(t)?),
        None => None,
    };
    let bound = Bound {
        admin: local(&admin_l, cfg.admin.listen),
        inbound: inbound_l
            .as_ref()
            .zip(cfg.inbound.as_ref())
            .map(|(l, c)| local(l, c.listen)),
        outbound: outbound_l
            .as_ref()
            .zip(cfg.outbound.as_ref())
            .map(|(l, c)| local(l, c.listen)),
        gateway: gateway_l
            .as_ref()
            .zip(cfg.gateway.as_ref())
            .map(|(l, c)| local(l, c.listen)),
    };
    match serde_json::to_string(&bound) {
        Ok(line) => println!("{line}"),
        Err(e) => tracing::warn!(error = %e, "cannot print bound addresses"),
    }
    tracing::info!(?bound, "tally-proxy listening");

    let (tx, rx) = watch::channel(false);
    let grace = d::SHUTDOWN_GRACE;
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        metrics: metrics.clone(),
        faults,
        splits,
        routes: Arc::new(routes),
        config_json: Arc::new(serde_json::to_string_pretty(&cfg).unwrap_or_default()),
        ready: ready.clone(),
        auth: admin_auth,
        upstreams: Arc::new(crate::readiness::upstreams(&cfg)),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(admin::serve(admin_l, admin_state, rx.clone()));
    // One outbound stack (pools, breakers, budgets) shared by the outbound listener and the gateway.
    let outbound_svc = stack::outbound(&cfg, &shared);
    if let (Some(l), Some(o)) = (outbound_l, &cfg.outbound) {
        let listener = Listener {
            direction: Direction::Outbound,
            listener: l,
            // The app talks plaintext to its own sidecar over loopback.
            transport: Arc::new(transport::plaintext::Plaintext),
            service: outbound_svc.clone(),
            max_connections: o.max_connections,
            limits: cfg.limits.clone(),
            metrics: metrics.clone(),
        };
        tasks.spawn(listener.serve(rx.clone(), grace));
    }
    if let (Some(l), Some(i), Some(service)) =
        (inbound_l, &cfg.inbound, stack::inbound(&cfg, &shared))
    {
        let listener = Listener {
            direction: Direction::Inbound,
            listener: l,
            transport: transports.server.clone(),
            service,
            max_connections: i.max_connections,
            limits: cfg.limits.clone(),
            metrics: metrics.clone(),
        };
        tasks.spawn(listener.serve(rx.clone(), grace));
    }
    if let (Some(l), Some(g)) = (gateway_l, &cfg.gateway) {
        let listener = crate::gateway::listener::GatewayListener {
            listener: l,
            tls: gateway_tls,
            gateway: crate::gateway::Gateway::new(g, outbound_svc.clone(), metrics.clone()),
            max_connections: g.max_connections,
            limits: cfg.limits.clone(),
            metrics: metrics.clone(),
        };
        tasks.spawn(listener.serve(rx.clone(), grace));
    }
    ready.store(true, Ordering::Release);

    shutdown_signal.await;
    tracing::info!("shutting down: draining connections");
    ready.store(false, Ordering::Release);
    let _ = tx.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}
