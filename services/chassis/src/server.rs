//! The gRPC server every service runs: its own routes plus `grpc.health.v1`,
//! server reflection (v1 and v1alpha, for grpcurl and `buf curl`), request ids,
//! and graceful shutdown that stops accepting, drains in-flight calls, and
//! reports NOT_SERVING while it does. Event-feed streams never end by
//! themselves, so draining closes them at once (consumers resubscribe from
//! their offsets) and waits only for the unary calls in flight.

use crate::config::ServerSettings;
use crate::health::HealthHub;
use crate::request_id::RequestIdLayer;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;

/// The gRPC services a binary serves. Recording their names lets reflection
/// list exactly what this port answers, not every package in the API.
#[derive(Default)]
pub struct Routes {
    inner: RoutesBuilder,
    names: Vec<&'static str>,
    /// Feeds whose streams end when the server starts draining.
    feeds: Vec<crate::events::Feed>,
}

impl Routes {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.inner.add_service(service);
        self
    }

    /// Adds an event feed, whose streams end as soon as the server drains.
    pub fn add_feed(&mut self, feed: &crate::events::Feed) -> &mut Self {
        self.feeds.push(feed.clone());
        self.add(feed.server())
    }

    /// Fully-qualified names of the services added so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source} (is the port in use? set server.listen_addr)")]
    Bind {
        /// The configured `server.listen_addr`.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The reflection service could not be built.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server stopped with a transport error.
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The serving task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
}

/// Binds `settings.listen_addr` and serves `routes` plus health and reflection
/// until `shutdown` resolves; then drains for at most the configured time.
pub async fn serve<F>(
    settings: &ServerSettings,
    health: HealthHub,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    routes: Routes,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(settings.listen_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen_addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.listen_addr,
        source,
    })?;

    let Routes {
        inner: mut routes,
        names,
        feeds,
    } = routes;
    // Every service this port serves answers `grpc.health.v1.Health/Check`.
    for name in &names {
        health.cover(name, crate::health::needs_of(name)).await;
    }
    let health_name = <tonic_health::pb::health_server::HealthServer<
        tonic_health::server::HealthService,
    > as NamedService>::NAME;
    let metrics_layer =
        crate::metrics::grpc::GrpcMetricsLayer::new(names.iter().copied().chain([health_name]));
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        let builder = builder
            .register_encoded_file_descriptor_set(tally_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(health_name);
        names
            .iter()
            .fold(builder, |b, name| b.with_service_name(*name))
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let drain = Duration::from_secs(settings.drain_timeout_secs);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    tracing::info!(addr = %local, "serving gRPC");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(crate::trace::server::ServerTraceLayer)
        .layer(RequestIdLayer)
        .layer(metrics_layer)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);

    tokio::select! {
        res = &mut server => return finished(res),
        _ = shutdown => {}
    }
    // Stop taking new calls, report NOT_SERVING, and let in-flight calls finish.
    health.drain().await;
    let _ = stop_tx.send(());
    for feed in &feeds {
        feed.close_streams();
    }
    match tokio::time::timeout(drain, &mut server).await {
        Ok(res) => finished(res)?,
        Err(_) => {
            tracing::warn!(?drain, "drain timeout passed; closing remaining calls");
            server.abort();
        }
    }
    tracing::info!("server stopped");
    // The last calls' spans are still queued for export.
    let _ = tokio::task::spawn_blocking(crate::trace::flush).await;
    Ok(())
}

fn finished(
    res: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match res {
        Ok(inner) => Ok(inner?),
        Err(e) => Err(ServeError::Task(e.to_string())),
    }
}

/// Installs ring as the process-wide rustls crypto provider.
///
/// Call first in every `main`: with more than one provider compiled in
/// (a Scylla TLS feature adds aws-lc-rs), rustls cannot pick one and panics
/// when the first TLS config is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
