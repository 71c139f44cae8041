//! Interoperability of the mesh with a non-Rust gRPC stack (Python grpcio), both ways,
//! over a real sidecar pair with mTLS:
//! 1. grpcio client → outbound tally-proxy → mTLS → inbound tally-proxy → tonic server;
//! 2. tonic client → outbound tally-proxy → mTLS → inbound tally-proxy → grpcio server.
//!
//! Each direction runs unary and server-streaming calls, with request metadata,
//! response headers and trailers, an error status in a trailers-only answer, and an
//! error status in real trailers after streamed messages. The Python side lives in
//! tests/interop/ (stubs generated from proto/ at test time with grpcio-tools).
//!
//! Needs `<repo>/.venv/bin/python` with grpcio and grpcio-tools (`bash scripts/test`
//! installs them) and a built `tally-proxy` (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::events::v1::event_feed_service_server::{EventFeedService, EventFeedServiceServer};
use tally_api::events::v1::{
    EventEnvelope, GetHeadRequest, GetHeadResponse, SubscribeRequest, SubscribeResponse,
};
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::poll::v1::poll_service_server::{PollService, PollServiceServer};
use tally_api::poll::v1::*;
use tally_certs::{CertAuthority, SpiffeId};
use tally_testkit::{Process, bin_path, repo_root};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

const PATIENCE: Duration = Duration::from_secs(90);
const SERVICE: &str = "echo";
const NAMESPACE: &str = "interop";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ------------------------------------------------------------------ python

/// `.venv/bin/python` with grpcio and grpcio-tools, or a failure naming the fix.
fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    let fix = "run `bash scripts/test` once (it installs grpcio and grpcio-tools into .venv), \
               or `python3 -m venv .venv && .venv/bin/pip install grpcio grpcio-tools`";
    assert!(py.is_file(), "{} is missing; {fix}", py.display());
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import grpc / grpc_tools; {fix}",
        py.display()
    );
    py
}

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/interop").join(name)
}

// ------------------------------------------------------------------ mesh

struct Mesh {
    _pki: tempfile::TempDir,
    _inbound: Process,
    _outbound: Process,
    outbound: SocketAddr,
    client_id: String,
}

fn write_identity(dir: &Path, ca: &CertAuthority, service: &str) -> String {
    let id = SpiffeId::local(NAMESPACE, service).unwrap();
    let issued = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    let paths = tally_certs::write_workload(&dir.join(service), &id, &issued).unwrap();
    format!(
        "[identity]\nbundle = {:?}\ncert = {:?}\nkey = {:?}\nnamespace = {NAMESPACE:?}\nservice = {service:?}\n",
        dir.join("bundle.pem"),
        paths.cert,
        paths.key
    )
}

