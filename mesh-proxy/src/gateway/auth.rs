//! Edge authentication: decides who a browser call is before it leaves the gateway, and hands
//! the answer on as an [`AuthenticatedPrincipal`] (the rate limiter keys on it).
//!
//! `authorization: Bearer <jwt>` is verified by `tally-authn` (EdDSA, `kid`, iss/aud/exp/nbf),
//! with keys from `tally.user.v1.UserService/GetJwks` or a JWKS file. `x-api-key` is verified
//! with `UserService/VerifyApiKey`, behind short bounded positive and negative caches. Both
//! calls use the generated client over the gateway's own outbound stack to the
//! `jwks_service` (so mTLS, retries, breakers and the mesh's authorization apply, and key
//! rotation needs no redeploy). The credentials themselves go on to the service unchanged,
//! which checks them again with its own rules (scopes).

use super::config::AuthConfig;
use crate::defaults as d;
use crate::{BoxFuture, ListenerService, body, grpc};
use http::HeaderMap;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tally_authn::{
    ApiKeyOptions, ApiKeyVerifier, AuthnError, FileJwks, GrpcTransport, JwksSource, TokenVerifier,
    TransportError, UserDirectory, VerifierOptions,
};
use tower::ServiceExt;

/// API keys travel in this header.
pub const API_KEY_HEADER: &str = "x-api-key";
/// How long the edge reuses a verified API key (how late a revocation may reach the edge).
pub const EDGE_API_KEY_POSITIVE_TTL: Duration = Duration::from_secs(10);
/// How long the edge refuses an unknown API key without asking the user service again.
pub const EDGE_API_KEY_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most API keys kept in each edge cache.
pub const EDGE_API_KEY_CACHE_CAPACITY: usize = 10_000;

/// Who an authenticated call is; put into the request's extensions by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthenticatedPrincipal {
    /// The user the token or key belongs to.
    pub user_id: String,
    /// The API key's id when the call came with one; `None` for access tokens.
    pub key_id: Option<String>,
}

impl AuthenticatedPrincipal {
    /// A stable rate-limit key: `key:<key id>` for API keys, `sub:<user id>` for tokens.
    pub fn rate_limit_key(&self) -> String {
        match &self.key_id {
            Some(k) => format!("key:{k}"),
            None => format!("sub:{}", self.user_id),
        }
    }
}

/// Why a call was not authenticated; `reason()` is the metric label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing credentials: send `authorization: Bearer <access token>` or `x-api-key: <secret>`"
    )]
    Missing,
    #[error("`authorization` must be `Bearer <access token>`")]
    Malformed,
    #[error("{0}")]
    Rejected(AuthnError),
    /// The user service could not be asked; the detail is logged, not shown to browsers.
    #[error("credentials cannot be verified right now; retry later")]
    Unavailable(AuthnError),
    #[error("{0} are not accepted by this gateway")]
    NotConfigured(&'static str),
}

impl From<AuthnError> for AuthError {
    fn from(e: AuthnError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "gateway: cannot verify credentials");
            AuthError::Unavailable(e)
        } else {
            AuthError::Rejected(e)
        }
    }
}

impl AuthError {
    /// A fixed label (a small, bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::NotConfigured(_) => "not-configured",
            AuthError::Rejected(e) | AuthError::Unavailable(e) => match e {
                AuthnError::UnknownKey(_) => "unknown-key",
                AuthnError::KeysUnavailable(_) => "keys-unavailable",
                AuthnError::MalformedApiKey | AuthnError::UnknownApiKey => "invalid-api-key",
                AuthnError::ApiKeysUnavailable(_) => "api-keys-unavailable",
                _ => "invalid",
            },
        }
    }

    pub fn code(&self) -> grpc::Code {
        match self {
            AuthError::Unavailable(_) => grpc::Code::Unavailable,
            _ => grpc::Code::Unauthenticated,
        }
    }
}

/// The gateway's outbound stack as a transport for the generated gRPC client.
#[derive(Clone)]
struct Outbound(ListenerService);

