//! Every default the proxy uses, named in one place so operators and reviewers can
//! see the whole policy at a glance. Names follow Envoy where the idea is the same. Times are
//! typed `Duration`s; a `_MS`/`_S` twin exists only where a config key holds the number.

use std::time::Duration;

/// Whole milliseconds of a default, for config keys kept in milliseconds.
const fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Maximum accepted connections per listener.
pub(crate) const MAX_CONNECTIONS: usize = 10_000;

/// Route timeout when a call carries no `grpc-timeout`: none (zero), so long streams are
/// never cut silently.
pub(crate) const ROUTE_TIMEOUT: Duration = Duration::ZERO;
pub(crate) const ROUTE_TIMEOUT_MS: u64 = ms(ROUTE_TIMEOUT);
/// Stream idle timeout: none (zero) by default, for the same reason.
pub(crate) const STREAM_IDLE_TIMEOUT: Duration = Duration::ZERO;
pub(crate) const STREAM_IDLE_TIMEOUT_MS: u64 = ms(STREAM_IDLE_TIMEOUT);
/// Time allowed to open a TCP connection to an endpoint.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const CONNECT_TIMEOUT_MS: u64 = ms(CONNECT_TIMEOUT);
/// Time allowed for a TLS handshake on either side.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const TLS_HANDSHAKE_TIMEOUT_MS: u64 = ms(TLS_HANDSHAKE_TIMEOUT);
/// Time a mesh connection gets after its handshake to send the HTTP/2 client preface
/// (`limits.http2_preface_timeout_ms`); a peer that handshakes and then idles is closed.
pub(crate) const HTTP2_PREFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight calls may drain after SIGTERM.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the certificate-expiry gauge is brought up to date.
pub(crate) const CERT_EXPIRY_REFRESH: Duration = Duration::from_secs(1);

// Retries (opt-in per route: one attempt means no retries).
pub(crate) const RETRY_MAX_ATTEMPTS: u32 = 1;
/// gRPC status names retried by default.
pub(crate) const RETRY_STATUSES: &[&str] = &["UNAVAILABLE"];
pub(crate) const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub(crate) const RETRY_BACKOFF_BASE_MS: u64 = ms(RETRY_BACKOFF_BASE);
pub(crate) const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub(crate) const RETRY_BACKOFF_MAX_MS: u64 = ms(RETRY_BACKOFF_MAX);
/// Retries may add at most this fraction on top of requests (Envoy / Linkerd: 20 %).
pub(crate) const RETRY_BUDGET_RATIO: f64 = 0.2;
/// Retries always allowed per second regardless of the ratio (Envoy's `min_retry_concurrency` 3).
pub(crate) const RETRY_BUDGET_MIN_PER_SECOND: u32 = 3;
/// Window over which the budget counts requests and retries.
pub(crate) const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
pub(crate) const RETRY_BUDGET_WINDOW_MS: u64 = ms(RETRY_BUDGET_WINDOW);
/// To see a status sent in trailers, retry reads the first response frame: within this wait, or
/// at any time once the request is complete (an interactive stream is not held up longer).
pub(crate) const RETRY_PEEK_WAIT: Duration = Duration::from_millis(100);

/// On every route, besides any retry policy: further attempts (each on another endpoint when
/// there is one) for a call an endpoint refused unprocessed (connect failure, REFUSED_STREAM,
/// a stream above a GOAWAY's last stream id). Not charged to the retry budget: the app never
/// saw those calls.
pub(crate) const TRANSPARENT_RETRIES: u32 = 2;
/// Attempts the inbound hop makes for a call the local app never received (its connection
/// being replaced, REFUSED_STREAM, GOAWAY, a failed connect).
pub(crate) const LOCAL_APP_ATTEMPTS: u32 = 3;
/// Pause before reconnecting to the local app after a failed connect (times the attempt).
pub(crate) const LOCAL_APP_RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How long the inbound hop holds a call while the local app refuses connections (a restart),
/// reconnecting until it listens again; the caller's deadline ends the hold sooner.
pub(crate) const LOCAL_APP_HOLD: Duration = Duration::from_secs(15);
/// Longest pause between reconnects while holding a call for the local app.
pub(crate) const LOCAL_APP_HOLD_BACKOFF_MAX: Duration = Duration::from_millis(100);

// Per-endpoint circuit breaker.
pub(crate) const BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
pub(crate) const BREAKER_FAILURE_RATE: f64 = 0.5;
/// Number of most recent calls the failure rate is computed over.
pub(crate) const BREAKER_WINDOW: u32 = 20;
/// The failure rate is only considered once the window holds this many calls.
pub(crate) const BREAKER_MIN_CALLS: u32 = 10;
pub(crate) const BREAKER_OPEN: Duration = Duration::from_secs(5);
pub(crate) const BREAKER_OPEN_MS: u64 = ms(BREAKER_OPEN);

