//! Integration tests: start the real `tally-user` binary on a free port with
//! its own data directory and drive it with the generated gRPC client.

use std::time::Duration;
use tally_api::user::v1 as pb;
use tonic::{Code, Request};

mod support;

use support::UserProcess;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tonic::transport::Channel;

type Client = UserServiceClient<Channel>;

const PASSWORD: &str = "correct horse battery";

fn with_bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

async fn sign_up(c: &mut Client, email: &str) -> pb::User {
    c.sign_up(pb::SignUpRequest {
        email: email.into(),
        password: PASSWORD.into(),
        display_name: "Test User".into(),
    })
    .await
    .expect("sign up")
    .into_inner()
    .user
    .expect("user in response")
}

async fn login(c: &mut Client, email: &str) -> pb::LoginResponse {
    c.login(pb::LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("login")
    .into_inner()
}

async fn start() -> (tempfile::TempDir, UserProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(dir.path(), "").await;
    (dir, p)
}

#[tokio::test]
async fn signup_returns_the_user_and_a_duplicate_email_is_already_exists() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    let u = sign_up(&mut c, "Ada@Example.com").await;
    assert_eq!(u.email, "ada@example.com");
    assert_eq!(u.display_name, "Test User");
    assert!(!u.user_id.is_empty());
    assert!(u.created_at.expect("created_at").seconds > 0);

    for dup in ["ada@example.com", "  ADA@example.COM "] {
        let e = c
            .sign_up(pb::SignUpRequest {
                email: dup.into(),
                password: "another password".into(),
                display_name: "Other".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{dup}: {e:?}");
    }

    // An empty display name defaults to the email's local part.
    let v = c
        .sign_up(pb::SignUpRequest {
            email: "grace@example.com".into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .expect("sign up without display name")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(v.display_name, "grace");
    assert_ne!(v.user_id, u.user_id);
}

#[tokio::test]
async fn signup_rejects_invalid_input_naming_the_field() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    let cases = [
        (
            "not-an-email",
            PASSWORD.to_string(),
            "x".to_string(),
            "email",
        ),
        ("", PASSWORD.to_string(), "x".to_string(), "email"),
        (
            "a@example.com",
            "short".to_string(),
            "x".to_string(),
            "password",
        ),
        (
            "a@example.com",
            "123456789".to_string(),
            "x".to_string(),
            "password",
        ),
        (
            "a@example.com",
            "p".repeat(1025),
            "x".to_string(),
            "password",
        ),
        (
            "a@example.com",
            PASSWORD.to_string(),
            "n".repeat(101),
            "display_name",
        ),
        (
            "a@example.com",
            PASSWORD.to_string(),
            "bad\u{1}name".to_string(),
            "display_name",
        ),
    ];
    for (email, password, name, field) in cases {
        let e = c
            .sign_up(pb::SignUpRequest {
                email: email.into(),
                password,
                display_name: name,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{email}: {e:?}");
        assert!(
            e.message().starts_with(field),
            "expected `{field}` in {:?}",
            e.message()
        );
    }
    // Nothing was created by the rejected calls.
    let e = c
        .login(pb::LoginRequest {
            email: "a@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn login_issues_tokens_and_bad_credentials_get_one_identical_error() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    let u = sign_up(&mut c, "lin@example.com").await;
    let l = login(&mut c, "LIN@example.com").await;
    assert_eq!(
        l.user.as_ref().map(|x| x.user_id.clone()),
        Some(u.user_id.clone())
    );
    assert_eq!(l.session_token.len(), 43);
    assert_eq!(l.access_token.split('.').count(), 3);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let access_exp = l.access_token_expires_at.expect("access expiry").seconds;
    let session_exp = l.session_expires_at.expect("session expiry").seconds;
    assert!(
        (now + 800..=now + 1000).contains(&access_exp),
        "default 15 min"
    );
    assert!(
        (now + 86_000..=now + 86_800).contains(&session_exp),
        "default 24 h"
    );

    let wrong_password = c
        .login(pb::LoginRequest {
            email: "lin@example.com".into(),
            password: "wrong password!".into(),
        })
        .await
        .unwrap_err();
    let unknown_email = c
        .login(pb::LoginRequest {
            email: "nobody@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    let malformed_email = c
        .login(pb::LoginRequest {
            email: "nobody".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    for e in [&wrong_password, &unknown_email, &malformed_email] {
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.message(), wrong_password.message());
    }
}

#[tokio::test]
async fn logout_revokes_the_session_so_refresh_fails_after() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    sign_up(&mut c, "out@example.com").await;
    let l = login(&mut c, "out@example.com").await;

    let r = c
        .refresh_access_token(pb::RefreshAccessTokenRequest {
            session_token: l.session_token.clone(),
        })
        .await
        .expect("refresh a live session")
        .into_inner();
    assert_eq!(r.access_token.split('.').count(), 3);
    // The refreshed token works.
    c.get_profile(with_bearer(pb::GetProfileRequest {}, &r.access_token))
        .await
        .expect("profile with refreshed token");

    // A second session is independent of the first.
    let other = login(&mut c, "out@example.com").await;

    c.logout(pb::LogoutRequest {
        session_token: l.session_token.clone(),
    })
    .await
    .expect("logout");
    let e = c
        .refresh_access_token(pb::RefreshAccessTokenRequest {
            session_token: l.session_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Logging out twice is harmless.
    c.logout(pb::LogoutRequest {
        session_token: l.session_token,
    })
    .await
    .expect("second logout");
    c.refresh_access_token(pb::RefreshAccessTokenRequest {
        session_token: other.session_token,
    })
    .await
    .expect("other session still live");

    for bad in ["", "garbage"] {
        let e = c
            .refresh_access_token(pb::RefreshAccessTokenRequest {
                session_token: bad.into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::Unauthenticated | Code::InvalidArgument),
            "{bad}: {e:?}"
        );
    }
}

#[tokio::test]
async fn profile_needs_a_valid_bearer_and_updates_the_display_name() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    let u = sign_up(&mut c, "pro@example.com").await;
    let l = login(&mut c, "pro@example.com").await;

    let e = c.get_profile(pb::GetProfileRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    for bad in ["garbage", "a.b.c", &format!("{}x", l.access_token)] {
        let e = c
            .get_profile(with_bearer(pb::GetProfileRequest {}, bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad}");
    }
    let mut basic = Request::new(pb::GetProfileRequest {});
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {}", l.access_token).parse().unwrap(),
    );
    assert_eq!(
        c.get_profile(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let got = c
        .get_profile(with_bearer(pb::GetProfileRequest {}, &l.access_token))
        .await
        .expect("profile")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(got, u);

    let e = c
        .update_profile(pb::UpdateProfileRequest {
            display_name: "New".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    for bad in [String::new(), "   ".into(), "n".repeat(101)] {
        let e = c
            .update_profile(with_bearer(
                pb::UpdateProfileRequest { display_name: bad },
                &l.access_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("display_name"), "{}", e.message());
    }
    let updated = c
        .update_profile(with_bearer(
            pb::UpdateProfileRequest {
                display_name: "  Ada Lovelace ".into(),
            },
            &l.access_token,
        ))
        .await
        .expect("update")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(updated.display_name, "Ada Lovelace");
    let again = c
        .get_profile(with_bearer(pb::GetProfileRequest {}, &l.access_token))
        .await
        .expect("profile")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(again.display_name, "Ada Lovelace");
    assert_eq!(again.email, u.email);
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    sid: String,
}

#[tokio::test]
async fn jwks_verifies_the_issued_access_token() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    let u = sign_up(&mut c, "jwk@example.com").await;
    let l = login(&mut c, "jwk@example.com").await;
    let jwks = c
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    let k = &jwks.keys[0];
    assert_eq!(
        (
            k.kty.as_str(),
            k.crv.as_str(),
            k.alg.as_str(),
            k.r#use.as_str()
        ),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );

    // The JSON document is the same set, and jsonwebtoken accepts it as a JwkSet.
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks.jwks_json).expect("jwks json");
    let jwk = set.find(&k.kid).expect("kid in json");

    let header = jsonwebtoken::decode_header(&l.access_token).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(k.kid.as_str()));

    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["tally"]);
    v.set_issuer(&["tally-user"]);
    for key in [
        jsonwebtoken::DecodingKey::from_ed_components(&k.x).expect("x"),
        jsonwebtoken::DecodingKey::from_jwk(jwk).expect("jwk"),
    ] {
        let claims = jsonwebtoken::decode::<Claims>(&l.access_token, &key, &v)
            .expect("token verifies with the published key")
            .claims;
        assert_eq!(claims.sub, u.user_id);
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            ("tally-user", "tally")
        );
        assert!(claims.exp > claims.iat);
        assert_eq!(claims.sid.len(), 64);
        assert_eq!(
            claims.exp,
            l.access_token_expires_at.as_ref().expect("expiry").seconds
        );
    }

    // A different key does not verify it.
    let mut other = k.x.clone().into_bytes();
    other[0] = if other[0] == b'A' { b'B' } else { b'A' };
    let wrong = jsonwebtoken::DecodingKey::from_ed_components(&String::from_utf8(other).unwrap())
        .expect("x");
    assert!(jsonwebtoken::decode::<Claims>(&l.access_token, &wrong, &v).is_err());
}

#[tokio::test]
async fn api_keys_create_list_revoke_and_verify() {
    let (_dir, p) = start().await;
    let mut c = p.client().await;
    let alice = sign_up(&mut c, "alice@example.com").await;
    let a = login(&mut c, "alice@example.com").await.access_token;
    sign_up(&mut c, "bob@example.com").await;
    let b = login(&mut c, "bob@example.com").await.access_token;

    let e = c
        .create_api_key(pb::CreateApiKeyRequest {
            name: "ci".into(),
            scopes: vec!["polls:read".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .create_api_key(with_bearer(
            pb::CreateApiKeyRequest {
                name: "ci".into(),
                scopes: vec!["polls:read".into(), "admin:everything".into()],
            },
            &a,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("admin:everything"), "{}", e.message());
    let e = c
        .create_api_key(with_bearer(
            pb::CreateApiKeyRequest {
                name: "ci".into(),
                scopes: vec![],
            },
            &a,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let created = c
        .create_api_key(with_bearer(
            pb::CreateApiKeyRequest {
                name: "ci".into(),
                scopes: vec!["votes:write".into(), "polls:read".into()],
            },
            &a,
        ))
        .await
        .expect("create")
        .into_inner();
    let key = created.api_key.expect("api key");
    assert!(
        created.secret.starts_with(&format!("tk_{}_", key.key_id)),
        "{}",
        created.secret
    );
    assert_eq!(key.scopes, vec!["polls:read", "votes:write"]);
    assert_eq!(key.name, "ci");
    assert!(!key.revoked);
    let second = c
        .create_api_key(with_bearer(
            pb::CreateApiKeyRequest {
                name: "writer".into(),
                scopes: vec!["polls:write".into()],
            },
            &a,
        ))
        .await
        .expect("create second")
        .into_inner();

    let listed = c
        .list_api_keys(with_bearer(pb::ListApiKeysRequest {}, &a))
        .await
        .expect("list")
        .into_inner()
        .api_keys;
    let ids: Vec<_> = listed.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(listed.len(), 2, "{ids:?}");
    assert!(ids.contains(&key.key_id.as_str()));
    assert!(ids.contains(&second.api_key.as_ref().unwrap().key_id.as_str()));
    let bobs = c
        .list_api_keys(with_bearer(pb::ListApiKeysRequest {}, &b))
        .await
        .expect("list bob")
        .into_inner()
        .api_keys;
    assert!(bobs.is_empty());

    let v = c
        .verify_api_key(pb::VerifyApiKeyRequest {
            secret: created.secret.clone(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(v.user_id, alice.user_id);
    assert_eq!(v.key_id, key.key_id);
    assert_eq!(v.scopes, vec!["polls:read", "votes:write"]);

    // A forged secret with a real key id, and garbage, are refused.
    let forged = format!("tk_{}_{}", key.key_id, "0".repeat(64));
    for bad in [forged.as_str(), "tk_nope", ""] {
        let e = c
            .verify_api_key(pb::VerifyApiKeyRequest { secret: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad}");
    }

    // Bob cannot revoke Alice's key, nor can anyone revoke an unknown one.
    for (token, id) in [
        (&b, key.key_id.as_str()),
        (&a, "0123456789abcdef01234567"),
        (&a, "x"),
    ] {
        let e = c
            .revoke_api_key(with_bearer(
                pb::RevokeApiKeyRequest { key_id: id.into() },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id}");
    }
    c.verify_api_key(pb::VerifyApiKeyRequest {
        secret: created.secret.clone(),
    })
    .await
    .expect("still valid after bob's attempt");

    c.revoke_api_key(with_bearer(
        pb::RevokeApiKeyRequest {
            key_id: key.key_id.clone(),
        },
        &a,
    ))
    .await
    .expect("revoke");
    let e = c
        .verify_api_key(pb::VerifyApiKeyRequest {
            secret: created.secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    c.verify_api_key(pb::VerifyApiKeyRequest {
        secret: second.secret.clone(),
    })
    .await
    .expect("other key unaffected");

    let listed = c
        .list_api_keys(with_bearer(pb::ListApiKeysRequest {}, &a))
        .await
        .expect("list")
        .into_inner()
        .api_keys;
    let revoked = listed
        .iter()
        .find(|k| k.key_id == key.key_id)
        .expect("revoked key listed");
    assert!(revoked.revoked);
}

#[tokio::test]
async fn concurrent_duplicate_signups_give_exactly_one_success() {
    let (_dir, p) = start().await;
    let c = p.client().await;
    let attempts = 12;
    let results = futures::future::join_all((0..attempts).map(|i| {
        let mut c = c.clone();
        async move {
            c.sign_up(pb::SignUpRequest {
                email: "race@example.com".into(),
                password: format!("{PASSWORD} {i}"),
                display_name: format!("racer {i}"),
            })
            .await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let dup = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Code::AlreadyExists))
        .count();
    assert_eq!(ok, 1, "{results:?}");
    assert_eq!(dup, attempts - 1, "{results:?}");
    // The winner's password is the one that logs in.
    let winner = results
        .iter()
        .find_map(|r| r.as_ref().ok())
        .and_then(|r| r.get_ref().user.clone())
        .expect("winner");
    let i: usize = winner
        .display_name
        .trim_start_matches("racer ")
        .parse()
        .unwrap();
    let mut c = c.clone();
    c.login(pb::LoginRequest {
        email: "race@example.com".into(),
        password: format!("{PASSWORD} {i}"),
    })
    .await
    .expect("winner logs in");
}

#[tokio::test]
async fn data_tokens_and_keys_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(dir.path(), "").await;
    let mut c = p.client().await;
    let u = sign_up(&mut c, "keep@example.com").await;
    let l = login(&mut c, "keep@example.com").await;
    let key = c
        .create_api_key(with_bearer(
            pb::CreateApiKeyRequest {
                name: "kept".into(),
                scopes: vec!["polls:read".into()],
            },
            &l.access_token,
        ))
        .await
        .expect("create key")
        .into_inner();
    let kid_before = c
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner()
        .keys[0]
        .kid
        .clone();

    let p = p.restart("").await;
    let mut c = p.client().await;
    // The signing key persisted: same kid, and the old access token still works.
    let kid_after = c
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner()
        .keys[0]
        .kid
        .clone();
    assert_eq!(kid_before, kid_after);
    let got = c
        .get_profile(with_bearer(pb::GetProfileRequest {}, &l.access_token))
        .await
        .expect("old token after restart")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(got, u);
    // The session persisted (embedded session store).
    c.refresh_access_token(pb::RefreshAccessTokenRequest {
        session_token: l.session_token,
    })
    .await
    .expect("session survives restart");
    login(&mut c, "keep@example.com").await;
    let e = c
        .sign_up(pb::SignUpRequest {
            email: "keep@example.com".into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let v = c
        .verify_api_key(pb::VerifyApiKeyRequest { secret: key.secret })
        .await
        .expect("api key survives restart")
        .into_inner();
    assert_eq!(v.user_id, u.user_id);
}

#[tokio::test]
async fn signup_commits_a_user_registered_event_to_the_outbox() {
    use prost::Message;
    use tally_api::events::v1::{EventEnvelope, event_envelope};
    use tally_chassis::storage::Store;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = UserProcess::start(dir.path(), "").await;
    let mut c = p.client().await;
    let u = sign_up(&mut c, "evt@example.com").await;
    // A rejected duplicate emits nothing.
    let _ = c
        .sign_up(pb::SignUpRequest {
            email: "evt@example.com".into(),
            password: PASSWORD.into(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    drop(c);
    p.stop().await;

    let store =
        tally_chassis::storage::embedded::EmbeddedStore::open(&dir.path().join("user.redb"))
            .await
            .expect("open the service's database");
    let outbox = store.read_outbox(0, 100).await.expect("read outbox");
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    let entry = &outbox[0].event;
    assert_eq!(entry.aggregate_id, u.user_id);
    assert_eq!(entry.event_type, "tally.events.v1.UserRegistered");
    let env = EventEnvelope::decode(entry.payload.as_slice()).expect("envelope");
    assert_eq!(env.event_type, "tally.events.v1.UserRegistered");
    assert_eq!(env.aggregate_id, u.user_id);
    assert_eq!((env.sequence, env.schema_version), (1, 1));
    assert_eq!(env.producer, "user");
    assert!(uuid::Uuid::parse_str(&env.event_id).is_ok());
    match env.payload {
        Some(event_envelope::Payload::UserRegistered(r)) => {
            assert_eq!(r.user_id, u.user_id);
            assert_eq!(r.email, "evt@example.com");
            assert_eq!(r.display_name, "Test User");
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

#[tokio::test]
async fn bad_config_exits_with_code_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[user]\nsession_ttl_secs = 1\n").unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tally-user"))
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .output(),
    )
    .await
    .expect("exits promptly")
    .expect("run tally-user");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user.session_ttl_secs"), "{err}");
    assert!(
        !dir.path().join(".tally").exists(),
        "nothing opened on bad config"
    );
}

#[tokio::test]
async fn health_and_reflection_list_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (_dir, p) = start().await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");
    for service in ["", "tally.user.v1.UserService"] {
        let status = tonic_health::pb::health_client::HealthClient::new(ch.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            support::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tally.user.v1.UserService"), "{names:?}");
}
