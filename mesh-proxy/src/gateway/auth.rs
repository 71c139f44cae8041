//! Edge authentication: checks `authorization: Bearer <jwt>` (EdDSA access tokens from the
//! user service) before a call leaves the gateway. The token itself goes on to the service
//! unchanged, which checks it again with its own rules; API keys are not checked here
//! (resolving them needs the user service's database), they pass through.
//!
//! Keys: the proxy must stay light, so it does not link the services' chassis. It copies only
//! the small verification step (jsonwebtoken, `rust_crypto`, Ed25519 only), and gets the keys
//! the same way services do: `tally.user.v1.UserService/GetJwks`, sent through the gateway's
//! own outbound route to the user service (so mTLS, retries and breakers apply, and key
//! rotation needs no redeploy). The response is decoded by hand (a dozen lines) rather than
//! with generated code. A JWKS file is the other source, for setups without a user service.
//! Unknown `kid`s trigger a refetch, at most once per `jwks_min_refetch_ms`.

use super::config::AuthConfig;
use crate::body::{self, Body};
use crate::defaults as d;
use crate::grpc;
use crate::{ListenerService, Req};
use base64::Engine as _;
use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Path of the key-set method on the user service.
pub const GET_JWKS_PATH: &str = "/tally.user.v1.UserService/GetJwks";
/// API keys travel in this header; the service verifies them.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Largest GetJwks response or JWKS file read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One JSON Web Key (the fields an Ed25519 verification key has).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    #[serde(default)]
    pub kty: String,
    #[serde(default)]
    pub crv: String,
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub x: String,
    #[serde(default)]
    pub alg: String,
    #[serde(default, rename = "use")]
    pub use_: String,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
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
    Invalid(String),
    #[error("access token signed by unknown key `{0}`")]
    UnknownKey(String),
    #[error("cannot fetch signing keys: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Invalid(_) => "invalid",
            AuthError::UnknownKey(_) => "unknown-key",
            AuthError::KeysUnavailable(_) => "keys-unavailable",
        }
    }
    pub fn code(&self) -> grpc::Code {
        match self {
            AuthError::KeysUnavailable(_) => grpc::Code::Unavailable,
            _ => grpc::Code::Unauthenticated,
        }
    }
}

/// Where the key set comes from.
pub trait JwksSource: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'static, Result<Vec<Jwk>, String>>;
}

/// A JWKS JSON document on disk.
pub struct FileJwks(pub PathBuf);

impl JwksSource for FileJwks {
    fn fetch(&self) -> BoxFuture<'static, Result<Vec<Jwk>, String>> {
        let path = self.0.clone();
        Box::pin(async move {
            let text = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if text.len() > MAX_JWKS_BYTES {
                return Err(format!("{}: larger than 1 MiB", path.display()));
            }
            let set: JwkSet = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not a JWKS document: {e}", path.display()))?;
            Ok(set.keys)
        })
    }
}

/// `UserService/GetJwks` through the outbound stack to `[services.<service>]`.
pub struct ServiceJwks {
    pub outbound: ListenerService,
    pub service: String,
}

impl JwksSource for ServiceJwks {
    fn fetch(&self) -> BoxFuture<'static, Result<Vec<Jwk>, String>> {
        let outbound = self.outbound.clone();
        let uri = format!("http://{}{GET_JWKS_PATH}", self.service);
        Box::pin(async move {
            // An empty GetJwksRequest: flag 0, length 0.
            let mut req = Req::new(body::full(Bytes::from_static(&[0, 0, 0, 0, 0])));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = uri.parse().map_err(|e| format!("bad service name: {e}"))?;
            *req.version_mut() = http::Version::HTTP_2;
            let h = req.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/grpc"));
            h.insert("te", HeaderValue::from_static("trailers"));
            let timeout = Duration::from_millis(d::GATEWAY_JWKS_FETCH_TIMEOUT_MS);
            if let Ok(v) = HeaderValue::from_str(&grpc::encode_timeout(timeout)) {
                h.insert("grpc-timeout", v);
            }
            let call = async {
                let rsp = outbound
                    .oneshot(req)
                    .await
                    .map_err(|e| format!("GetJwks failed: {e}"))?;
                read_unary(rsp).await
            };
            let msg = tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| "GetJwks timed out".to_string())??;
            decode_get_jwks(&msg)
        })
    }
}

