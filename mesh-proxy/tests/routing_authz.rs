//! Routing by `:authority` and inbound authorization, through a real sidecar pair.

mod support;

use support::*;

#[tokio::test]
async fn unknown_service_gets_unavailable_no_route() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let r = mesh.client().await.call("nosuch", PATH, &[], &[b"x"]).await;
    assert_eq!(r.http_status, 200);
    assert_eq!(r.status(), Some(UNAVAILABLE));
    assert_eq!(r.proxy_error().as_deref(), Some("no-route"));
    // `echo:80` and `echo.ns.svc` route to `echo`.
    let r = mesh
        .client()
        .await
        .call("echo:80", PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(OK));
}

#[tokio::test]
async fn authorization_allows_listed_callers_and_denies_others() {
    init();
    let up = Upstream::start("a").await;
    let inbound = r#"
[[inbound.authz]]
service = "test.Echo"
allow = ["spiffe://tally.local/ns/test/sa/someone-else"]
[[inbound.authz]]
service = "test.Echo"
method = "Call"
allow = ["spiffe://tally.local/ns/test/sa/client"]
"#;
    let mesh = Mesh::start(&[&up], "", inbound).await;
    let r = mesh.call(&[], &[b"x"]).await;
    assert_eq!(r.status(), Some(OK));
    let r = mesh
        .client()
        .await
        .call(SVC, "/test.Echo/Secret", &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(PERMISSION_DENIED));
    assert_eq!(r.proxy_error().as_deref(), Some("unauthorized"));
    let r = mesh
        .client()
        .await
        .call(SVC, "/other.Service/Call", &[], &[b"x"])
        .await;
    assert_eq!(
        r.status(),
        Some(PERMISSION_DENIED),
        "default deny when a policy exists"
    );
    assert_eq!(up.calls(), 1);
    let m = metrics(mesh.callees[0].admin).await;
    let caller = format!("caller=\"{}\"", mesh.client_id);
    assert_eq!(
        metric(&m, "tally_proxy_authz_denied_total", &[&caller]),
        2.0,
        "{m}"
    );
}
