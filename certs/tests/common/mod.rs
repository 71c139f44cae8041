//! Shared helpers for the socket tests: a small TLS echo server and a client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tally_certs::tls::{Material, peer_spiffe_id};
use tally_certs::{CertAuthority, SpiffeId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Generous limit so a stuck handshake fails the test instead of hanging it.
pub const LIMIT: Duration = Duration::from_secs(30);

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn id(service: &str) -> SpiffeId {
    SpiffeId::local("default", service).unwrap()
}

/// Material for `service`, issued by `ca`, trusting `bundle_pem`.
pub fn material(ca: &CertAuthority, bundle_pem: &str, service: &str) -> Material {
    let issued = ca.issue(&id(service), Duration::from_secs(3600)).unwrap();
    Material::from_pem(
        bundle_pem.as_bytes(),
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )
    .unwrap()
}

/// What the server saw on one connection.
#[derive(Debug)]
pub enum Accepted {
    /// Handshake done; the client's SPIFFE id and negotiated ALPN.
    Ok {
        peer: Option<SpiffeId>,
        alpn: Option<Vec<u8>>,
    },
    /// Handshake failed with this error.
    Failed(String),
}

/// A TLS server asking `config()` for the config of every new connection.
/// Each connection gets `hello <client spiffe id>\n`, then every line is echoed back.
pub async fn spawn_server_with(
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = TlsAcceptor::from(config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let (_, conn) = tls.get_ref();
                        let peer = conn.peer_certificates().and_then(peer_spiffe_id);
                        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                        let _ = tx.send(Accepted::Ok {
                            peer: peer.clone(),
                            alpn,
                        });
                        let (r, mut w) = tokio::io::split(tls);
                        let greeting = match &peer {
                            Some(p) => format!("hello {p}\n"),
                            None => "hello anonymous\n".to_owned(),
                        };
                        if w.write_all(greeting.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut lines = BufReader::new(r).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Accepted::Failed(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A TLS server with one fixed config.
pub async fn spawn_server(
    config: Arc<ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    spawn_server_with(move || config.clone()).await
}

/// An established client connection.
pub struct Client {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    pub greeting: String,
}

impl Client {
    pub fn server_certs(&self) -> Vec<CertificateDer<'static>> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect()
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Sends a line and reads the echo.
    pub async fn echo(&mut self, line: &str) -> std::io::Result<String> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        read_line(&mut self.stream).await
    }
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = r.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a full line",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(byte[0]);
    }
}

/// Connects, completes the handshake and reads the greeting. In TLS 1.3 the server
/// checks the client certificate after the client's handshake finishes, so a refused
/// client only notices when it reads: that is why the greeting is part of "connect".
pub async fn connect(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> std::io::Result<Client> {
    tokio::time::timeout(LIMIT, async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut stream = TlsConnector::from(config).connect(name, tcp).await?;
        let greeting = read_line(&mut stream).await?;
        Ok(Client { stream, greeting })
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
}

/// The next thing the server reports, with a generous limit.
pub async fn next_accept(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("server reported nothing")
        .expect("server task ended")
}

/// The rustls error inside an io error from tokio-rustls, if there is one.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}
