//! Fault injection from config, the admin API and Envoy's headers, through real sidecars.

mod support;

use support::*;

#[tokio::test]
async fn faults_from_config_admin_and_headers() {
    init();
    let up = Upstream::start("a").await;
    let cfg = r#"
[services.echo.faults]
abort_percent = 100
abort_grpc_status = 8
"#;
    let mesh = Mesh::start(&[&up], cfg, "").await;
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(RESOURCE_EXHAUSTED));
    assert_eq!(r.proxy_error().as_deref(), Some("fault-abort"));
    assert_eq!(up.calls(), 0);
    // Runtime change through the admin API: no config faults, header faults allowed.
    let (status, body) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"allow_header_faults": true}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, current) = admin(mesh.caller.admin, "GET", "/faults", "").await;
    assert!(
        current.contains("\"allow_header_faults\": true"),
        "{current}"
    );
    assert_eq!(mesh.call(&[], &[b"x"]).await.status(), Some(OK));
    // Envoy's fault headers.
    let r = mesh
        .call(&[("x-envoy-fault-abort-grpc-request", "9")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(9));
    let r = mesh
        .call(&[("x-envoy-fault-abort-request", "503")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(UNAVAILABLE));
    let r = mesh
        .call(
            &[
                ("x-envoy-fault-abort-grpc-request", "9"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(OK));
    // A 5 s injected delay against a 300 ms deadline.
    let r = mesh
        .call(
            &[
                ("x-envoy-fault-delay-request", "5000"),
                ("grpc-timeout", "300m"),
            ],
            &[b"x"],
        )
        .await;
    assert_eq!(r.status(), Some(DEADLINE_EXCEEDED));
    // Reset: the stream is reset, the proxy keeps serving.
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"reset_percent": 100}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let r = mesh.call(&[], &[b"x"]).await;
    assert!(r.error.is_some(), "{r:?}");
    // Headers are ignored when the route does not allow them; bad settings are refused.
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let r = mesh
        .call(&[("x-envoy-fault-abort-grpc-request", "9")], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK));
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"abort_percent": 300}}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        mesh.caller.admin,
        "PUT",
        "/faults",
        r#"{"route": "nope", "faults": {}}"#,
    )
    .await;
    assert_eq!(status, 404);
    let m = metrics(mesh.caller.admin).await;
    assert!(
        metric(&m, "tally_proxy_faults_injected_total", &["kind=\"abort\""]) >= 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn inbound_faults_change_at_runtime() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let (status, body) = admin(
        mesh.callees[0].admin,
        "PUT",
        "/faults",
        r#"{"route": "inbound", "faults": {"abort_percent": 100, "abort_grpc_status": 10}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(10));
    assert_eq!(r.proxy_error().as_deref(), Some("fault-abort"));
    assert_eq!(up.calls(), 0);
}
