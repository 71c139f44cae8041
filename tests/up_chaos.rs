//! `tally chaos run` end to end against one real `tally up`, each shipped scenario in a
//! short form (seconds instead of minutes), in this order:
//! - a scenario with an unknown key is refused before anything runs;
//! - the abort storm on polling (plus a SIGKILL of analytics) meets every verdict, the
//!   notification watchers included, and puts the fault settings back;
//! - the payment outage during subscriptions: every saga ends, the ledger reconciles;
//! - certificate rotation of three proxies under load: each proxy loads its new
//!   certificate, no call fails;
//! - the impossible SLO fails by name; the saga invariant fails by name when payment is
//!   frozen (SIGSTOP) for the whole run, so the check can fail for its reason;
//! - a run interrupted with Ctrl-C during its fault puts the fault settings back;
//! - last (it restarts every service), the rolling restart of every service: not one failed
//!   call, no vote lost or doubled, every saga ended, no dead letter, the notification
//!   watchers resumed without gaps.
//!
//! The Redis restart scenario needs `tally up --redis`: the platform above refuses it by
//! name, and a second test runs it against a `tally up --redis` of its own (after the first
//! test's platform is gone: the two never run at once).
//!
//! Load calls carry fresh idempotency keys and each run its own users, so the runs do not
//! disturb each other's verdicts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_testkit::{Process, TallyUp, bin_path, free_port_range};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READY: Duration = Duration::from_secs(240);
/// Every port `tally up` takes from `--base-port`.
const PORTS: u16 = tally_testkit::TALLY_UP_PORTS;
/// One `tally up` at a time: the tests of this file take turns.
static ONE_PLATFORM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// How long one chaos run may take at most (setup, load, settling, verdicts).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// This checkout's root (the root package's directory), where the scenarios are.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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

/// A shipped scenario with `edit` applied, written to `dir`.
fn shorten(dir: &Path, file: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("tests/chaos").join(file))
        .expect("shipped scenario");
    let mut s: toml::Table = text.parse().expect("toml");
    edit(&mut s);
    let path = dir.join(format!("short-{file}"));
    std::fs::write(&path, toml::to_string(&s).expect("toml")).expect("write");
    path
}

fn table(v: &mut toml::Value) -> &mut toml::Table {
    v.as_table_mut().expect("table")
}

fn entries<'a>(s: &'a mut toml::Table, key: &str) -> &'a mut Vec<toml::Value> {
    s.get_mut(key)
        .and_then(|v| v.as_array_mut())
        .unwrap_or_else(|| panic!("no [[{key}]]"))
}

