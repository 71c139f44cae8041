//! Metrics end to end: `tally up` serves `/metrics` on every service, sidecar
//! and the gateway and writes `prometheus.yml`; `promtool` accepts every
//! endpoint's output and the config; a real Prometheus (Debian's
//! `prometheus` package, which `bash scripts/test` installs) scrapes every
//! target and sees request rates move; the Grafana dashboards in
//! `deploy/grafana/` use only metric names those endpoints export.

#[path = "up_metrics/metric_names.rs"]
mod metric_names;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tally_sdk::{Client, Credentials};
use tally_testkit::{HttpReply, Process, TallyUp, free_port, http_get, http_request};
use tokio::time::Instant;

/// How long Prometheus may take to see every target up and rates move.
const SCRAPED: Duration = Duration::from_secs(120);
/// Between two looks at Prometheus's API.
const POLL: Duration = Duration::from_millis(500);
/// Scrape interval the test rewrites the written config to.
const TEST_SCRAPE_INTERVAL: &str = "1s";
/// Six services, six sidecars and the gateway.
const TARGETS: usize = 13;
const PASSWORD: &str = "correct horse battery";

/// The repository root: this test belongs to the root package.
fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tool` on PATH; the message says how CI gets it.
fn tool(tool: &str) -> &str {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: `bash scripts/test` installs Debian's `prometheus` package \
         (apt-get install prometheus)"
    );
    tool
}

/// The `targets: ["addr"]` of the written scrape config.
fn targets(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- targets: [\""))
        .filter_map(|l| l.strip_suffix("\"]"))
        .map(str::to_string)
        .collect()
}

/// Runs `promtool args` with `input` on stdin; panics with its output unless it succeeds.
fn promtool(args: &[&str], input: &str, what: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool {args:?} rejects {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Queries Prometheus's HTTP API; the `data` of a successful answer.
async fn api(prometheus: &str, path: &str) -> Option<serde_json::Value> {
    let HttpReply { status, body, .. } = http_get(prometheus, path).await;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

/// The value of an instant query, when it has one sample.
async fn scalar(prometheus: &str, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let data = api(prometheus, &format!("/api/v1/query?query={encoded}")).await?;
    data["result"][0]["value"][1].as_str()?.parse().ok()
}

async fn drive_calls(user: &str, poll: &str) {
    let client = Client::connect(user, poll).await.expect("connect");
    let email = format!("metrics-{}@example.com", uuid::Uuid::new_v4().simple());
    client
        .sign_up(&email, PASSWORD, "Metrics")
        .await
        .expect("sign up");
    let login = client.login(&email, PASSWORD).await.expect("login");
    let me = client.with_credentials(Credentials::Bearer(login.access_token));
    let poll = me
        .create_poll("Tea?", ["yes", "no"], None)
        .await
        .expect("create poll");
    for _ in 0..5 {
        me.get_poll(&poll.poll_id).await.expect("get poll");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_instance_of_tally_up() {
    tool("promtool");
    tool("prometheus");
    let mut up = TallyUp::start(&[]).await;
    let stdout = up.ready_output().to_string();
    assert!(
        stdout.contains("METRICS"),
        "the table lists metrics:\n{stdout}"
    );
    assert!(stdout.contains("prometheus.yml"), "{stdout}");

    // The written config names every instance and promtool accepts it.
    let config = std::fs::read_to_string(up.data().join("prometheus.yml")).expect("config");
    let addrs = targets(&config);
    assert_eq!(addrs.len(), TARGETS, "{config}");
    let test_config = config
        .replace(
            "scrape_interval: 15s",
            &format!("scrape_interval: {TEST_SCRAPE_INTERVAL}"),
        )
        .replace(
            "evaluation_interval: 15s",
            &format!("evaluation_interval: {TEST_SCRAPE_INTERVAL}"),
        );
    assert_ne!(test_config, config, "the interval was rewritten");
    let prom_dir = tempfile::tempdir().expect("prometheus dir");
    let config_path = prom_dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &test_config).expect("write config");
    let config_arg = config_path.display().to_string();
    promtool(&["check", "config", &config_arg], "", "the written config");

    // Every endpoint's output, in the text format promtool reads, passes
    // promtool; the names of its OpenMetrics output are collected.
    let mut names = BTreeSet::new();
    for addr in &addrs {
        let HttpReply {
            status, body: text, ..
        } = http_request(addr, "GET", "/metrics", &[("Accept", "text/plain")], "").await;
        assert_eq!(status, 200, "{addr}");
        promtool(
            &["check", "metrics"],
            &text,
            &format!("the metrics of {addr}"),
        );
        let open_metrics = http_get(addr, "/metrics").await.body;
        assert!(
            open_metrics.ends_with("# EOF\n"),
            "{addr} serves OpenMetrics by default"
        );
        names.extend(metric_names::exported(&open_metrics));
    }
    for expected in [
        "tally_grpc_server_handled_total",
        "tally_grpc_server_handling_seconds_bucket",
        "tally_store_operation_seconds_bucket",
        "tally_dependency_up",
        "tally_consumer_lag",
        "tally_proxy_requests_total",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not exported: {names:?}"
        );
    }

    // The proxies (sidecars and gateway) are ready with their upstreams.
    let mut proxies = 0;
    for addr in &addrs {
        if http_get(addr, "/ready").await.status == 200 {
            proxies += 1;
            let r = http_get(addr, "/ready/upstreams").await;
            assert_eq!(r.status, 200, "{addr}: {}", r.body);
        }
    }
    assert_eq!(proxies, 7, "six sidecars and the gateway");

    // A real Prometheus with the config scrapes everything.
    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = Process::spawn(
        tool("prometheus"),
        [
            format!("--config.file={config_arg}"),
            format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("tsdb").display()
            ),
            format!("--web.listen-address={web}"),
        ],
    );
    let user = up.addr("user");
    let poll = up.addr("polling");
    let deadline = Instant::now() + SCRAPED;
    let mut last = String::from("no answer yet");
    let mut rates = (0.0, 0.0);
    loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see every target up with moving rates: {last}\n{}",
            prometheus.output()
        );
        drive_calls(&user, &poll).await;
        if let Some(data) = api(&web, "/api/v1/targets").await {
            let active = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = active.iter().filter(|t| t["health"] == "up").count();
            last = format!(
                "{up} of {} targets up (want {TARGETS}), rates {rates:?}",
                active.len()
            );
            if up == TARGETS {
                let services = scalar(
                    &web,
                    "sum(rate(tally_grpc_server_handled_total{grpc_service=\"tally.poll.v1.PollService\"}[10s]))",
                )
                .await
                .unwrap_or(0.0);
                let mesh = scalar(&web, "sum(rate(tally_proxy_requests_total[10s]))")
                    .await
                    .unwrap_or(0.0);
                rates = (services, mesh);
                if services > 0.0 && mesh > 0.0 {
                    break;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    prometheus.stop(Duration::from_secs(10)).await;

    // The dashboards use only names the platform exports: live ones, and
    // families registered but without series in this run (no breaker opened).
    let root = repo_root();
    let mut registered = metric_names::registered(&root.join("services/chassis/src"), "");
    registered.extend(metric_names::registered(
        &root.join("mesh-proxy/src"),
        "tally_proxy_",
    ));
    for live in &names {
        assert!(
            registered.contains(live),
            "{live} is exported but not found registered"
        );
    }
    let known: BTreeSet<String> = names.union(&registered).cloned().collect();
    metric_names::check_dashboards(&root.join("deploy/grafana"), &known);
    up.stop(Duration::from_secs(60)).await;
}

#[test]
fn dashboards_are_valid_json_with_queries() {
    let dir: &Path = &repo_root().join("deploy/grafana");
    let dashboards = metric_names::dashboards(dir);
    assert!(dashboards.len() >= 3, "services, mesh, events");
    for (file, used) in dashboards {
        assert!(!used.is_empty(), "{file} has no queries");
    }
}
