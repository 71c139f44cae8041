//! Who is calling: the shared verifier every service puts in front of its
//! handlers.
//!
//! Access tokens (`authorization: Bearer <jwt>`) are EdDSA JWTs issued by the
//! user service; they are checked locally against its public keys, fetched
//! over gRPC with `UserService.GetJwks`, cached, and refetched when a token
//! names an unknown `kid` (at most once per refetch interval). API keys
//! (`x-api-key: <secret>`) are resolved with `UserService.VerifyApiKey`, and
//! positive answers are cached briefly. Both sources sit behind ports
//! ([`JwksSource`], [`ApiKeyResolver`]) so the checks are testable without a
//! server.
//!
//! Missing or bad credentials give UNAUTHENTICATED; a missing scope gives
//! PERMISSION_DENIED; an unreachable user service gives UNAVAILABLE.

use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tally_api::user::v1 as userpb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Read polls and results.
pub const SCOPE_POLLS_READ: &str = "polls:read";
/// Create and close polls.
pub const SCOPE_POLLS_WRITE: &str = "polls:write";
/// Cast votes.
pub const SCOPE_VOTES_WRITE: &str = "votes:write";

/// Metadata key for access tokens.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key for API key secrets.
pub const API_KEY: &str = "x-api-key";

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    /// Every scope of the user (access tokens carry the user's full rights).
    All,
    /// Only these scopes (API keys).
    Only(BTreeSet<String>),
}

impl Scopes {
    /// True when `scope` is granted.
    pub fn contains(&self, scope: &str) -> bool {
        match self {
            Scopes::All => true,
            Scopes::Only(set) => set.contains(scope),
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Jwt,
    ApiKey,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub scopes: Scopes,
    pub via: Via,
}

impl Caller {
    /// PERMISSION_DENIED naming `scope` unless the caller holds it.
    pub fn require(&self, scope: &str) -> Result<(), Status> {
        if self.scopes.contains(scope) {
            return Ok(());
        }
        let held = match &self.scopes {
            Scopes::All => "all scopes".to_string(),
            Scopes::Only(set) if set.is_empty() => "no scopes".to_string(),
            Scopes::Only(set) => set.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        Err(Status::permission_denied(format!(
            "missing scope `{scope}` (the credentials grant: {held})"
        )))
    }
}

/// What the user service says about an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    pub user_id: String,
    pub key_id: String,
    pub scopes: Vec<String>,
}

/// Port: where the public keys for access tokens come from.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait JwksSource: Send + Sync + 'static {
    /// The current key set. An error means the source could not be reached.
    async fn fetch_jwks(&self) -> Result<Vec<userpb::Jwk>, Status>;
}

/// Port: resolves API key secrets.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ApiKeyResolver: Send + Sync + 'static {
    /// UNAUTHENTICATED for unknown or revoked keys; other codes mean the
    /// resolver could not answer.
    async fn verify_api_key(&self, secret: &str) -> Result<ApiKeyIdentity, Status>;
}

/// Both ports over gRPC to `tally.user.v1.UserService`.
#[derive(Clone)]
pub struct GrpcUserDirectory {
    client: UserServiceClient<Channel>,
    timeout: Duration,
}

impl GrpcUserDirectory {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: UserServiceClient::new(channel),
            timeout,
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }
}

#[async_trait]
impl JwksSource for GrpcUserDirectory {
    async fn fetch_jwks(&self) -> Result<Vec<userpb::Jwk>, Status> {
        let mut client = self.client.clone();
        let resp = client
            .get_jwks(self.request(userpb::GetJwksRequest {}))
            .await?;
        Ok(resp.into_inner().keys)
    }
}

