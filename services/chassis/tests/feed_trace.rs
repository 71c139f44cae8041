//! The event-feed client is traced: each subscription to a producer's
//! `EventFeedService` is a client span whose context reaches the producer as
//! `traceparent`. The span ends once the producer has answered, while the
//! stream stays open (no endless span for events to pile under), and it is a
//! root of its own, not a child of whatever the consumer was doing.

use futures::StreamExt as _;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_api::events::v1::event_feed_service_server::{EventFeedService, EventFeedServiceServer};
use tally_api::events::v1::{
    EventEnvelope, GetHeadRequest, GetHeadResponse, SubscribeRequest, SubscribeResponse,
};
use tally_chassis::events::FeedSource;
use tally_chassis::events::bus::{EventSource as _, Subscription};
use tally_chassis::trace::TraceSettings;
use tally_testkit::otlp::Receiver;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const PATIENCE: Duration = Duration::from_secs(30);
const SUBSCRIBE: &str = "tally.events.v1.EventFeedService/Subscribe";

/// A producer's feed that records each subscriber's `traceparent`, sends one
/// event and then keeps the stream open.
#[derive(Clone, Default)]
struct Feed(Arc<Mutex<Vec<Option<String>>>>);

type Stream = Pin<Box<dyn futures::Stream<Item = Result<SubscribeResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl EventFeedService for Feed {
    type SubscribeStream = Stream;

    async fn subscribe(
        &self,
        request: tonic::Request<SubscribeRequest>,
    ) -> Result<tonic::Response<Stream>, tonic::Status> {
        let tp = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.0.lock().unwrap().push(tp);
        let event = SubscribeResponse {
            offset: 1,
            event: Some(EventEnvelope {
                event_id: "e-1".into(),
                event_type: "tally.events.v1.PollVoted".into(),
                ..Default::default()
            }),
        };
        let stream = futures::stream::iter([Ok(event)]).chain(futures::stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn get_head(
        &self,
        _request: tonic::Request<GetHeadRequest>,
    ) -> Result<tonic::Response<GetHeadResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetHeadResponse { head_offset: 1 }))
    }
}

async fn serve<S>(svc: S) -> std::net::SocketAddr
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_subscription_is_a_client_span_propagated_to_the_producer() {
    let otlp = Receiver::start().await;
    let settings = TraceSettings {
        otlp_endpoint: Some(otlp.endpoint.clone()),
        trace_sample_ratio: None,
    };
    let provider = tally_chassis::trace::provider("consumer", &settings)
        .unwrap()
        .unwrap();
    tracing_subscriber::registry()
        .with(tally_chassis::trace::layer("consumer", provider))
        .init();

    let feed = Feed::default();
    let producer = serve(EventFeedServiceServer::new(feed.clone())).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{producer}"))
        .unwrap()
        .connect_lazy();
    let source = FeedSource::new(channel, "polling");
    // Subscribed from inside another span: the subscription must not become its child.
    let outer = tracing::info_span!("consumer.start");
    let mut stream = {
        let _entered = outer.enter();
        source
            .subscribe(Subscription {
                consumer: "analytics".into(),
                after: 0,
                event_types: vec![],
            })
            .await
            .unwrap()
    };
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("a delivery");
    assert_eq!(first.position, 1);

    let tp = feed.0.lock().unwrap()[0]
        .clone()
        .expect("the producer got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[3], "01", "sampled: {tp}");

    // Exported while the stream is still open: the span ended with the answer.
    let span = otlp.wait("consumer", SUBSCRIBE).await;
    assert_eq!(span.kind, SpanKind::Client as i32);
    assert_eq!(
        hex(&span.trace_id),
        parts[1],
        "the producer joins this span's trace"
    );
    assert_eq!(
        hex(&span.span_id),
        parts[2],
        "the producer's parent is this span"
    );
    assert!(
        span.parent_span_id.is_empty(),
        "a root, not the consumer's child"
    );
    drop(stream);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
