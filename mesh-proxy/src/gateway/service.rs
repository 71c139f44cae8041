//! One gateway call, top to bottom: CORS preflight → edge header policy (internal headers
//! dropped, request id, new trace) → classify (gRPC-Web or gRPC) → route by gRPC name → edge
//! authentication → rate limits (the principal's or the IP's bucket, then the global one) →
//! translate and bound the request body → the outbound stack (retries, breakers, balancing,
//! mTLS) → translate the response → CORS headers. Each step lives in its own module; this
//! file only puts them in order.

use super::auth::{AuthError, AuthenticatedPrincipal, EdgeAuth};
use super::config::Access;
use super::config::Bounds;
use super::cors::Cors;
use super::edge::{self, REQUEST_ID_HEADER};
use super::errors::GatewayError;
use super::grpc_web::{self, Protocol, RequestError};
use super::ratelimit::RateLimiter;
use super::routes::{Route, RouteTable};
use crate::body::{self, End};
use crate::error::respond;
use crate::grpc::Code;
use crate::metrics::{GatewayLabels, Metrics, ReasonLabels, ScopeLabels};
use crate::trace::{GatewaySpan, names};
use crate::{ListenerService, ProxyError, Req, Rsp};
use http::header;
use opentelemetry::KeyValue;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::time::Instant;
use tower::ServiceExt;

/// Headers that describe one HTTP/1.1 connection and must not be forwarded over HTTP/2.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// What the gateway span of a call to a path no route knows is named after.
const UNROUTED_SPAN: &str = "unrouted";

#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub outbound: ListenerService,
    pub routes: RouteTable,
    pub auth: EdgeAuth,
    pub limiter: RateLimiter,
    pub cors: Cors,
    pub metrics: Arc<Metrics>,
    pub bounds: Bounds,
    pub trusted_proxies: Vec<IpAddr>,
}

/// The rate-limit bucket of a call: its principal's, else its IP's.
fn bucket_key(principal: Option<&str>, ip: IpAddr) -> String {
    match principal {
        Some(p) => format!("principal:{p}"),
        None => format!("ip:{ip}"),
    }
}

