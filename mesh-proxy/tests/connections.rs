//! The mesh must not fail calls because of its own connection management: the connections
//! between sidecars and to the local app are shared by many callers, reused across idle gaps,
//! and replaced by the app. Every call here must succeed; one failure fails the test.

mod support;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;

/// Fires `bursts` bursts of `per_burst` concurrent calls spread over `clients`, with an idle
/// gap between bursts. Each call sends `body(i)` as separate DATA frames (ending with an empty
/// END_STREAM frame, as tonic does). Returns every call that did not end OK with its echo.
async fn bursts(
    clients: &[Client],
    bursts: usize,
    per_burst: usize,
    gap: Duration,
    body: impl Fn(usize) -> Vec<Bytes>,
) -> Vec<(usize, CallResult)> {
    let mut failed = Vec::new();
    for b in 0..bursts {
        let calls = (0..per_burst).map(|k| {
            let i = b * per_burst + k;
            let client = clients[i % clients.len()].clone();
            let frames = body(i);
            async move {
                let r = client.call_frames(SVC, PATH, &[], frames).await;
                (i, r)
            }
        });
        for (i, r) in futures::future::join_all(calls).await {
            let echoed = r.messages.first().map(|m| m.to_vec());
            if r.status() != Some(OK)
                || r.error.is_some()
                || echoed != Some(format!("m{i}").into_bytes())
            {
                failed.push((i, r));
            }
        }
        tokio::time::sleep(gap).await;
    }
    failed
}

fn message(i: usize) -> Bytes {
    frame(format!("m{i}").as_bytes())
}

#[tokio::test]
async fn bursts_of_calls_with_idle_gaps_all_succeed() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    let clients = vec![mesh.client().await, mesh.client().await];
    // 300 calls share one connection between the sidecars (and one to the app).
    let failed = bursts(&clients, 6, 50, Duration::from_millis(300), |i| {
        vec![message(i)]
    })
    .await;
    assert!(
        failed.is_empty(),
        "{} of 300 calls failed: {failed:?}",
        failed.len()
    );
    assert_eq!(up.calls(), 300);
}

#[tokio::test]
async fn empty_data_frames_from_callers_do_not_reach_the_shared_connection() {
    init();
    let up = Upstream::start("a").await;
    let mesh = Mesh::start(&[&up], "", "").await;
    // Empty DATA frames are legal, but HTTP/2 peers bound how many they accept on one
    // connection. Each caller connection stays under that bound; together they would
    // exceed it on the one connection the sidecars share.
    let clients = vec![
        mesh.client().await,
        mesh.client().await,
        mesh.client().await,
    ];
    let failed = bursts(&clients, 4, 45, Duration::from_millis(100), |i| {
        vec![message(i), Bytes::new()]
    })
    .await;
    assert!(
        failed.is_empty(),
        "{} of 180 calls failed: {failed:?}",
        failed.len()
    );
}

/// An echo app that refuses the first stream carrying each request message with
/// REFUSED_STREAM (so it never processes it) and answers the next one. Returns its address and
/// the number of refused streams.
async fn app_refusing_each_call_once() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<Vec<u8>>::new(),
    ));
    let refused = Arc::new(AtomicUsize::new(0));
    let r = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (seen, refused) = (seen.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let (seen, refused) = (seen.clone(), refused.clone());
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut msg = Vec::new();
                        while let Some(Ok(d)) = body.data().await {
                            let _ = body.flow_control().release_capacity(d.len());
                            msg.extend_from_slice(&d);
                        }
                        if seen.lock().unwrap().insert(msg.clone()) {
                            refused.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            return;
                        }
                        let rsp = Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(rsp, false) else {
                            return;
                        };
                        let _ = send.send_data(Bytes::from(msg), false);
                        let mut t = HeaderMap::new();
                        t.insert("grpc-status", HeaderValue::from_static("0"));
                        let _ = send.send_trailers(t);
                    });
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn streams_the_local_app_refuses_are_retried_transparently() {
    init();
    let (app, refused) = app_refusing_each_call_once().await;
    // No retry policy on the route: a stream the app never processed is always retried.
    let mesh = Mesh::start_with_apps(&[app], "", "").await;
    let clients = vec![mesh.client().await];
    let failed = bursts(&clients, 3, 20, Duration::from_millis(50), |i| {
        vec![message(i)]
    })
    .await;
    assert!(
        failed.is_empty(),
        "{} of 60 calls failed: {failed:?}",
        failed.len()
    );
    assert_eq!(refused.load(Ordering::SeqCst), 60);
}