impl tower::Service<http::Request<tonic::body::Body>> for Outbound {
    type Response = http::Response<tonic::body::Body>;
    type Error = TransportError;
    type Future = BoxFuture<Result<Self::Response, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let outbound = self.0.clone();
        let req = req.map(|b| b.map_err(|e| body::BodyError(Box::new(e))).boxed_unsync());
        Box::pin(async move {
            let rsp = outbound
                .oneshot(req)
                .await
                .map_err(|e| TransportError(Box::new(e)))?;
            Ok(rsp.map(tonic::body::Body::new))
        })
    }
}

/// The edge's verifiers: none configured means every credential is refused.
pub struct EdgeAuth {
    tokens: Option<TokenVerifier>,
    api_keys: Option<ApiKeyVerifier>,
}

impl EdgeAuth {
    /// Builds the verifiers for `[gateway.auth]` and starts the periodic key refresh, so call
    /// it inside the runtime.
    pub fn new(cfg: Option<&AuthConfig>, outbound: &ListenerService) -> Self {
        let Some(cfg) = cfg else {
            return Self {
                tokens: None,
                api_keys: None,
            };
        };
        let timeout = Duration::from_millis(d::GATEWAY_JWKS_FETCH_TIMEOUT_MS);
        let directory = cfg.jwks_service.as_ref().and_then(|service| {
            let origin = format!("http://{service}").parse().ok()?;
            let transport = GrpcTransport::new(Outbound(outbound.clone()));
            Some(Arc::new(UserDirectory::over(transport, origin, timeout)))
        });
        let source: Arc<dyn JwksSource> = match (&directory, &cfg.jwks_file) {
            (Some(dir), _) => dir.clone(),
            (None, Some(path)) => Arc::new(FileJwks(path.clone())),
            // Validation requires one of the two; with neither, every token is refused.
            (None, None) => Arc::new(FileJwks(std::path::PathBuf::new())),
        };
        let opts = VerifierOptions {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: Duration::from_secs(cfg.leeway_s),
            min_refetch: Duration::from_millis(cfg.jwks_min_refetch_ms),
            ..VerifierOptions::default()
        };
        let tokens = TokenVerifier::new(source, &opts);
        tokens.keys().spawn_refresh(
            (cfg.jwks_refresh_ms > 0).then(|| Duration::from_millis(cfg.jwks_refresh_ms)),
        );
        let api_keys = directory.map(|dir| {
            let opts = ApiKeyOptions {
                positive_ttl: EDGE_API_KEY_POSITIVE_TTL,
                negative_ttl: EDGE_API_KEY_NEGATIVE_TTL,
                capacity: EDGE_API_KEY_CACHE_CAPACITY,
            };
            ApiKeyVerifier::new(dir, opts)
        });
        Self {
            tokens: Some(tokens),
            api_keys,
        }
    }

