//! Idle connections as a peer sidecar holds them: TCP, TLS 1.3 with the caller's client
//! certificate (the benchmark's `client` identity, checked by the inbound side as any mesh
//! peer), HTTP/2, and one checked gRPC `GetPoll` so both sides have set the connection up
//! fully. The call is written on hyper (tonic's channel takes no custom TLS connector of
//! this shape without more code than the call itself).

use crate::edge::web::frame;
use crate::error::BenchError;
use crate::pki::Pki;
use bytes::{Buf, Bytes};
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use std::net::SocketAddr;
use std::time::Duration;
use tally_api::poll::v1::{GetPollRequest, GetPollResponse};
use tally_certs::tls::{IdentityPaths, Material, client_config, server_name_for};

/// Time to open one connection and make its call.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections opened at once.
const OPEN_BATCH: usize = 128;
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A held peer connection (dropping it closes the connection).
pub(crate) type PeerConn = SendRequest<Full<Bytes>>;

/// What every peer connection is opened with.
#[derive(Clone)]
pub(crate) struct PeerDialer {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    server: rustls::pki_types::ServerName<'static>,
    authority: String,
}

impl PeerDialer {
    /// Dials `addr` as the benchmark's client identity, expecting the target's.
    pub(crate) fn new(addr: SocketAddr, pki: &Pki, authority: &str) -> Result<Self, BenchError> {
        let material = Material::load(&IdentityPaths {
            bundle: pki.client.bundle.clone(),
            cert: pki.client.cert.clone(),
            key: pki.client.key.clone(),
        })?;
        Ok(PeerDialer {
            addr,
            connector: tokio_rustls::TlsConnector::from(client_config(&material)?),
            server: server_name_for(&pki.server.id),
            authority: authority.to_string(),
        })
    }

    /// Opens `n` connections, each with one checked call; the held ones, the number that
    /// failed and the first error.
    pub(crate) async fn open(
        &self,
        n: usize,
        first_seq: u64,
    ) -> (Vec<PeerConn>, u64, Option<String>) {
        let results: Vec<Result<PeerConn, String>> = futures::stream::iter(0..n as u64)
            .map(|i| async move {
                tokio::time::timeout(OPEN_TIMEOUT, self.open_one(first_seq + i))
                    .await
                    .map_err(|_| format!("no connection and answer within {OPEN_TIMEOUT:?}"))?
            })
            .buffer_unordered(OPEN_BATCH)
            .collect()
            .await;
        let mut ok = Vec::with_capacity(n);
        let (mut failed, mut first) = (0, None);
        for r in results {
            match r {
                Ok(c) => ok.push(c),
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
        (ok, failed, first)
    }

    async fn open_one(&self, seq: u64) -> Result<PeerConn, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let tls = self
            .connector
            .connect(self.server.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", self.addr))?;
        let (send, driver) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 with {}: {e}", self.addr))?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        get_poll(&send, &self.authority, seq).await?;
        Ok(send)
    }
}

/// One gRPC `GetPoll` over a raw HTTP/2 connection, checked like the load generator's.
async fn get_poll(send: &PeerConn, authority: &str, seq: u64) -> Result<(), String> {
    let id = format!("poll-{seq}");
    let body = frame(
        0,
        &GetPollRequest {
            poll_id: id.clone(),
        }
        .encode_to_vec(),
    );
    let req = hyper::Request::post(format!(
        "http://{authority}/tally.poll.v1.PollService/GetPoll"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(body))
    .map_err(|e| e.to_string())?;
    let mut send = send.clone();
    send.ready().await.map_err(|e| e.to_string())?;
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = rsp.into_parts();
    let collected = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status.as_deref() != Some("0") {
        return Err(format!("HTTP {} with grpc-status {status:?}", parts.status));
    }
    let mut bytes = collected.to_bytes();
    if bytes.len() < 5 {
        return Err("answer without a message".into());
    }
    bytes.advance(5);
    match GetPollResponse::decode(bytes)
        .map_err(|e| e.to_string())?
        .poll
    {
        Some(p) if p.poll_id == id => Ok(()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
