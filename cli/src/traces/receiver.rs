//! The embedded OTLP trace receiver: an `opentelemetry.proto.collector.trace.v1.TraceService`
//! gRPC server on loopback that keeps what it receives in a [`TraceStore`], and, on the same
//! port over HTTP/1.1, the query API `tally traces` reads: `GET /traces` (summaries, newest
//! first) and `GET /traces/{id}` (one trace's spans; a unique id prefix is enough).

use super::store::{self, TraceStore};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest OTLP export accepted, in bytes.
pub const MAX_EXPORT_BYTES: usize = 8 * 1024 * 1024;
/// Address the receiver binds: loopback, a port the OS picks (kept bound, never released).
pub const LISTEN: &str = "127.0.0.1:0";

struct Receiver {
    store: Arc<TraceStore>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = store::records(&request.into_inner().resource_spans);
        self.store.insert(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

async fn list(State(store): State<Arc<TraceStore>>) -> impl IntoResponse {
    let body = serde_json::to_string(&store.summaries()).unwrap_or_else(|_| "[]".into());
    (JSON, body)
}

async fn one(State(store): State<Arc<TraceStore>>, Path(id): Path<String>) -> impl IntoResponse {
    match store.trace(&id) {
        Some(spans) => {
            let body = serde_json::to_string(&spans).unwrap_or_else(|_| "[]".into());
            (StatusCode::OK, JSON, body)
        }
        None => (
            StatusCode::NOT_FOUND,
            JSON,
            serde_json::json!({"error": format!("no trace `{id}` (or the prefix is ambiguous)")})
                .to_string(),
        ),
    }
}

/// The receiver, bound and not yet serving.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    /// Binds [`LISTEN`].
    pub async fn bind() -> std::io::Result<Self> {
        let listener = TcpListener::bind(LISTEN).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OTLP endpoint services and proxies export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until the task is dropped or the process ends.
    pub fn spawn(self, store: Arc<TraceStore>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(serve(self.listener, store))
    }
}

/// Serves OTLP export and the query API on `listener`.
pub async fn serve(listener: TcpListener, store: Arc<TraceStore>) {
    let otlp = TraceServiceServer::new(Receiver {
        store: store.clone(),
    })
    .max_decoding_message_size(MAX_EXPORT_BYTES);
    let query = axum::Router::new()
        .route("/traces", axum::routing::get(list))
        .route("/traces/{id}", axum::routing::get(one))
        .with_state(store);
    let router = tonic::service::Routes::new(otlp)
        .into_axum_router()
        .merge(query);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming(incoming)
        .await
    {
        tracing::warn!(error = %e, "trace receiver stopped");
    }
}
