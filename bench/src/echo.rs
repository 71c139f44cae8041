//! The benchmark's upstream: a tiny tonic server that answers at once, so what is
//! measured is the path to it, not the work behind it. It reuses Tally's own API
//! (no extra proto): `PollService.GetPoll` echoes the requested id (unary), and
//! `EventFeedService.Subscribe` streams `from_offset` small events, then ends
//! (server streaming; `from_offset` is the message count by bench convention).

use crate::error::BenchError;
use std::net::SocketAddr;
use std::pin::Pin;
use tally_api::events::v1::event_envelope::Payload;
use tally_api::events::v1::event_feed_service_server::{EventFeedService, EventFeedServiceServer};
use tally_api::events::v1::{
    EventEnvelope, GetHeadRequest, GetHeadResponse, PollVoted, SubscribeRequest, SubscribeResponse,
};
use tally_api::poll::v1::poll_service_server::{PollService, PollServiceServer};
use tally_api::poll::v1::{
    CastVoteRequest, CastVoteResponse, ClosePollRequest, ClosePollResponse, CreatePollRequest,
    CreatePollResponse, GetPollRequest, GetPollResponse, GetResultsRequest, GetResultsResponse,
    ListPollsRequest, ListPollsResponse, Poll, PollOption, PollStatus,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Upper bound on messages per stream, whatever the request asks.
pub(crate) const MAX_STREAM_MESSAGES: u64 = 1_000;

/// Answers `GetPoll` with the requested id and `Subscribe` with N events.
#[derive(Clone, Default)]
pub(crate) struct Echo;

#[tonic::async_trait]
impl PollService for Echo {
    async fn create_poll(
        &self,
        _: Request<CreatePollRequest>,
    ) -> Result<Response<CreatePollResponse>, Status> {
        Err(Status::unimplemented("bench echo serves GetPoll only"))
    }

    async fn get_poll(
        &self,
        request: Request<GetPollRequest>,
    ) -> Result<Response<GetPollResponse>, Status> {
        let id = request.into_inner().poll_id;
        let poll = Poll {
            poll_id: id,
            owner_id: "bench".into(),
            question: "echo".into(),
            options: vec![
                PollOption {
                    option_id: "a".into(),
                    text: "yes".into(),
                },
                PollOption {
                    option_id: "b".into(),
                    text: "no".into(),
                },
            ],
            status: PollStatus::Open as i32,
            ..Default::default()
        };
        Ok(Response::new(GetPollResponse { poll: Some(poll) }))
    }

    async fn list_polls(
        &self,
        _: Request<ListPollsRequest>,
    ) -> Result<Response<ListPollsResponse>, Status> {
        Err(Status::unimplemented("bench echo serves GetPoll only"))
    }

    async fn close_poll(
        &self,
        _: Request<ClosePollRequest>,
    ) -> Result<Response<ClosePollResponse>, Status> {
        Err(Status::unimplemented("bench echo serves GetPoll only"))
    }

    async fn cast_vote(
        &self,
        _: Request<CastVoteRequest>,
    ) -> Result<Response<CastVoteResponse>, Status> {
        Err(Status::unimplemented("bench echo serves GetPoll only"))
    }

    async fn get_results(
        &self,
        _: Request<GetResultsRequest>,
    ) -> Result<Response<GetResultsResponse>, Status> {
        Err(Status::unimplemented("bench echo serves GetPoll only"))
    }
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventFeedService for Echo {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = request.into_inner();
        let n = req.from_offset.min(MAX_STREAM_MESSAGES);
        let consumer = req.consumer;
        let items = (1..=n).map(move |offset| {
            Ok(SubscribeResponse {
                offset,
                event: Some(EventEnvelope {
                    event_id: format!("bench-{offset}"),
                    event_type: "tally.events.v1.PollVoted".into(),
                    aggregate_id: consumer.clone(),
                    sequence: offset,
                    producer: "bench".into(),
                    payload: Some(Payload::PollVoted(PollVoted {
                        poll_id: consumer.clone(),
                        option_id: "a".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_head(
        &self,
        _: Request<GetHeadRequest>,
    ) -> Result<Response<GetHeadResponse>, Status> {
        Ok(Response::new(GetHeadResponse { head_offset: 0 }))
    }
}

/// A running echo server; stops when dropped.
pub(crate) struct EchoServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    /// Binds `127.0.0.1:0` and serves on the current runtime.
    pub(crate) async fn start() -> Result<EchoServer, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError::io("binding the echo server", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| BenchError::io("reading the echo server's address", e))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                // Sidecars multiplex many callers on one connection; a burst of
                // cancellations at the end of an overloaded step must not GOAWAY it.
                .http2_max_pending_accept_reset_streams(Some(100_000))
                .max_concurrent_streams(Some(100_000))
                .add_service(PollServiceServer::new(Echo))
                .add_service(EventFeedServiceServer::new(Echo))
                // Small frames must leave at once (Nagle plus delayed ACKs would add ~20-40 ms to streams).
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
            if let Err(e) = served {
                eprintln!("tally-bench: echo server stopped: {e}");
            }
        });
        Ok(EchoServer {
            addr,
            stop: Some(stop),
            task,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// `tally-bench --serve-echo`: serves on one thread until the process is killed, after
/// printing `{"listen":"ADDR"}` on stdout.
pub fn serve_process() -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("starting the echo runtime", e))?;
    rt.block_on(async {
        let server = EchoServer::start().await?;
        println!("{{\"listen\":\"{}\"}}", server.addr);
        // Serve until killed; `server` stays alive for as long.
        std::future::pending::<()>().await;
        drop(server);
        Ok(())
    })
}

/// The echo server in a process of its own, so that it runs on the system-under-test CPUs
/// (beside the proxies) and not on the load generator's. Killed when dropped.
pub(crate) struct EchoProcess {
    pub(crate) addr: SocketAddr,
    child: std::process::Child,
}

impl EchoProcess {
    /// Starts `tally-bench --serve-echo`, under `taskset -c cpus` when given.
    pub(crate) fn start(cpus: Option<&str>) -> Result<EchoProcess, BenchError> {
        use std::io::BufRead;
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::io("finding tally-bench's own path", e))?;
        let mut cmd = crate::setup::pinned(cpus, &exe);
        cmd.arg("--serve-echo")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::io("starting the echo server process", e))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        #[derive(serde::Deserialize)]
        struct Listen {
            listen: SocketAddr,
        }
        match serde_json::from_str::<Listen>(line.trim()) {
            Ok(l) => Ok(EchoProcess {
                addr: l.listen,
                child,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BenchError::NotReady {
                    name: "echo server".into(),
                    detail: format!("start line {line:?}: {e}"),
                })
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