/// An echo app that closes each connection gracefully (GOAWAY) after `per_conn` requests, as
/// an app with a maximum connection age does, and, with `empty_data`, follows each response
/// message with an empty DATA frame. Returns its address and the connections it served.
async fn app_replacing_connections(
    per_conn: usize,
    empty_data: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let full = Arc::new(tokio::sync::Notify::new());
                let (s, f) = (served.clone(), full.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    if s.fetch_add(1, Ordering::SeqCst) + 1 == per_conn {
                        f.notify_one();
                    }
                    async move {
                        let msg = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let mut t = HeaderMap::new();
                        t.insert("grpc-status", HeaderValue::from_static("0"));
                        let mut frames = vec![Ok::<_, Infallible>(Frame::data(msg))];
                        if empty_data {
                            frames.push(Ok(Frame::data(Bytes::new())));
                        }
                        frames.push(Ok(Frame::trailers(t)));
                        let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)));
                        r.headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/grpc"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = full.notified() => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn an_app_replacing_its_connections_loses_no_call() {
    init();
    let (app, conns) = app_replacing_connections(15, false).await;
    let mesh = Mesh::start_with_apps(&[app], "", "").await;
    let clients = vec![mesh.client().await, mesh.client().await];
    let failed = bursts(&clients, 6, 40, Duration::from_millis(100), |i| {
        vec![message(i)]
    })
    .await;
    assert!(
        failed.is_empty(),
        "{} of 240 calls failed: {failed:?}",
        failed.len()
    );
    assert!(conns.load(Ordering::SeqCst) > 1);
}

#[tokio::test]
async fn empty_data_frames_from_the_app_do_not_reach_the_shared_connection() {
    init();
    // Each app connection carries 40 empty DATA frames, under the per-connection bound; the
    // one connection between the sidecars outlives them and would carry them all.
    let (app, conns) = app_replacing_connections(40, true).await;
    let mesh = Mesh::start_with_apps(&[app], "", "").await;
    let clients = vec![mesh.client().await];
    // Sequential calls: each app connection serves exactly 40 before it is replaced.
    let failed = bursts(&clients, 200, 1, Duration::ZERO, |i| vec![message(i)]).await;
    assert!(
        failed.is_empty(),
        "{} of 200 calls failed: {failed:?}",
        failed.len()
    );
    assert!(conns.load(Ordering::SeqCst) >= 5);
}

/// Reads one HTTP/2 frame: (type, flags, stream id).
async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 9];
    tcp.read_exact(&mut h).await.ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((h[3], h[4], stream))
}

/// An echo app whose first connection reads the proxy's request HEADERS and then, without
/// handing the request to the application, ends the connection: after a graceful GOAWAY
/// (`graceful`, what a draining app whose final GOAWAY the client never read looks like) or
/// with no GOAWAY at all (a crash). Later connections answer normally. Returns the address,
/// the calls the application served, and whether the first connection saw the HEADERS.
async fn app_ending_its_first_connection(
    graceful: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let headers_seen = Arc::new(AtomicUsize::new(0));
    let (s, seen) = (served.clone(), headers_seen.clone());
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        first.read_exact(&mut preface).await.unwrap();
        // SETTINGS (empty), and an ACK of the client's.
        first
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        while let Some((kind, _, stream)) = read_frame(&mut first).await {
            if kind == 0x1 && stream > 0 {
                seen.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if graceful {
            // GOAWAY, last stream id 2^31-1, NO_ERROR: the first step of a graceful drain.
            let goaway = [
                0, 0, 8, 7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0,
            ];
            first.write_all(&goaway).await.unwrap();
        }
        drop(first);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_counting_echo(tcp, s.clone()));
        }
    });
    (addr, served, headers_seen)
}

