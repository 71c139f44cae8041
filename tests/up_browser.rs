//! A real browser against a real `tally up`: the web client in
//! `tests/browser/` (the gRPC-Web library `@connectrpc/connect-web`, code
//! generated from `proto/`) runs in headless Chromium, driven by
//! `puppeteer-core`, against the gateway. It signs up, logs in, creates a
//! poll, votes, reads results and watches live counts over server streaming,
//! sees UNAUTHENTICATED and ALREADY_EXISTS as the library reports them, and
//! the same page from an origin the gateway does not allow is refused by CORS.
//!
//! Needs node, Chromium and the npm packages (`bash scripts/test` installs
//! them); without them the test fails saying so, it never passes silently.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_testkit::{Process, TallyUp, repo_root};

/// Code generation and bundling (buf, protoc-gen-es, esbuild).
const BUILD: Duration = Duration::from_secs(180);
/// The browser scenario; drive.mjs gives up by itself after 240 s.
const DRIVE: Duration = Duration::from_secs(300);
/// The page's allowed origin: one of `tally up`'s dev origins for the gateway.
const APP_ORIGIN: &str = "http://localhost:5173";
/// Oldest Node the pinned npm packages support (Debian bookworm ships 18).
const MIN_NODE_MAJOR: u32 = 18;
const SETUP_HINT: &str = "run `bash scripts/test` once: it installs chromium and nodejs (apt) \
     and the npm packages into tests/browser/node_modules";

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// node, Chromium and the installed npm packages, or a panic naming what is
/// missing and how to get it.
fn prerequisites(browser_dir: &Path) -> (PathBuf, PathBuf) {
    let node = on_path("node").unwrap_or_else(|| panic!("`node` is not on PATH; {SETUP_HINT}"));
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP_HINT}", node.display()));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= MIN_NODE_MAJOR,
        "node {version} is older than {MIN_NODE_MAJOR}; {SETUP_HINT}"
    );
    let chromium = std::env::var_os("TALLY_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .unwrap_or_else(|| {
            panic!("Chromium not found (`chromium` on PATH or TALLY_CHROMIUM); {SETUP_HINT}")
        });
    for package in ["puppeteer-core", "esbuild", "@connectrpc/connect-web"] {
        let dir = browser_dir.join("node_modules").join(package);
        assert!(
            dir.is_dir(),
            "npm package {package} is not installed in {}; {SETUP_HINT}",
            browser_dir.join("node_modules").display()
        );
    }
    (node, chromium)
}

/// PATH with `<repo>/.venv/bin` first, where scripts/test installs buf.
fn path_with_venv() -> std::ffi::OsString {
    let venv = repo_root().join(".venv/bin");
    let mut dirs = vec![venv];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH entries")
}

/// Runs a node script to completion; panics with its output if it fails or
/// overruns `timeout`. Returns its stdout.
fn run_node(node: &Path, args: &[&std::ffi::OsStr], timeout: Duration) -> String {
    let mut cmd = Command::new(node);
    cmd.args(args).env("PATH", path_with_venv());
    let mut p = Process::spawn_command(cmd);
    let Some(status) = p.wait_exit(timeout) else {
        p.signal(libc::SIGTERM);
        p.wait_exit(Duration::from_secs(10));
        p.kill();
        panic!("{args:?} did not finish within {timeout:?}\n{}", p.output());
    };
    assert!(
        status.success(),
        "{args:?} failed ({status})\n{}",
        p.output()
    );
    p.stdout()
}

/// `v[key]["ok"]`, or a panic showing what the page got instead.
fn ok<'a>(v: &'a Value, key: &str) -> &'a Value {
    v[key]
        .get("ok")
        .unwrap_or_else(|| panic!("{key}: expected success, the page saw {}", v[key]))
}

/// The code name the client library reported for `v[key]`'s error.
fn error_code<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{key}: expected a gRPC error, the page saw {}", v[key]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_uses_the_gateway_through_a_grpc_web_client_library() {
    let browser_dir = repo_root().join("tests/browser");
    let (node, chromium) = prerequisites(&browser_dir);
    // The page: code generated from proto/ and bundled.
    let started = tokio::time::Instant::now();
    let work = tempfile::tempdir().expect("tmp");
    run_node(
        &node,
        &[
            browser_dir.join("build.mjs").as_os_str(),
            work.path().as_os_str(),
        ],
        BUILD,
    );
    eprintln!("page built in {:?}", started.elapsed());
    let site = work.path().join("site");
    assert!(site.join("app.js").is_file(), "build.mjs made no app.js");

    let up = TallyUp::start(&[]).await;
    eprintln!("tally up ready after {:?}", started.elapsed());
    let cfg = up.config("gateway");
    let gateway = format!("http://{}", up.gateway_addr());
    let origins: Vec<&str> = cfg["gateway"]["cors"]["allowed_origins"]
        .as_array()
        .expect("allowed_origins")
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert!(
        origins.contains(&APP_ORIGIN),
        "the page's origin {APP_ORIGIN} must be one the gateway allows: {origins:?}"
    );

    let out = run_node(
        &node,
        &[
            browser_dir.join("drive.mjs").as_os_str(),
            "--gateway".as_ref(),
            gateway.as_ref(),
            "--site".as_ref(),
            site.as_os_str(),
            "--allowed-origin".as_ref(),
            APP_ORIGIN.as_ref(),
            "--chromium".as_ref(),
            chromium.as_os_str(),
        ],
        DRIVE,
    );
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("drive.mjs printed no JSON ({e}):\n{out}"));
    eprintln!(
        "browser scenario done after {:?}; launch {} ms, pages {} ms, calls (ms): {}",
        started.elapsed(),
        v["launchMs"],
        v["pagesLoadMs"],
        v["timingsMs"]
    );
    check(&v, &origins);
    drop(up);
}

