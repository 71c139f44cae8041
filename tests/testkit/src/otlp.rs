//! A real OTLP/gRPC trace receiver for tests: a tonic `TraceService` on a
//! loopback listener the test keeps bound, holding every span exported to it
//! (by proxies or services), with helpers to wait for a span and read its events.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for a span to be exported (proxies export every 500 ms).
pub const EXPORTED: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);

/// A span with the `service.name` of the process that exported it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The exporter's `service.name` resource attribute.
    pub service: String,
    /// The span as exported.
    pub span: Span,
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| text(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    kept.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`, for an exporter's OTLP endpoint.
    pub endpoint: String,
    store: Store,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Binds a loopback port and serves OTLP trace exports on it.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let store = Store::default();
        let svc = TraceServiceServer::new(store.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Receiver {
            endpoint: format!("http://{addr}"),
            store,
            task,
        }
    }

    /// `[telemetry]` for a proxy exporting here as `service`.
    pub fn telemetry(&self, service: &str) -> String {
        format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"{service}\"\n",
            self.endpoint
        )
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The first span `service` exported with this name, waiting for its export.
    pub async fn wait(&self, service: &str, name: &str) -> Span {
        self.wait_for(&format!("span `{name}` from {service}"), |spans| {
            spans
                .iter()
                .find(|r| r.service == service && r.span.name == name)
                .map(|r| r.span.clone())
        })
        .await
    }

    /// Waits until `found` gets something from the spans received so far,
    /// failing with `what` after [`EXPORTED`].
    pub async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Received]) -> Option<T>) -> T {
        let deadline = Instant::now() + EXPORTED;
        loop {
            let spans = self.spans();
            if let Some(t) = found(&spans) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {EXPORTED:?}; got: {:?}",
                spans
                    .iter()
                    .map(|r| (r.service.clone(), r.span.name.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// The text of a string, integer or boolean attribute.
pub fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The span's events with this name, each as its attributes.
pub fn events<'a>(span: &'a Span, name: &str) -> Vec<&'a Event> {
    span.events.iter().filter(|e| e.name == name).collect()
}

/// An event attribute's text ("" when absent).
pub fn attr(e: &Event, key: &str) -> String {
    text(&e.attributes, key).unwrap_or_default()
}
