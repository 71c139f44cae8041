//! Health and RED metrics of the chassis server over a real socket: every
//! gRPC service the port serves answers `grpc.health.v1.Health/Check`, each
//! following the dependencies it needs (the event feed and the consumer
//! admin API only the store), and every call is counted per method.

mod events_support;

use events_support::*;
use std::time::Duration;
use tally_chassis::config::ServerSettings;
use tally_chassis::events::{Consumer, ConsumerAdmin, EventSource, Feed, FeedSource};
use tally_chassis::health::{HealthHub, STORAGE};
use tally_chassis::server::{Routes, serve};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const FEED: &str = "tally.events.v1.EventFeedService";
const ADMIN: &str = "tally.events.v1.ConsumerAdminService";
const MAIN: &str = "tally.test.v1.Main";

async fn status(client: &mut HealthClient<tonic::transport::Channel>, name: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: name.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("Check({name}): {e}"))
        .into_inner()
        .status
}

#[tokio::test]
async fn every_served_name_answers_health_following_its_dependencies() {
    let (_dir, store) = temp_store().await;
    let feed = Feed::new(store.clone());
    let (_consumer_dir, consumer_store) = temp_store().await;
    let source: std::sync::Arc<dyn EventSource> = std::sync::Arc::new(
        // Never polled: the consumer only has to exist for the admin API.
        FeedSource::from_outbound(
            &tally_chassis::config::OutboundSettings(
                [("polling".to_string(), "http://127.0.0.1:9".to_string())].into(),
            ),
            "polling",
        )
        .expect("lazy channel"),
    );
    let consumer = Consumer::new(
        CountingHandler::new("health_results"),
        consumer_store,
        source,
        quick_policy(),
    );

    let (hub, health_server) = HealthHub::new(&[MAIN]);
    hub.set_dependency(STORAGE, true).await;
    hub.set_dependency("user", false).await;
    let mut routes = Routes::new();
    routes.add(feed.server());
    routes.add(ConsumerAdmin::new([consumer]).server());

    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", tally_testkit::free_port())
        .parse()
        .expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let settings = ServerSettings::on(addr);
    let served = hub.clone();
    let server = tokio::spawn(async move {
        serve(&settings, served, health_server, routes, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let channel = wait_for_channel(addr).await;
    let mut client = HealthClient::new(channel);

    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    // `user` is down: the service and the overall entry are NOT_SERVING,
    // but the feed and the admin API need only the store.
    assert_eq!(status(&mut client, MAIN).await, not_serving);
    assert_eq!(status(&mut client, "").await, not_serving);
    assert_eq!(status(&mut client, FEED).await, serving);
    assert_eq!(status(&mut client, ADMIN).await, serving);

    hub.set_dependency(STORAGE, false).await;
    assert_eq!(status(&mut client, FEED).await, not_serving);
    assert_eq!(status(&mut client, ADMIN).await, not_serving);
    hub.set_dependency(STORAGE, true).await;
    hub.set_dependency("user", true).await;
    assert_eq!(status(&mut client, MAIN).await, serving);
    assert_eq!(status(&mut client, FEED).await, serving);

    // Every one of those calls was counted, by method and code.
    let text = tally_chassis::metrics::encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("tally_grpc_server_handled_total{")
                && l.contains(r#"grpc_service="grpc.health.v1.Health""#)
                && l.contains(r#"grpc_method="Check""#)
                && l.contains(r#"grpc_code="Ok""#)),
        "{text}"
    );
    assert!(
        text.contains(r#"tally_dependency_up{dependency="user"} 1"#),
        "{text}"
    );
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}

async fn wait_for_channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    let mut last = String::new();
    for _ in 0..200 {
        match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {addr} never accepted: {last}");
}

/// Long enough that a drain waiting on an open feed stream cannot pass.
const LONG_DRAIN_SECS: u64 = 120;
/// How long a drain with no unary call in flight may take.
const QUICK_DRAIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn draining_ends_feed_streams_at_once() {
    use tally_api::events::v1::SubscribeRequest;
    use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;

    let (_dir, store) = temp_store().await;
    let feed = Feed::new(store.clone());
    let (hub, health_server) = HealthHub::new(&[FEED]);
    let mut routes = Routes::new();
    routes.add_feed(&feed);

    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", tally_testkit::free_port())
        .parse()
        .expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut settings = ServerSettings::on(addr);
    settings.drain_timeout_secs = LONG_DRAIN_SECS;
    let server = tokio::spawn(async move {
        serve(&settings, hub, health_server, routes, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let mut client = EventFeedServiceClient::new(wait_for_channel(addr).await);
    let mut stream = client
        .subscribe(SubscribeRequest {
            consumer: "drain_test".into(),
            from_offset: 0,
            event_types: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();

    let _ = stop_tx.send(());
    let served = tokio::time::timeout(QUICK_DRAIN, server)
        .await
        .expect("the drain waited for the open feed stream");
    served.expect("server task").expect("server result");
    // The consumer saw its stream end (and would resubscribe from its offset).
    let end = tokio::time::timeout(QUICK_DRAIN, stream.message())
        .await
        .expect("the feed stream stayed open");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}
