use super::*;
use crate::transport::plaintext::Plaintext;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

fn limits(max_connections: usize, streams_per_connection: usize) -> ConnLimits {
    ConnLimits {
        max_connections,
        streams_per_connection,
    }
}

#[test]
fn the_least_busy_connection_takes_the_call() {
    assert_eq!(choose(&[3, 1, 2], false, limits(1, 100)), Choice::Use(1));
    assert_eq!(choose(&[2, 2], false, limits(4, 100)), Choice::Use(0));
}

#[test]
fn another_connection_opens_only_when_every_one_is_busy_and_the_limit_allows() {
    // Below the threshold: no new connection, whatever the limit.
    assert_eq!(choose(&[99], false, limits(4, 100)), Choice::Use(0));
    // At the threshold with room: use the least busy one and open another.
    assert_eq!(choose(&[100], false, limits(4, 100)), Choice::UseAndOpen(0));
    assert_eq!(
        choose(&[150, 100], false, limits(4, 100)),
        Choice::UseAndOpen(1)
    );
    // At the limit: keep using the least busy one.
    assert_eq!(choose(&[100, 120], false, limits(2, 100)), Choice::Use(0));
    // One connection per endpoint (the default) never opens a second.
    assert_eq!(choose(&[10_000], false, limits(1, 100)), Choice::Use(0));
    // One connection is opened at a time.
    assert_eq!(choose(&[100], true, limits(4, 100)), Choice::Use(0));
}

#[test]
fn without_a_usable_connection_the_call_waits_for_a_new_one() {
    assert_eq!(choose(&[], false, limits(1, 100)), Choice::Open);
    assert_eq!(choose(&[], true, limits(4, 100)), Choice::Open);
}

/// A request the test server received: its connection number, and how to answer it.
struct Held {
    conn: usize,
    answer: oneshot::Sender<()>,
}

/// An HTTP/2 server that reports each request (with the number of its connection) and answers
/// it when told. `goaway_after`: a connection sends a graceful GOAWAY once it has seen that many
/// requests (and keeps serving them).
async fn server(goaway_after: Option<usize>) -> (String, mpsc::UnboundedReceiver<Held>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut conn_no = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            conn_no += 1;
            let (tx, conn) = (tx.clone(), conn_no);
            tokio::spawn(async move {
                let mut h2 = h2::server::handshake(tcp).await.unwrap();
                let mut seen = 0;
                loop {
                    let Some(Ok((_req, mut respond))) = h2.accept().await else {
                        return;
                    };
                    let (answer, answered) = oneshot::channel();
                    tx.send(Held { conn, answer }).unwrap();
                    tokio::spawn(async move {
                        if answered.await.is_ok() {
                            let rsp = http::Response::new(());
                            let _ = respond.send_response(rsp, true);
                        }
                    });
                    seen += 1;
                    if goaway_after == Some(seen) {
                        h2.graceful_shutdown();
                        // Keep driving the connection so accepted streams finish.
                        while let Some(Ok(_)) = h2.accept().await {}
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn pool(addr: &str, limits: ConnLimits) -> Arc<EndpointConns> {
    let connector = Connector {
        addr: addr.to_string(),
        expected_id: String::new(),
        transport: Arc::new(Plaintext),
        connect_timeout: Duration::from_secs(5),
    };
    let h2 = H2Settings {
        stream_window: 65_535,
        connection_window: 65_535,
        max_frame_size: 16_384,
        adaptive_window: false,
        keepalive_interval: Duration::from_secs(20),
        keepalive_timeout: Duration::from_secs(20),
        max_header_list_size: 16_384,
    };
    EndpointConns::new(connector, &h2, limits)
}

fn request(addr: &str) -> Req {
    http::Request::post(format!("http://{addr}/test.Echo/Call"))
        .body(
            Full::new(Bytes::from_static(b"x"))
                .map_err(|n| match n {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// Starts a call in its own task; its result arrives on the returned channel.
fn start(p: &Arc<EndpointConns>, addr: &str) -> oneshot::Receiver<Result<Rsp, SendError>> {
    let (tx, rx) = oneshot::channel();
    let (p, req) = (p.clone(), request(addr));
    tokio::spawn(async move {
        let _ = tx.send(p.send(req).await);
    });
    rx
}

#[tokio::test]
async fn a_second_connection_opens_when_the_first_has_reached_its_stream_threshold() {
    let (addr, mut held) = server(None).await;
    let p = pool(&addr, limits(2, 2));
    let first = [start(&p, &addr), start(&p, &addr)];
    let a = held.recv().await.unwrap();
    let b = held.recv().await.unwrap();
    assert_eq!(
        (a.conn, b.conn),
        (1, 1),
        "two streams fit on the first connection"
    );
    // The third call sees two streams on the only connection: it goes there and a second
    // connection opens; the fourth goes to the new, idle connection.
    let third = start(&p, &addr);
    let c = held.recv().await.unwrap();
    assert_eq!(c.conn, 1);
    while p.open_connections() < 2 {
        tokio::task::yield_now().await;
    }
    let fourth = start(&p, &addr);
    let d = held.recv().await.unwrap();
    assert_eq!(d.conn, 2, "the call goes to the less busy connection");
    for h in [a, b, c, d] {
        h.answer.send(()).unwrap();
    }
    for rx in first.into_iter().chain([third, fourth]) {
        assert_eq!(rx.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test]
async fn one_connection_per_endpoint_carries_every_call_by_default() {
    let (addr, mut held) = server(None).await;
    let p = pool(&addr, limits(1, 2));
    let calls: Vec<_> = (0..5).map(|_| start(&p, &addr)).collect();
    let mut answers = Vec::new();
    for _ in 0..5 {
        let h = held.recv().await.unwrap();
        assert_eq!(h.conn, 1);
        answers.push(h.answer);
    }
    assert_eq!(p.open_connections(), 1);
    for a in answers {
        a.send(()).unwrap();
    }
    for rx in calls {
        assert_eq!(rx.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test]
async fn a_drained_connection_gets_no_new_call_but_finishes_its_own() {
    // The first connection drains (GOAWAY) after its first request and holds it open.
    let (addr, mut held) = server(Some(1)).await;
    let p = pool(&addr, limits(1, 100));
    let first = start(&p, &addr);
    let a = held.recv().await.unwrap();
    assert_eq!(a.conn, 1);
    // Wait until the client has read the GOAWAY.
    loop {
        let drained = p.state.lock().slots.iter().any(|s| s.drain.drained());
        if drained {
            break;
        }
        tokio::task::yield_now().await;
    }
    // The next call is not handed to the draining connection (whose dispatcher exits on its
    // next wake-up): it goes to a new one, while the first call still finishes on the old one.
    let second = start(&p, &addr);
    let b = held.recv().await.unwrap();
    assert_eq!(b.conn, 2);
    b.answer.send(()).unwrap();
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    a.answer.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn a_failed_connect_fails_every_call_waiting_for_it() {
    // Port 0 can never be connected to.
    let addr = "127.0.0.1:0".to_string();
    let p = pool(&addr, limits(1, 100));
    let calls: Vec<_> = (0..3).map(|_| start(&p, &addr)).collect();
    for rx in calls {
        let e = rx.await.unwrap().unwrap_err();
        assert!(e.is_connect(), "{e}");
    }
}