/// The caller's IP: the TCP peer, or, when the peer is a trusted proxy, the last
/// `x-forwarded-for` address that is not one (earlier entries are the caller's to forge).
pub fn client_ip(headers: &http::HeaderMap, peer: IpAddr, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

impl Gateway {
    pub(super) fn from_parts(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The connection and body bounds this gateway was configured with.
    pub fn bounds(&self) -> Bounds {
        self.inner.bounds
    }

    /// Serves one request from `client` (the TCP peer).
    pub async fn handle(&self, mut req: Req, client: IpAddr) -> Rsp {
        let trusted = self.inner.trusted_proxies.contains(&client);
        let request_id = edge::sanitize(req.headers_mut(), trusted);
        if Cors::is_preflight(req.method(), req.headers()) {
            // A refused preflight carries the id too, so a report of it can be found in logs.
            let mut rsp = self.inner.cors.preflight(req.headers());
            rsp.headers_mut().insert(REQUEST_ID_HEADER, request_id.0);
            return rsp;
        }
        req.extensions_mut().insert(request_id.clone());
        let origin = req.headers().get(header::ORIGIN).cloned();
        let id = request_id.0.to_str().unwrap_or_default().to_string();
        let mut rsp = self.serve(req, client, &id).await;
        self.inner.cors.decorate(origin.as_ref(), &mut rsp);
        rsp.headers_mut().insert(REQUEST_ID_HEADER, request_id.0);
        rsp
    }

    async fn serve(&self, mut req: Req, client: IpAddr, request_id: &str) -> Rsp {
        let route = self.inner.routes.lookup(req.uri().path()).cloned();
        // Started before any check, so a refused call shows in a trace too. A path no
        // route knows is the caller's free text, so it does not name the span.
        let method = match route {
            Some(_) => req.uri().path().trim_start_matches('/'),
            None => UNROUTED_SPAN,
        };
        let span = GatewaySpan::start(req.headers(), method);
        let span = span.as_ref();
        let Some(protocol) = grpc_web::classify(req.headers()) else {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let e = GatewayError::NotGrpc(ct);
            return self.fail(e, None, "unknown", request_id, span);
        };
        let label = route
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |r| r.prefix.clone());
        if let Some(s) = span {
            req.extensions_mut().insert(s.clone());
        }
        let req = match self.admit(req, protocol, route, client, span).await {
            Ok(r) => r,
            Err(e) => return self.fail(e, Some(protocol), &label, request_id, span),
        };
        let rsp = match self.inner.outbound.clone().oneshot(req).await {
            Ok(r) => respond::for_browser(r, request_id),
            // A reset cannot reach an HTTP/1.1 caller; answer with the status instead.
            Err(_reset) => {
                return self.fail(
                    GatewayError::Proxy(ProxyError::FaultReset),
                    Some(protocol),
                    &label,
                    request_id,
                    span,
                );
            }
        };
        let metrics = self.inner.metrics.clone();
        let span = span.cloned();
        let rsp = body::on_end(rsp, move |end: End| {
            if let Some(s) = span {
                s.end(end.code(), None);
            }
            metrics
                .gateway_requests
                .get_or_create(&GatewayLabels {
                    route: label,
                    grpc_status: end.code().name().into(),
                })
                .inc();
        });
        grpc_web::to_web_response(rsp, protocol).await
    }

    /// Runs the edge checks and returns the request ready for the outbound stack.
    async fn admit(
        &self,
        req: Req,
        protocol: Protocol,
        route: Option<Route>,
        client: IpAddr,
        span: Option<&GatewaySpan>,
    ) -> Result<Req, GatewayError> {
        let inner = &self.inner;
        let Some(route) = route else {
            return Err(GatewayError::NoRoute(req.uri().path().to_string()));
        };
        let ip = client_ip(req.headers(), client, &inner.trusted_proxies);
        let principal = match route.access {
            Access::Public => None,
            Access::Authenticated => match self.authenticate(req.headers()).await {
                Ok(p) => {
                    if let Some(s) = span {
                        s.event(names::AUTHENTICATE, || vec![KeyValue::new("outcome", "ok")]);
                    }
                    Some(p)
                }
                Err(e) => {
                    refused(&e, &req, ip, client, span);
                    // Failed attempts spend the caller's IP bucket, so guessing is limited too.
                    let key = bucket_key(None, ip);
                    self.limited(inner.limiter.check_client(&key, Instant::now()), span)?;
                    return Err(e);
                }
            },
        };
        let key = bucket_key(
            principal
                .as_ref()
                .map(AuthenticatedPrincipal::rate_limit_key)
                .as_deref(),
            ip,
        );
        self.limited(inner.limiter.check(&key, Instant::now()), span)?;
        let mut req = grpc_web::to_grpc_request(req, protocol, &inner.bounds)
            .await
            .map_err(|e| match e {
                RequestError::TooLarge(_) => GatewayError::TooLarge(e.to_string()),
                RequestError::TimedOut(_) => GatewayError::Proxy(ProxyError::DeadlineExceeded),
                RequestError::BadBase64 | RequestError::Body(_) => {
                    GatewayError::BadRequest(e.to_string())
                }
            })?;
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *req.uri_mut() = format!("http://{}{pq}", route.service)
            .parse()
            .map_err(|_| GatewayError::NoRoute(pq.clone()))?;
        *req.version_mut() = http::Version::HTTP_2;
        let h = req.headers_mut();
        for name in HOP_BY_HOP {
            h.remove(name);
        }
        // Internal headers (caller identity, faults, overrides) went in `edge::sanitize`.
        // The services behind see the client address the gateway vouches for, never one the
        // caller wrote (per-account login throttling keys on it).
        h.remove("x-forwarded-for");
        if let Ok(v) = http::HeaderValue::from_str(&ip.to_string()) {
            h.insert("x-forwarded-for", v);
        }
        if let Some(p) = principal {
            req.extensions_mut().insert(p);
        }
        Ok(req)
    }

    /// The caller's principal (access token or API key, both verified), counting failures.
    async fn authenticate(
        &self,
        h: &http::HeaderMap,
    ) -> Result<AuthenticatedPrincipal, GatewayError> {
        self.inner
            .auth
            .authenticate(h)
            .await
            .map_err(|e: AuthError| {
                self.inner
                    .metrics
                    .gateway_auth_failures
                    .get_or_create(&ReasonLabels {
                        reason: e.reason().into(),
                    })
                    .inc();
                GatewayError::Auth(e)
            })
    }

    fn limited(
        &self,
        r: Result<(), super::ratelimit::Limited>,
        span: Option<&GatewaySpan>,
    ) -> Result<(), GatewayError> {
        if let Some(s) = span {
            s.event(names::RATE_LIMIT, || match &r {
                Ok(()) => vec![KeyValue::new("outcome", "admitted")],
                Err(l) => vec![
                    KeyValue::new("outcome", "limited"),
                    KeyValue::new("scope", l.scope.as_str()),
                ],
            });
        }
        r.map_err(|l| {
            self.inner
                .metrics
                .gateway_rate_limited
                .get_or_create(&ScopeLabels {
                    scope: l.scope.as_str().into(),
                })
                .inc();
            GatewayError::RateLimited(l)
        })
    }

    /// The response for a gateway-made failure, counted under `route`.
    fn fail(
        &self,
        e: GatewayError,
        protocol: Option<Protocol>,
        route: &str,
        request_id: &str,
        span: Option<&GatewaySpan>,
    ) -> Rsp {
        let status = match (e.code(), e.http_status()) {
            (Some(c), _) => c.name().to_string(),
            (None, s) => format!("HTTP_{}", s.map_or(0, |s| s.as_u16())),
        };
        if let Some(s) = span {
            let code = e
                .code()
                .unwrap_or_else(|| Code::from_http(e.http_status().map_or(0, |s| s.as_u16())));
            s.end(code, Some(e.reason()));
        }
        tracing::debug!(error = %e, reason = e.reason(), route, request_id, "gateway refused a call");
        self.inner
            .metrics
            .gateway_requests
            .get_or_create(&GatewayLabels {
                route: route.to_string(),
                grpc_status: status,
            })
            .inc();
        e.to_response(protocol, request_id)
    }
}

/// Which credential a refused call came with (never the credential itself).
fn credential_kind(h: &http::HeaderMap) -> &'static str {
    if h.contains_key(header::AUTHORIZATION) {
        "bearer"
    } else if h.contains_key(super::auth::API_KEY_HEADER) {
        "api-key"
    } else {
        "none"
    }
}

