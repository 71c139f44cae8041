//! The user service as an event producer over real processes: after SignUp,
//! `UserRegistered` is readable over the service's own `EventFeedService`
//! (the embedded transport) and, with `[events] transport = "redis"`, from the
//! Redis stream the relay fills, through the chassis consumer-side source.

mod support;

use futures::StreamExt;
use std::time::Duration;
use support::{RedisServer, UserProcess};
use tally_api::events::v1::event_envelope::Payload;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::events::v1::{EventEnvelope, GetHeadRequest, SubscribeRequest};
use tally_api::user::v1 as pb;
use tally_chassis::config::OutboundSettings;
use tally_chassis::events::{EventBusSettings, RedisStreamSettings, Subscription, transport};
use tonic::transport::{Channel, Endpoint};

const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(60);
const USER_REGISTERED: &str = "tally.events.v1.UserRegistered";

async fn sign_up(p: &UserProcess, email: &str) -> String {
    p.client()
        .await
        .sign_up(pb::SignUpRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: "Feed Reader".into(),
        })
        .await
        .expect("sign up")
        .into_inner()
        .user
        .expect("user")
        .user_id
}

async fn feed(p: &UserProcess) -> EventFeedServiceClient<Channel> {
    let ch = Endpoint::from_shared(format!("http://{}", p.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to tally-user");
    EventFeedServiceClient::new(ch)
}

#[track_caller]
fn assert_registered(env: &EventEnvelope, user_id: &str, email: &str) {
    assert_eq!(env.event_type, USER_REGISTERED);
    assert_eq!(env.aggregate_id, user_id);
    assert_eq!(env.producer, "user");
    assert_eq!((env.sequence, env.schema_version), (1, 1));
    match &env.payload {
        Some(Payload::UserRegistered(r)) => {
            assert_eq!(r.user_id, user_id);
            assert_eq!(r.email, email);
            assert_eq!(r.display_name, "Feed Reader");
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

#[tokio::test]
async fn user_registered_is_served_over_the_event_feed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(dir.path(), "").await;
    let mut feed = feed(&p).await;
    let head = feed
        .get_head(GetHeadRequest {})
        .await
        .expect("head")
        .into_inner();
    assert_eq!(
        head.head_offset, 0,
        "nothing published before the first sign-up"
    );

    // A live subscriber joins first, then the sign-up happens.
    let mut live = feed
        .subscribe(SubscribeRequest {
            consumer: "test-live".into(),
            from_offset: 0,
            event_types: vec![USER_REGISTERED.into()],
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = sign_up(&p, "feed-1@example.com").await;
    let got = tokio::time::timeout(WAIT, live.next())
        .await
        .expect("the live subscriber got the event in time")
        .expect("stream still open")
        .expect("event");
    assert_eq!(got.offset, 1);
    assert_registered(&got.event.expect("envelope"), &first, "feed-1@example.com");

    // A late subscriber replays from an offset.
    let second = sign_up(&p, "feed-2@example.com").await;
    let mut replay = feed
        .subscribe(SubscribeRequest {
            consumer: "test-replay".into(),
            from_offset: 1,
            event_types: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();
    let got = tokio::time::timeout(WAIT, replay.next())
        .await
        .expect("replayed in time")
        .expect("stream still open")
        .expect("event");
    assert_eq!(got.offset, 2, "events after from_offset only");
    assert_registered(&got.event.expect("envelope"), &second, "feed-2@example.com");
    let head = feed
        .get_head(GetHeadRequest {})
        .await
        .expect("head")
        .into_inner();
    assert_eq!(head.head_offset, 2);
}

#[tokio::test]
async fn with_the_redis_transport_the_relay_publishes_user_registered() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = UserProcess::start(
        dir.path(),
        &format!(
            "[events]\ntransport = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ),
    )
    .await;
    let user_id = sign_up(&p, "relay@example.com").await;

    let settings = EventBusSettings::Redis(RedisStreamSettings::new(&redis.url()));
    let source = transport::source(&settings, &OutboundSettings::default(), "user")
        .await
        .expect("redis source");
    let mut stream = source
        .subscribe(Subscription {
            consumer: "user-events-test".into(),
            after: 0,
            event_types: vec![],
        })
        .await
        .expect("subscribe");
    let delivery = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(d)) => return d,
                Some(Err(e)) => eprintln!("source problem (retrying): {e}"),
                None => panic!("the stream ended"),
            }
        }
    })
    .await
    .expect("the relay published the event in time");
    assert_eq!(delivery.position, 1, "the stream carries the outbox offset");
    assert_registered(&delivery.envelope, &user_id, "relay@example.com");
    // The feed still serves the same outbox.
    let head = feed(&p)
        .await
        .get_head(GetHeadRequest {})
        .await
        .expect("head")
        .into_inner();
    assert_eq!(head.head_offset, 1);
}
