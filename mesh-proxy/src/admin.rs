//! Admin HTTP listener: `/live`, `/ready`, `/metrics` (Prometheus text), `/config` (effective
//! config as JSON) and `/faults` (GET the current fault settings, PUT one route's settings).

use crate::config::{ConfigError, FaultConfig, check_faults};
use crate::faults::FaultStore;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest admin request body accepted.
const MAX_ADMIN_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub faults: FaultStore,
    /// Routes that accept fault settings (service names and `inbound`).
    pub routes: Arc<BTreeSet<String>>,
    pub config_json: Arc<String>,
    pub ready: Arc<AtomicBool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    route: String,
    faults: FaultConfig,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => reply(status, "application/json", s),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

async fn handle(state: AdminState, req: http::Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
        (Method::GET, "/ready") => {
            if state.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        (Method::GET, "/config") => reply(
            StatusCode::OK,
            "application/json",
            state.config_json.as_bytes().to_vec(),
        ),
        (Method::GET, "/faults") => json(StatusCode::OK, &state.faults.snapshot()),
        (Method::PUT, "/faults") => {
            let bytes = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("cannot read body: {e}\n"),
                    );
                }
            };
            let update: FaultUpdate = match serde_json::from_slice(&bytes) {
                Ok(u) => u,
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!(
                            "expected {{\"route\": \"<service>|inbound\", \"faults\": {{...}}}}: {e}\n"
                        ),
                    );
                }
            };
            if !state.routes.contains(&update.route) {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!(
                        "unknown route `{}`; known: {:?}\n",
                        update.route, state.routes
                    ),
                );
            }
            let bad = |key: String, problem: String, fix: &str| ConfigError::Invalid {
                file: "PUT /faults".into(),
                key,
                problem,
                fix: fix.into(),
            };
            if let Err(e) = check_faults(&update.faults, "faults", &bad) {
                return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"));
            }
            tracing::warn!(route = %update.route, faults = ?update.faults, "fault settings changed through admin API");
            state.faults.set(&update.route, update.faults);
            json(StatusCode::OK, &state.faults.snapshot())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}
