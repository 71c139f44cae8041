//! The client side of the receiver's query API: one HTTP/1.1 GET, the JSON body bounded.

use super::store::{SpanRecord, TraceSummary};
use http_body_util::{BodyExt as _, Empty, Limited};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Largest answer read from the receiver.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Longest wait for an answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The address file (path given) is missing or unreadable.
    #[error("cannot read {0}: is `tally up` running with this --data-dir? (or pass --traces-addr)")]
    NoAddress(String),
    /// The receiver could not be reached or gave an unusable answer.
    #[error("trace receiver at {addr}: {message}")]
    Http {
        /// The receiver's query address.
        addr: SocketAddr,
        /// What went wrong with the request or its answer.
        message: String,
    },
    /// The receiver holds no trace with this id.
    #[error("no trace `{0}` in the receiver (only recent traces are kept)")]
    NotFound(String),
}

/// The receiver address `tally up` wrote into `data_dir`.
pub fn address_in(data_dir: &Path) -> Result<SocketAddr, QueryError> {
    let file = data_dir.join(super::ADDR_FILE);
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| QueryError::NoAddress(file.display().to_string()))
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, bytes::Bytes), QueryError> {
    let err = |message: String| QueryError::Http { addr, message };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| err(format!("bad path: {e}")))?;
    let call = async {
        let rsp = client.get(uri).await.map_err(|e| err(e.to_string()))?;
        let status = rsp.status().as_u16();
        let body = Limited::new(rsp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(QUERY_TIMEOUT, call)
        .await
        .map_err(|_| err(format!("no answer within {QUERY_TIMEOUT:?}")))?
}

/// The traces the receiver holds, newest first.
pub async fn list(addr: SocketAddr) -> Result<Vec<TraceSummary>, QueryError> {
    let (status, body) = get(addr, "/traces").await?;
    if status != 200 {
        return Err(QueryError::Http {
            addr,
            message: format!("HTTP {status}"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| QueryError::Http {
        addr,
        message: e.to_string(),
    })
}

/// The spans of trace `id` (or of the one trace whose id starts with it).
pub async fn trace(addr: SocketAddr, id: &str) -> Result<Vec<SpanRecord>, QueryError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) || id.len() > 32 {
        return Err(QueryError::NotFound(id.to_string()));
    }
    let (status, body) = get(addr, &format!("/traces/{id}")).await?;
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| QueryError::Http {
            addr,
            message: e.to_string(),
        }),
        404 => Err(QueryError::NotFound(id.to_string())),
        other => Err(QueryError::Http {
            addr,
            message: format!("HTTP {other}"),
        }),
    }
}
