//! Smoke test of the benchmark harness itself: a short, low-rate run against the
//! direct path and a real Tally sidecar pair must produce sane numbers. It asserts
//! nothing about speed (that is what the benchmark reports), only that the harness
//! measured something: calls succeeded, every scheduled call was counted once, quantiles
//! are ordered, proxy memory and CPU were read, and the report was written.

use std::process::Command;

#[test]
fn direct_and_tally_produce_sane_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let md = dir.path().join("latest.md");
    let proxy = tally_testkit::bin_path("tally-proxy");
    let out = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args([
            "--setups",
            "direct,floor,tally",
            "--rounds",
            "1",
            "--warmup-secs",
            "0.5",
            "--phase-secs",
            "2",
        ])
        .args([
            "--unary-rate",
            "50",
            "--stream-rate",
            "20",
            "--stream-messages",
            "5",
            "--connections",
            "2",
        ])
        .args([
            "--closed-secs",
            "1",
            "--closed-concurrency",
            "4",
            "--allow-busy",
            "--ramp",
            "--ramp-start",
            "50",
            "--ramp-steps",
            "2",
            "--refine-steps",
            "0",
            "--ramp-step-secs",
            "1",
        ])
        .args(["--call-timeout-secs", "30"])
        .arg("--tally-proxy")
        .arg(&proxy)
        .arg("--floor-relay")
        .arg(env!("CARGO_BIN_EXE_tally-floor-relay"))
        .arg("--output")
        .arg(&md)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tally-bench failed: {stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ms = report["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 3, "{report:#}");
    for m in ms {
        let setup = m["setup"].as_str().unwrap();
        for phase in ["unary", "stream"] {
            let p = &m[phase];
            let ok = p["ok"].as_u64().unwrap();
            let failed = p["failed"].as_u64().unwrap();
            assert!(ok > 0, "{setup} {phase}: no successful call: {p:#}");
            // Every scheduled call is accounted for exactly once. Failed calls are the
            // proxy's business (the report shows them), not the harness's.
            assert_eq!(
                ok + failed,
                p["scheduled"].as_u64().unwrap(),
                "{setup} {phase}: {p:#}"
            );
            if failed > 0 {
                eprintln!(
                    "note: {setup} {phase}: {failed} call(s) failed: {}",
                    p["first_error"]
                );
            }
            let (p50, p99, p999) = (
                p["p50_ms"].as_f64().unwrap(),
                p["p99_ms"].as_f64().unwrap(),
                p["p999_ms"].as_f64().unwrap(),
            );
            assert!(
                p50 > 0.0 && p50 <= p99 && p99 <= p999,
                "{setup} {phase}: {p:#}"
            );
        }
        for closed in ["closed_unary", "closed_stream"] {
            let c = &m[closed];
            assert!(c["ok"].as_u64().unwrap() > 0, "{setup} {closed}: {c:#}");
            assert!(
                c["achieved_rate"].as_f64().unwrap() > 0.0,
                "{setup} {closed}"
            );
        }
        assert!(m["other_cpu_cores"].as_f64().unwrap() >= 0.0, "{m:#}");
        assert!(
            !m["steps"].as_array().unwrap().is_empty(),
            "{setup}: the ramp ran no step"
        );
        match setup {
            "direct" => {
                assert_eq!(m["rss_peak_kib"].as_u64(), Some(0));
                assert!(m["unary"]["cpu_ms_per_1k"].is_null());
            }
            "tally" | "floor" => {
                let peak = m["rss_peak_kib"].as_u64().unwrap();
                let steady = m["rss_steady_kib"].as_u64().unwrap();
                assert!(steady > 0 && steady <= peak, "{m:#}");
                assert!(m["unary"]["cpu_ms_per_1k"].as_f64().unwrap() >= 0.0);
            }
            other => panic!("unexpected setup {other}"),
        }
    }
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("| tally |") && text.contains("| direct |") && text.contains("tally / floor"),
        "{text}"
    );
}

/// With a limit no run can meet, the harness refuses to report: a clear message, exit code 3
/// and no report file; `--allow-busy` is the override.
#[test]
fn a_busy_machine_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("latest.md");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally-bench"))
            .args([
                "--setups",
                "direct",
                "--rounds",
                "1",
                "--warmup-secs",
                "0.1",
            ])
            .args([
                "--phase-secs",
                "0.3",
                "--unary-rate",
                "20",
                "--stream-rate",
                "10",
            ])
            .args(["--no-closed", "--max-other-cpu=-1"])
            .args(extra)
            .arg("--output")
            .arg(&md)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("refusing to report"), "{stderr}");
    assert!(!md.exists());
    let allowed = run(&["--allow-busy"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(std::fs::read_to_string(&md).unwrap().contains("| direct |"));
}
