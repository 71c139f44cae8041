//! The service-side verifier: metadata parsing, the statuses handlers return, scopes, and the
//! generated client against a real in-process user service (tokens built with real Ed25519
//! keys). The verification rules themselves are tested in `tally-authn`.

use super::*;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_service_server::{UserService, UserServiceServer};
use tonic::{Code, Request, Response};

struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: pb::Jwk,
}

fn test_key(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    TestKey {
        kid: kid.into(),
        encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: pb::Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: kid.into(),
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
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
        "sub": sub, "iss": tally_authn::ISSUER, "aud": tally_authn::AUDIENCE,
        "iat": now(), "exp": now() + 900, "sid": "s1",
    })
}

/// A user service serving a settable key set and two API keys, counting calls.
#[derive(Default)]
struct FakeUser {
    keys: Mutex<Vec<pb::Jwk>>,
    down: std::sync::atomic::AtomicBool,
    jwks_calls: AtomicUsize,
    key_calls: AtomicUsize,
}

/// The served handle (a local type, so the generated trait can be implemented for it).
#[derive(Clone)]
struct Shared(Arc<FakeUser>);

impl std::ops::Deref for Shared {
    type Target = FakeUser;
    fn deref(&self) -> &FakeUser {
        &self.0
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl UserService for Shared {
    async fn sign_up(
        &self,
        _: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        unimplemented()
    }
    async fn login(
        &self,
        _: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        unimplemented()
    }
    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        unimplemented()
    }
    async fn refresh_access_token(
        &self,
        _: Request<pb::RefreshAccessTokenRequest>,
    ) -> Result<Response<pb::RefreshAccessTokenResponse>, Status> {
        unimplemented()
    }
    async fn get_profile(
        &self,
        _: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        unimplemented()
    }
    async fn update_profile(
        &self,
        _: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        unimplemented()
    }
    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        self.jwks_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("store down"));
        }
        let keys = self.keys.lock().expect("lock").clone();
        Ok(Response::new(pb::GetJwksResponse {
            keys,
            ..Default::default()
        }))
    }
    async fn create_api_key(
        &self,
        _: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        unimplemented()
    }
    async fn list_api_keys(
        &self,
        _: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        unimplemented()
    }
    async fn revoke_api_key(
        &self,
        _: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        unimplemented()
    }
    async fn verify_api_key(
        &self,
        req: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        self.key_calls.fetch_add(1, Ordering::SeqCst);
        match req.into_inner().secret.as_str() {
            "tk_k1_good" => Ok(Response::new(pb::VerifyApiKeyResponse {
                user_id: "u-7".into(),
                key_id: "k1".into(),
                scopes: vec![SCOPE_POLLS_READ.into()],
            })),
            "tk_k3_down" => Err(Status::unavailable("down")),
            _ => Err(Status::unauthenticated("API key is unknown or revoked")),
        }
    }
}

/// The fake user service on a real socket, and an authenticator talking to it.
struct Setup {
    user: Arc<FakeUser>,
    auth: Authenticator,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn setup(keys: &[&TestKey], opts: AuthOptions) -> Setup {
    let user = Arc::new(FakeUser::default());
    *user.keys.lock().expect("lock") = keys.iter().map(|k| k.jwk.clone()).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = UserServiceServer::new(Shared(user.clone()));
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    Setup {
        user,
        auth: Authenticator::new(channel, opts),
        server,
    }
}

fn bearer(token: &str) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert(
        AUTHORIZATION,
        format!("Bearer {token}").parse().expect("ascii"),
    );
    md
}

fn api_key(secret: &str) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert(API_KEY, secret.parse().expect("ascii"));
    md
}

#[tokio::test]
async fn valid_token_gives_user_with_all_scopes_and_keys_are_fetched_once() {
    let key = test_key("k1");
    let s = setup(&[&key], AuthOptions::default()).await;
    for _ in 0..3 {
        let caller = s
            .auth
            .authenticate(&bearer(&sign(&key, good_claims("u-1"))))
            .await
            .expect("valid");
        assert_eq!(caller.user_id, "u-1");
        assert_eq!(caller.via, Via::Jwt);
        assert!(caller.require(SCOPE_POLLS_WRITE).is_ok());
    }
    assert_eq!(s.user.jwks_calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.auth.cached_key_count(), 1);
}

