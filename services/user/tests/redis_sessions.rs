//! `tally-user` with `user.redis_url` set: sessions live in a real
//! `redis-server` (started on a free port), logout deletes them there, and
//! health follows Redis going away and coming back.

mod support;

use sha2::{Digest, Sha256};
use support::{RedisServer, ServingStatus, UserProcess};
use tally_api::user::v1 as pb;
use tonic::Code;

const PASSWORD: &str = "correct horse battery";

fn session_key(token: &str) -> String {
    format!(
        "tally:session:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

#[tokio::test]
async fn sessions_live_in_redis_and_health_follows_redis() {
    let mut redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(
        dir.path(),
        &format!(
            "[user]\nredis_url = \"{}\"\nsession_ttl_secs = 3600\n",
            redis.url()
        ),
    )
    .await;
    let mut c = p.client().await;
    c.sign_up(pb::SignUpRequest {
        email: "redis@example.com".into(),
        password: PASSWORD.into(),
        display_name: "R".into(),
    })
    .await
    .expect("sign up");
    let login = |mut c: tally_api::user::v1::user_service_client::UserServiceClient<_>| async move {
        c.login(pb::LoginRequest {
            email: "redis@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
    };
    let l = login(c.clone()).await.expect("login").into_inner();

    // The session is in Redis under the token's hash (never the token), with the TTL.
    let mut conn = redis.conn().await;
    let key = session_key(&l.session_token);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!((1..=3600).contains(&ttl), "ttl {ttl}");
    let raw_token_key: bool = redis::cmd("EXISTS")
        .arg(format!("tally:session:{}", l.session_token))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!raw_token_key);

    c.refresh_access_token(pb::RefreshAccessTokenRequest {
        session_token: l.session_token.clone(),
    })
    .await
    .expect("refresh");
    c.logout(pb::LogoutRequest {
        session_token: l.session_token.clone(),
    })
    .await
    .expect("logout");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!exists, "logout deletes the session from Redis");
    let e = c
        .refresh_access_token(pb::RefreshAccessTokenRequest {
            session_token: l.session_token,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Redis goes away: health turns NOT_SERVING and logins are UNAVAILABLE.
    let l2 = login(c.clone()).await.expect("login").into_inner();
    redis.stop();
    p.wait_health(ServingStatus::NotServing).await;
    let e = login(c.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c
        .refresh_access_token(pb::RefreshAccessTokenRequest {
            session_token: l2.session_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Redis comes back (empty, no persistence): health recovers, logins work,
    // and the session lost with Redis's data is gone.
    redis.restart().await;
    p.wait_health(ServingStatus::Serving).await;
    let mut ok = None;
    for _ in 0..100 {
        match login(c.clone()).await {
            Ok(r) => {
                ok = Some(r.into_inner());
                break;
            }
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let l3 = ok.expect("login after Redis is back");
    c.refresh_access_token(pb::RefreshAccessTokenRequest {
        session_token: l3.session_token,
    })
    .await
    .expect("refresh new session");
    let e = c
        .refresh_access_token(pb::RefreshAccessTokenRequest {
            session_token: l2.session_token,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
