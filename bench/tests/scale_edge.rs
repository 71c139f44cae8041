//! Smoke tests of the scale and browser-edge runs: tiny steps and phases against real
//! processes (a Tally pair, the gateway, Envoy when installed). They assert that the
//! harness measured something and reported it (every step present, calls succeeded
//! through each path, memory read, a verdict per dimension, the edge targets judged),
//! nothing about speed.

use std::path::PathBuf;
use std::process::Command;

fn envoy() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
    p.is_file().then_some(p)
}

#[test]
fn a_quick_scale_run_measures_every_step_and_gives_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("scale.json");
    let md = dir.path().join("scale.md");
    let out = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(["--scale", "--quick", "--allow-busy"])
        .args([
            "--scale-dims",
            "idle,idle-mtls,services,size",
            "--scale-setups",
            "tally",
        ])
        .args([
            "--hold-secs",
            "0.2",
            "--step-secs",
            "0.3",
            "--connections",
            "1",
        ])
        .arg("--tally-proxy")
        .arg(tally_testkit::bin_path("tally-proxy"))
        .arg("--output")
        .arg(&md)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tally-bench --scale failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let points = report["points"].as_array().unwrap();
    let xs = |dim: &str| -> Vec<u64> {
        points
            .iter()
            .filter(|p| p["dimension"] == dim)
            .map(|p| p["x"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(xs("idle client connections"), vec![1, 100, 1000]);
    assert_eq!(xs("idle peer connections (mTLS)"), vec![1, 100, 1000]);
    assert_eq!(xs("configured services"), vec![1, 10, 100]);
    assert_eq!(xs("message size (bytes)"), vec![128, 16_384, 1_048_576]);
    for p in points {
        assert_eq!(p["failed"], 0, "{p:#}");
        assert!(p["rss_kib"].as_u64().unwrap() > 0, "{p:#}");
        assert!(p["ok"].as_u64().unwrap() > 0, "{p:#}");
    }
    let text = std::fs::read_to_string(&md).unwrap();
    for dim in [
        "idle client connections",
        "configured services",
        "message size (bytes)",
    ] {
        assert!(
            text.contains(&format!("- Verdict, {dim} (tally): RSS ")),
            "no verdict for {dim}:\n{text}"
        );
    }
    assert!(text.contains("KiB per connection"), "{text}");
}

#[test]
fn a_quick_edge_run_calls_through_the_gateway_and_envoy_in_both_encodings() {
    let Some(envoy) = envoy() else {
        eprintln!("skipped: no Envoy at .venv/bin/envoy (scripts/bench installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("edge.json");
    let md = dir.path().join("edge.md");
    let out = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(["--edge", "--quick", "--allow-busy", "--rounds", "1"])
        .args([
            "--warmup-secs",
            "0.2",
            "--phase-secs",
            "0.5",
            "--unary-rate",
            "40",
        ])
        .args([
            "--closed-secs",
            "0.5",
            "--closed-concurrency",
            "4",
            "--connections",
            "1",
        ])
        .args(["--call-timeout-secs", "30"])
        .arg("--tally-proxy")
        .arg(tally_testkit::bin_path("tally-proxy"))
        .arg("--envoy")
        .arg(&envoy)
        .arg("--output")
        .arg(&md)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tally-bench --edge failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ms = report["measurements"].as_array().unwrap();
    let seen: Vec<(String, String)> = ms
        .iter()
        .map(|m| {
            (
                m["setup"].as_str().unwrap().to_string(),
                m["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("direct", "grpc"),
        ("gateway", "binary"),
        ("gateway", "text"),
        ("envoy", "binary"),
        ("envoy", "text"),
    ] {
        assert!(
            seen.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing: {seen:?}"
        );
    }
    for m in ms {
        // Every call succeeded: the gateway accepted the benchmark's token, and both
        // edges answered gRPC-Web the client could decode and check.
        let fixed = &m["fixed"];
        assert!(fixed["ok"].as_u64().unwrap() > 0, "{m:#}");
        assert_eq!(fixed["failed"], 0, "{m:#}");
        assert_eq!(m["closed"]["failed"], 0, "{m:#}");
        if m["setup"] != "direct" {
            assert!(m["rss_peak_kib"].as_u64().unwrap() > 0, "{m:#}");
            assert!(fixed["cpu_ms_per_1k"].as_f64().is_some(), "{m:#}");
        }
    }
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("| gateway throughput / Envoy grpc_web (binary) |"),
        "{text}"
    );
    assert!(
        text.contains("| gateway CPU per call at max / Envoy (text) |"),
        "{text}"
    );
}