/// Records an authentication refusal: an event on the gateway span, and an audit entry
/// (capped per second, see [`crate::audit::record_refusal`]) naming the caller's address,
/// the route, the outcome and the reason.
fn refused(e: &GatewayError, req: &Req, ip: IpAddr, peer: IpAddr, span: Option<&GatewaySpan>) {
    let reason = match e {
        GatewayError::Auth(a) => a.reason(),
        other => other.reason(),
    };
    if let Some(s) = span {
        s.event(names::AUTHENTICATE, || {
            vec![
                KeyValue::new("outcome", "refused"),
                KeyValue::new("reason", reason),
            ]
        });
    }
    let outcome = match e.code() {
        Some(Code::Unavailable) => "unavailable",
        _ => "refused",
    };
    crate::audit::record_refusal(|| {
        let mut detail = format!(
            "reason={reason} credential={}",
            credential_kind(req.headers())
        );
        if peer != ip {
            detail.push_str(&format!(" peer={peer}"));
        }
        crate::audit::Event::new(
            format!("ip:{ip}"),
            crate::audit::REFUSED,
            req.uri().path(),
            outcome,
        )
        .with_detail(detail)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("198.51.100.1, 203.0.113.7, 10.0.0.1"),
        );
        assert_eq!(client_ip(&h, lb, &[lb]), client);
        // An untrusted peer cannot choose its IP.
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_ip(&h, other, &[lb]), other);
        // No header: the peer.
        assert_eq!(client_ip(&http::HeaderMap::new(), lb, &[lb]), lb);
    }

    #[test]
    fn principals_and_ips_never_share_a_bucket() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let alice = AuthenticatedPrincipal {
            user_id: "alice".into(),
            key_id: None,
        }
        .rate_limit_key();
        assert_eq!(bucket_key(Some(&alice), ip), "principal:sub:alice");
        assert_eq!(bucket_key(None, ip), "ip:203.0.113.7");
        // A subject that looks like an IP is still a principal.
        let odd = AuthenticatedPrincipal {
            user_id: "203.0.113.7".into(),
            key_id: None,
        }
        .rate_limit_key();
        assert_ne!(bucket_key(Some(&odd), ip), bucket_key(None, ip));
    }
}
