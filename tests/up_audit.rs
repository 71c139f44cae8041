//! The audit trail end to end: under `tally up` every service and proxy
//! writes a hash-chained audit log; admin changes (and refused attempts)
//! signing-key rotations, and dead-letter redrives and replays of a consumer
//! land in them; `tally audit verify` passes, then names a modified, a
//! removed and a cut-off entry; `tally audit tail` follows new entries.

use std::process::{Command, Output};
use std::time::Duration;
use tally_testkit::{Process, TallyUp, admin_request, bin_path};

const FOLLOWED: Duration = Duration::from_secs(60);
const FAULTS: &str = r#"{"route": "user", "faults": {"abort_percent": 0}}"#;

fn tally(args: &[&str]) -> Output {
    Command::new(bin_path("tally"))
        .args(args)
        .env_remove("CARGO")
        .output()
        .expect("run tally")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Audit entries of `log` with this action, as parsed JSON lines.
fn entries(log: &str, action: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_logs_record_operator_actions_and_reveal_tampering() {
    let mut up = TallyUp::start(&[]).await;
    let d = up.data().to_path_buf();
    let data_arg = d.display().to_string();

    // Follow polling's sidecar log from now on.
    let mut tail = Process::spawn(
        bin_path("tally"),
        ["audit", "tail", "polling-proxy", "--data-dir", &data_arg],
    );

    // A refused and an accepted admin change, and a key rotation.
    let admin = up.admin_addr("polling-proxy");
    let refused = admin_request(&admin, None, "PUT", "/faults", FAULTS).await;
    assert_eq!(refused.status, 401);
    let accepted = up.admin("polling-proxy", "PUT", "/faults", FAULTS).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let user_addr = up.addr("user");
    let token_file = d.join("data/user/admin-token").display().to_string();
    for _ in 0..2 {
        let rotated = tally(&[
            "keys",
            "rotate",
            "--user-addr",
            &user_addr,
            "--admin-token-file",
            &token_file,
        ]);
        assert!(rotated.status.success(), "{}", text(&rotated));
    }

    let followed = tail.wait_for_stdout("admin.faults", FOLLOWED).await;
    assert!(followed.contains("admin.put /faults denied"), "{followed}");
    tail.stop(Duration::from_secs(10)).await;
    let user_log = std::fs::read_to_string(d.join("audit/user.log")).expect("user audit log");
    assert!(
        user_log.contains("\"keys.rotate\"") && user_log.contains("\"outcome\":\"ok\""),
        "{user_log}"
    );

    // Operator actions on analytics' consumer: a replay, a redrive of every dead
    // letter (there are none) and a redrive of an event that is not dead-lettered.
    let analytics = up.addr("analytics");
    let listed = tally(&["consumers", "--addr", &analytics]);
    assert!(listed.status.success(), "{}", text(&listed));
    let consumer = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .next()
        .expect("a consumer")
        .to_string();
    assert!(consumer.starts_with("analytics-"), "{}", text(&listed));
    let replayed = tally(&["replay", "--addr", &analytics, &consumer, "--from", "start"]);
    assert!(replayed.status.success(), "{}", text(&replayed));
    let redriven = tally(&[
        "dlq",
        "redrive",
        "--addr",
        &analytics,
        "--consumer",
        &consumer,
        "--all",
    ]);
    assert!(redriven.status.success(), "{}", text(&redriven));
    let unknown = tally(&[
        "dlq",
        "redrive",
        "--addr",
        &analytics,
        "--consumer",
        &consumer,
        "no-such-event",
    ]);
    assert!(!unknown.status.success(), "{}", text(&unknown));
    let analytics_log =
        std::fs::read_to_string(d.join("audit/analytics.log")).expect("analytics audit log");
    let replays = entries(&analytics_log, "events.replay");
    assert_eq!(replays.len(), 1, "{analytics_log}");
    assert_eq!(replays[0]["target"], consumer.as_str());
    assert_eq!(replays[0]["outcome"], "ok");
    assert_eq!(replays[0]["detail"], "from offset 0, rebuild false");
    assert_eq!(
        replays[0]["actor"], "direct",
        "called on the service's own port"
    );
    let redrives = entries(&analytics_log, "dlq.redrive");
    assert_eq!(redrives.len(), 2, "{analytics_log}");
    assert_eq!(redrives[0]["target"], format!("{consumer}/"));
    assert_eq!(redrives[0]["outcome"], "ok");
    assert_eq!(redrives[0]["detail"], "redriven 0, still failing 0");
    assert_eq!(redrives[1]["target"], format!("{consumer}/no-such-event"));
    assert!(
        redrives[1]["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("failed")),
        "{analytics_log}"
    );

    // Every log verifies, one per service and proxy.
    let ok = tally(&["audit", "verify", "--data-dir", &data_arg]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(text(&ok).matches("ok ").count(), 13, "{}", text(&ok));

    // Modify one entry, remove another: verify names both logs and fails.
    let proxy_log = d.join("audit/polling-proxy.log");
    let original = std::fs::read_to_string(&proxy_log).expect("proxy log");
    std::fs::write(&proxy_log, original.replacen("\"denied\"", "\"ok\"", 1)).expect("tamper");
    let kept: Vec<&str> = user_log.lines().collect();
    assert!(kept.len() >= 2, "{user_log}");
    let mut without_first = kept[1..].join("\n");
    without_first.push('\n');
    std::fs::write(d.join("audit/user.log"), without_first).expect("remove an entry");
    let bad = tally(&["audit", "verify", "--data-dir", &data_arg]);
    let out = text(&bad);
    assert!(!bad.status.success(), "{out}");
    assert!(
        out.contains("BROKEN") && out.contains("polling-proxy.log"),
        "{out}"
    );
    assert!(out.contains("modified"), "{out}");
    assert!(out.contains("user.log") && out.contains("removed"), "{out}");
    assert!(out.contains("2 of 13"), "{out}");

    // Cut the last entry off analytics' log: the chain alone still holds, the head file does not.
    let analytics_log = d.join("audit/analytics.log");
    let kept = std::fs::read_to_string(&analytics_log).expect("analytics log");
    let mut cut: Vec<&str> = kept.lines().collect();
    cut.pop();
    std::fs::write(&analytics_log, cut.join("\n") + "\n").expect("cut the end");
    let cut_off = tally(&[
        "audit",
        "verify",
        "--data-dir",
        &data_arg,
        &analytics_log.display().to_string(),
    ]);
    let out = text(&cut_off);
    assert!(!cut_off.status.success(), "{out}");
    assert!(out.contains("removed from the end"), "{out}");
    up.stop(Duration::from_secs(60)).await;
}