#[async_trait]
impl ApiKeyResolver for GrpcUserDirectory {
    async fn verify_api_key(&self, secret: &str) -> Result<ApiKeyIdentity, Status> {
        let mut client = self.client.clone();
        let resp = client
            .verify_api_key(self.request(userpb::VerifyApiKeyRequest {
                secret: secret.to_string(),
            }))
            .await?
            .into_inner();
        Ok(ApiKeyIdentity {
            user_id: resp.user_id,
            key_id: resp.key_id,
            scopes: resp.scopes,
        })
    }
}

/// Tunables of the verifier.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Minimum time between two JWKS fetches triggered by unknown `kid`s.
    pub jwks_refetch_interval: Duration,
    /// How long a successful API key lookup is reused.
    pub api_key_cache_ttl: Duration,
    /// Most API keys kept in the cache.
    pub api_key_cache_capacity: usize,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_secs: u64,
    /// Deadline of each call to the user service.
    pub call_timeout: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            issuer: "tally-user".into(),
            audience: "tally".into(),
            jwks_refetch_interval: Duration::from_secs(5),
            api_key_cache_ttl: Duration::from_secs(30),
            api_key_cache_capacity: 10_000,
            leeway_secs: 30,
            call_timeout: Duration::from_secs(5),
        }
    }
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

struct Inner {
    jwks: Arc<dyn JwksSource>,
    api_keys: Arc<dyn ApiKeyResolver>,
    opts: AuthOptions,
    validation: Validation,
    keys: Mutex<KeySet>,
    fetch_lock: tokio::sync::Mutex<()>,
    api_cache: Mutex<HashMap<[u8; 32], (ApiKeyIdentity, Instant)>>,
}

/// The verifier; cheap to clone, shares its caches.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

