//! Mesh identity: server identity checks, foreign CAs and certificate rotation under load.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(
        &[&up],
        "identity = \"spiffe://tally.local/ns/test/sa/not-echo\"",
        "",
    )
    .await;
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("connect-failed"));
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    // A caller sidecar whose identity comes from a different mesh root.
    let other = Pki::new();
    let intruder = other.identity("test", "client");
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"{}\"]\n",
        intruder.toml(),
        mesh.callees[0].inbound.unwrap()
    );
    let rogue = Proxy::start(&cfg).await;
    let r = Client::connect(rogue.outbound.unwrap())
        .await
        .call(SVC, PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("connect-failed"));
    assert_eq!(up.calls(), 0);
    let m = metrics(mesh.callees[0].admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_tls_handshake_failures_total",
            &["direction=\"inbound\""]
        ) >= 1.0,
        "{m}"
    );
    // The legitimate caller still gets through.
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
}

#[tokio::test]
async fn certificates_rotate_under_load_without_failed_calls() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let before = metric(
        &metrics(mesh.caller.admin).await,
        "tally_proxy_cert_expiry_timestamp_seconds",
        &[],
    );
    let client = mesh.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = tokio::spawn(async move {
        let (mut total, mut failed) = (0, 0);
        while !stop2.load(Ordering::SeqCst) {
            total += 1;
            if client.call(SVC, PATH, &[], &[b"x"]).await.status() != Some(OK) {
                failed += 1;
            }
        }
        (total, failed)
    });
    // Re-issue both workloads' certificates (longer-lived, so the expiry gauge moves) while
    // calls flow; new connections pick up the new files.
    let callee = tally_certs::SpiffeId::local("test", SVC).unwrap();
    let client_id = tally_certs::SpiffeId::local("test", "client").unwrap();
    for i in 0..4u64 {
        for id in [&callee, &client_id] {
            let issued = mesh
                .pki
                .ca
                .issue(id, Duration::from_secs(7200 + 60 * i))
                .unwrap();
            tally_certs::write_workload(&mesh.pki.dir.path().join("test"), id, &issued).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (total, failed) = load.await.unwrap();
    assert!(total > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {total} calls failed during rotation"
    );
    // A new sidecar-to-sidecar connection, made with the rotated files on both sides, works.
    let dir = mesh.pki.dir.path();
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[identity]\nbundle = {:?}\ncert = {:?}\nkey = {:?}\nnamespace = \"test\"\nservice = \"client\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"{}\"]\n",
        dir.join("bundle.pem"),
        dir.join("test/client.pem"),
        dir.join("test/client-key.pem"),
        mesh.callees[0].inbound.unwrap()
    );
    let second = Proxy::start(&cfg).await;
    let r = Client::connect(second.outbound.unwrap())
        .await
        .call(SVC, PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK), "{r:?}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let after = metric(
            &metrics(mesh.caller.admin).await,
            "tally_proxy_cert_expiry_timestamp_seconds",
            &[],
        );
        if after > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expiry gauge never followed the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