// Per-route bulkhead.
pub(crate) const BULKHEAD_MAX_CONCURRENT: usize = 1_000;
pub(crate) const BULKHEAD_MAX_QUEUE: usize = 1_000;

// Outlier ejection (Envoy's names and defaults).
pub(crate) const OUTLIER_CONSECUTIVE_5XX: u32 = 5;
pub(crate) const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const OUTLIER_INTERVAL_MS: u64 = ms(OUTLIER_INTERVAL);
pub(crate) const OUTLIER_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub(crate) const OUTLIER_BASE_EJECTION_TIME_MS: u64 = ms(OUTLIER_BASE_EJECTION_TIME);
pub(crate) const OUTLIER_MAX_EJECTION_PERCENT: u32 = 10;
/// Upper bound on an ejection, however often the endpoint was ejected before (Envoy's `max_ejection_time`).
pub(crate) const OUTLIER_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
pub(crate) const OUTLIER_MAX_EJECTION_TIME_MS: u64 = ms(OUTLIER_MAX_EJECTION_TIME);

// Peak-EWMA load estimate.
/// Estimated round trip of an endpoint that has not answered yet (Linkerd uses 30 ms).
pub(crate) const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);
pub(crate) const EWMA_DEFAULT_RTT_MS: u64 = ms(EWMA_DEFAULT_RTT);
/// Decay time constant of the estimate.
pub(crate) const EWMA_DECAY: Duration = Duration::from_secs(10);
pub(crate) const EWMA_DECAY_MS: u64 = ms(EWMA_DECAY);
/// A failed call counts as at least this slow, so a fast-failing endpoint never looks cheap.
pub(crate) const EWMA_FAILURE_PENALTY: Duration = Duration::from_secs(1);
pub(crate) const EWMA_FAILURE_PENALTY_MS: u64 = ms(EWMA_FAILURE_PENALTY);

// Faults.
/// Header-requested fault percentages are capped by this unless the route says otherwise.
pub(crate) const HEADER_FAULT_MAX_PERCENT: f64 = 100.0;
/// Status used by abort faults unless configured.
pub(crate) const FAULT_ABORT_GRPC_STATUS: u16 = 14;
/// Longest delay a fault may inject (`faults.max_delay_ms`); longer requests from the config,
/// the admin API or `x-envoy-fault-delay-request` are clamped to it.
pub(crate) const FAULT_MAX_DELAY: Duration = Duration::from_secs(10);

// Limits.
pub(crate) const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Largest request body kept for replay so that it can be retried; bigger requests are not retried.
pub(crate) const MAX_RETRY_BUFFER_BYTES: usize = 64 * 1024;
pub(crate) const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 1_000;
/// hyper's rapid-reset guard: pending reset streams before the connection gets a GOAWAY.
pub(crate) const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 200;

// HTTP/2 connections, on both the client side (to endpoints and the local app) and the server
// side (listeners), unless a constant says otherwise. The reasons are in the README's
// "HTTP/2 settings" section.
/// Flow-control window per stream: 1 MiB, so one stream of large messages is not held to
/// the RFC's 64 KiB per round trip; still bounds what one slow reader can make the peer buffer.
pub(crate) const HTTP2_INITIAL_STREAM_WINDOW_SIZE: u32 = 1024 * 1024;
/// Flow-control window per connection: 4 MiB, room for four full streams at once before any
/// WINDOW_UPDATE, since many callers share one connection between sidecars.
pub(crate) const HTTP2_INITIAL_CONNECTION_WINDOW_SIZE: u32 = 4 * 1024 * 1024;
/// Largest frame the proxy accepts: the RFC's 16 KiB. gRPC messages in the mesh are small, and
/// small frames let streams sharing a connection interleave.
pub(crate) const HTTP2_MAX_FRAME_SIZE: u32 = 16 * 1024;
/// No adaptive (BDP-probing) window: the fixed windows above already exceed the bandwidth-delay
/// product of a loopback or same-zone hop, and probing adds PINGs to every busy connection.
pub(crate) const HTTP2_ADAPTIVE_WINDOW: bool = false;
/// `TCP_NODELAY` on every connection the proxy opens or accepts: a gRPC call is a few small
/// frames, and Nagle's algorithm would hold the last one back for the peer's delayed ACK.
pub(crate) const TCP_NODELAY: bool = true;
/// PING interval that keeps an idle connection known to be alive.
pub(crate) const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub(crate) const HTTP2_KEEPALIVE_INTERVAL_MS: u64 = ms(HTTP2_KEEPALIVE_INTERVAL);
/// Time a PING may go unanswered before the connection is closed.
pub(crate) const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const HTTP2_KEEPALIVE_TIMEOUT_MS: u64 = ms(HTTP2_KEEPALIVE_TIMEOUT);
/// Client side: most HTTP/2 connections to one endpoint (`limits.http2_max_connections_per_endpoint`).
/// One, as before, until a measurement shows more pay on this machine: all calls between two
/// sidecars then share one TLS session and one connection task each side.
pub(crate) const HTTP2_MAX_CONNECTIONS_PER_ENDPOINT: usize = 1;
/// Client side: streams in flight on the least busy connection to an endpoint at which another
/// connection is opened (`limits.http2_streams_per_connection`), when the limit above allows.
pub(crate) const HTTP2_STREAMS_PER_CONNECTION: usize = 100;

