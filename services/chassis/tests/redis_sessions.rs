//! The session port's behaviour, run against both adapters: Redis (a real
//! `redis-server` started on a free port) and the embedded store.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_chassis::session::embedded::EmbeddedSessions;
use tally_chassis::session::redis::RedisSessions;
use tally_chassis::session::{Session, SessionError, SessionStore};
use tally_chassis::storage::embedded::EmbeddedStore;
use tally_testkit::RedisServer;
use tokio::time::Instant;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn session(user: &str, ttl: Duration) -> Session {
    let t = now();
    Session {
        user_id: user.to_string(),
        created_at: t,
        expires_at: t + ttl.as_secs() as i64,
    }
}

/// The same rules for every adapter.
async fn suite(store: Arc<dyn SessionStore>) {
    store.ping().await.expect("ping");

    // Create, then read back exactly what was stored.
    let long = Duration::from_secs(3600);
    let s1 = session("u1", long);
    store.create("sid-1", &s1, long).await.expect("create");
    assert_eq!(store.get("sid-1").await.expect("get"), Some(s1.clone()));

    // Unknown ids are absent, not errors.
    assert_eq!(store.get("sid-unknown").await.expect("get"), None);

    // Sessions are independent.
    let s2 = session("u2", long);
    store.create("sid-2", &s2, long).await.expect("create");
    assert_eq!(store.get("sid-2").await.expect("get"), Some(s2.clone()));

    // Revoke removes it; a second revoke reports nothing was there.
    assert!(store.revoke("sid-1").await.expect("revoke"));
    assert_eq!(store.get("sid-1").await.expect("get"), None);
    assert!(!store.revoke("sid-1").await.expect("revoke again"));
    assert_eq!(
        store.get("sid-2").await.expect("get"),
        Some(s2),
        "other sessions stay"
    );

    // A short-lived session is readable at first and gone after its TTL.
    let short = Duration::from_secs(1);
    let s3 = session("u3", short);
    store.create("sid-3", &s3, short).await.expect("create");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.get("sid-3").await.expect("get") {
            None => break,
            Some(found) => {
                assert_eq!(found, s3);
                assert!(
                    Instant::now() < deadline,
                    "a 1 s session was still there after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(
        now() >= s3.expires_at,
        "the session disappeared before its expiry time"
    );
}

#[tokio::test]
async fn redis_sessions_follow_the_port_rules() {
    let redis = RedisServer::start().await;
    let store = RedisSessions::connect(&redis.url()).await.expect("connect");
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn embedded_sessions_follow_the_port_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("sessions.redb"))
        .await
        .expect("open store");
    suite(Arc::new(EmbeddedSessions::new(Arc::new(store)))).await;
}

#[tokio::test]
async fn redis_expires_sessions_itself_with_the_given_ttl() {
    let redis = RedisServer::start().await;
    let store = RedisSessions::connect(&redis.url()).await.expect("connect");
    let ttl = Duration::from_secs(600);
    store
        .create("sid-ttl", &session("u", ttl), ttl)
        .await
        .expect("create");

    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*sid-ttl*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "one key per session: {keys:?}");
    let left: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(
        (1..=600).contains(&left),
        "redis holds the key with a TTL, got {left}"
    );
}

#[tokio::test]
async fn replicas_sharing_redis_see_the_same_sessions() {
    let redis = RedisServer::start().await;
    let a = RedisSessions::connect(&redis.url())
        .await
        .expect("connect a");
    let b = RedisSessions::connect(&redis.url())
        .await
        .expect("connect b");
    let ttl = Duration::from_secs(600);
    let s = session("shared", ttl);
    a.create("sid-shared", &s, ttl).await.expect("create on a");
    assert_eq!(b.get("sid-shared").await.expect("get on b"), Some(s));
    assert!(b.revoke("sid-shared").await.expect("revoke on b"));
    assert_eq!(a.get("sid-shared").await.expect("get on a"), None);
}

#[tokio::test]
async fn a_stopped_redis_reports_unavailable() {
    let redis = RedisServer::start().await;
    let store = RedisSessions::connect(&redis.url()).await.expect("connect");
    store.ping().await.expect("ping while up");
    drop(redis);
    // The manager may need a moment to notice; every answer must be an
    // UNAVAILABLE error, and one must come within the timeout.
    let res = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match store.ping().await {
                Err(e) => return e,
                Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("ping kept succeeding or hung after redis stopped");
    assert!(matches!(res, SessionError::Unavailable(_)), "{res:?}");
    let status: tonic::Status = res.into();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_bad_redis_url_is_refused_at_connect() {
    let err = RedisSessions::connect("not-a-url")
        .await
        .err()
        .expect("bad url must fail");
    assert!(matches!(err, SessionError::Unavailable(_)), "{err:?}");
}
