//! Metric label values come only from configuration: thousands of made-up gRPC paths and
//! target names sent through a real sidecar pair add no series to either sidecar's /metrics
//! (before, each one added a route label, and `authz_denied_total` a raw-path label).

mod support;

use support::*;

const JUNK: usize = 2000;
const WARM_UP: usize = 50;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sample lines (one per series, histogram buckets included).
fn series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_string())
        .collect()
}

/// Junk calls `from..to`: a made-up gRPC service to the configured target, and a made-up target.
async fn junk(client: &Client, from: usize, to: usize) {
    for chunk in (from..to).collect::<Vec<_>>().chunks(100) {
        let calls = chunk.iter().map(|n| async move {
            let path = format!("/tally.poll.v1.Junk{n}/X{n}");
            let r = client.call(SVC, &path, &[], &[b"x"]).await;
            assert!(r.status().is_some(), "{path}: {r:?}");
            let r = client.call(&format!("junk{n}"), PATH, &[], &[b"x"]).await;
            assert_eq!(r.proxy_error().as_deref(), Some("no-route"), "{r:?}");
        });
        futures::future::join_all(calls).await;
    }
}

/// `learned`: how many junk gRPC service names the callee may have kept as labels (the
/// first-come names it learns when no authz rule names a service).
async fn series_stay_fixed(mesh: &Mesh, learned: usize) {
    let client = mesh.client().await;
    assert_eq!(client.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(0));
    junk(&client, 0, WARM_UP).await;
    let caller_before = series(&metrics(mesh.caller.admin).await);
    let callee_before = series(&metrics(mesh.callees[0].admin).await);
    junk(&client, WARM_UP, WARM_UP + JUNK).await;
    let caller_after = series(&metrics(mesh.caller.admin).await);
    let callee_after = series(&metrics(mesh.callees[0].admin).await);
    assert_eq!(
        caller_before, caller_after,
        "caller sidecar grew new series"
    );
    assert_eq!(
        callee_before, callee_after,
        "callee sidecar grew new series"
    );
    let all = callee_after.join("\n") + &caller_after.join("\n");
    let junk_labels: std::collections::BTreeSet<&str> = all
        .split("route=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|r| r.contains("Junk"))
        .collect();
    assert!(
        junk_labels.len() <= learned,
        "junk names became labels: {junk_labels:?}"
    );
    assert!(
        !all.contains("junk"),
        "a junk target became a label:\n{all}"
    );
    // The calls were counted, under `other`.
    let m = metrics(mesh.caller.admin).await;
    assert!(
        metric(&m, "tally_proxy_requests_total", &["route=\"other\""]) >= JUNK as f64,
        "{m}"
    );
}

#[tokio::test]
async fn junk_paths_add_no_series_with_authz_rules() {
    init();
    let up = Upstream::start("a").await;
    let pki_client = "spiffe://tally.local/ns/test/sa/client";
    let authz = format!("[[inbound.authz]]\nservice = \"test.Echo\"\nallow = [\"{pki_client}\"]\n");
    let mesh = Mesh::start(&[&up], "", &authz).await;
    series_stay_fixed(&mesh, 0).await;
    let m = metrics(mesh.callees[0].admin).await;
    // Denials are counted by configured route (or other) and caller, never by raw path.
    assert!(
        metric(&m, "tally_proxy_authz_denied_total", &["route=\"other\""]) >= JUNK as f64,
        "{m}"
    );
    assert!(
        metric(&m, "tally_proxy_requests_total", &["route=\"test.Echo\""]) >= 1.0,
        "configured services keep their own label: {m}"
    );
}

#[tokio::test]
async fn junk_paths_add_no_series_without_authz_rules() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    series_stay_fixed(&mesh, tally_proxy::metrics::MAX_LEARNED_ROUTE_LABELS).await;
}