/// Starts `tally-proxy` with `config`; returns it and its bound addresses once `/ready`.
async fn start_proxy(dir: &Path, name: &str, config: &str) -> (Process, serde_json::Value) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(bin_path("tally-proxy"));
    cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut p = Process::spawn_command(cmd);
    let out = p.wait_for_stdout("\n", PATIENCE).await;
    let bound: serde_json::Value = serde_json::from_str(out.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("{name}: unreadable start line ({e})\n{}", p.output()));
    let admin: SocketAddr = bound["admin"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while http_status(admin, "/ready") != Some(200) {
        assert!(p.is_running(), "{name} exited\n{}", p.output());
        assert!(
            Instant::now() < deadline,
            "{name} never became ready\n{}",
            p.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (p, bound)
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(tcp).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Mesh {
    /// A caller sidecar routing `echo` to a callee sidecar in front of `app`.
    async fn start(app: SocketAddr) -> Mesh {
        let pki = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("tally.local").unwrap();
        std::fs::write(pki.path().join("bundle.pem"), ca.cert_pem()).unwrap();
        let server_identity = write_identity(pki.path(), &ca, SERVICE);
        let client_identity = write_identity(pki.path(), &ca, "client");
        let (inbound, bound) = start_proxy(
            pki.path(),
            "inbound",
            &format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{server_identity}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{app}\"\n"
            ),
        )
        .await;
        let inbound_addr = bound["inbound"].as_str().unwrap().to_string();
        let (outbound, bound) = start_proxy(
            pki.path(),
            "outbound",
            &format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{client_identity}\n[outbound]\nlisten = \"127.0.0.1:0\"\n\n[services.{SERVICE}]\nendpoints = [\"{inbound_addr}\"]\n"
            ),
        )
        .await;
        Mesh {
            _pki: pki,
            _inbound: inbound,
            _outbound: outbound,
            outbound: bound["outbound"].as_str().unwrap().parse().unwrap(),
            client_id: format!("spiffe://tally.local/ns/{NAMESPACE}/sa/client"),
        }
    }
}

// ------------------------------------------------------------------ tonic upstream

/// The tonic twin of tests/interop/server.py (see its docstring for the behaviour).
#[derive(Clone)]
struct Upstream;

fn meta(req: &Request<impl Sized>, key: &str) -> String {
    req.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tonic::async_trait]
impl PollService for Upstream {
    async fn create_poll(
        &self,
        _: Request<CreatePollRequest>,
    ) -> Result<Response<CreatePollResponse>, Status> {
        Err(Status::unimplemented("interop"))
    }
    async fn get_poll(
        &self,
        req: Request<GetPollRequest>,
    ) -> Result<Response<GetPollResponse>, Status> {
        let owner = meta(&req, "x-interop-meta");
        let peer = meta(&req, "x-tally-peer-spiffe-id");
        let id = req.into_inner().poll_id;
        if id == "missing" {
            let mut s = Status::not_found("no poll missing");
            s.metadata_mut()
                .insert("x-interop-trailer", "not-found".parse().unwrap());
            return Err(s);
        }
        let mut rsp = Response::new(GetPollResponse {
            poll: Some(Poll {
                poll_id: id,
                owner_id: owner,
                question: peer,
                ..Default::default()
            }),
        });
        rsp.metadata_mut()
            .insert("x-interop-server", "tonic".parse().unwrap());
        Ok(rsp)
    }
    async fn list_polls(
        &self,
        _: Request<ListPollsRequest>,
    ) -> Result<Response<ListPollsResponse>, Status> {
        Err(Status::unimplemented("interop"))
    }
    async fn close_poll(
        &self,
        _: Request<ClosePollRequest>,
    ) -> Result<Response<ClosePollResponse>, Status> {
        Err(Status::unimplemented("interop"))
    }
    async fn cast_vote(
        &self,
        _: Request<CastVoteRequest>,
    ) -> Result<Response<CastVoteResponse>, Status> {
        Err(Status::unimplemented("interop"))
    }
    async fn get_results(
        &self,
        _: Request<GetResultsRequest>,
    ) -> Result<Response<GetResultsResponse>, Status> {
        Err(Status::unimplemented("interop"))
    }
}

type Events = Pin<Box<dyn futures::Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventFeedService for Upstream {
    type SubscribeStream = Events;
    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<Events>, Status> {
        let r = req.into_inner();
        let fail = r.consumer == "fail-after-2";
        let consumer = r.consumer.clone();
        let items = (1..=r.from_offset).map_while(move |offset| {
            if fail && offset > 2 {
                if offset > 3 {
                    return None;
                }
                let mut s = Status::resource_exhausted("stopped after 2");
                s.metadata_mut()
                    .insert("x-interop-trailer", "stopped".parse().unwrap());
                return Some(Err(s));
            }
            Some(Ok(SubscribeResponse {
                offset,
                event: Some(EventEnvelope {
                    event_id: format!("e-{offset}"),
                    aggregate_id: consumer.clone(),
                    ..Default::default()
                }),
            }))
        });
        let mut rsp =
            Response::new(Box::pin(futures::stream::iter(items.collect::<Vec<_>>())) as Events);
        rsp.metadata_mut()
            .insert("x-interop-server", "tonic".parse().unwrap());
        Ok(rsp)
    }
    async fn get_head(
        &self,
        _: Request<GetHeadRequest>,
    ) -> Result<Response<GetHeadResponse>, Status> {
        Ok(Response::new(GetHeadResponse { head_offset: 0 }))
    }
}

async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PollServiceServer::new(Upstream))
            .add_service(EventFeedServiceServer::new(Upstream))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread")]
