//! The `tally` CLI against the real services: readable output, `--json` that
//! parses, gRPC codes on failures with a non-zero exit, clear usage errors,
//! and help that lists only the flags each command reads.

use std::process::{Command, Output};
use tally_testkit::{Platform, free_port};

const PASSWORD: &str = "correct horse battery";

struct Cli<'a> {
    platform: &'a Platform,
}

impl Cli<'_> {
    fn run(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut cmd = Command::new(tally_testkit::bin_path("tally"));
        cmd.args(args)
            .env("TALLY_USER_ADDR", &self.platform.user_addr)
            .env("TALLY_POLL_ADDR", &self.platform.poll_addr)
            .env_remove("TALLY_TOKEN")
            .env_remove("TALLY_API_KEY")
            .env_remove("TALLY_PASSWORD");
        if let Some(t) = token {
            cmd.env("TALLY_TOKEN", t);
        }
        cmd.output().expect("run tally")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str], token: Option<&str>) -> String {
        let out = self.run(args, token);
        assert!(
            out.status.success(),
            "tally {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str], token: Option<&str>) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all, token);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("tally {args:?} --json: {e}\n{text}"))
    }

    /// Runs and expects exit 1 with `error: <CODE>: ...` on stderr.
    fn fails_with(&self, args: &[&str], token: Option<&str>, code: &str) -> String {
        let out = self.run(args, token);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "tally {args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {code}: ")),
            "tally {args:?}: expected {code}, got: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_against_running_services() {
    let platform = Platform::start().await;
    let cli = Cli {
        platform: &platform,
    };

    let signup = [
        "user",
        "signup",
        "--email",
        "lin@example.com",
        "--password",
        PASSWORD,
        "--display-name",
        "Lin",
    ];
    let out = cli.ok(&signup, None);
    assert!(
        out.contains("signed up Lin") && out.contains("lin@example.com"),
        "{out}"
    );
    cli.fails_with(&signup, None, "ALREADY_EXISTS");
    cli.fails_with(
        &[
            "user",
            "login",
            "--email",
            "lin@example.com",
            "--password",
            "not the password",
        ],
        None,
        "UNAUTHENTICATED",
    );

    let login_args = [
        "user",
        "login",
        "--email",
        "lin@example.com",
        "--password",
        PASSWORD,
    ];
    let token = cli.ok(&[&login_args[..], &["--token-only"]].concat(), None);
    let token = token.trim();
    assert_eq!(token.lines().count(), 1);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let tok = Some(token);

    let login = cli.json(&login_args, None);
    assert_eq!(login["user"]["email"], "lin@example.com");
    assert!(
        login["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    let me = cli.json(&["user", "profile"], tok);
    assert_eq!(me["email"], "lin@example.com");
    assert_eq!(me["display_name"], "Lin");
    let my_id = me["user_id"].as_str().expect("user_id").to_string();

    let poll = cli.json(
        &[
            "poll",
            "create",
            "--question",
            "Cats or dogs?",
            "--option",
            "cats",
            "--option",
            "dogs",
            "--closes-in",
            "1h",
        ],
        tok,
    );
    assert_eq!(poll["question"], "Cats or dogs?");
    assert_eq!(poll["status"], "open");
    assert_eq!(poll["owner_id"], my_id.as_str());
    assert!(poll["closes_at"].is_string(), "{poll}");
    let poll_id = poll["poll_id"].as_str().expect("poll_id").to_string();

    let text = cli.ok(&["poll", "get", &poll_id], tok);
    assert!(
        text.contains("Cats or dogs?") && text.contains("1. cats") && text.contains("2. dogs"),
        "{text}"
    );

    let listed = cli.json(&["poll", "list", "--mine"], tok);
    assert!(
        listed["polls"]
            .as_array()
            .expect("polls")
            .iter()
            .any(|p| p["poll_id"] == poll_id.as_str()),
        "{listed}"
    );

    // Vote by option number; a second vote is refused.
    let vote = cli.json(
        &["poll", "vote", &poll_id, "2", "--idempotency-key", "lin-1"],
        tok,
    );
    assert_eq!(vote["replayed"], false);
    let replay = cli.json(
        &["poll", "vote", &poll_id, "2", "--idempotency-key", "lin-1"],
        tok,
    );
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["vote"]["vote_id"], vote["vote"]["vote_id"]);
    cli.fails_with(&["poll", "vote", &poll_id, "cats"], tok, "ALREADY_EXISTS");

    let results = cli.json(&["poll", "results", &poll_id], tok);
    assert_eq!(results["total_votes"], 1);
    assert_eq!(results["results"][0]["votes"], 0);
    assert_eq!(results["results"][1]["votes"], 1);
    let text = cli.ok(&["poll", "results", &poll_id], tok);
    assert!(text.contains("1 vote") && text.contains("100.0%"), "{text}");

    // Unknown option text is caught before any vote is cast.
    let out = cli.run(&["poll", "vote", &poll_id, "hamsters"], tok);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no option `hamsters`"));

    // Service errors: code and message, exit 1; --json errors are JSON.
    cli.fails_with(&["poll", "get", "no-such-poll"], tok, "NOT_FOUND");
    let out = cli.run(&["poll", "get", "no-such-poll", "--json"], tok);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON error");
    assert_eq!(err["error"]["code"], "NOT_FOUND");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-poll"))
    );
    cli.fails_with(
        &[
            "poll",
            "create",
            "--question",
            "One option?",
            "--option",
            "only",
        ],
        tok,
        "INVALID_ARGUMENT",
    );
    cli.fails_with(
        &["poll", "get", &poll_id],
        Some("not.a.jwt"),
        "UNAUTHENTICATED",
    );

    // API keys: scopes are enforced.
    let key = cli.json(
        &[
            "user",
            "api-key",
            "create",
            "--name",
            "reader",
            "--scope",
            "polls:read",
        ],
        tok,
    );
    let secret = key["secret"].as_str().expect("secret").to_string();
    let read = cli.json(&["poll", "--api-key", &secret, "get", &poll_id], None);
    assert_eq!(read["poll_id"], poll_id.as_str());
    cli.fails_with(
        &[
            "poll",
            "create",
            "--api-key",
            &secret,
            "--question",
            "Q?",
            "--option",
            "a",
            "--option",
            "b",
        ],
        None,
        "PERMISSION_DENIED",
    );

    // The owner closes the poll.
    let closed = cli.json(&["poll", "close", &poll_id], tok);
    assert_eq!(closed["status"], "closed");
    cli.fails_with(&["poll", "close", &poll_id], tok, "FAILED_PRECONDITION");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_and_unreachable_services_exit_non_zero_with_a_message() {
    let platform = Platform::start().await;
    let cli = Cli {
        platform: &platform,
    };

    // Bad flags: clap's message, exit 2.
    let out = cli.run(&["poll", "create", "--bogus"], Some("t"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--bogus'"));
    let out = cli.run(&["user", "--timeout", "0", "profile"], Some("t"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
    let out = cli.run(
        &[
            "poll",
            "create",
            "--question",
            "Q",
            "--option",
            "a",
            "--closes-in",
            "5y",
        ],
        Some("t"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let out = cli.run(&["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));

    // Missing credentials: a hint, not a round trip.
    let out = cli.run(&["poll", "list"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token") && stderr.contains("TALLY_TOKEN"),
        "{stderr}"
    );

    // Nothing listening: UNAVAILABLE.
    let dead = format!("127.0.0.1:{}", free_port());
    cli.fails_with(
        &["poll", "get", "p1", "--poll-addr", &dead],
        Some("t"),
        "UNAVAILABLE",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_operator_commands_reach_the_consumer_admin_service() {
    let platform = Platform::start().await;
    let cli = Cli {
        platform: &platform,
    };
    let addr = format!("http://{}", platform.poll_addr);
    // Polling without a billing source runs no consumer, and says so.
    let listed = cli.json(&["consumers", "--addr", &addr], None);
    assert_eq!(listed["consumers"], serde_json::json!([]), "{listed}");
    // Unknown consumers are NOT_FOUND from the service, not a crash.
    cli.fails_with(
        &["dlq", "list", "--addr", &addr, "--consumer", "nope"],
        None,
        "NOT_FOUND",
    );
    cli.fails_with(
        &["replay", "nope", "--addr", &addr, "--from", "start"],
        None,
        "NOT_FOUND",
    );
}

/// The connection and credential flags, and who reads them.
const CONNECTION_FLAGS: [&str; 5] = [
    "--user-addr",
    "--poll-addr",
    "--token",
    "--api-key",
    "--timeout",
];

/// `tally <path> --help`: the flags its Options section defines, and its
/// subcommands.
fn help(path: &[&str]) -> (Vec<String>, Vec<String>) {
    let out = Command::new(tally_testkit::bin_path("tally"))
        .args(path)
        .arg("--help")
        .env_remove("TALLY_TOKEN")
        .env_remove("TALLY_API_KEY")
        .output()
        .expect("run tally");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(out.status.success(), "tally {path:?} --help: {text}");
    let mut section = "";
    let (mut flags, mut commands) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line.trim_end_matches(':');
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match (section, words.first()) {
            ("Options", Some(first)) if first.starts_with('-') => {
                // `-h, --help  Print help` or `--user-addr <USER_ADDR>  ...`
                for w in words.iter().take(2) {
                    let w = w.trim_end_matches(',');
                    if w.starts_with("--") {
                        flags.push(w.to_string());
                    }
                }
            }
            ("Commands", Some(name)) if *name != "help" => commands.push(name.to_string()),
            _ => {}
        }
    }
    (flags, commands)
}

/// The connection flags a command reads; every command is listed, so a new
/// one fails here until its flags are decided.
fn reads(path: &[&str]) -> &'static [&'static str] {
    const USER: &[&str] = &["--user-addr", "--timeout"];
    const USER_AS_CALLER: &[&str] = &["--user-addr", "--timeout", "--token", "--api-key"];
    const POLL: &[&str] = &["--poll-addr", "--timeout", "--token", "--api-key"];
    const POLL_AND_USER: &[&str] = &[
        "--poll-addr",
        "--user-addr",
        "--timeout",
        "--token",
        "--api-key",
    ];
    match path {
        ["up"]
        | ["certs", ..]
        | ["audit", ..]
        | ["dlq", ..]
        | ["replay"]
        | ["consumers"]
        | ["rollout", ..]
        | ["traces"]
        | ["trace"]
        | ["chaos", ..] => &[],
        ["user", "signup" | "login" | "logout"] | ["keys", "rotate"] => USER,
        ["user", "profile"] | ["user", "api-key", ..] => USER_AS_CALLER,
        ["poll", "list"] => POLL_AND_USER,
        ["poll", "create" | "get" | "close" | "vote" | "results"] => POLL,
        other => panic!("tally {other:?}: decide which connection flags it reads"),
    }
}

#[test]
fn each_command_shows_only_the_flags_it_reads() {
    let (top, _) = help(&[]);
    for f in CONNECTION_FLAGS {
        assert!(!top.contains(&f.to_string()), "tally --help lists {f}");
    }
    assert!(top.contains(&"--json".to_string()), "{top:?}");
    // Walk the command tree down to every command that runs something.
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut leaves = 0;
    while let Some(path) = todo.pop() {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let (flags, commands) = help(&p);
        if !commands.is_empty() {
            for c in commands {
                let mut next = path.clone();
                next.push(c);
                todo.push(next);
            }
            continue;
        }
        leaves += 1;
        let want = reads(&p);
        for f in CONNECTION_FLAGS {
            assert_eq!(
                flags.contains(&f.to_string()),
                want.contains(&f),
                "tally {} --help: {f} (shown: {flags:?})",
                p.join(" ")
            );
        }
        assert!(
            flags.contains(&"--json".to_string()),
            "tally {} --help: --json",
            p.join(" ")
        );
    }
    // up; certs x4; user x4 + api-key x3; poll x6; keys rotate; dlq x3, replay, consumers;
    // rollout start, status.
    // audit verify, tail.
    // traces, trace; chaos run, check.
    assert_eq!(leaves, 32);
}
