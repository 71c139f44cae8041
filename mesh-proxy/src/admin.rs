//! Admin HTTP listener: `/live`, `/ready`, `/ready/upstreams` ([`crate::readiness`]), `/metrics` (Prometheus text), `/config` (effective
//! config as JSON), `/faults` (GET the current fault settings, PUT one route's settings) and
//! `/split` (GET the canary weights, PUT one target's weight).
//! It is a control plane: reads are open to loopback callers, every mutation needs the bearer
//! token from `admin.token_file`, and requests naming a foreign `Host` or carrying any `Origin`
//! are refused, so a web page cannot reach it through DNS rebinding.

use crate::config::{AdminConfig, ConfigError, FaultConfig, check_faults};
use crate::faults::FaultStore;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest admin request body accepted.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Why the admin token could not be loaded; the proxy refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("admin.token_file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "admin.token_file {path}: mode {mode:o} lets other users read the admin token; fix: chmod 600 {path}"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("admin.token_file {path}: is empty; fix: write a random token into it")]
    Empty { path: PathBuf },
}

/// Who may do what on the admin listener.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    /// Bearer token for mutations; `None` refuses every mutation.
    token: Option<String>,
    /// Extra `Host` values allowed besides loopback with the admin port (lowercase).
    allowed_hosts: Vec<String>,
}

impl AdminAuth {
    /// Reads `admin.token_file` (owner-only permissions required) and `admin.allowed_hosts`.
    pub fn load(cfg: &AdminConfig) -> Result<Self, AdminTokenError> {
        let token = match &cfg.token_file {
            Some(p) => Some(read_token(p)?),
            None => {
                tracing::warn!(
                    "no admin.token_file configured: admin mutations (PUT /faults) are refused"
                );
                None
            }
        };
        Ok(Self {
            token,
            allowed_hosts: cfg
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        })
    }
}

fn read_token(path: &Path) -> Result<String, AdminTokenError> {
    let read = |source| AdminTokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AdminTokenError::Mode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let token = std::fs::read_to_string(path)
        .map_err(read)?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(AdminTokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub faults: FaultStore,
    /// Stable/canary weights (`GET`/`PUT /split`).
    pub splits: crate::split::SplitStore,
    /// Routes that accept fault settings (service names and `inbound`).
    pub routes: Arc<BTreeSet<String>>,
    pub config_json: Arc<String>,
    pub ready: Arc<AtomicBool>,
    pub auth: Arc<AdminAuth>,
    /// What `/ready/upstreams` checks besides `ready`.
    pub upstreams: Arc<Vec<crate::readiness::Upstream>>,
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

/// Refuses DNS-rebinding and cross-site requests: any `Origin`, or a `Host` other than
/// loopback with the admin port, the address the connection was made to (what a probe or
/// scraper dialling the pod IP sends), or a configured name. A rebound name never matches.
fn check_origin(
    auth: &AdminAuth,
    local: SocketAddr,
    req: &http::Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    if req.headers().contains_key(http::header::ORIGIN) {
        return Some(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "requests with an Origin header are refused\n",
        ));
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    let Some(host) = host else {
        return Some(reply(StatusCode::FORBIDDEN, "text/plain", "missing Host\n"));
    };
    let port = local.port();
    let mut allowed = vec![
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    allowed.push(local.to_string());
    if allowed.contains(&host) || auth.allowed_hosts.contains(&host) {
        return None;
    }
    Some(reply(
        StatusCode::FORBIDDEN,
        "text/plain",
        format!(
            "Host `{host}` is not this admin listener; allowed: loopback with port {port} or admin.allowed_hosts\n"
        ),
    ))
}

/// Every method but GET/HEAD changes something and needs the bearer token.
fn check_mutation(
    auth: &AdminAuth,
    req: &http::Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let Some(token) = &auth.token else {
        return Some(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "admin mutations are disabled: no admin.token_file is configured\n",
        ));
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "this change needs Authorization: Bearer <admin token>\n",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Some(r)
        }
        Some(p) if same_secret(p.as_bytes(), token.as_bytes()) => None,
        Some(_) => Some(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "wrong admin token\n",
        )),
    }
}

async fn handle(
    state: AdminState,
    local: SocketAddr,
    req: http::Request<Incoming>,
) -> Response<Full<Bytes>> {
    let refused =
        check_origin(&state.auth, local, &req).or_else(|| check_mutation(&state.auth, &req));
    if let Some(refused) = refused {
        tracing::warn!(method = %req.method(), path = req.uri().path(), status = refused.status().as_u16(), "admin request refused");
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            crate::audit::record(
                crate::audit::Event::new(
                    "unauthenticated",
                    format!("admin.{}", req.method().as_str().to_ascii_lowercase()),
                    req.uri().path(),
                    "denied",
                )
                .with_detail(format!("HTTP {}", refused.status().as_u16())),
            );
        }
        return refused;
    }
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
        (Method::GET, "/ready") => {
            if state.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (Method::GET, "/ready/upstreams") => {
            let down = crate::readiness::unreachable(&state.upstreams).await;
            if !state.ready.load(Ordering::Acquire) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            } else if down.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: unreachable upstreams: {}\n", down.join(", ")),
                )
            }
        }
        (Method::GET, "/metrics") => {
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            if tally_exposition::wanted(accept) {
                let text = tally_exposition::from_open_metrics(&state.metrics.encode());
                reply(StatusCode::OK, tally_exposition::CONTENT_TYPE, text)
            } else {
                reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    state.metrics.encode(),
                )
            }
        }
        (Method::GET, "/config") => reply(
            StatusCode::OK,
            "application/json",
            state.config_json.as_bytes().to_vec(),
        ),
        (Method::GET, "/faults") => json(StatusCode::OK, &state.faults.snapshot()),
        (Method::GET, "/split") => json(StatusCode::OK, &state.splits.snapshot()),
        (Method::PUT, "/split") => {
            let (status, text) = crate::split::admin_put(&state.splits, req.into_body()).await;
            reply(status, "text/plain", text)
        }
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
            // The delay cap is the config file's to set: a change keeps the route's cap, and a
            // longer delay is clamped to it.
            let mut faults = update.faults;
            if let Some(current) = state.faults.get(&update.route) {
                faults.max_delay_ms = current.max_delay_ms;
            }
            faults.delay_ms = faults.delay_ms.min(faults.max_delay_ms);
            tracing::warn!(route = %update.route, faults = ?faults, "fault settings changed through admin API");
            crate::audit::record(
                crate::audit::Event::new("admin-token", "admin.faults", &update.route, "ok")
                    .with_detail(format!("{faults:?}")),
            );
            state.faults.set(&update.route, faults);
            json(StatusCode::OK, &state.faults.snapshot())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let Ok(listen) = listener.local_addr() else {
        tracing::error!("admin listener has no local address; admin API not served");
        return;
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // The address this connection reached (the listener's, or the pod IP behind 0.0.0.0).
        let local = tcp.local_addr().unwrap_or(listen);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, local, req).await) }
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
