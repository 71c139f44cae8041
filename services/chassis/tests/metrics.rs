//! The `/metrics` endpoint over a real socket: a consumer following an
//! embedded store's feed publishes its lag, offset and head, and anything
//! other than `GET /metrics` is a 404.

mod events_support;

use events_support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tally_chassis::events::{Consumer, EventSource, Feed, FeedSource};
use tally_chassis::health::HealthHub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request; returns the status line, the headers and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_string(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body split");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

fn has_line(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

#[tokio::test]
async fn consumer_lag_offset_and_head_are_served_at_metrics() {
    let metrics = tally_chassis::metrics::serve("127.0.0.1:0".parse().expect("addr"))
        .expect("metrics server");

    let (_producer_dir, producer) = temp_store().await;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(Feed::new(producer.clone()).server());
    let feed_server = TestServer::start(routes.routes(), 0).await;
    produce_votes(producer.as_ref(), "p1", &["a", "b"], 5).await;

    let (_consumer_dir, consumer_store) = temp_store().await;
    let source: std::sync::Arc<dyn EventSource> = std::sync::Arc::new(
        FeedSource::from_outbound(&feed_server.outbound("polling"), "polling")
            .expect("outbound")
            .with_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    );
    let consumer = Consumer::new(
        CountingHandler::new("metrics_results"),
        consumer_store,
        source,
        quick_policy(),
    );
    let (hub, _health) = HealthHub::new(&[]);
    consumer.watch_health(&hub, 100, Duration::from_millis(50));
    let task = consumer.spawn();

    let lag = r#"tally_consumer_lag{consumer="metrics_results"} 0"#;
    let offset = r#"tally_consumer_offset{consumer="metrics_results"} 5"#;
    let head = r#"tally_consumer_head{consumer="metrics_results"} 5"#;
    let dead = r#"tally_consumer_dead_letters{consumer="metrics_results"} 0"#;
    wait_until("metrics show the consumer caught up", || async {
        let (_, _, body) = get(metrics, "/metrics").await;
        has_line(&body, lag) && has_line(&body, offset) && has_line(&body, head)
    })
    .await;
    task.abort();

    let (status, headers, body) = get(metrics, "/metrics").await;
    assert!(status.contains(" 200 "), "status: {status}");
    assert!(
        headers
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "headers: {headers}"
    );
    for line in [lag, offset, head, dead] {
        assert!(has_line(&body, line), "missing `{line}` in:\n{body}");
    }
    assert!(body.contains("# TYPE tally_consumer_lag gauge"), "{body}");

    let (status, _, _) = get(metrics, "/nope").await;
    assert!(status.contains(" 404 "), "status: {status}");
    let (status, _, _) = get(metrics, "/").await;
    assert!(status.contains(" 404 "), "status: {status}");
}
