//! Listener robustness of a real proxy process: garbage, oversized headers, cancellation
//! bursts, bad config, SIGTERM draining, connection limits and silent connections.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn garbage_on_every_port_never_kills_the_proxy() {
    init();
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], "", "").await;
    let inbound = mesh.callees[0].inbound.unwrap();
    let targets = [
        mesh.caller.outbound.unwrap(),
        mesh.caller.admin,
        inbound,
        mesh.callees[0].admin,
    ];
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x01\x00\x00\x00\x00\x00garbage".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect(),
        b"\x16\x03\x01\x00\x05hello".to_vec(),
        vec![],
    ];
    for t in targets {
        for p in &payloads {
            let mut s = tokio::net::TcpStream::connect(t).await.unwrap();
            let _ = s.write_all(p).await;
            let _ = s.shutdown().await;
        }
    }
    // Plaintext HTTP/2 straight to the mTLS port is refused.
    let plain = Client::connect_lenient(inbound).await;
    assert!(
        plain.is_none()
            || plain
                .unwrap()
                .call(SVC, PATH, &[], &[b"x"])
                .await
                .status()
                .is_none()
    );
    // Half-open connections that never speak stay harmless.
    let _idle: Vec<_> =
        futures::future::join_all(targets.iter().map(|t| tokio::net::TcpStream::connect(*t))).await;
    assert!(mesh.caller.is_running() && mesh.callees[0].is_running());
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
    let m = metrics(mesh.callees[0].admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_tls_handshake_failures_total",
            &["direction=\"inbound\""]
        ) >= 4.0,
        "{m}"
    );
}

#[tokio::test]
async fn oversized_headers_are_refused_cleanly() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let huge = "v".repeat(64 * 1024);
    let r = mesh.call(&[("x-huge", &huge)], &[b"x"]).await;
    assert_ne!(r.status(), Some(OK), "{r:?}");
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
}

#[tokio::test]
async fn burst_of_cancelled_streams_does_not_break_the_listener() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    for _ in 0..5 {
        let mut opened = Vec::new();
        for _ in 0..50 {
            opened.push(client.open(SVC, PATH, &[("x-test-delay-ms", "5000")]));
        }
        // Dropping the futures cancels every stream at once (RST_STREAM burst).
        let _ = tokio::time::timeout(Duration::from_millis(20), futures::future::join_all(opened))
            .await;
    }
    // The listener keeps serving new connections. (A call racing the burst's aftermath may
    // still fail once, so poll until one succeeds rather than asserting on the first.)
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let fresh = mesh.client().await;
        let r = fresh.call(SVC, PATH, &[], &[b"x"]).await;
        if r.status() == Some(OK) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.user]\nendpoints = []\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-proxy"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services.user.endpoints") && err.contains("fix:"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits() {
    init();
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], "", "").await;
    let client = mesh.client().await;
    let in_flight = tokio::spawn(async move {
        client
            .call(SVC, PATH, &[("x-test-delay-ms", "1500")], &[b"x"])
            .await
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while up.calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "call never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = mesh.caller.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status(),
        Some(OK),
        "in-flight call finished during drain: {r:?}"
    );
    while mesh.caller.is_running() {
        assert!(tokio::time::Instant::now() < deadline, "proxy did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mesh.caller.exit_code(), Some(0));
}

#[tokio::test]
async fn listener_connection_limit_is_enforced() {
    init();
    let up = Upstream::start("a").await;
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n[services.echo]\nendpoints = [\"{}\"]\n",
        up.addr
    );
    // Plaintext caller straight to the upstream (no [identity]): only the limit matters here.
    let proxy = Proxy::start(&cfg).await;
    let out = proxy.outbound.unwrap();
    let a = Client::connect(out).await;
    let b = Client::connect(out).await;
    assert_eq!(a.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(OK));
    assert_eq!(b.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(OK));
    // A third connection is closed at once.
    let third = Client::connect_lenient(out).await;
    if let Some(c) = third {
        assert!(c.call(SVC, PATH, &[], &[b"x"]).await.status().is_none());
    }
    let m = metrics(proxy.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_connections_rejected_total",
            &["direction=\"outbound\""]
        ) >= 1.0,
        "{m}"
    );
    drop(a);
    assert_eq!(b.call(SVC, PATH, &[], &[b"x"]).await.status(), Some(OK));
}

#[tokio::test]
async fn silent_connections_are_closed_and_free_their_slot() {
    init();
    let up = Upstream::start("a").await;
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\ntls_handshake_timeout_ms = 300\n[outbound]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\n[services.echo]\nendpoints = [\"{}\"]\n",
        up.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let out = proxy.outbound.unwrap();
    // Takes the only slot and says nothing.
    let _silent = tokio::net::TcpStream::connect(out).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(c) = Client::connect_lenient(out).await
            && c.call(SVC, PATH, &[], &[b"x"]).await.status() == Some(OK)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