/// The shipped abort storm, shortened: 8 s of load, aborts from 2 s to 7 s, and a SIGKILL
/// of analytics (not on the load's path) to exercise kills.
fn short_abort_storm(dir: &Path) -> PathBuf {
    shorten(dir, "abort-storm-polling.toml", |s| {
        s["load"]["duration"] = "8s".into();
        let fault = table(&mut entries(s, "fault")[0]);
        fault.insert("at".into(), "2s".into());
        fault.insert("until".into(), "7s".into());
        // Fewer calls than the full run: one unlucky read weighs more, so the short form
        // allows 10 % failed reads (three aborts in a row fail a read; that is 0.8 % of them).
        for slo in entries(s, "slo") {
            if let Some(rate) = slo.get_mut("min_success_rate") {
                *rate = 0.9.into();
            }
        }
        let mut kill = toml::Table::new();
        kill.insert("instance".into(), "analytics".into());
        kill.insert("signal".into(), "SIGKILL".into());
        kill.insert("at".into(), "1s".into());
        s.insert("kill".into(), toml::Value::Array(vec![kill.into()]));
    })
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

/// Asserts each of `verdicts` is reported MET, nothing is NOT MET and no step failed.
fn all_met(out: &str, verdicts: &[&str]) {
    for v in verdicts {
        assert!(out.contains(&format!("MET     {v}")), "{v}:\n{out}");
    }
    assert!(!out.contains("NOT MET"), "{out}");
    assert!(!out.contains("tally chaos: FAILED"), "{out}");
    assert!(
        out.contains("MET     every scheduled fault carried out"),
        "{out}"
    );
}

/// SIGSTOP or SIGCONT to the instance whose pid `tally up` keeps in `<data>/run/`.
fn signal_instance(data: &Path, instance: &str, sig: i32) {
    let pid: i32 = std::fs::read_to_string(data.join("run").join(format!("{instance}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: kill(2) on the pid tally up wrote for its child; no memory is shared.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "signal {sig} to {instance} ({pid})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scenarios_in_short_form_against_one_tally_up() {
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
    let _turn = ONE_PLATFORM.lock().await;
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

    // A scenario that needs Redis is refused by a platform without it, before any load.
    let (ok, out) = chaos(
        data.path(),
        &repo_root().join("tests/chaos/redis-restart.toml"),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("requires the `redis` instance") && out.contains("tally up --redis"),
        "{out}"
    );
    assert!(!out.contains("setting up"), "nothing ran: {out}");

    // 1. The short abort storm meets every verdict.
    let (ok, out) = chaos(data.path(), &short_abort_storm(work.path())).await;
    println!("{out}");
    assert!(ok, "every verdict met:\n{out}\n{}", up.output());
    // The fault draws' seed is printed, so the run can be replayed with `--seed`.
    assert!(out.contains("(fault seed "), "{out}");
    all_met(
        &out,
        &[
            "slo GetPoll success rate >= 90.00%",
            "slo GetResults success rate >= 90.00%",
            "slo all p99 <= 2s",
            "every scheduled fault carried out",
            "invariant votes counted exactly once",
            "invariant notification streams resumed without gaps",
            "invariant faults cleared",
            "invariant no dead letters unexplained: 0 new dead letter(s)",
        ],
    );
    assert!(
        out.contains("set gateway polling: abort 20% (code 14)"),
        "{out}"
    );
    assert!(out.contains("SIGKILL analytics (pid "), "{out}");
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

    // 2. A payment outage during subscriptions: every saga ends, the ledger reconciles.
    let outage = shorten(work.path(), "payment-outage.toml", |s| {
        s["load"]["duration"] = "10s".into();
        let fault = table(&mut entries(s, "fault")[0]);
        fault.insert("at".into(), "1s".into());
        fault.insert("until".into(), "8s".into());
        // Ten starts: one failed start is already 10 %.
        for slo in entries(s, "slo") {
            if let Some(rate) = slo.get_mut("min_success_rate") {
                *rate = 0.9.into();
            }
        }
    });
    let (ok, out) = chaos(data.path(), &outage).await;
    println!("{out}");
    assert!(ok, "{out}\n{}", up.output());
    all_met(
        &out,
        &[
            "invariant every saga completed or compensated",
            "invariant faults cleared",
            "invariant no dead letters unexplained",
        ],
    );
    assert!(out.contains("ledger reconciles"), "{out}");
    assert!(
        out.contains("set payment-proxy inbound: abort 50% (code 14), delay 30% by 200ms"),
        "{out}"
    );

    // 3. Certificate rotation under load: each proxy loads its new certificate, no call fails.
    let rotation = shorten(work.path(), "cert-rotation.toml", |s| {
        s["load"]["duration"] = "8s".into();
        for (r, at) in entries(s, "rotate_cert").iter_mut().zip(["2s", "4s", "6s"]) {
            table(r).insert("at".into(), at.into());
        }
    });
    let (ok, out) = chaos(data.path(), &rotation).await;
    println!("{out}");
    assert!(ok, "{out}\n{}", up.output());
    all_met(
        &out,
        &[
            "slo all success rate >= 100.00%",
            "every scheduled fault carried out: 4 step(s)",
            "invariant every saga completed or compensated",
            "invariant votes counted exactly once",
        ],
    );
    for proxy in ["gateway", "polling-proxy", "payment-proxy"] {
        assert!(
            out.contains(&format!("rotated {proxy}'s certificate: serial ")),
            "{proxy}:\n{out}"
        );
    }

    // 4. The scenario designed to fail exits non-zero and names the verdict.
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

    // 5. The saga invariant can fail: payment frozen for the whole run, sagas given 2 s
    // (a frozen payment cannot list its dead letters either, so that check is off).
    let frozen = work.path().join("frozen-payment.toml");
    std::fs::write(
        &frozen,
        "name = \"payment frozen\"\n[load]\nduration = \"3s\"\ntimeout = \"8s\"\n\
         rate = { StartSubscription = 1 }\n[invariants]\nsaga_wait = \"2s\"\n\
         dead_letters_explained = false\n",
    )
    .expect("write");
    signal_instance(data.path(), "payment", libc::SIGSTOP);
    let (ok, out) = chaos(data.path(), &frozen).await;
    signal_instance(data.path(), "payment", libc::SIGCONT);
    println!("{out}");
    assert!(!ok, "{out}");
    assert!(
        out.contains("NOT MET invariant every saga completed or compensated"),
        "{out}"
    );
    assert!(out.contains("saga still running after 2s"), "{out}");
    assert!(
        out.contains("error: verdicts not met: invariant every saga completed or compensated"),
        "{out}"
    );

    // 6. Interrupted in the middle of its fault: the settings are put back all the same.
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

    // 7. Last: a rolling restart of every service under load: zero failed calls (feeds end
    // at drain, the inbound sidecar holds calls while its app restarts, breaker probes are
    // judged by their response head), and the invariants hold.
    let rolling = shorten(work.path(), "rolling-restart.toml", |s| {
        s["load"]["duration"] = "30s".into();
        for (k, at) in entries(s, "kill")
            .iter_mut()
            .zip(["1s", "2s", "3s", "4s", "5s", "6s"])
        {
            table(k).insert("at".into(), at.into());
        }
        // The scenario's own SLO stands: every call succeeds (100 %).
    });
    let (ok, out) = chaos(data.path(), &rolling).await;
    println!("{out}");
    assert!(ok, "{out}\n{}", up.output());
    all_met(
        &out,
        &[
            "slo all success rate >= 100.00%",
            "every scheduled fault carried out: 7 step(s)",
            "invariant votes counted exactly once",
            "invariant notification streams resumed without gaps",
            "invariant every saga completed or compensated",
            "invariant no dead letters unexplained",
        ],
    );
    for service in [
        "analytics",
        "notification",
        "payment",
        "user",
        "billing",
        "polling",
    ] {
        assert!(out.contains(&format!("SIGTERM {service} (pid ")), "{out}");
    }

    up.stop(Duration::from_secs(30)).await;
}

/// The shipped Redis restart, short: 12 s of logins, refreshes with the setup's sessions,
/// results reads and votes, and a SIGKILL of `tally up --redis`'s redis-server at 4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_against_tally_up_with_redis() {
    let _turn = ONE_PLATFORM.lock().await;
    let work = tempfile::tempdir().expect("tmp");
    let mut up = TallyUp::builder()
        .args(["--redis"])
        .ports(tally_testkit::TALLY_UP_PORTS + tally_testkit::TALLY_UP_REDIS_PORTS)
        .start()
        .await;
    assert!(
        up.ready_output().contains("redis is ready"),
        "{}",
        up.output()
    );
    let url = format!(
        "redis://127.0.0.1:{}",
        up.base_port() + tally_testkit::TALLY_UP_PORTS
    );
    assert_eq!(
        up.config("user")["user"]["redis_url"].as_str(),
        Some(url.as_str())
    );
    assert_eq!(
        up.config("polling")["cache"]["url"].as_str(),
        Some(url.as_str())
    );
    let scenario = shorten(work.path(), "redis-restart.toml", |s| {
        s["load"]["duration"] = "12s".into();
        table(&mut entries(s, "kill")[0]).insert("at".into(), "4s".into());
        // Fewer calls: one failure weighs more. Login and RefreshAccessToken may fail while
        // Redis is down (measured: at most one Login of the full run's 30); reads and
        // votes do not touch it.
        for slo in entries(s, "slo") {
            let slo = table(slo);
            let short = match slo.get("method").and_then(|m| m.as_str()) {
                Some("Login" | "RefreshAccessToken") => 0.5,
                _ => 0.9,
            };
            if let Some(rate) = slo.get_mut("min_success_rate") {
                *rate = short.into();
            }
        }
    });
    let pid_before = up.instance_pid("redis");
    let (ok, out) = chaos(up.data(), &scenario).await;
    println!("{out}");
    assert!(ok, "{out}\n{}", up.output());
    all_met(
        &out,
        &[
            "slo Login success rate >= 50.00%",
            "slo RefreshAccessToken success rate >= 50.00%",
            "slo GetResults success rate >= 90.00%",
            "slo CastVote success rate >= 90.00%",
            "every scheduled fault carried out: 2 step(s)",
            "invariant votes counted exactly once",
            "sessions from before the faults still valid",
            "invariant faults cleared",
        ],
    );
    assert!(
        out.contains(&format!("SIGKILL redis (pid {pid_before})")),
        "{out}"
    );
    // tally up restarted it: a new process on the same port and data.
    up.wait_for_stdout("redis is ready again", Duration::from_secs(30))
        .await;
    assert!(
        up.output().contains("redis exited (signal: 9"),
        "{}",
        up.output()
    );
    assert_ne!(up.instance_pid("redis"), pid_before);
    // Its append-only file is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = up.data().join("data/redis");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let aof = dir.join("appendonlydir");
        for f in std::fs::read_dir(&aof).expect("aof dir").flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
        }
    }
    up.stop(Duration::from_secs(30)).await;
}