/// What the page saw, checked step by step.
fn check(v: &Value, origins: &[&str]) {
    let shown = serde_json::to_string_pretty(v).unwrap_or_default();
    let ctx = || format!("\npage saw:\n{shown}");
    assert_eq!(v["appOrigin"], APP_ORIGIN, "{}", ctx());
    let foreign = v["foreignOrigin"].as_str().expect("foreignOrigin");
    assert!(!origins.contains(&foreign), "{foreign} is allowed{}", ctx());

    // The foreign page: the browser refuses both calls (the library sees a
    // failed fetch, no gRPC answer), the console says it was CORS, and the
    // sign-up had no effect: the same account is created below.
    for (key, method) in [("foreignSignUp", "SignUp"), ("foreignLogin", "Login")] {
        assert_eq!(error_code(v, key), "Unknown", "{key}{}", ctx());
        let msg = v[key]["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("Failed to fetch"), "{key}: {msg}{}", ctx());
        let blocked = v["foreignConsole"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|l| l.contains(method) && l.contains("blocked by CORS policy"));
        assert!(
            blocked,
            "no CORS refusal of {method} in the console{}",
            ctx()
        );
    }
    let app_cors = v["appConsole"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|l| l.contains("CORS"));
    assert!(!app_cors, "the allowed origin hit CORS errors{}", ctx());

    // Sign up (again: ALREADY_EXISTS), log in.
    assert!(
        ok(v, "signUp")["userId"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(error_code(v, "signUpAgain"), "AlreadyExists", "{}", ctx());
    assert_eq!(v["signUpAgain"]["error"]["codeNumber"], 6);
    assert!(
        ok(v, "login")["accessToken"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3),
        "{}",
        ctx()
    );

    // Without a token, or with a bad one: UNAUTHENTICATED.
    for key in ["createPollWithoutToken", "createPollWithBadToken"] {
        assert_eq!(error_code(v, key), "Unauthenticated", "{key}{}", ctx());
        assert_eq!(v[key]["error"]["codeNumber"], 16, "{key}{}", ctx());
    }
    let poll = ok(v, "createPoll");
    assert_eq!(poll["question"], "Tabs or spaces?", "{}", ctx());
    let tabs = v["options"]["tabs"]
        .as_str()
        .expect("tabs option")
        .to_string();
    let spaces = v["options"]["spaces"]
        .as_str()
        .expect("spaces option")
        .to_string();

    // The watch starts from the poll's current state...
    let first = &ok(v, "watch")["first"]["update"];
    assert_eq!(first["snapshot"], true, "{}", ctx());
    assert_eq!(first["total"], 0, "{}", ctx());
    // ...and the counts move on the same open stream with each vote.
    ok(v, "vote");
    let after1 = ok(v, "watchAfterVote");
    assert_eq!(after1["update"]["counts"][&tabs], 1, "{}", ctx());
    assert_eq!(after1["update"]["total"], 1, "{}", ctx());
    ok(v, "signUpSecond");
    ok(v, "loginSecond");
    ok(v, "secondVote");
    let after2 = ok(v, "watchAfterSecondVote");
    assert_eq!(after2["update"]["counts"][&tabs], 2, "{}", ctx());
    assert_eq!(after2["update"]["counts"][&spaces], 0, "{}", ctx());
    assert_eq!(after2["update"]["total"], 2, "{}", ctx());
    assert_eq!(after2["update"]["snapshot"], false, "{}", ctx());
    assert!(
        after2["index"].as_u64() > after1["index"].as_u64(),
        "the second count must come later on the stream{}",
        ctx()
    );

    // The same voter again: ALREADY_EXISTS. Results count both votes.
    assert_eq!(error_code(v, "voteAgain"), "AlreadyExists", "{}", ctx());
    let results = ok(v, "results");
    assert_eq!(results["total"], 2, "{}", ctx());
    assert_eq!(results["votes"]["tabs"], 2, "{}", ctx());
    assert_eq!(results["votes"]["spaces"], 0, "{}", ctx());
}