    /// The caller behind `headers`; a bearer token wins over an API key when both are sent.
    pub async fn authenticate(&self, h: &HeaderMap) -> Result<AuthenticatedPrincipal, AuthError> {
        if let Some(value) = h.get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(tally_authn::bearer_token)
                .ok_or(AuthError::Malformed)?;
            let tokens = self
                .tokens
                .as_ref()
                .ok_or(AuthError::NotConfigured("access tokens"))?;
            let verified = tokens.verify(token).await?;
            return Ok(AuthenticatedPrincipal {
                user_id: verified.subject,
                key_id: None,
            });
        }
        if let Some(value) = h.get(API_KEY_HEADER) {
            let secret = value
                .to_str()
                .map_err(|_| AuthError::Rejected(AuthnError::MalformedApiKey))?;
            let api_keys = self
                .api_keys
                .as_ref()
                .ok_or(AuthError::NotConfigured("API keys"))?;
            let id = api_keys.verify(secret).await?;
            return Ok(AuthenticatedPrincipal {
                user_id: id.user_id,
                key_id: Some(id.key_id),
            });
        }
        Err(AuthError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use http_body_util::Full;
    use prost::Message as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tally_api::user::v1 as pb;

    /// A gRPC response with one message and `grpc-status: 0` in trailers.
    fn grpc_ok(msg: &impl prost::Message) -> crate::Rsp {
        let encoded = msg.encode_to_vec();
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(u32::try_from(encoded.len()).expect("small"));
        frame.put_slice(&encoded);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Full::new(frame.freeze())
            .map_err(|n| match n {})
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed_unsync();
        let mut rsp = http::Response::new(body);
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        rsp
    }

    /// An outbound stack that plays the user service: one API key, no signing keys.
    fn fake_outbound(calls: Arc<AtomicUsize>) -> ListenerService {
        ListenerService::new(tower::service_fn(move |req: crate::Req| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("user"));
                let path = req.uri().path().to_string();
                let bytes = req.into_body().collect().await.expect("body").to_bytes();
                let rsp = match path.as_str() {
                    "/tally.user.v1.UserService/GetJwks" => {
                        grpc_ok(&pb::GetJwksResponse::default())
                    }
                    "/tally.user.v1.UserService/VerifyApiKey" => {
                        let req =
                            pb::VerifyApiKeyRequest::decode(bytes.slice(5..)).expect("decode");
                        if req.secret == "tk_real" {
                            grpc_ok(&pb::VerifyApiKeyResponse {
                                user_id: "u-1".into(),
                                key_id: "key-1".into(),
                                scopes: vec![],
                            })
                        } else {
                            grpc::trailers_only(grpc::Code::Unauthenticated, "unknown key")
                        }
                    }
                    _ => grpc::trailers_only(grpc::Code::Unimplemented, "no"),
                };
                Ok::<_, crate::error::respond::ResetStream>(rsp)
            }
        }))
    }

    fn config() -> AuthConfig {
        toml::from_str("jwks_service = \"user\"\njwks_refresh_ms = 0\n").expect("config")
    }

    fn with_key(secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, secret.parse().expect("ascii"));
        h
    }

    #[tokio::test]
    async fn api_keys_are_verified_through_the_outbound_stack_and_cached() {
        let calls = Arc::new(AtomicUsize::new(0));
        let auth = EdgeAuth::new(Some(&config()), &fake_outbound(calls.clone()));
        // The initial key refresh may or may not have run yet; count from here.
        tokio::task::yield_now().await;
        auth.tokens
            .as_ref()
            .expect("tokens")
            .keys()
            .refresh()
            .await
            .expect("jwks");
        let base = calls.load(Ordering::SeqCst);
        for _ in 0..3 {
            let p = auth
                .authenticate(&with_key("tk_real"))
                .await
                .expect("real key");
            assert_eq!(p.user_id, "u-1");
            assert_eq!(p.key_id.as_deref(), Some("key-1"));
            assert_eq!(p.rate_limit_key(), "key:key-1");
        }
        for _ in 0..3 {
            let e = auth
                .authenticate(&with_key("tk_made_up"))
                .await
                .expect_err("made up");
            assert_eq!(e.code(), grpc::Code::Unauthenticated);
            assert_eq!(e.reason(), "invalid-api-key");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst) - base,
            2,
            "one call per key, then cached"
        );
    }

    #[tokio::test]
    async fn credentials_are_required_and_unconfigured_kinds_refused() {
        let calls = Arc::new(AtomicUsize::new(0));
        let none = EdgeAuth::new(None, &fake_outbound(calls.clone()));
        let e = none
            .authenticate(&with_key("tk_real"))
            .await
            .expect_err("no config");
        assert_eq!(e.reason(), "not-configured");
        let e = none
            .authenticate(&HeaderMap::new())
            .await
            .expect_err("missing");
        assert_eq!(e.reason(), "missing");
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Basic abc".parse().expect("ascii"),
        );
        let e = none.authenticate(&h).await.expect_err("basic");
        assert_eq!(e.reason(), "malformed");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn unavailable_errors_do_not_leak_details_to_browsers() {
        let e = AuthError::from(AuthnError::ApiKeysUnavailable(
            "breaker open for spiffe://tally/ns/tally/sa/user at 10.0.0.7:4143".into(),
        ));
        assert_eq!(e.code(), grpc::Code::Unavailable);
        assert!(!e.to_string().contains("spiffe"), "{e}");
        let p = AuthenticatedPrincipal {
            user_id: "u-9".into(),
            key_id: None,
        };
        assert_eq!(p.rate_limit_key(), "sub:u-9");
    }
}
