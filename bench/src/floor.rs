//! The *floor relay*: the smallest correct mTLS HTTP/2 sidecar pair, for the benchmark to
//! measure Tally against. Outbound: plaintext HTTP/2 in, one TLS 1.3 + HTTP/2 connection out,
//! accepted only if the server proves the exact expected SPIFFE id. Inbound: TLS with a
//! required client certificate whose SPIFFE id must equal the one expected, then HTTP/2 to
//! the local app. No policy, no metrics, no retries: tokio + tokio-rustls + hyper, one
//! worker thread. Hand-written on purpose: it is the reference, not a product.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use tally_certs::SpiffeId;
use tally_certs::tls::{
    IdentityPaths, Material, client_config, peer_spiffe_id, server_config, server_name_for,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// HTTP/2 windows of the relay (the same as Tally's defaults and the Envoy pair's).
pub(crate) const STREAM_WINDOW: u32 = 1 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 4 << 20;
/// Concurrent streams per connection, served and opened.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1_000;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where the relay sends calls and how it checks the other side.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Plaintext in, mTLS out to `upstream`, which must present `expect`.
    Outbound {
        /// The inbound relay to forward to.
        upstream: SocketAddr,
        /// SPIFFE id the inbound relay must present.
        expect: SpiffeId,
    },
    /// mTLS in (the caller must present `expect`), plaintext out to the app at `upstream`.
    Inbound {
        /// The local app to forward to.
        upstream: SocketAddr,
        /// SPIFFE id callers must present.
        expect: SpiffeId,
    },
}

/// One upstream HTTP/2 connection, opened on first use and reopened when it closes.
struct Upstream {
    addr: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, SpiffeId)>,
    conn: Mutex<Option<SendRequest<Incoming>>>,
}

impl Upstream {
    async fn sender(&self) -> Result<SendRequest<Incoming>, Error> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_reset_streams(MAX_CONCURRENT_STREAMS as usize);
        let sender = match &self.tls {
            Some((connector, expect)) => {
                let tls = connector.connect(server_name_for(expect), tcp).await?;
                let (sender, driver) = builder.handshake(TokioIo::new(tls)).await?;
                tokio::spawn(driver);
                sender
            }
            None => {
                let (sender, driver) = builder.handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(driver);
                sender
            }
        };
        *conn = Some(sender.clone());
        Ok(sender)
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Body>, Error> {
        let mut sender = self.sender().await?;
        sender.ready().await?;
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(hyper::header::HOST);
        let rsp = sender
            .send_request(Request::from_parts(parts, body))
            .await?;
        Ok(rsp.map(|b| b.boxed_unsync()))
    }
}

fn unavailable() -> Response<Body> {
    let mut rsp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *rsp.status_mut() = StatusCode::OK;
    rsp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    rsp.headers_mut()
        .insert("grpc-status", hyper::header::HeaderValue::from_static("14"));
    rsp
}

/// Binds `listen` and serves until the process ends; returns the bound address at once.
pub async fn start(
    listen: SocketAddr,
    paths: &IdentityPaths,
    mode: Mode,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let material = Material::load(paths)?;
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let (acceptor, upstream, expect_caller) = match mode {
        Mode::Outbound { upstream, expect } => {
            let connector = tokio_rustls::TlsConnector::from(client_config(&material)?);
            let up = Upstream {
                addr: upstream,
                tls: Some((connector, expect)),
                conn: Mutex::new(None),
            };
            (None, up, None)
        }
        Mode::Inbound { upstream, expect } => {
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&material)?);
            let up = Upstream {
                addr: upstream,
                tls: None,
                conn: Mutex::new(None),
            };
            (Some(acceptor), up, Some(expect))
        }
    };
    let upstream = Arc::new(upstream);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, upstream, expect) =
                (acceptor.clone(), upstream.clone(), expect_caller.clone());
            tokio::spawn(async move {
                let _ = serve(tcp, acceptor, upstream, expect).await;
            });
        }
    });
    Ok((bound, task))
}

async fn serve(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    upstream: Arc<Upstream>,
    expect: Option<SpiffeId>,
) -> Result<(), Error> {
    let svc = hyper::service::service_fn(move |req| {
        let upstream = upstream.clone();
        async move {
            Ok::<_, std::convert::Infallible>(match upstream.forward(req).await {
                Ok(rsp) => rsp,
                Err(_) => unavailable(),
            })
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(Some(100_000));
    match acceptor {
        Some(acceptor) => {
            let tls = acceptor.accept(tcp).await?;
            let peer = tls.get_ref().1.peer_certificates().and_then(peer_spiffe_id);
            if peer.is_none() || peer != expect {
                return Err(format!("caller {peer:?} is not the expected {expect:?}").into());
            }
            builder.serve_connection(TokioIo::new(tls), svc).await?;
        }
        None => builder.serve_connection(TokioIo::new(tcp), svc).await?,
    }
    Ok(())
}