/// Reads a unary gRPC response: its single message, or the error status.
async fn read_unary(rsp: http::Response<Body>) -> Result<Bytes, String> {
    let (parts, body) = rsp.into_parts();
    let failed = |code: grpc::Code, m: Option<&HeaderValue>| {
        let m = m.and_then(|v| v.to_str().ok()).unwrap_or("");
        format!("GetJwks answered {}: {m}", code.name())
    };
    if let Some(code) = grpc::status_of(&parts.headers) {
        return Err(failed(code, parts.headers.get("grpc-message")));
    }
    if parts.status != http::StatusCode::OK {
        return Err(format!("GetJwks answered HTTP {}", parts.status));
    }
    let collected = Limited::new(body, MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("GetJwks response failed: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    match grpc::status_of(&trailers) {
        Some(grpc::Code::Ok) => {}
        Some(code) => return Err(failed(code, trailers.get("grpc-message"))),
        None => return Err("GetJwks response has no grpc-status".into()),
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 || data[0] != 0 {
        return Err("GetJwks response is not one uncompressed message".into());
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    data.advance(5);
    if data.len() < len {
        return Err("GetJwks response message is truncated".into());
    }
    Ok(data.split_to(len))
}

/// Reads one protobuf varint.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, bytes)` for each length-delimited field; skips the others.
fn fields(mut buf: &[u8], mut f: impl FnMut(u64, &[u8])) -> Result<(), String> {
    let bad = || "GetJwks response is not valid protobuf".to_string();
    while !buf.is_empty() {
        let key = varint(&mut buf).ok_or_else(bad)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut buf).ok_or_else(bad)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut buf).ok_or_else(bad)?).map_err(|_| bad())?;
                let value = buf.get(..len).ok_or_else(bad)?;
                f(key >> 3, value);
                len
            }
            _ => return Err(bad()),
        };
        buf = buf.get(skip..).ok_or_else(bad)?;
    }
    Ok(())
}

/// `GetJwksResponse { repeated Jwk keys = 1; }` with `Jwk { kty=1 crv=2 kid=3 x=4 alg=5 use=6 }`.
pub fn decode_get_jwks(msg: &[u8]) -> Result<Vec<Jwk>, String> {
    let mut keys = Vec::new();
    let mut err = None;
    fields(msg, |n, value| {
        if n != 1 {
            return;
        }
        let mut jwk = Jwk::default();
        let r = fields(value, |n, v| {
            let s = String::from_utf8_lossy(v).into_owned();
            match n {
                1 => jwk.kty = s,
                2 => jwk.crv = s,
                3 => jwk.kid = s,
                4 => jwk.x = s,
                5 => jwk.alg = s,
                6 => jwk.use_ = s,
                _ => {}
            }
        });
        match r {
            Ok(()) => keys.push(jwk),
            Err(e) => err = Some(e),
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(keys),
    }
}

/// A verification key from one JWK, if it is a usable Ed25519 signing key.
fn decoding_key(jwk: &Jwk) -> Option<(String, DecodingKey)> {
    if jwk.kid.is_empty() || jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return None;
    }
    if !jwk.alg.is_empty() && jwk.alg != "EdDSA" {
        return None;
    }
    if !jwk.use_.is_empty() && jwk.use_ != "sig" {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk.x.trim_end_matches('='))
        .ok()?;
    // The verifier takes the raw 32-byte public key; anything else must stop here.
    if raw.len() != 32 {
        return None;
    }
    Some((jwk.kid.clone(), DecodingKey::from_ed_der(&raw)))
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Verifies access tokens; cheap to clone, shares its key cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    source: Box<dyn JwksSource>,
    validation: Validation,
    min_refetch: Duration,
    keys: Mutex<KeySet>,
    fetch_lock: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "access token expired".into(),
        ErrorKind::InvalidSignature => "access token signature is invalid".into(),
        ErrorKind::InvalidAudience => "access token audience is not accepted".into(),
        ErrorKind::InvalidIssuer => "access token issuer is not accepted".into(),
        ErrorKind::InvalidAlgorithm => "access token algorithm is not accepted".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("access token lacks the `{c}` claim"),
        ErrorKind::ImmatureSignature => "access token is not valid yet".into(),
        other => format!("invalid access token: {other:?}"),
    }
}