/// SPIFFE trust domain of the mesh.
pub(crate) const TRUST_DOMAIN: &str = "tally.local";
/// Header carrying the verified caller identity to the local app.
pub(crate) const PEER_ID_HEADER: &str = "x-tally-peer-spiffe-id";
/// Header naming why the proxy itself failed a call.
pub(crate) const PROXY_ERROR_HEADER: &str = "tally-proxy-error";
/// Header carrying a call's request id (as Envoy and the services' chassis name it), shown to
/// browsers in every error the gateway answers.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id the gateway keeps from a trusted proxy; longer or odd ones are replaced.
pub(crate) const MAX_REQUEST_ID_LEN: usize = 128;

// Gateway (browser-facing listener).
/// Request headers a browser may send (CORS `access-control-allow-headers`).
pub(crate) const GATEWAY_CORS_ALLOW_HEADERS: &[&str] = &[
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "authorization",
    "x-api-key",
    "grpc-timeout",
    "accept",
];
/// Response headers browser code may read (CORS `access-control-expose-headers`).
pub(crate) const GATEWAY_CORS_EXPOSE_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-retry-pushback-ms",
    "tally-proxy-error",
    "x-request-id",
];
/// How long a browser may cache a preflight answer.
pub(crate) const GATEWAY_CORS_MAX_AGE: Duration = Duration::from_secs(86_400);
pub(crate) const GATEWAY_CORS_MAX_AGE_S: u64 = GATEWAY_CORS_MAX_AGE.as_secs();
/// Access-token checks, matching the user service's issuer and audience.
pub const GATEWAY_JWT_ISSUER: &str = tally_authn::ISSUER;
/// Expected `aud` of access tokens (`gateway.auth.audience`).
pub const GATEWAY_JWT_AUDIENCE: &str = tally_authn::AUDIENCE;
pub(crate) const GATEWAY_JWT_LEEWAY: Duration = tally_authn::LEEWAY;
/// Clock skew tolerated on token times, in the seconds `gateway.auth.leeway_s` holds.
pub const GATEWAY_JWT_LEEWAY_S: u64 = GATEWAY_JWT_LEEWAY.as_secs();
/// Periodic JWKS refresh, and the least time between refetches caused by unknown `kid`s.
pub(crate) const GATEWAY_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// `gateway.auth.jwks_refresh_ms` default.
pub const GATEWAY_JWKS_REFRESH_MS: u64 = ms(GATEWAY_JWKS_REFRESH);
pub(crate) const GATEWAY_JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);
/// `gateway.auth.jwks_min_refetch_ms` default.
pub const GATEWAY_JWKS_MIN_REFETCH_MS: u64 = ms(GATEWAY_JWKS_MIN_REFETCH);
/// Deadline of one JWKS fetch.
pub(crate) const GATEWAY_JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const GATEWAY_JWKS_FETCH_TIMEOUT_MS: u64 = ms(GATEWAY_JWKS_FETCH_TIMEOUT);
/// Token bucket per client (JWT `sub`, else client IP) and for the whole gateway.
pub(crate) const GATEWAY_PER_CLIENT_PER_SECOND: f64 = 20.0;
pub(crate) const GATEWAY_PER_CLIENT_BURST: u32 = 40;
pub(crate) const GATEWAY_GLOBAL_PER_SECOND: f64 = 5_000.0;
pub(crate) const GATEWAY_GLOBAL_BURST: u32 = 10_000;
/// Client buckets kept in memory at most.
pub(crate) const GATEWAY_MAX_CLIENTS: usize = 100_000;
/// Time allowed to read an HTTP/1.1 request head.
pub(crate) const GATEWAY_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const GATEWAY_HEADER_READ_TIMEOUT_MS: u64 = ms(GATEWAY_HEADER_READ_TIMEOUT);

// --- Load balancer: endpoint selection at scale ---

/// Random draws the balancer makes for each of its two P2C candidates before it falls back to
/// scanning every endpoint. A pick then costs O(1) instead of O(endpoints): with a share `u` of
/// endpoints unusable (ejected, breaker-open), a draw fails with probability `u^8`, i.e. 0.4 %
/// of picks with half of them unusable, so the scan stays rare while 16 draws at most cost
/// less than the scan of even a small service.
pub(crate) const P2C_SAMPLE_TRIES: usize = 8;
