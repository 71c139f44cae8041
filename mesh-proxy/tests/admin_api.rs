//! The admin API is a control plane: reads stay open on loopback, every change needs the
//! bearer token from `admin.token_file` (owner-only, or the proxy refuses to start), and
//! requests naming a foreign `Host` or carrying an `Origin` are refused (DNS rebinding).
//! Everything here runs against a real `tally-proxy` process over its admin socket.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use support::*;

const FAULTS: &str = r#"{"route": "echo", "faults": {"abort_percent": 100}}"#;

fn config(extra_admin: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{extra_admin}\n[outbound]\nlisten = \"127.0.0.1:0\"\n[services.echo]\nendpoints = [\"127.0.0.1:9\"]\n"
    )
}

fn h(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

async fn put_faults(addr: SocketAddr, headers: &[(&str, String)]) -> (u16, String) {
    admin_with(addr, "PUT", "/faults", FAULTS, &h(headers)).await
}

async fn abort_percent(addr: SocketAddr) -> String {
    let (_, faults) = admin(addr, "GET", "/faults", "").await;
    faults
}

#[tokio::test]
async fn mutations_need_the_bearer_token() {
    let proxy = Proxy::start(&config("")).await;
    let addr = proxy.admin;
    let token = admin_token(addr).expect("the harness gives each proxy a token file");
    let host = ("host", addr.to_string());
    let before = abort_percent(addr).await;

    let (status, body) = put_faults(addr, std::slice::from_ref(&host)).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = put_faults(
        addr,
        &[host.clone(), ("authorization", "Bearer wrong".into())],
    )
    .await;
    assert_eq!(status, 403, "wrong token: {body}");
    let (status, body) = put_faults(
        addr,
        &[host.clone(), ("authorization", format!("Basic {token}"))],
    )
    .await;
    assert_eq!(status, 401, "not a bearer token: {body}");
    assert_eq!(
        abort_percent(addr).await,
        before,
        "refused changes changed nothing"
    );

    let (status, body) = put_faults(
        addr,
        &[host.clone(), ("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, 200, "right token: {body}");
    assert!(body.contains("\"abort_percent\": 100.0"), "{body}");

    // Reads stay open on loopback without a token.
    for path in ["/metrics", "/faults", "/config", "/ready", "/live"] {
        let (status, _) = admin_with(addr, "GET", path, "", &h(std::slice::from_ref(&host))).await;
        assert_eq!(status, 200, "GET {path}");
    }
    for name in ["localhost", "[::1]"] {
        let host = ("host", format!("{name}:{}", addr.port()));
        let (status, _) = admin_with(addr, "GET", "/ready", "", &h(&[host])).await;
        assert_eq!(status, 200, "{name}");
    }
}

#[tokio::test]
async fn foreign_host_and_any_origin_are_refused() {
    let proxy = Proxy::start(&config("")).await;
    let addr = proxy.admin;
    let bearer = (
        "authorization",
        format!("Bearer {}", admin_token(addr).unwrap()),
    );
    let port = addr.port();
    // A DNS-rebound page: its own host name, the admin port, even with the right token.
    for host in [
        format!("evil.example:{port}"),
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let (status, body) = put_faults(addr, &[("host", host.clone()), bearer.clone()]).await;
        assert_eq!(status, 403, "PUT with Host {host}: {body}");
        let (status, body) =
            admin_with(addr, "GET", "/metrics", "", &h(&[("host", host.clone())])).await;
        assert_eq!(status, 403, "GET with Host {host}: {body}");
    }
    // Browsers send Origin on cross-site requests (and on every PUT): always refused.
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://127.0.0.1:{port}"),
    ] {
        let headers = [
            ("host", addr.to_string()),
            ("origin", origin.to_string()),
            bearer.clone(),
        ];
        let (status, body) = put_faults(addr, &headers).await;
        assert_eq!(status, 403, "PUT with Origin {origin}: {body}");
        let (status, _) = admin_with(addr, "GET", "/config", "", &h(&headers)).await;
        assert_eq!(status, 403, "GET with Origin {origin}");
    }
    assert!(
        !abort_percent(addr)
            .await
            .contains("\"abort_percent\": 100.0")
    );
}

#[tokio::test]
async fn configured_names_are_allowed_hosts() {
    let proxy = Proxy::start(&config("allowed_hosts = [\"sidecar.internal:9901\"]")).await;
    let host = ("host", "sidecar.internal:9901".to_string());
    let (status, _) = admin_with(proxy.admin, "GET", "/ready", "", &h(&[host])).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_a_token_file_mutations_are_refused() {
    // (The comment keeps the harness from adding a token file.)
    let proxy = Proxy::start(&config("# no token_file: mutations are disabled")).await;
    let addr = proxy.admin;
    assert_eq!(admin_token(addr), None);
    for auth in [None, Some("Bearer anything")] {
        let mut headers = vec![("host", addr.to_string())];
        if let Some(a) = auth {
            headers.push(("authorization", a.to_string()));
        }
        let (status, body) = put_faults(addr, &headers).await;
        assert_eq!(status, 403, "{auth:?}: {body}");
        assert!(body.contains("admin.token_file"), "{body}");
    }
    let (status, _) = admin(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
}

#[test]
fn a_token_file_readable_by_others_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    write_secret(&token, "secret");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, config(&format!("token_file = {token:?}"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tally-proxy"))
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(out.stdout.is_empty(), "bound listeners: {:?}", out.stdout);
    assert!(
        stderr.contains("admin.token_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[tokio::test]
async fn admin_fault_delays_are_clamped_to_the_cap() {
    let proxy = Proxy::start(&config("")).await;
    let (status, body) = admin(
        proxy.admin,
        "PUT",
        "/faults",
        r#"{"route": "echo", "faults": {"delay_percent": 100, "delay_ms": 3600000, "max_delay_ms": 3600000}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"delay_ms\": 10000"), "{body}");
    assert!(body.contains("\"max_delay_ms\": 10000"), "{body}");
}
