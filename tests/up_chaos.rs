//! `tally chaos run` end to end against a real `tally up`: a short form of the shipped
//! abort-storm scenario (aborts on the gateway's route to polling, a SIGKILL of analytics
//! that `tally up` restarts) meets every verdict and puts the fault settings back; the
//! scenario designed to fail (an impossible p99) exits non-zero naming the verdict; and a
//! scenario with an unknown key is refused before anything runs; a run interrupted with
//! Ctrl-C during its fault puts the fault settings back.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tally_testkit::{Process, bin_path, free_port_range, repo_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY: Duration = Duration::from_secs(240);
/// Every port `tally up` takes from `--base-port`.
const PORTS: u16 = tally_testkit::TALLY_UP_PORTS;
/// How long one chaos run may take at most (setup, load, settling, verdicts).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `tally chaos run <scenario>` to its end: (success, output).
async fn chaos(data: &Path, scenario: &Path) -> (bool, String) {
    let mut cmd = Command::new(bin_path("tally"));
    cmd.args(["chaos", "run"])
        .arg(scenario)
        .arg("--data-dir")
        .arg(data);
    let mut p = Process::spawn_command(cmd);
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while p.is_running() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = p
        .try_exit()
        .unwrap_or_else(|| panic!("chaos run hangs:\n{}", p.output()));
    (status.success(), p.output())
}

/// The shipped abort storm, shortened: 8 s of load, aborts from 2 s to 7 s, and a SIGKILL
/// of analytics (not on the load's path) to exercise kills.
fn short_abort_storm(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("tests/chaos/abort-storm-polling.toml"))
        .expect("shipped scenario");
    let mut s: toml::Table = text.parse().expect("toml");
    s["load"]["duration"] = "8s".into();
    let fault = s["fault"].as_array_mut().expect("faults")[0]
        .as_table_mut()
        .expect("fault");
    fault.insert("at".into(), "2s".into());
    fault.insert("until".into(), "7s".into());
    // Fewer calls than the full run: one unlucky read weighs more, so the short form allows
    // 10 % failed reads (three aborts in a row fail a read; that is 0.8 % of them).
    for slo in s["slo"].as_array_mut().expect("slos") {
        if let Some(rate) = slo.get_mut("min_success_rate") {
            *rate = 0.9.into();
        }
    }
    let mut kill = toml::Table::new();
    kill.insert("instance".into(), "analytics".into());
    kill.insert("signal".into(), "SIGKILL".into());
    kill.insert("at".into(), "1s".into());
    s.insert("kill".into(), toml::Value::Array(vec![kill.into()]));
    let path = dir.join("short-abort-storm.toml");
    std::fs::write(&path, toml::to_string(&s).expect("toml")).expect("write");
    path
}

/// `GET /faults` of the proxy whose admin API listens at `addr`.
async fn faults(addr: &str) -> serde_json::Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    let req = format!("GET /faults HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let body = raw.split_once("\r\n\r\n").expect("http").1;
    serde_json::from_str(body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_meets_its_verdicts_and_an_impossible_one_fails_by_name() {
    for b in [
        "tally-user",
        "tally-polling",
        "tally-notification",
        "tally-analytics",
        "tally-billing",
        "tally-payment",
        "tally-proxy",
    ] {
        bin_path(b);
    }
    let data = tempfile::tempdir().expect("tmp");
    let work = tempfile::tempdir().expect("tmp");

    // A bad scenario is refused before anything runs (no platform needed).
    let bad = work.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[load]\nduration = \"1s\"\nrate = { GetPoll = 1 }\n[[fault]]\n\
         sidecar = \"gateway\"\nroute = \"polling\"\nat = \"0s\"\nabort_pct = 5\n",
    )
    .expect("write");
    let (ok, out) = chaos(data.path(), &bad).await;
    assert!(!ok, "{out}");
    assert!(out.contains("unknown field `abort_pct`"), "{out}");

    let base = free_port_range(PORTS);
    let mut cmd = Command::new(bin_path("tally"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--base-port", &base.to_string(), "--no-build"])
        .env_remove("CARGO");
    let mut up = Process::spawn_command(cmd);
    up.wait_for_stdout("tally up: ready", READY).await;
    let gw_cfg: toml::Table = std::fs::read_to_string(data.path().join("config/gateway.toml"))
        .expect("config")
        .parse()
        .expect("toml");
    let gw_admin = gw_cfg["admin"]["listen"]
        .as_str()
        .expect("admin")
        .to_string();
    let before = faults(&gw_admin).await;

    // 1. The short abort storm meets every verdict.
    let (ok, out) = chaos(data.path(), &short_abort_storm(work.path())).await;
    println!("{out}");
    assert!(ok, "every verdict met:\n{out}\n{}", up.output());
    for v in [
        "MET     slo GetPoll success rate >= 90.00%",
        "MET     slo GetResults success rate >= 90.00%",
        "MET     slo all p99 <= 2s",
        "MET     invariant votes counted exactly once",
        "MET     invariant faults cleared",
    ] {
        assert!(out.contains(v), "{v}:\n{out}");
    }
    assert!(!out.contains("NOT MET"), "{out}");
    assert!(
        out.contains("set gateway polling: abort 20% (code 14)"),
        "{out}"
    );
    assert!(out.contains("SIGKILL analytics (pid "), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    assert!(out.contains("1 route(s) back to their settings"), "{out}");
    // The gateway's fault settings are what they were before the run.
    let after = faults(&gw_admin).await;
    let polling = after.get("polling").cloned().unwrap_or_default();
    assert_eq!(
        polling["abort_percent"].as_f64(),
        Some(
            before
                .get("polling")
                .and_then(|p| p["abort_percent"].as_f64())
                .unwrap_or(0.0)
        ),
        "{after}"
    );
    // tally up restarted the killed analytics.
    up.wait_for_stdout("analytics exited", Duration::from_secs(30))
        .await;

    // 2. The scenario designed to fail exits non-zero and names the verdict.
    let (ok, out) = chaos(
        data.path(),
        &repo_root().join("tests/chaos/impossible-slo.toml"),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("NOT MET slo all p99 <= 0ns"), "{out}");
    assert!(
        out.contains("error: verdicts not met: slo all p99 <= 0ns"),
        "{out}"
    );

    // 3. Interrupted in the middle of its fault: the settings are put back all the same.
    let mut cmd = Command::new(bin_path("tally"));
    cmd.args(["chaos", "run"])
        .arg(repo_root().join("tests/chaos/abort-storm-polling.toml"))
        .arg("--data-dir")
        .arg(data.path());
    let mut run = Process::spawn_command(cmd);
    run.wait_for_stdout("set gateway polling: abort 20%", Duration::from_secs(60))
        .await;
    let during = faults(&gw_admin).await;
    assert_eq!(during["polling"]["abort_percent"].as_f64(), Some(20.0));
    run.signal(libc::SIGINT);
    let status = run
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("chaos run ignores Ctrl-C:\n{}", run.output()));
    assert!(!status.success(), "{}", run.output());
    assert!(
        run.output()
            .contains("interrupted (Ctrl-C); fault settings of 1 route(s) put back"),
        "{}",
        run.output()
    );
    let after = faults(&gw_admin).await;
    assert_eq!(
        after["polling"]["abort_percent"].as_f64(),
        Some(0.0),
        "{after}"
    );

    up.stop(Duration::from_secs(30)).await;
}
