//! The HTTP/2-only client the proxy uses to reach an endpoint (its connections, opened through
//! the transport seam, live in `transport::pool`), and the one way to send a request over it.

use crate::config::LimitsConfig;
use crate::defaults::{HTTP2_ADAPTIVE_WINDOW, HTTP2_MAX_FRAME_SIZE};
use crate::transport::ClientTransport;
use crate::transport::connector::Connector;
use crate::transport::pool::{ConnLimits, EndpointConns, H2Settings, SendError};
use crate::{Req, Rsp};
use std::sync::Arc;
use std::time::Duration;

pub type HttpClient = Arc<EndpointConns>;

/// Client settings for connections the proxy opens.
#[derive(Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub h2: H2Settings,
    pub limits: ConnLimits,
}

impl ClientSettings {
    pub fn from_limits(l: &LimitsConfig) -> Self {
        Self {
            connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            h2: H2Settings {
                stream_window: l.http2_initial_stream_window_size,
                connection_window: l.http2_initial_connection_window_size,
                max_frame_size: HTTP2_MAX_FRAME_SIZE,
                adaptive_window: HTTP2_ADAPTIVE_WINDOW,
                keepalive_interval: Duration::from_millis(l.http2_keepalive_interval_ms),
                keepalive_timeout: Duration::from_millis(l.http2_keepalive_timeout_ms),
                max_header_list_size: l.max_header_list_size,
            },
            limits: ConnLimits {
                max_connections: l.http2_max_connections_per_endpoint,
                streams_per_connection: l.http2_streams_per_connection,
            },
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
    EndpointConns::new(connector, &s.h2, s.limits)
}

/// Sends `req` to `addr` over `client` (with an absolute URI naming the endpoint, as HTTP/2
/// needs for `:scheme` and `:authority`).
pub async fn send(client: &HttpClient, addr: &str, req: Req) -> Result<Rsp, SendError> {
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
    client.send(Req::from_parts(parts, b)).await
}