#[tokio::test]
async fn a_call_cut_off_by_a_drained_connection_is_sent_again_but_not_after_a_crash() {
    init();
    // Drained: GOAWAY, then the connection ends before any response. The app never took the
    // call, so the inbound sidecar sends it again on a new connection.
    let (app, served, headers_seen) = app_ending_its_first_connection(true).await;
    let mesh = Mesh::start_with_apps(&[app], "", "").await;
    let client = mesh.client().await;
    let r = client.call_frames(SVC, PATH, &[], vec![message(1)]).await;
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(r.messages.first().map(|m| m.to_vec()), Some(b"m1".to_vec()));
    assert_eq!(
        headers_seen.load(Ordering::SeqCst),
        1,
        "the request was written"
    );
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "served once, on the new connection"
    );

    // Crashed: the same end without a GOAWAY. The app may have processed the call, so it is
    // not sent again (the route has no retry policy): UNAVAILABLE.
    let (app, served, headers_seen) = app_ending_its_first_connection(false).await;
    let mesh = Mesh::start_with_apps(&[app], "", "").await;
    let client = mesh.client().await;
    let r = client.call_frames(SVC, PATH, &[], vec![message(2)]).await;
    assert_eq!(r.status(), Some(UNAVAILABLE), "{r:?}");
    assert_eq!(r.proxy_error().as_deref(), Some("local-app-unavailable"));
    assert_eq!(headers_seen.load(Ordering::SeqCst), 1);
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

/// Writes one HTTP/2 frame.
async fn write_frame(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) {
    use tokio::io::AsyncWriteExt;
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    w.write_all(&f).await.unwrap();
}

/// An HPACK literal header field without indexing, with a literal name (RFC 7541 §6.2.2).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// What the draining first connection of `app_draining_its_first_connection` saw.
struct Draining {
    /// Fires once the proxy has acknowledged the PING sent after the GOAWAY, i.e. has read it.
    drain_seen: tokio::sync::oneshot::Receiver<()>,
    /// Answer the call the first connection holds, then close it.
    finish: tokio::sync::oneshot::Sender<()>,
    /// Streams opened on the first connection after the first one.
    late_streams: Arc<AtomicUsize>,
}