#[tokio::test]
async fn token_not_valid_yet_is_refused() {
    let key = test_key("k1");
    let s = setup(&[&key], AuthOptions::default()).await;
    let mut claims = good_claims("u-1");
    claims["nbf"] = (now() + 600).into();
    let e = s
        .auth
        .authenticate(&bearer(&sign(&key, claims)))
        .await
        .expect_err("nbf in the future");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("not valid yet"), "{}", e.message());
    // The same token with nbf in the past is accepted.
    let mut claims = good_claims("u-1");
    claims["nbf"] = (now() - 60).into();
    s.auth
        .authenticate(&bearer(&sign(&key, claims)))
        .await
        .expect("nbf in the past");
}

#[tokio::test]
async fn expired_foreign_or_tampered_tokens_are_unauthenticated() {
    let key = test_key("k1");
    let s = setup(&[&key], AuthOptions::default()).await;
    let mut expired = good_claims("u");
    expired["exp"] = (now() - 3600).into();
    let mut foreign = good_claims("u");
    foreign["aud"] = "someone-else".into();
    let impostor = test_key("k1");
    for (token, words) in [
        (sign(&key, expired), "expired"),
        (sign(&key, foreign), "audience"),
        (sign(&impostor, good_claims("u")), "signature"),
        ("a.b.c".to_string(), "malformed"),
    ] {
        let e = s.auth.authenticate(&bearer(&token)).await.expect_err(words);
        assert_eq!(e.code(), Code::Unauthenticated, "{words}");
        assert!(e.message().contains(words), "{words}: {}", e.message());
    }
}

#[tokio::test]
async fn unreachable_key_source_is_unavailable_then_recovers_on_refresh() {
    let key = test_key("k1");
    let s = setup(&[&key], AuthOptions::default()).await;
    s.user.down.store(true, Ordering::SeqCst);
    let token = sign(&key, good_claims("u"));
    let e = s
        .auth
        .authenticate(&bearer(&token))
        .await
        .expect_err("down");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(s.auth.refresh_jwks().await.is_err());
    s.user.down.store(false, Ordering::SeqCst);
    assert_eq!(s.auth.refresh_jwks().await.expect("refresh"), 1);
    s.auth
        .authenticate(&bearer(&token))
        .await
        .expect("valid now");
}

#[tokio::test]
async fn missing_or_malformed_credentials_are_unauthenticated() {
    let s = setup(&[], AuthOptions::default()).await;
    let e = s
        .auth
        .authenticate(&MetadataMap::new())
        .await
        .expect_err("none");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut md = MetadataMap::new();
    md.insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().expect("ascii"));
    let e = s.auth.authenticate(&md).await.expect_err("basic");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(s.user.jwks_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn api_keys_are_resolved_cached_and_scoped() {
    let s = setup(&[], AuthOptions::default()).await;
    for _ in 0..3 {
        let caller = s
            .auth
            .authenticate(&api_key("tk_k1_good"))
            .await
            .expect("ok");
        assert_eq!(caller.user_id, "u-7");
        assert_eq!(caller.via, Via::ApiKey);
        assert!(caller.require(SCOPE_POLLS_READ).is_ok());
        let denied = caller.require(SCOPE_POLLS_WRITE).expect_err("no write");
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("polls:write"));
    }
    assert_eq!(s.user.key_calls.load(Ordering::SeqCst), 1);
    // Unknown keys: refused, and remembered for a while.
    for _ in 0..3 {
        let e = s
            .auth
            .authenticate(&api_key("tk_k2_revoked"))
            .await
            .expect_err("revoked");
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert_eq!(s.user.key_calls.load(Ordering::SeqCst), 2);
    let e = s
        .auth
        .authenticate(&api_key("tk_k3_down"))
        .await
        .expect_err("down");
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test]
async fn zero_api_key_ttl_asks_every_time() {
    let opts = AuthOptions {
        api_key_cache_ttl: Duration::ZERO,
        ..AuthOptions::default()
    };
    let s = setup(&[], opts).await;
    for _ in 0..3 {
        s.auth
            .authenticate(&api_key("tk_k1_good"))
            .await
            .expect("ok");
    }
    assert_eq!(s.user.key_calls.load(Ordering::SeqCst), 3);
}
