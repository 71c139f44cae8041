//! `tally up` end to end: the real launcher starting the real service
//! binaries, driven with the real grpcurl exactly as the README says, plus
//! crash restarts, clean shutdown, replicas refused on embedded storage and
//! bad input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_sdk::{Client, Credentials};
use tally_testkit::{TALLY_UP_SERVICES as SERVICES, TallyUp, grpcurl, is_serving, repo_root};

const READY: Duration = tally_testkit::TALLY_UP_READY_TIMEOUT;

/// The ```sh blocks of the README between `<!-- {name}:start -->` and
/// `<!-- {name}:end -->`.
fn readme_blocks(name: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find(&format!("<!-- {name}:start -->"))
        .unwrap_or_else(|| panic!("README has no {name}:start marker"));
    let end = readme
        .find(&format!("<!-- {name}:end -->"))
        .unwrap_or_else(|| panic!("README has no {name}:end marker"));
    let region = &readme[start..end];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in region.lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(!blocks.is_empty(), "README {name} section has no sh blocks");
    blocks
}

/// Runs the blocks as one bash script (state such as `$TOKEN` carries over)
/// and returns each block's stdout.
fn run_blocks(blocks: &[String], env: &[(&str, String)]) -> Vec<String> {
    let mut script = String::new();
    for (i, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '=== block {i}'\n{b}"));
    }
    let venv_bin = grpcurl().parent().expect("grpcurl dir").to_path_buf();
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(repo_root())
        .env("PATH", path)
        .env_remove("TALLY_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "README commands failed ({})\n--- script ---\n{script}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: Vec<String> = stdout
        .split("=== block ")
        .skip(1)
        .map(|p| {
            p.split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(parts.len(), blocks.len(), "one output per block:\n{stdout}");
    parts
}

/// The JSON documents grpcurl printed, one per call.
fn json_docs(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not a JSON stream: {e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_works_against_tally_up() {
    let up = TallyUp::start(&[]).await;
    // Every service is SERVING on its port, in the documented order.
    let health = [
        "tally.user.v1.UserService",
        "tally.poll.v1.PollService",
        "tally.notification.v1.NotificationService",
        "tally.analytics.v1.AnalyticsService",
        "tally.billing.v1.BillingService",
        "tally.payment.v1.PaymentService",
    ];
    for (i, service) in health.iter().enumerate() {
        let addr = format!("127.0.0.1:{}", up.base_port() + i as u16);
        assert!(is_serving(&addr, service).await, "{service} at {addr}");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let poll_file = tmp.path().join("poll.json");
    let blocks: Vec<String> = readme_blocks("walkthrough")
        .into_iter()
        .map(|b| {
            b.replace("127.0.0.1:50051", &up.addr("user"))
                .replace("127.0.0.1:50052", &up.addr("polling"))
                .replace("/tmp/tally-poll.json", &poll_file.display().to_string())
        })
        .collect();
    assert_eq!(blocks.len(), 5, "the test knows the README's five steps");
    let out = run_blocks(&blocks, &[]);

    // 1. list and describe through reflection.
    assert!(out[0].contains("tally.user.v1.UserService"), "{}", out[0]);
    assert!(out[0].contains("grpc.health.v1.Health"), "{}", out[0]);
    assert!(
        !out[0]
            .lines()
            .any(|l| l.trim() == "tally.poll.v1.PollService"),
        "the user port lists only what it serves: {}",
        out[0]
    );
    assert!(out[0].contains("rpc CastVote"), "{}", out[0]);
    assert!(out[0].contains("rpc GetResults"), "{}", out[0]);

    // 2. SignUp and Login answers.
    let docs = json_docs(&out[1]);
    assert_eq!(docs.len(), 2, "{}", out[1]);
    assert_eq!(docs[0]["user"]["email"], "ada@example.com");
    assert_eq!(docs[0]["user"]["displayName"], "Ada");
    let user_id = docs[0]["user"]["userId"]
        .as_str()
        .expect("userId")
        .to_string();
    assert!(!user_id.is_empty());
    assert_eq!(docs[1]["user"]["userId"], user_id.as_str());
    assert!(
        docs[1]["accessToken"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "a JWT: {}",
        docs[1]
    );

    // 3. TOKEN captured silently.
    assert!(out[2].trim().is_empty(), "{}", out[2]);

    // 4. CreatePoll, owned by Ada, with opt-1 and opt-2.
    let created = &json_docs(&out[3])[0]["poll"];
    assert_eq!(created["question"], "Tea or coffee?");
    assert_eq!(created["ownerId"], user_id.as_str());
    assert_eq!(created["status"], "POLL_STATUS_OPEN");
    assert_eq!(created["options"][0]["optionId"], "opt-1");
    assert_eq!(created["options"][0]["text"], "tea");
    assert_eq!(created["options"][1]["optionId"], "opt-2");
    let poll_id = created["pollId"].as_str().expect("pollId").to_string();

    // 5. CastVote and GetResults.
    let docs = json_docs(&out[4]);
    assert_eq!(docs.len(), 2, "{}", out[4]);
    assert_eq!(docs[0]["vote"]["pollId"], poll_id.as_str());
    assert_eq!(docs[0]["vote"]["optionId"], "opt-1");
    assert_eq!(docs[0]["vote"]["voterId"], user_id.as_str());
    let results = &docs[1];
    assert_eq!(results["pollId"], poll_id.as_str());
    assert_eq!(results["totalVotes"], "1");
    assert_eq!(results["results"][0]["text"], "tea");
    assert_eq!(results["results"][0]["votes"], "1");
    // proto3 JSON leaves zero counts out.
    assert!(results["results"][1]["votes"].is_null() || results["results"][1]["votes"] == "0");

    // The CLI section of the README, against the same platform.
    let target_dir = tally_testkit::bin_path("tally")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let cli_blocks: Vec<String> = readme_blocks("cli")
        .into_iter()
        .map(|b| {
            b.lines()
                .map(|l| {
                    if l.starts_with("cargo build") {
                        // Already built by the test run; use that build.
                        format!("export PATH=\"{}:$PATH\"", target_dir.display())
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        })
        .collect();
    let out = run_blocks(
        &cli_blocks,
        &[
            ("TALLY_USER_ADDR", up.addr("user")),
            ("TALLY_POLL_ADDR", up.addr("polling")),
        ],
    );
    let all = out.join("\n");
    assert!(all.contains("signed up Grace"), "{all}");
    assert!(all.contains("grace@example.com"), "{all}");
    assert!(all.contains("cast vote"), "{all}");
    assert!(all.contains("1 vote"), "{all}");
    assert!(all.contains("Tabs or spaces?"), "{all}");
    assert!(all.contains("(closed)"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_up_restarts_a_killed_service_with_its_data() {
    let mut up = TallyUp::start(&[]).await;
    let token = up.sign_up("kim@example.com").await;
    let kim = Client::connect(&up.addr("user"), &up.addr("polling"))
        .await
        .expect("connect")
        .with_credentials(Credentials::Bearer(token));
    let poll = kim
        .create_poll("Still here?", ["yes", "no"], None)
        .await
        .expect("create");
    kim.cast_vote(&poll.poll_id, &poll.options[0].option_id, "k1")
        .await
        .expect("vote");

    let old = up.instance_pid("polling");
    // SAFETY: kill(2) on a pid this test's `tally up` started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(old as i32, libc::SIGKILL);
    }
    up.wait_for_stdout("polling is SERVING again", READY).await;
    let out = up.stdout();
    assert!(out.contains("polling exited (signal: 9"), "{out}");
    let new = up.instance_pid("polling");
    assert_ne!(old, new, "a new process runs");
    assert!(is_serving(&up.addr("polling"), "tally.poll.v1.PollService").await);

    // The restarted instance kept its data.
    let results = kim
        .get_results(&poll.poll_id)
        .await
        .expect("results after restart");
    assert_eq!(results.total_votes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_child_and_exits_zero() {
    let mut up = TallyUp::start(&[]).await;
    let pids: Vec<u32> = SERVICES.iter().map(|s| up.instance_pid(s)).collect();
    up.signal(libc::SIGTERM);
    let status = up
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("tally up did not exit\n{}", up.output()));
    assert!(status.success(), "exit status {status}\n{}", up.output());
    let out = up.stdout();
    assert!(out.contains("tally up: stopped"), "{out}");
    for s in SERVICES {
        assert!(
            out.contains(&format!("{s} stopped (exit status: 0)")),
            "{out}"
        );
    }
    for pid in pids {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "child {pid} still exists after tally up exited"
        );
    }
    for port in up.base_port()..up.base_port() + SERVICES.len() as u16 {
        let addr = format!("127.0.0.1:{port}");
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{addr} still accepts connections"
        );
    }
    assert!(
        !up.data().join("run/user.pid").exists(),
        "pid files are removed"
    );
}

/// `tally up <args>` (after `--no-build --data-dir <data>` when given), which
/// must exit with `code` before starting anything; its stderr.
fn refused(data: Option<&Path>, args: &[&str], code: i32) -> String {
    let mut cmd = Command::new(tally_testkit::bin_path("tally"));
    cmd.arg("up");
    if let Some(data) = data {
        cmd.arg("--no-build").arg("--data-dir").arg(data);
    }
    let out = cmd
        .args(args)
        .env_remove("CARGO")
        .output()
        .expect("run tally up");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

#[test]
fn replicas_on_embedded_storage_are_refused_with_the_reason_and_the_fix() {
    let data = tempfile::tempdir().expect("tmp");
    let stderr = refused(Some(data.path()), &["--replicas", "polling=2"], 1);
    assert!(stderr.contains("--replicas polling=2 refused"), "{stderr}");
    assert!(stderr.contains("embedded database file"), "{stderr}");
    assert!(stderr.contains("shared store"), "{stderr}");
    assert!(
        !data.path().join("config").exists(),
        "nothing is written or started"
    );
}

#[test]
fn a_port_in_use_is_named_with_the_flag_to_change_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let data = tempfile::tempdir().expect("tmp");
    let stderr = refused(Some(data.path()), &["--base-port", &port.to_string()], 1);
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
    assert!(stderr.contains("--base-port"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_flags_get_a_clear_message() {
    let stderr = refused(None, &["--replicas", "0"], 2);
    assert!(
        stderr.contains("replicas must be between 1 and 16"),
        "{stderr}"
    );

    let stderr = refused(None, &["--base-port", "80"], 2);
    assert!(stderr.contains("--base-port"), "{stderr}");

    let data = tempfile::tempdir().expect("tmp");
    let stderr = refused(Some(data.path()), &["--replicas", "pollnig=2"], 1);
    assert!(stderr.contains("no service `pollnig`"), "{stderr}");
    assert!(stderr.contains("user, polling"), "{stderr}");
}
