//! The audit trail end to end: under `tally up` every service and proxy
//! writes a hash-chained audit log; admin changes (and refused attempts)
//! and signing-key rotations land in them; `tally audit verify` passes,
//! then names a modified and a removed entry; `tally audit tail` follows
//! new entries.

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
    up.stop(Duration::from_secs(60)).await;
}