impl Verifier {
    pub fn new(cfg: &AuthConfig, source: Box<dyn JwksSource>) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&[cfg.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = cfg.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Self {
            inner: Arc::new(Inner {
                source,
                validation,
                min_refetch: Duration::from_millis(cfg.jwks_min_refetch_ms),
                keys: Mutex::new(KeySet::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Refreshes the key set every `every` (first at once) until the verifier is dropped.
    pub fn spawn_refresh(&self, every: Option<Duration>) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let v = Verifier { inner };
                let _guard = v.inner.fetch_lock.lock().await;
                if let Err(e) = v.fetch_locked().await {
                    tracing::warn!(error = %e, "gateway: JWKS fetch failed");
                }
                drop(_guard);
                drop(v);
                match every {
                    Some(d) => tokio::time::sleep(d).await,
                    None => return,
                }
            }
        });
    }

    /// The token's subject, once its signature, issuer, audience and times check out.
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed access token: {e}")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!(
                "access token algorithm {:?} is not accepted; only EdDSA",
                header.alg
            )));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AuthError::Invalid("access token has no `kid` header".into()))?;
        let key = self.key_for(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.inner.validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("access token has an empty `sub`".into()));
        }
        Ok(data.claims.sub)
    }

    async fn key_for(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(k) = lock(&self.inner.keys).keys.get(kid) {
            return Ok(k.clone());
        }
        let _guard = self.inner.fetch_lock.lock().await;
        {
            let keys = lock(&self.inner.keys);
            if let Some(k) = keys.keys.get(kid) {
                return Ok(k.clone());
            }
            let recent = keys
                .last_attempt
                .is_some_and(|at| at.elapsed() < self.inner.min_refetch);
            if recent {
                return Err(match &keys.last_error {
                    Some(e) => AuthError::KeysUnavailable(e.clone()),
                    None => AuthError::UnknownKey(kid.to_string()),
                });
            }
        }
        self.fetch_locked().await?;
        lock(&self.inner.keys)
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.to_string()))
    }

    /// Fetches and installs the key set; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<usize, AuthError> {
        let result = self.inner.source.fetch().await;
        let mut keys = lock(&self.inner.keys);
        keys.last_attempt = Some(Instant::now());
        match result {
            Ok(jwks) => {
                let usable: HashMap<String, DecodingKey> =
                    jwks.iter().filter_map(decoding_key).collect();
                if usable.len() < jwks.len() {
                    tracing::warn!(
                        fetched = jwks.len(),
                        usable = usable.len(),
                        "gateway: ignored JWKs that are not Ed25519 signing keys"
                    );
                }
                keys.keys = usable;
                keys.last_error = None;
                Ok(keys.keys.len())
            }
            Err(e) => {
                keys.last_error = Some(e.clone());
                Err(AuthError::KeysUnavailable(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_string(field: u8, s: &str) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn decodes_get_jwks_response() {
        let mut jwk = Vec::new();
        for (n, s) in [
            (1, "OKP"),
            (2, "Ed25519"),
            (3, "k1"),
            (4, "abc"),
            (5, "EdDSA"),
            (6, "sig"),
        ] {
            jwk.extend(pb_string(n, s));
        }
        let mut msg = vec![0x0a, jwk.len() as u8];
        msg.extend(&jwk);
        msg.extend(pb_string(2, "{\"keys\":[]}"));
        let keys = decode_get_jwks(&msg).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, "k1");
        assert_eq!(keys[0].use_, "sig");
        assert!(decode_get_jwks(&[0x0a, 0x05, 0x01]).is_err());
        assert!(decode_get_jwks(&[]).unwrap().is_empty());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn only_ed25519_keys_are_usable() {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let good = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: "k".into(),
            x: x.clone(),
            ..Default::default()
        };
        assert!(decoding_key(&good).is_some());
        let short = Jwk {
            x: "AAAA".into(),
            ..good.clone()
        };
        assert!(decoding_key(&short).is_none());
        let rsa = Jwk {
            kty: "RSA".into(),
            ..good
        };
        assert!(decoding_key(&rsa).is_none());
    }
}
