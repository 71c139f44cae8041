//! A minimal HTTP/1.1 client for the proxies' admin API on loopback: `GET /metrics` and
//! `PUT /split` with the bearer token. Hand-written like `up::health`'s probe: two plain
//! requests to a local listener do not need an HTTP client crate.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one admin request may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin response read (a sidecar's `/metrics` is a few hundred KiB at most).
pub const MAX_ADMIN_RESPONSE: u64 = 8 * 1024 * 1024;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin {addr}: {what}")]
    Io { addr: SocketAddr, what: String },
    #[error("admin {addr}: {method} {path} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
}

/// Sends one request and returns the body of a 200 answer.
pub async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<String, AdminError> {
    let io = |what: String| AdminError::Io { addr, what };
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| io(format!("connect: {e}")))?;
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}content-type: application/json\r\n\
             content-length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| io(format!("write: {e}")))?;
        let mut raw = Vec::new();
        stream
            .take(MAX_ADMIN_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| io(format!("read: {e}")))?;
        Ok::<Vec<u8>, AdminError>(raw)
    };
    let raw = tokio::time::timeout(ADMIN_TIMEOUT, attempt)
        .await
        .map_err(|_| io(format!("no answer within {ADMIN_TIMEOUT:?}")))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io("malformed HTTP answer".into()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io("malformed status line".into()))?;
    if status != 200 {
        return Err(AdminError::Status {
            addr,
            method,
            path: path.to_string(),
            status,
            body: rest.trim().to_string(),
        });
    }
    Ok(rest.to_string())
}
