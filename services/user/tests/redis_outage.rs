//! `redis-server` (append-only file, fsync always) killed and restarted
//! under login load against a real `tally-user` with `user.redis_url` set.
//! Session calls go through the resilient stack (deadline, breaker,
//! bulkhead): while Redis is down every login is answered promptly with
//! UNAVAILABLE (no hung calls, the breaker fails them fast), logins recover
//! by themselves once Redis is back, and sessions written before the
//! restart are still valid after it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::{ServingStatus, UserProcess};
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::RedisServer;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const PASSWORD: &str = "correct horse battery";
/// Accounts logging in over and over, one worker each.
const WORKERS: usize = 2;
/// How long the load runs before Redis is killed.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long Redis stays down.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// Every login is answered within this, up or down (no hung calls).
const CALL_BOUND: Duration = Duration::from_secs(3);
/// Logins must succeed again within this after Redis is back.
const RECOVERY: Duration = Duration::from_secs(30);
/// Client-side deadline: far above the bound, so a hung call is seen as slow.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

/// One login of the load: when it started, how long it took, its status.
struct Attempt {
    at: Instant,
    took: Duration,
    result: Result<(), (Code, String)>,
}

fn email(n: usize) -> String {
    format!("outage-{n}@example.com")
}

async fn login(
    mut c: UserServiceClient<Channel>,
    n: usize,
) -> Result<pb::LoginResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::LoginRequest {
        email: email(n),
        password: PASSWORD.into(),
    });
    req.set_timeout(CLIENT_DEADLINE);
    c.login(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_fail_fast_while_redis_restarts_and_sessions_survive_it() {
    let mut redis = RedisServer::start_persistent().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(
        dir.path(),
        &format!(
            "[user]\nredis_url = \"{}\"\nsession_ttl_secs = 3600\n",
            redis.url()
        ),
    )
    .await;
    let c = p.client().await;
    let mut before = Vec::new();
    for n in 0..WORKERS {
        c.clone()
            .sign_up(pb::SignUpRequest {
                email: email(n),
                password: PASSWORD.into(),
                display_name: format!("O{n}"),
            })
            .await
            .expect("sign up");
        before.push(login(c.clone(), n).await.expect("login").session_token);
    }

    // The load: each worker logs its account in again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let (c, stop, log) = (c.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let at = Instant::now();
                    let result = login(c.clone(), n)
                        .await
                        .map(|_| ())
                        .map_err(|s| (s.code(), s.message().to_string()));
                    log.lock().await.push(Attempt {
                        at,
                        took: at.elapsed(),
                        result,
                    });
                }
            })
        })
        .collect();

    tokio::time::sleep(WARM_UP).await;
    // Taken before the stop: a login cut off while redis-server shuts down
    // (connection reset) fails after this instant, not before it.
    let down_at = Instant::now();
    redis.stop();
    p.wait_health(ServingStatus::NotServing).await;
    tokio::time::sleep(DOWN_FOR.saturating_sub(down_at.elapsed())).await;
    redis.restart().await;
    let up_at = Instant::now();

    // Logins recover by themselves.
    let recovered = loop {
        let ok_since = log
            .lock()
            .await
            .iter()
            .filter(|a| a.at >= up_at && a.result.is_ok())
            .count();
        if ok_since >= WORKERS {
            break up_at.elapsed();
        }
        assert!(
            up_at.elapsed() < RECOVERY,
            "logins did not recover within {RECOVERY:?} of Redis coming back\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    p.wait_health(ServingStatus::Serving).await;

    let log = log.lock().await;
    let slowest = log.iter().map(|a| a.took).max().unwrap_or_default();
    let failed: Vec<&Attempt> = log.iter().filter(|a| a.result.is_err()).collect();
    let fast_failed = failed
        .iter()
        .filter(|a| {
            a.result
                .as_ref()
                .is_err_and(|(_, m)| m.contains("circuit breaker open"))
        })
        .count();
    eprintln!(
        "redis outage: {} logins, {} failed ({fast_failed} by the open breaker), slowest {slowest:?}, \
         recovered {recovered:?} after Redis was back",
        log.len(),
        failed.len()
    );
    assert!(
        slowest < CALL_BOUND,
        "a login took {slowest:?}: calls hung while Redis was down"
    );
    assert!(!failed.is_empty(), "the outage was not felt");
    for a in &failed {
        let (code, message) = a.result.as_ref().expect_err("failed");
        assert_eq!(*code, Code::Unavailable, "{message}");
        assert!(
            a.at + a.took >= down_at,
            "a login failed before Redis went down: {message}"
        );
    }
    assert!(fast_failed > 0, "the breaker never failed a login fast");

    // Sessions written before the restart are still there.
    for token in before {
        c.clone()
            .refresh_access_token(pb::RefreshAccessTokenRequest {
                session_token: token,
            })
            .await
            .expect("a session from before the restart is still valid");
    }
}
