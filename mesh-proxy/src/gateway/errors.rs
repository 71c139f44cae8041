//! Every failure the gateway itself produces, as one typed error with its status and reason.
//! The answer is built by `error::respond` (trailers-only gRPC, or a plain HTTP error where the
//! request is not a usable gRPC call at all: bad base64 → 400, not gRPC → 415); for gRPC-Web
//! this module moves the status into the trailer frame of the body. Messages never name
//! identities or endpoint addresses (those go to the logs) and end with the request id, as
//! forwarded proxy errors do (`respond::for_browser`).

use super::auth::AuthError;
use super::grpc_web::{Protocol, trailer_frame};
use super::ratelimit::Limited;
use crate::body;
use crate::error::respond;
use crate::grpc::Code;
use crate::{ProxyError, Rsp};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request is not gRPC or gRPC-Web (content-type `{0}`)")]
    NotGrpc(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large: {0}")]
    TooLarge(String),
    #[error("unknown service or method `{0}`")]
    NoRoute(String),
    #[error("{0}")]
    Auth(AuthError),
    #[error("rate limit reached ({} limit); retry in {} ms", .0.scope.as_str(), .0.retry_after.as_millis())]
    RateLimited(Limited),
    #[error("{0}")]
    Proxy(ProxyError),
}

impl GatewayError {
    /// The gRPC status, or `None` when the answer is a plain HTTP error.
    pub fn code(&self) -> Option<Code> {
        match self {
            GatewayError::NotGrpc(_) | GatewayError::BadRequest(_) => None,
            GatewayError::TooLarge(_) | GatewayError::RateLimited(_) => {
                Some(Code::ResourceExhausted)
            }
            GatewayError::NoRoute(_) => Some(Code::Unimplemented),
            GatewayError::Auth(a) => Some(a.code()),
            GatewayError::Proxy(p) => Some(p.code()),
        }
    }

    /// The `tally-proxy-error` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NotGrpc(_) => "not-grpc",
            GatewayError::BadRequest(_) => "bad-request",
            GatewayError::TooLarge(_) => "request-too-large",
            GatewayError::NoRoute(_) => "no-route",
            GatewayError::Auth(_) => "unauthenticated",
            GatewayError::RateLimited(_) => "rate-limited",
            GatewayError::Proxy(p) => p.reason(),
        }
    }

    /// The message a browser sees: proxy failures (whose detail may name SPIFFE ids and
    /// endpoint addresses) and key-fetch failures get their short public text.
    fn public_message(&self) -> String {
        match self {
            GatewayError::Proxy(p) => respond::public_message(p.reason()).to_string(),
            _ => self.to_string(),
        }
    }

    /// The HTTP status when the answer is a plain HTTP error rather than a gRPC status.
    pub fn http_status(&self) -> Option<StatusCode> {
        match self {
            GatewayError::NotGrpc(_) => Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            GatewayError::BadRequest(_) => Some(StatusCode::BAD_REQUEST),
            _ => None,
        }
    }

    /// The answer for call `request_id` (also sent as `x-request-id` by the gateway).
    pub fn to_response(&self, protocol: Option<Protocol>, request_id: &str) -> Rsp {
        let message = respond::with_request_id(&self.public_message(), request_id);
        let Some(code) = self.code() else {
            let status = self.http_status().unwrap_or(StatusCode::BAD_REQUEST);
            return respond::http_error(status, &message, self.reason());
        };
        let mut rsp = respond::grpc_response(code, &message, self.reason());
        if let GatewayError::RateLimited(l) = self {
            let ms = u64::try_from(l.retry_after.as_millis()).unwrap_or(u64::MAX);
            rsp.headers_mut()
                .insert("grpc-retry-pushback-ms", HeaderValue::from(ms.max(1)));
        }
        if let Some(p) = protocol.filter(|p| p.is_web()) {
            // gRPC-Web: the status and its metadata go in the trailer frame of the body, where
            // every gRPC-Web client reads them (no CORS exposure needed).
            let (mut parts, _) = rsp.into_parts();
            let mut trailers = http::HeaderMap::new();
            for name in ["grpc-status", "grpc-message", "grpc-retry-pushback-ms"] {
                if let Some(v) = parts.headers.remove(name) {
                    trailers.insert(name, v);
                }
            }
            let frame = trailer_frame(&trailers);
            let body = if p.text_response() {
                Bytes::from(STANDARD.encode(&frame))
            } else {
                frame
            };
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(p.response_content_type()),
            );
            rsp = Rsp::from_parts(parts, body::full(body));
        }
        rsp
    }
}
