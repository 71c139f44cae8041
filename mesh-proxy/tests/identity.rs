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

/// One call over a brand-new mTLS connection to `inbound` (a full handshake each time).
/// Returns the serial of the certificate the inbound sidecar presented and the call's status.
async fn call_on_new_connection(
    inbound: std::net::SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> (String, Option<u16>) {
    let callee = tally_certs::SpiffeId::local("test", SVC).unwrap();
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(tally_certs::tls::server_name_for(&callee), tcp)
        .await
        .expect("mTLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("server chain")[0].clone();
    let serial = tally_certs::CertSummary::from_der(&leaf).unwrap().serial;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = Client::from_sender(send)
        .call(SVC, PATH, &[], &[b"x"])
        .await;
    (serial, r.status())
}

fn serial_of(pem_file: &std::path::Path) -> String {
    let pem = std::fs::read(pem_file).unwrap();
    tally_certs::inspect_pem(&pem).unwrap()[0].serial.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_handshake_load_fails_no_call_and_peers_then_see_the_new_serial() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let inbound = mesh.callees[0].inbound.unwrap();
    let served_cert = mesh.pki.dir.path().join("test").join(format!("{SVC}.pem"));
    let first_serial = serial_of(&served_cert);
    // A load generator with its own identity: every call is a new TCP + TLS connection.
    let loadgen = mesh.pki.identity("test", "loadgen");
    let material = tally_certs::tls::Material::load(&tally_certs::tls::IdentityPaths {
        bundle: loadgen.bundle.clone(),
        cert: loadgen.cert.clone(),
        key: loadgen.key.clone(),
    })
    .unwrap();
    let cfg = tally_certs::tls::client_config(&material).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut failed = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (serial, status) = call_on_new_connection(inbound, cfg.clone()).await;
                if status != Some(OK) {
                    failed.push((serial.clone(), status));
                }
                seen.push(serial);
            }
            (seen, failed)
        }));
    }
    // Meanwhile calls between the sidecars, over their pooled connection.
    let client = mesh.client().await;
    let stop2 = stop.clone();
    let sidecar_load = tokio::spawn(async move {
        let (mut total, mut failed) = (0, 0);
        while !stop2.load(Ordering::SeqCst) {
            total += 1;
            if client.call(SVC, PATH, &[], &[b"x"]).await.status() != Some(OK) {
                failed += 1;
            }
        }
        (total, failed)
    });
    // Rotate both sidecars' certificates four times while handshakes keep coming.
    let callee = tally_certs::SpiffeId::local("test", SVC).unwrap();
    let client_id = tally_certs::SpiffeId::local("test", "client").unwrap();
    let mut issued_serials = vec![first_serial.clone()];
    for i in 0..4u64 {
        for id in [&callee, &client_id] {
            let issued = mesh
                .pki
                .ca
                .issue(id, Duration::from_secs(7200 + 60 * i))
                .unwrap();
            tally_certs::write_workload(&mesh.pki.dir.path().join("test"), id, &issued).unwrap();
        }
        issued_serials.push(serial_of(&served_cert));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut handshakes = 0;
    let mut serials_seen = std::collections::BTreeSet::new();
    for w in workers {
        let (seen, failed) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed during rotation: {failed:?}"
        );
        handshakes += seen.len();
        serials_seen.extend(seen);
    }
    let (total, failed) = sidecar_load.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {total} sidecar calls failed");
    assert!(
        handshakes >= 20,
        "only {handshakes} handshakes during rotation"
    );
    // Every certificate presented was one of those issued; rotation was seen mid-load.
    for s in &serials_seen {
        assert!(issued_serials.contains(s), "unknown serial {s}");
    }
    assert!(
        serials_seen.len() >= 2,
        "handshakes during the rotation saw only {serials_seen:?}"
    );
    // Afterwards every new peer sees the newest certificate.
    let newest = issued_serials.last().unwrap().clone();
    assert_ne!(newest, first_serial);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (serial, status) = call_on_new_connection(inbound, cfg.clone()).await;
        assert_eq!(status, Some(OK));
        if serial == newest {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peers still see {serial}, not the newest {newest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_eq!(call_on_new_connection(inbound, cfg.clone()).await.0, newest);
    }
}
