//! The embedded bus over real sockets: the producer's feed server and the
//! consumer-side `FeedSource` client.

mod events_support;

use events_support::*;
use futures::StreamExt;
use std::time::Duration;
use tally_api::events::v1::event_envelope::Payload;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::events::v1::{GetHeadRequest, PollClosed, SubscribeRequest};
use tally_chassis::events::bus::{EventSource, Subscription};
use tally_chassis::events::{Feed, FeedSource, envelope};
use tally_chassis::storage::WriteBatch;

const WAIT: Duration = Duration::from_secs(60);

fn routes(feed: &Feed) -> tonic::service::Routes {
    let mut b = tonic::service::RoutesBuilder::default();
    b.add_service(feed.server());
    b.routes()
}

async fn client(server: &TestServer) -> EventFeedServiceClient<tonic::transport::Channel> {
    EventFeedServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect")
}

#[tokio::test]
async fn feed_streams_history_then_live_in_offset_order() {
    let (_dir, store) = temp_store().await;
    let ids = produce_votes(store.as_ref(), "p1", &["a", "b"], 5).await;
    let server = TestServer::start(routes(&Feed::new(store.clone())), 0).await;
    let mut client = client(&server).await;

    let mut stream = client
        .subscribe(SubscribeRequest {
            from_offset: 2,
            consumer: "test".into(),
            event_types: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();
    for (offset, id) in (3u64..=5).zip(&ids[2..]) {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("history in time")
            .expect("stream ok")
            .expect("message");
        assert_eq!(msg.offset, offset);
        assert_eq!(msg.event.expect("event").event_id, *id);
    }

    // Live: commits after the subscription arrive without re-subscribing.
    let live = produce_votes(store.as_ref(), "p1", &["c"], 3).await;
    for (offset, id) in (6u64..=8).zip(&live) {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("live event in time")
            .expect("stream ok")
            .expect("message");
        assert_eq!(msg.offset, offset);
        let event = msg.event.expect("event");
        assert_eq!(event.event_id, *id);
        assert!(matches!(event.payload, Some(Payload::PollVoted(ref v)) if v.option_id == "c"));
    }
    let head = client
        .get_head(GetHeadRequest {})
        .await
        .expect("head")
        .into_inner()
        .head_offset;
    assert_eq!(head, 8);
}

#[tokio::test]
async fn feed_filters_by_event_type() {
    let (_dir, store) = temp_store().await;
    produce_votes(store.as_ref(), "p1", &["a"], 3).await;
    let server = TestServer::start(routes(&Feed::new(store.clone())), 0).await;
    let mut client = client(&server).await;
    let mut stream = client
        .subscribe(SubscribeRequest {
            from_offset: 0,
            consumer: "closer".into(),
            event_types: vec!["tally.events.v1.PollClosed".into()],
        })
        .await
        .expect("subscribe")
        .into_inner();

    produce_votes(store.as_ref(), "p1", &["a"], 2).await;
    let closed = envelope::new_envelope(
        "polling",
        "p1",
        6,
        Payload::PollClosed(PollClosed {
            poll_id: "p1".into(),
            closed_by: "owner".into(),
            closed_at: None,
        }),
    );
    let mut batch = WriteBatch::new();
    batch.emit(envelope::outbox_event(&closed));
    store.commit(batch).await.expect("commit");

    let msg = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("message");
    assert_eq!(msg.offset, 6, "the five votes are filtered out");
    assert_eq!(msg.event.expect("event").event_id, closed.event_id);
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_hold_up_others() {
    let (_dir, store) = temp_store().await;
    produce_votes(store.as_ref(), "p1", &["a"], 600).await;
    let server = TestServer::start(
        routes(&Feed::with_options(
            store.clone(),
            Duration::from_millis(20),
            16,
        )),
        0,
    )
    .await;
    let mut stalled_client = client(&server).await;
    let mut stalled = stalled_client
        .subscribe(SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let first = stalled.message().await.expect("ok").expect("message");
    assert_eq!(first.offset, 1);

    // Another subscriber reads everything while the first one reads nothing more.
    let mut reader = client(&server).await;
    let mut stream = reader
        .subscribe(SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut expected = 1u64;
    while expected <= 600 {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("message");
        assert_eq!(msg.offset, expected);
        expected += 1;
    }
    // The stalled one still continues where it was.
    let second = stalled.message().await.expect("ok").expect("message");
    assert_eq!(second.offset, 2);
}

#[tokio::test]
async fn feed_source_reconnects_and_resumes_after_the_connection_breaks() {
    let (_dir, store) = temp_store().await;
    produce_votes(store.as_ref(), "p1", &["a"], 5).await;
    let server = TestServer::start(routes(&Feed::new(store.clone())), 0).await;
    let proxy = CuttableProxy::start(server.addr).await;
    let source = FeedSource::from_outbound(&proxy.outbound("polling"), "polling")
        .expect("outbound")
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    assert_eq!(source.describe(), "feed:polling");
    assert_eq!(source.head().await.expect("head"), 5);

    let mut stream = source
        .subscribe(Subscription {
            consumer: "test".into(),
            after: 0,
            event_types: vec![],
        })
        .await
        .expect("subscribe");
    let mut positions = Vec::new();
    while positions.len() < 5 {
        let d = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("in time")
            .expect("stream goes on")
            .expect("delivery");
        positions.push(d.position);
    }
    assert!(proxy.cut() >= 1, "the feed connection was open");
    produce_votes(store.as_ref(), "p1", &["b"], 5).await;
    while positions.len() < 10 {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("in time")
            .expect("stream goes on")
        {
            Ok(d) => positions.push(d.position),
            Err(_) => continue, // a reconnect problem reported in-band
        }
    }
    assert_eq!(
        positions,
        (1..=10).collect::<Vec<u64>>(),
        "no gap, no repeat"
    );
}
