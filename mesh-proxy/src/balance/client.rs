//! The HTTP/2-only client the proxy uses to reach an endpoint (pooled connections through the
//! transport seam), and the one way to send a request over it.

use crate::body::{self, Body};
use crate::transport::ClientTransport;
use crate::transport::connector::Connector;
use crate::{Req, Rsp};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

pub type HttpClient = Client<Connector, Body>;

/// HTTP/2 client settings for connections the proxy opens.
#[derive(Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub stream_window: u32,
    pub connection_window: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_list_size: u32,
}

impl ClientSettings {
    pub fn from_limits(l: &crate::config::LimitsConfig) -> Self {
        Self {
            connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            stream_window: l.http2_initial_stream_window_size,
            connection_window: l.http2_initial_connection_window_size,
            keepalive_interval: Duration::from_millis(l.http2_keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(l.http2_keepalive_timeout_ms),
            max_header_list_size: l.max_header_list_size,
        }
    }
}

/// An HTTP/2-only client that dials `addr` through `transport`, expecting `expected_id`.
pub fn http2_client(
    addr: &str,
    expected_id: &str,
    transport: Arc<dyn ClientTransport>,
    s: &ClientSettings,
) -> HttpClient {
    let connector = Connector {
        addr: addr.to_string(),
        expected_id: expected_id.to_string(),
        transport,
        connect_timeout: s.connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_initial_stream_window_size(s.stream_window)
        .http2_initial_connection_window_size(s.connection_window)
        .http2_keep_alive_interval(s.keepalive_interval)
        .http2_keep_alive_timeout(s.keepalive_timeout)
        .http2_max_header_list_size(s.max_header_list_size)
        .build(connector)
}

/// Sends `req` to `addr` over `client` (rewriting the URI so the pool keys on the endpoint).
pub async fn send(
    client: &HttpClient,
    addr: &str,
    req: Req,
) -> Result<Rsp, hyper_util::client::legacy::Error> {
    let (mut parts, b) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = format!("http://{addr}{pq}").parse() {
        parts.uri = uri;
    }
    parts.version = http::Version::HTTP_2;
    parts.headers.remove(http::header::HOST);
    let rsp = client.request(Req::from_parts(parts, b)).await?;
    Ok(rsp.map(body::incoming))
}