/// An echo app whose first connection takes one call, then starts a graceful shutdown (GOAWAY
/// with the highest stream id, then a PING) and holds that call until told to answer it, as an
/// app with a maximum connection age serving a slow call does. Later connections answer at once.
async fn app_draining_its_first_connection() -> (SocketAddr, Draining, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, drain_seen) = tokio::sync::oneshot::channel();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let late_streams = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (late, s) = (late_streams.clone(), served.clone());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<tokio::net::TcpStream>();
    // The first connection is handled apart; later ones by the accept loop below.
    tokio::spawn(async move {
        let Ok(first) = first_rx.await else { return };
        let (mut r, mut w) = first.into_split();
        let mut preface = [0u8; 24];
        r.read_exact(&mut preface).await.unwrap();
        write_frame(&mut w, 0x4, 0, 0, &[]).await; // SETTINGS
        write_frame(&mut w, 0x4, 0x1, 0, &[]).await; // SETTINGS ACK
        // Frames read on the first connection, after its first HEADERS, go to the writer side.
        let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut h = [0u8; 9];
            while r.read_exact(&mut h).await.is_ok() {
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                let mut payload = vec![0u8; len];
                if r.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if frames_tx.send((h[3], h[4], stream, payload)).is_err() {
                    break;
                }
            }
        });
        let held = loop {
            let (kind, _, stream, _) = frames.recv().await.unwrap();
            if kind == 0x1 && stream > 0 {
                break stream;
            }
        };
        // GOAWAY (last stream id 2^31-1, NO_ERROR), then a PING whose ACK proves it was read.
        write_frame(&mut w, 0x7, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]).await;
        write_frame(&mut w, 0x6, 0, 0, b"drained!").await;
        let mut seen_tx = Some(seen_tx);
        let mut finish_rx = finish_rx;
        loop {
            tokio::select! {
                f = frames.recv() => {
                    let Some((kind, flags, stream, payload)) = f else { return };
                    if kind == 0x1 && stream > held {
                        late.fetch_add(1, Ordering::SeqCst);
                    }
                    if kind == 0x6
                        && flags & 0x1 == 1
                        && payload == b"drained!"
                        && let Some(t) = seen_tx.take()
                    {
                        let _ = t.send(());
                    }
                }
                _ = &mut finish_rx => break,
            }
        }
        // Answer the held call (`:status 200`, gRPC content type, one message, OK trailers),
        // then the final GOAWAY naming it as the last stream, and close.
        let mut head = vec![0x88];
        head.extend(literal("content-type", "application/grpc"));
        write_frame(&mut w, 0x1, 0x4, held, &head).await;
        write_frame(&mut w, 0x0, 0, held, &frame(b"held")).await;
        write_frame(&mut w, 0x1, 0x5, held, &literal("grpc-status", "0")).await;
        let mut last = held.to_be_bytes().to_vec();
        last.extend_from_slice(&[0, 0, 0, 0]);
        write_frame(&mut w, 0x7, 0, 0, &last).await;
    });
    tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            if let Some(t) = first_tx.take() {
                let _ = t.send(tcp);
                continue;
            }
            tokio::spawn(serve_counting_echo(tcp, s.clone()));
        }
    });
    let draining = Draining {
        drain_seen,
        finish,
        late_streams,
    };
    (addr, draining, served)
}

#[tokio::test]
async fn calls_arriving_while_the_app_drains_its_connection_go_to_a_new_one() {
    init();
    let (app, draining, served) = app_draining_its_first_connection().await;
    let mesh = Mesh::start_with_apps(&[app], "", "").await;
    let client = mesh.client().await;
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.call_frames(SVC, PATH, &[], vec![message(0)]).await }
    });
    draining.drain_seen.await.unwrap();
    // The inbound sidecar has read the GOAWAY: no call may be handed to that connection (its
    // dispatcher exits on its next wake-up, which is how a call used to get stuck there).
    let clients = vec![client.clone(), mesh.client().await];
    let failed = bursts(&clients, 3, 20, Duration::ZERO, |i| vec![message(i)]).await;
    assert!(
        failed.is_empty(),
        "{} of 60 calls failed: {failed:?}",
        failed.len()
    );
    assert_eq!(
        served.load(Ordering::SeqCst),
        60,
        "all served on a new connection"
    );
    assert_eq!(draining.late_streams.load(Ordering::SeqCst), 0);
    draining.finish.send(()).unwrap();
    let r = held.await.unwrap();
    assert_eq!(r.status(), Some(OK), "{r:?}");
    assert_eq!(
        r.messages.first().map(|m| m.to_vec()),
        Some(b"held".to_vec())
    );
}

/// Serves one HTTP/2 connection as a gRPC echo, counting each request in `served`.
async fn serve_counting_echo(tcp: tokio::net::TcpStream, served: Arc<AtomicUsize>) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        served.fetch_add(1, Ordering::SeqCst);
        async move {
            let msg = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(msg)),
                Ok(Frame::trailers(t)),
            ];
            let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok::<_, Infallible>(r)
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}