async fn grpcio_client_through_mesh_to_tonic_server() {
    init();
    let py = python();
    let app = start_upstream().await;
    let mesh = Mesh::start(app).await;
    let stubs = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let stubs = stubs.path().to_path_buf();
        let target = mesh.outbound.to_string();
        move || {
            Command::new(py)
                .arg(script("client.py"))
                .arg("--stubs")
                .arg(&stubs)
                .args(["--target", &target, "--authority", SERVICE])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client.py failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    let u = &r["unary_ok"];
    assert_eq!(u["code"], "OK", "{r:#}");
    assert_eq!(u["poll_id"], "p-1");
    assert_eq!(
        u["owner_id"], "hello",
        "request metadata reached tonic: {r:#}"
    );
    assert_eq!(
        u["peer"],
        mesh.client_id.as_str(),
        "inbound sidecar forwarded the caller identity"
    );
    assert_eq!(
        u["initial"]["x-interop-server"], "tonic",
        "response headers reached grpcio: {r:#}"
    );

    let e = &r["unary_error"];
    assert_eq!(e["code"], "NOT_FOUND", "{r:#}");
    assert_eq!(e["details"], "no poll missing");
    assert_eq!(e["trailing"]["x-interop-trailer"], "not-found", "{r:#}");

    let s = &r["stream_ok"];
    assert_eq!(s["code"], "OK", "{r:#}");
    assert_eq!(s["offsets"], serde_json::json!([1, 2, 3, 4, 5]));
    assert_eq!(s["initial"]["x-interop-server"], "tonic");

    let s = &r["stream_error"];
    assert_eq!(s["code"], "RESOURCE_EXHAUSTED", "{r:#}");
    assert_eq!(s["details"], "stopped after 2");
    assert_eq!(s["offsets"], serde_json::json!([1, 2]));
    assert_eq!(s["trailing"]["x-interop-trailer"], "stopped", "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tonic_client_through_mesh_to_grpcio_server() {
    init();
    let py = python();
    let stubs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(py);
    cmd.arg(script("server.py"))
        .arg("--stubs")
        .arg(stubs.path());
    let mut server = Process::spawn_command(cmd);
    let out = server.wait_for_stdout("PORT ", PATIENCE).await;
    let port: u16 = out
        .lines()
        .find_map(|l| l.strip_prefix("PORT "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("server.py printed no port\n{}", server.output()));
    let mesh = Mesh::start(SocketAddr::from(([127, 0, 0, 1], port))).await;

    let channel: Channel = Endpoint::from_shared(format!("http://{}", mesh.outbound))
        .unwrap()
        .origin(format!("http://{SERVICE}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut polls = PollServiceClient::new(channel.clone());
    let mut feed = EventFeedServiceClient::new(channel);

    // Unary: metadata both ways, caller identity, trailers merged into the answer's metadata.
    let mut req = Request::new(GetPollRequest {
        poll_id: "p-1".into(),
    });
    req.metadata_mut()
        .insert("x-interop-meta", "hello".parse().unwrap());
    req.set_timeout(PATIENCE);
    let rsp = polls
        .get_poll(req)
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", server.output()));
    let md = rsp.metadata().clone();
    let poll = rsp.into_inner().poll.unwrap();
    assert_eq!(poll.poll_id, "p-1");
    assert_eq!(poll.owner_id, "hello", "request metadata reached grpcio");
    assert_eq!(
        poll.question, mesh.client_id,
        "inbound sidecar forwarded the caller identity"
    );
    assert_eq!(md.get("x-interop-server").unwrap(), "python");
    assert_eq!(
        md.get("x-interop-trailer").unwrap(),
        "echo-hello",
        "trailers reached tonic: {md:?}"
    );

    // Unary error: status, message and trailing metadata.
    let err = polls
        .get_poll(GetPollRequest {
            poll_id: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no poll missing");
    assert_eq!(
        err.metadata().get("x-interop-trailer").unwrap(),
        "not-found",
        "{err:?}"
    );

    // Server streaming to the end, then OK trailers.
    let rsp = feed
        .subscribe(SubscribeRequest {
            from_offset: 5,
            consumer: "plain".into(),
            event_types: vec![],
        })
        .await
        .unwrap();
    assert_eq!(rsp.metadata().get("x-interop-server").unwrap(), "python");
    let mut stream = rsp.into_inner();
    let mut offsets = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        offsets.push(m.offset);
    }
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    assert!(
        stream.trailers().await.unwrap().is_some(),
        "OK trailers arrived"
    );

    // Server streaming that fails after two messages: the status arrives in real trailers.
    let mut stream = feed
        .subscribe(SubscribeRequest {
            from_offset: 5,
            consumer: "fail-after-2".into(),
            event_types: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut offsets = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => offsets.push(m.offset),
            Ok(None) => panic!("stream ended OK after {offsets:?}; expected RESOURCE_EXHAUSTED"),
            Err(s) => break s,
        }
    };
    assert_eq!(offsets, vec![1, 2]);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "stopped after 2");
    assert_eq!(
        status.metadata().get("x-interop-trailer").unwrap(),
        "stopped",
        "{status:?}"
    );
}