fn unauthenticated(msg: impl Into<String>) -> Status {
    Status::unauthenticated(msg.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Authenticator {
    /// A verifier asking the user service behind `user_channel`.
    pub fn new(user_channel: Channel, opts: AuthOptions) -> Self {
        let directory = Arc::new(GrpcUserDirectory::new(user_channel, opts.call_timeout));
        Self::with_ports(directory.clone(), directory, opts)
    }

    /// A verifier over explicit ports (tests, other transports).
    pub fn with_ports(
        jwks: Arc<dyn JwksSource>,
        api_keys: Arc<dyn ApiKeyResolver>,
        opts: AuthOptions,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[opts.issuer.as_str()]);
        validation.set_audience(&[opts.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = opts.leeway_secs;
        validation.validate_exp = true;
        Self {
            inner: Arc::new(Inner {
                jwks,
                api_keys,
                opts,
                validation,
                keys: Mutex::new(KeySet::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
                api_cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The caller behind the request's metadata.
    ///
    /// A bearer token wins over an API key when both are sent.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        if let Some(value) = metadata.get(AUTHORIZATION) {
            let text = value
                .to_str()
                .map_err(|_| unauthenticated("`authorization` metadata is not valid text"))?;
            let token = bearer_token(text).ok_or_else(|| {
                unauthenticated("`authorization` must be `Bearer <access token>`")
            })?;
            return self.verify_jwt(token).await;
        }
        if let Some(value) = metadata.get(API_KEY) {
            let secret = value
                .to_str()
                .map_err(|_| unauthenticated("`x-api-key` metadata is not valid text"))?
                .trim();
            return self.verify_api_key(secret).await;
        }
        Err(unauthenticated(
            "missing credentials: send `authorization: Bearer <access token>` or `x-api-key: <secret>`",
        ))
    }

    /// Verifies an access token and returns its caller (all scopes).
    pub async fn verify_jwt(&self, token: &str) -> Result<Caller, Status> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthenticated(format!("malformed access token: {e}")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(unauthenticated(format!(
                "access token algorithm {:?} is not accepted; only EdDSA",
                header.alg
            )));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| unauthenticated("access token has no `kid` header"))?;
        let key = self.key_for(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.inner.validation)
            .map_err(|e| unauthenticated(describe_jwt_error(e.kind())))?;
        if data.claims.sub.is_empty() {
            return Err(unauthenticated("access token has an empty `sub`"));
        }
        Ok(Caller {
            user_id: data.claims.sub,
            scopes: Scopes::All,
            via: Via::Jwt,
        })
    }

    /// Resolves an API key secret (cached for the configured TTL).
    pub async fn verify_api_key(&self, secret: &str) -> Result<Caller, Status> {
        if secret.is_empty() || secret.len() > 512 || !secret.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(unauthenticated("malformed API key"));
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let ttl = self.inner.opts.api_key_cache_ttl;
        let cached = lock(&self.inner.api_cache)
            .get(&digest)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(id, _)| id.clone());
        let identity = match cached {
            Some(id) => id,
            None => {
                let id = match self.inner.api_keys.verify_api_key(secret).await {
                    Ok(id) => id,
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unauthenticated | Code::InvalidArgument | Code::NotFound
                        ) =>
                    {
                        return Err(unauthenticated("unknown or revoked API key"));
                    }
                    Err(s) => {
                        return Err(Status::unavailable(format!(
                            "cannot verify the API key with the user service: {}",
                            s.message()
                        )));
                    }
                };
                if id.user_id.is_empty() {
                    return Err(unauthenticated("API key resolves to no user"));
                }
                let mut cache = lock(&self.inner.api_cache);
                if cache.len() >= self.inner.opts.api_key_cache_capacity {
                    cache.retain(|_, (_, at)| at.elapsed() < ttl);
                    if cache.len() >= self.inner.opts.api_key_cache_capacity {
                        cache.clear();
                    }
                }
                cache.insert(digest, (id.clone(), Instant::now()));
                id
            }
        };
        Ok(Caller {
            user_id: identity.user_id,
            scopes: Scopes::Only(identity.scopes.into_iter().collect()),
            via: Via::ApiKey,
        })
    }

    /// Fetches the key set now, whatever the rate limit says; returns how
    /// many usable keys it holds. Health probes use it.
    pub async fn refresh_jwks(&self) -> Result<usize, Status> {
        let _guard = self.inner.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    /// Number of keys currently cached.
    pub fn cached_key_count(&self) -> usize {
        lock(&self.inner.keys).keys.len()
    }

    async fn key_for(&self, kid: &str) -> Result<DecodingKey, Status> {
        if let Some(key) = lock(&self.inner.keys).keys.get(kid) {
            return Ok(key.clone());
        }
        let _guard = self.inner.fetch_lock.lock().await;
        {
            // Another call may have refreshed while this one waited.
            let keys = lock(&self.inner.keys);
            if let Some(key) = keys.keys.get(kid) {
                return Ok(key.clone());
            }
            let recent = keys
                .last_attempt
                .is_some_and(|at| at.elapsed() < self.inner.opts.jwks_refetch_interval);
            if recent {
                return Err(match &keys.last_error {
                    Some(e) => Status::unavailable(format!(
                        "cannot fetch signing keys from the user service: {e}"
                    )),
                    None => unauthenticated(format!("access token signed by unknown key `{kid}`")),
                });
            }
        }
        self.fetch_locked().await?;
        lock(&self.inner.keys)
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| unauthenticated(format!("access token signed by unknown key `{kid}`")))
    }

    /// Fetches and installs the key set; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<usize, Status> {
        let result = self.inner.jwks.fetch_jwks().await;
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
                        "ignored JWKs that are not Ed25519 signing keys"
                    );
                }
                keys.keys = usable;
                keys.last_error = None;
                Ok(keys.keys.len())
            }
            Err(status) => {
                let message = format!("{:?}: {}", status.code(), status.message());
                tracing::warn!(error = %message, "JWKS fetch failed");
                keys.last_error = Some(message.clone());
                Err(Status::unavailable(format!(
                    "cannot fetch signing keys from the user service: {message}"
                )))
            }
        }
    }
}

