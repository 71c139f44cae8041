//! Canary rollouts end to end: `tally up --canary analytics` runs a second analytics
//! instance whose sidecar the gateway splits to by weight; `tally rollout start` promotes a
//! healthy canary step by step, and rolls a faulty one (aborts injected on its sidecar) back
//! by itself. A client keeps calling analytics through the gateway all along, and the calls
//! that failed during the faulty rollout are counted and kept under a stated bound.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tally_api::analytics::v1::ListTopPollsRequest;
use tally_api::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use tally_testkit::{Process, TallyUp, admin_request, bin_path};

/// `tally up` with one more analytics instance (the canary) and its sidecar.
const PORTS: u16 = tally_testkit::TALLY_UP_PORTS + tally_testkit::TALLY_UP_PORTS_PER_EXTRA_INSTANCE;
/// Canary calls a rollout step needs before it judges (`--min-calls`).
const MIN_CALLS: u64 = 5;
/// The stated bound: a faulty canary at the first step (5 %) fails at most the calls it
/// needs to be judged, plus those in flight while the weight goes back to 0.
const MAX_FAILED_DURING_ROLLBACK: u64 = MIN_CALLS + 5;
/// Pause between two user calls: one caller at about 15 calls a second at most, under the
/// gateway's per-client rate limit (20 a second), so every failure is the canary's.
const CALL_PAUSE: Duration = Duration::from_millis(65);
/// How long a rollout may take at most.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// Counts the user calls a background client makes through the gateway.
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    /// The first few failures, for assertion messages.
    errors: std::sync::Mutex<Vec<String>>,
}

impl Traffic {
    fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }
    fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("lock").clone()
    }
}

/// Calls `ListTopPolls` through the gateway until told to stop.
async fn drive(gateway: String, token: String, traffic: Arc<Traffic>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect gateway");
    let mut client = AnalyticsServiceClient::new(channel);
    while !traffic.stop.load(Ordering::SeqCst) {
        let mut req = tonic::Request::new(ListTopPollsRequest { page: None });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        match client.list_top_polls(req).await {
            Ok(_) => traffic.ok.fetch_add(1, Ordering::SeqCst),
            Err(s) => {
                let mut errors = traffic.errors.lock().expect("lock");
                if errors.len() < 20 {
                    errors.push(format!("{:?}: {}", s.code(), s.message()));
                }
                traffic.failed.fetch_add(1, Ordering::SeqCst)
            }
        };
        tokio::time::sleep(CALL_PAUSE).await;
    }
}

/// Runs `tally rollout start analytics` to its end.
async fn rollout(data: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(bin_path("tally"));
    cmd.args(["rollout", "start", "analytics", "--data-dir"])
        .arg(data)
        .args(["--step-time", "1s", "--interval", "250ms"])
        .args(["--min-calls", &MIN_CALLS.to_string()])
        .args(extra);
    let mut p = Process::spawn_command(cmd);
    let status = p
        .exited(ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("rollout hangs:\n{}", p.output()));
    (status.success(), p.output())
}

fn status_text(data: &std::path::Path) -> String {
    let out = Command::new(bin_path("tally"))
        .args(["rollout", "status", "analytics", "--data-dir"])
        .arg(data)
        .output()
        .expect("status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_and_a_faulty_one_rolled_back_by_itself() {
    let mut up = TallyUp::builder()
        .args(["--canary", "analytics"])
        .ports(PORTS)
        .start()
        .await;
    let out = up.ready_output();
    assert!(
        out.contains("canary: analytics-2 gets 0% of the calls to analytics"),
        "{out}"
    );
    let data = up.data().to_path_buf();
    let gateway = up.gateway_addr();
    let gw_admin = up.admin_addr("gateway");

    // A user.
    let access = up.sign_up("canary@example.com").await;
    let traffic = Arc::new(Traffic::default());
    let driver = tokio::spawn(drive(gateway.clone(), access, traffic.clone()));

    // 1. A healthy canary goes 5 -> 25 -> 50 -> 100 % and is promoted. Latency is not what
    // this test is about, and debug builds on a busy machine jitter: a wide p99 ratio.
    let (ok, output) = rollout(&data, &["--max-p99-ratio", "1000"]).await;
    assert!(ok, "{output}");
    assert!(output.contains("analytics: promoted"), "{output}");
    assert_eq!(
        traffic.failed(),
        0,
        "no user call fails while a healthy canary rolls out: {:?}\n{output}",
        traffic.errors()
    );
    let status = status_text(&data);
    assert!(
        status.contains("rollout of analytics: promoted"),
        "{status}"
    );
    for w in ["5%", "25%", "50%", "100%"] {
        assert!(status.contains(w), "{status}");
    }

    // 2. Back to the stable version, then the canary breaks: every call its sidecar
    // receives is aborted with UNAVAILABLE.
    let split = r#"{"service":"analytics","weight":0}"#;
    // The weight is a control-plane change: the admin token is required.
    let wrong = admin_request(&gw_admin, Some("wrong"), "PUT", "/split", split).await;
    assert_eq!(wrong.status, 403);
    assert_eq!(traffic.failed(), 0);
    assert_eq!(
        up.admin("gateway", "PUT", "/split", split).await.status,
        200
    );
    let faults = r#"{"route":"inbound","faults":{"abort_percent":100.0,"abort_grpc_status":14}}"#;
    let r = up
        .admin("analytics-2-proxy", "PUT", "/faults", faults)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        traffic.failed(),
        0,
        "weight 0: nothing reaches the broken canary"
    );

    let (ok_before, failed_before) = (traffic.ok(), traffic.failed());
    let (ok, output) = rollout(&data, &[]).await;
    assert!(!ok, "a faulty canary is not promoted:\n{output}");
    assert!(output.contains("rolled back at 5%"), "{output}");
    let failed = traffic.failed() - failed_before;
    println!(
        "faulty canary: {failed} user calls failed during the rollback, {} succeeded",
        traffic.ok() - ok_before
    );
    assert!(
        (MIN_CALLS..=MAX_FAILED_DURING_ROLLBACK).contains(&failed),
        "{failed} user calls failed during the rollback (bound {MAX_FAILED_DURING_ROLLBACK}); \
         {} succeeded\n{output}",
        traffic.ok() - ok_before
    );
    // After the rollback every call goes to the stable version again.
    let failed_after = traffic.failed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        traffic.failed(),
        failed_after,
        "calls fail after the rollback"
    );
    let status = status_text(&data);
    assert!(
        status.contains("rollout of analytics: rolled back"),
        "{status}"
    );
    assert!(status.contains("breach: error rate"), "{status}");

    traffic.stop.store(true, Ordering::SeqCst);
    driver.await.expect("driver");
    up.stop(Duration::from_secs(30)).await;
}
