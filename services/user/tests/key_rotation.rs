//! Signing-key rotation over real processes: `tally keys rotate` against a
//! running `tally-user`, with `tally-polling` verifying tokens through the
//! JWKS. Token A (old key) and token B (new key, new `kid`) both verify
//! during the overlap; after it, the old `kid` is gone from the JWKS.
//! Needs `cargo build --workspace --bins` (the `tally` and `tally-polling`
//! binaries).

use std::time::Duration;
use tally_api::poll::v1 as pollpb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_admin_service_client::UserAdminServiceClient;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::{Platform, bin_path};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request};

const PASSWORD: &str = "correct horse battery";
const ACCESS_TTL_SECS: u64 = 30;
const OVERLAP_SECS: u64 = 30;
/// Longer than the overlap plus the ring refresh, with room for a slow machine.
const RETIRE_DEADLINE: Duration = Duration::from_secs(120);
/// Verifiers refetch the JWKS for an unknown `kid` at most every 5 s.
const NEW_KID_DEADLINE: Duration = Duration::from_secs(30);

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("jwt header")
        .kid
        .expect("kid")
}

async fn channel(uri: String) -> Channel {
    tonic::transport::Endpoint::from_shared(uri)
        .expect("uri")
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect")
}

async fn jwks_kids(user: &mut UserServiceClient<Channel>) -> Vec<String> {
    user.get_jwks(pb::GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect()
}

async fn login(user: &mut UserServiceClient<Channel>) -> String {
    user.login(pb::LoginRequest {
        email: "rotor@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("login")
    .into_inner()
    .access_token
}

/// Creates a poll as the token's user: polling verifies the token itself.
async fn create_poll(
    poll: &mut PollServiceClient<Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    poll.create_poll(bearer(
        pollpb::CreatePollRequest {
            question: "Which key?".into(),
            options: vec!["old".into(), "new".into()],
            closes_at: None,
        },
        token,
    ))
    .await
    .map(|_| ())
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_for_the_overlap_and_then_retires_the_key() {
    let token_file_dir = tempfile::tempdir().expect("tempdir");
    let token_file = token_file_dir.path().join("admin-token");
    let platform = Platform::start_with(
        &format!(
            "[user]\naccess_token_ttl_secs = {ACCESS_TTL_SECS}\n\
             signing_key_overlap_secs = {OVERLAP_SECS}\nadmin_token_file = {:?}\n",
            token_file.display().to_string()
        ),
        "",
    )
    .await;
    let mut user = UserServiceClient::new(channel(platform.user_uri()).await);
    let mut poll = PollServiceClient::new(channel(platform.poll_uri()).await);
    user.sign_up(pb::SignUpRequest {
        email: "rotor@example.com".into(),
        password: PASSWORD.into(),
        display_name: "Rotor".into(),
    })
    .await
    .expect("sign up");

    let token_a = login(&mut user).await;
    let kid_a = kid_of(&token_a);
    create_poll(&mut poll, &token_a)
        .await
        .expect("token A verifies before the rotation");

    // Without the admin token the rotation is refused.
    let mut admin = UserAdminServiceClient::new(channel(platform.user_uri()).await);
    let mut forged = Request::new(pb::RotateSigningKeyRequest {});
    forged
        .metadata_mut()
        .insert("tally-admin-token", "guess".parse().expect("ascii"));
    let e = admin
        .rotate_signing_key(forged)
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Code::PermissionDenied);

    let out = std::process::Command::new(bin_path("tally"))
        .args([
            "--json",
            "keys",
            "--user-addr",
            &platform.user_uri(),
            "rotate",
        ])
        .arg("--admin-token-file")
        .arg(&token_file)
        .output()
        .expect("run tally keys rotate");
    assert!(
        out.status.success(),
        "tally keys rotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["previous_kid"], kid_a.as_str());
    let kid_b_reported = report["active_kid"]
        .as_str()
        .expect("active_kid")
        .to_string();

    let token_b = login(&mut user).await;
    let kid_b = kid_of(&token_b);
    assert_eq!(
        kid_b, kid_b_reported,
        "new tokens are signed with the new key"
    );
    assert_ne!(kid_b, kid_a);
    let kids = jwks_kids(&mut user).await;
    assert!(
        kids.contains(&kid_a) && kids.contains(&kid_b),
        "JWKS during the overlap: {kids:?}"
    );

    // Both tokens verify at a service that checks them locally. Polling
    // learns the new kid when it refetches the JWKS for it (at most every 5 s).
    create_poll(&mut poll, &token_a)
        .await
        .expect("token A verifies during the overlap");
    let deadline = Instant::now() + NEW_KID_DEADLINE;
    loop {
        match create_poll(&mut poll, &token_b).await {
            Ok(()) => break,
            Err(s) if s.code() == Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => panic!("token B at polling: {s:?}"),
        }
    }
    // The user service itself verifies both too.
    for t in [&token_a, &token_b] {
        user.get_profile(bearer(pb::GetProfileRequest {}, t))
            .await
            .expect("profile with either token");
    }

    // After the overlap the old kid is no longer published or accepted.
    let deadline = Instant::now() + RETIRE_DEADLINE;
    loop {
        let kids = jwks_kids(&mut user).await;
        if !kids.contains(&kid_a) {
            assert_eq!(kids, std::slice::from_ref(&kid_b));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kid {kid_a} still published: {kids:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let e = user
        .get_profile(bearer(pb::GetProfileRequest {}, &token_a))
        .await
        .expect_err("the old key is retired");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("unknown key"), "{e:?}");
    create_poll(&mut poll, &token_b)
        .await
        .expect("token B still verifies");
}