/// The token from `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A verification key from one JWK, if it is a usable Ed25519 key.
fn decoding_key(jwk: &userpb::Jwk) -> Option<(String, DecodingKey)> {
    use base64::Engine as _;
    if jwk.kid.is_empty() || jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return None;
    }
    if !jwk.alg.is_empty() && jwk.alg != "EdDSA" {
        return None;
    }
    if !jwk.r#use.is_empty() && jwk.r#use != "sig" {
        return None;
    }
    // The verifier slices the first 32 bytes, so anything else must be
    // rejected here rather than reach it.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk.x.trim_end_matches('='))
        .ok()?;
    if raw.len() != 32 {
        return None;
    }
    Some((jwk.kid.clone(), DecodingKey::from_ed_der(&raw)))
}

fn describe_jwt_error(kind: &ErrorKind) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct TestKey {
        kid: String,
        encoding: EncodingKey,
        jwk: userpb::Jwk,
    }

    fn test_key(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        TestKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: userpb::Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                kid: kid.into(),
                x,
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            },
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(key: &TestKey, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign")
    }

    fn good_claims(sub: &str) -> serde_json::Value {
        serde_json::json!({
            "sub": sub, "iss": "tally-user", "aud": "tally",
            "iat": now(), "exp": now() + 900, "sid": "s1",
        })
    }

    /// A JWKS source serving a settable key set and counting fetches.
    #[derive(Default)]
    struct FakeJwks {
        keys: Mutex<Vec<userpb::Jwk>>,
        fail: std::sync::atomic::AtomicBool,
        fetches: AtomicUsize,
    }

    #[async_trait]
    impl JwksSource for FakeJwks {
        async fn fetch_jwks(&self) -> Result<Vec<userpb::Jwk>, Status> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(Status::unavailable("connection refused"));
            }
            Ok(lock(&self.keys).clone())
        }
    }

    fn no_api_keys() -> Arc<dyn ApiKeyResolver> {
        let mut mock = MockApiKeyResolver::new();
        mock.expect_verify_api_key().never();
        Arc::new(mock)
    }

    fn auth_with(jwks: Arc<FakeJwks>, refetch: Duration) -> Authenticator {
        let opts = AuthOptions {
            jwks_refetch_interval: refetch,
            ..AuthOptions::default()
        };
        Authenticator::with_ports(jwks, no_api_keys(), opts)
    }

    fn bearer(token: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(
            AUTHORIZATION,
            format!("Bearer {token}").parse().expect("ascii"),
        );
        md
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn valid_token_gives_user_with_all_scopes() {
        let key = test_key("k1");
        let jwks = Arc::new(FakeJwks::default());
        lock(&jwks.keys).push(key.jwk.clone());
        let auth = auth_with(jwks.clone(), HOUR);
        let caller = auth
            .authenticate(&bearer(&sign(&key, good_claims("u-1"))))
            .await
            .expect("valid");
        assert_eq!(caller.user_id, "u-1");
        assert_eq!(caller.via, Via::Jwt);
        assert!(caller.require(SCOPE_POLLS_WRITE).is_ok());
        // A second call uses the cache.
        auth.authenticate(&bearer(&sign(&key, good_claims("u-1"))))
            .await
            .expect("valid");
        assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    }

    async fn rejected(auth: &Authenticator, token: &str) -> Status {
        auth.authenticate(&bearer(token))
            .await
            .expect_err("must be rejected")
    }

    #[tokio::test]
    async fn expired_token_is_unauthenticated() {
        let key = test_key("k1");
        let jwks = Arc::new(FakeJwks::default());
        lock(&jwks.keys).push(key.jwk.clone());
        let auth = auth_with(jwks, HOUR);
        let mut claims = good_claims("u-1");
        claims["exp"] = (now() - 3600).into();
        claims["iat"] = (now() - 4500).into();
        let s = rejected(&auth, &sign(&key, claims)).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("expired"), "{}", s.message());
    }

    #[tokio::test]
    async fn wrong_audience_or_issuer_is_unauthenticated() {
        let key = test_key("k1");
        let jwks = Arc::new(FakeJwks::default());
        lock(&jwks.keys).push(key.jwk.clone());
        let auth = auth_with(jwks, HOUR);
        let mut claims = good_claims("u-1");
        claims["aud"] = "someone-else".into();
        let s = rejected(&auth, &sign(&key, claims)).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("audience"), "{}", s.message());

        let mut claims = good_claims("u-1");
        claims["iss"] = "evil".into();
        let s = rejected(&auth, &sign(&key, claims)).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("issuer"), "{}", s.message());

        let mut claims = good_claims("u-1");
        claims.as_object_mut().expect("object").remove("exp");
        let s = rejected(&auth, &sign(&key, claims)).await;
        assert_eq!(s.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn tampered_token_is_unauthenticated() {
        let key = test_key("k1");
        let jwks = Arc::new(FakeJwks::default());
        lock(&jwks.keys).push(key.jwk.clone());
        let auth = auth_with(jwks, HOUR);
        let token = sign(&key, good_claims("u-1"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(good_claims("u-admin").to_string());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        let s = rejected(&auth, &forged).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("signature"), "{}", s.message());

        // Signed by a key with the right kid but not the published one.
        let impostor = TestKey {
            kid: "k1".into(),
            ..test_key("k1")
        };
        let s = rejected(&auth, &sign(&impostor, good_claims("u-1"))).await;
        assert_eq!(s.code(), Code::Unauthenticated);

        for garbage in ["", "abc", "a.b.c", "....", "\u{7f}"] {
            let mut md = MetadataMap::new();
            if let Ok(v) = format!("Bearer {garbage}").parse() {
                md.insert(AUTHORIZATION, v);
            }
            let s = auth.authenticate(&md).await.expect_err("garbage");
            assert_eq!(s.code(), Code::Unauthenticated, "{garbage:?}");
        }
    }

    #[tokio::test]
    async fn other_algorithms_are_rejected() {
        let jwks = Arc::new(FakeJwks::default());
        let auth = auth_with(jwks, HOUR);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(
            &header,
            &good_claims("u-1"),
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("sign");
        let s = rejected(&auth, &token).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("EdDSA"), "{}", s.message());
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_then_is_rate_limited() {
        let old = test_key("k-old");
        let new = test_key("k-new");
        let jwks = Arc::new(FakeJwks::default());
        lock(&jwks.keys).push(old.jwk.clone());
        let auth = auth_with(jwks.clone(), HOUR);
        auth.authenticate(&bearer(&sign(&old, good_claims("u"))))
            .await
            .expect("old key");
        assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

        // Rotation: the new kid appears; the next refetch is rate-limited,
        // so the unknown kid is refused without another fetch.
        lock(&jwks.keys).push(new.jwk.clone());
        let s = rejected(&auth, &sign(&new, good_claims("u"))).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("unknown key"), "{}", s.message());
        assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

        // With no rate limit, an unknown kid triggers a refetch that finds it.
        let jwks2 = Arc::new(FakeJwks::default());
        lock(&jwks2.keys).push(old.jwk.clone());
        let auth2 = auth_with(jwks2.clone(), Duration::ZERO);
        auth2
            .authenticate(&bearer(&sign(&old, good_claims("u"))))
            .await
            .expect("old key");
        lock(&jwks2.keys).push(new.jwk.clone());
        auth2
            .authenticate(&bearer(&sign(&new, good_claims("u"))))
            .await
            .expect("new key after refetch");
        assert_eq!(jwks2.fetches.load(Ordering::SeqCst), 2);
        let stranger = test_key("k-stranger");
        let s = rejected(&auth2, &sign(&stranger, good_claims("u"))).await;
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(jwks2.fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn jwks_fetch_failure_is_unavailable_and_rate_limited() {
        let key = test_key("k1");
        let jwks = Arc::new(FakeJwks::default());
        jwks.fail.store(true, Ordering::SeqCst);
        let auth = auth_with(jwks.clone(), HOUR);
        let token = sign(&key, good_claims("u"));
        let s = rejected(&auth, &token).await;
        assert_eq!(s.code(), Code::Unavailable);
        let s = rejected(&auth, &token).await;
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
        // Recovery through an explicit refresh (what health probes do).
        jwks.fail.store(false, Ordering::SeqCst);
        lock(&jwks.keys).push(key.jwk.clone());
        assert_eq!(auth.refresh_jwks().await.expect("refresh"), 1);
        auth.authenticate(&bearer(&token)).await.expect("valid now");
    }

    #[tokio::test]
    async fn malformed_jwks_entries_are_ignored_not_panicked() {
        let key = test_key("k1");
        let jwks = Arc::new(FakeJwks::default());
        let mut short = key.jwk.clone();
        short.kid = "short".into();
        short.x = "AAAA".into();
        let mut rsa = key.jwk.clone();
        rsa.kid = "rsa".into();
        rsa.kty = "RSA".into();
        lock(&jwks.keys).extend([short, rsa, key.jwk.clone()]);
        let auth = auth_with(jwks, HOUR);
        assert_eq!(auth.refresh_jwks().await.expect("refresh"), 1);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("short".into());
        let token = jsonwebtoken::encode(&header, &good_claims("u"), &key.encoding).expect("sign");
        let s = rejected(&auth, &token).await;
        assert_eq!(s.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn missing_or_malformed_credentials_are_unauthenticated() {
        let auth = auth_with(Arc::new(FakeJwks::default()), HOUR);
        let s = auth
            .authenticate(&MetadataMap::new())
            .await
            .expect_err("none");
        assert_eq!(s.code(), Code::Unauthenticated);
        let mut md = MetadataMap::new();
        md.insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().expect("ascii"));
        let s = auth.authenticate(&md).await.expect_err("basic");
        assert_eq!(s.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn api_keys_are_resolved_cached_and_scoped() {
        let mut mock = MockApiKeyResolver::new();
        mock.expect_verify_api_key()
            .withf(|s| s == "tk_k1_good")
            .times(1)
            .returning(|_| {
                Ok(ApiKeyIdentity {
                    user_id: "u-7".into(),
                    key_id: "k1".into(),
                    scopes: vec![SCOPE_POLLS_READ.into()],
                })
            });
        mock.expect_verify_api_key()
            .withf(|s| s == "tk_k2_revoked")
            .times(2)
            .returning(|_| Err(Status::unauthenticated("revoked")));
        mock.expect_verify_api_key()
            .withf(|s| s == "tk_k3_down")
            .times(1)
            .returning(|_| Err(Status::unavailable("down")));
        let auth = Authenticator::with_ports(
            Arc::new(FakeJwks::default()),
            Arc::new(mock),
            AuthOptions::default(),
        );
        let key = |s: &str| {
            let mut md = MetadataMap::new();
            md.insert(API_KEY, s.parse().expect("ascii"));
            md
        };
        for _ in 0..3 {
            let caller = auth.authenticate(&key("tk_k1_good")).await.expect("ok");
            assert_eq!(caller.user_id, "u-7");
            assert_eq!(caller.via, Via::ApiKey);
            assert!(caller.require(SCOPE_POLLS_READ).is_ok());
            let denied = caller.require(SCOPE_POLLS_WRITE).expect_err("no write");
            assert_eq!(denied.code(), Code::PermissionDenied);
            assert!(denied.message().contains("polls:write"));
        }
        // Negative answers are not cached.
        for _ in 0..2 {
            let s = auth
                .authenticate(&key("tk_k2_revoked"))
                .await
                .expect_err("revoked");
            assert_eq!(s.code(), Code::Unauthenticated);
        }
        let s = auth
            .authenticate(&key("tk_k3_down"))
            .await
            .expect_err("down");
        assert_eq!(s.code(), Code::Unavailable);
    }
}
