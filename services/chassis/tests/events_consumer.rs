//! The consumer runtime over the embedded feed, with real sockets: exactly-once
//! effects under duplicate deliveries, DLQ and redrive, replay with rebuild,
//! and resuming from the durable offset after being killed.

mod events_support;

use events_support::*;
use futures::StreamExt;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tally_api::events::v1::EventEnvelope;
use tally_api::events::v1::consumer_admin_service_client::ConsumerAdminServiceClient;
use tally_api::events::v1::event_envelope::Payload;
use tally_api::events::v1::{
    GetDeadLetterRequest, ListConsumersRequest, ListDeadLettersRequest, PollVoted,
    RedriveDeadLetterRequest, ReplayRequest,
};
use tally_chassis::events::consumer::Outcome;
use tally_chassis::events::{
    Consumer, ConsumerAdmin, EventSource, Feed, FeedSource, Subscription, envelope,
};
use tally_chassis::storage::{OutboxEvent, Store, WriteBatch};

/// A producer (store + feed server) and a consumer store, wired like two services.
struct Setup {
    _producer_dir: tempfile::TempDir,
    producer: Arc<dyn Store>,
    feed_server: TestServer,
    _consumer_dir: tempfile::TempDir,
    consumer_store: Arc<dyn Store>,
}

impl Setup {
    async fn new() -> Self {
        let (_producer_dir, producer) = temp_store().await;
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(Feed::new(producer.clone()).server());
        let feed_server = TestServer::start(routes.routes(), 0).await;
        let (_consumer_dir, consumer_store) = temp_store().await;
        Self {
            _producer_dir,
            producer,
            feed_server,
            _consumer_dir,
            consumer_store,
        }
    }

    fn source(&self) -> Arc<dyn EventSource> {
        Arc::new(
            FeedSource::from_outbound(&self.feed_server.outbound("polling"), "polling")
                .expect("outbound")
                .with_backoff(Duration::from_millis(20), Duration::from_millis(200)),
        )
    }

    fn consumer(&self, handler: Arc<CountingHandler>) -> Consumer {
        Consumer::new(
            handler,
            self.consumer_store.clone(),
            self.source(),
            quick_policy(),
        )
    }

    async fn wait_offset(&self, consumer: &Consumer, offset: u64) {
        wait_until(
            &format!("{} reaches offset {offset}", consumer.name()),
            || async { consumer.offset().await.expect("offset") >= offset },
        )
        .await;
    }
}

async fn admin_server(
    consumers: Vec<Consumer>,
) -> (
    TestServer,
    ConsumerAdminServiceClient<tonic::transport::Channel>,
) {
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(ConsumerAdmin::new(consumers).server());
    let server = TestServer::start(routes.routes(), 0).await;
    let client = ConsumerAdminServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect admin");
    (server, client)
}

#[tokio::test]
async fn duplicate_deliveries_are_applied_once() {
    let setup = Setup::new().await;
    produce_votes(setup.producer.as_ref(), "p1", &["a", "b", "c"], 30).await;
    let handler = CountingHandler::new("results");
    let consumer = setup.consumer(handler.clone());

    // Deliver every event twice, by hand, straight from the feed.
    let mut stream = setup
        .source()
        .subscribe(Subscription {
            consumer: "results".into(),
            after: 0,
            event_types: vec![],
        })
        .await
        .expect("subscribe");
    let mut deliveries = Vec::new();
    while deliveries.len() < 30 {
        let d = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        deliveries.push(d);
    }
    for d in &deliveries {
        assert_eq!(
            consumer.process(d).await.expect("process"),
            Outcome::Applied
        );
        assert_eq!(
            consumer.process(d).await.expect("process"),
            Outcome::Duplicate
        );
    }
    let after_manual = counts(setup.consumer_store.as_ref()).await;
    assert_eq!(total(&after_manual), 30);
    assert_eq!(after_manual["p1:a"], 10);
    assert_eq!(consumer.offset().await.expect("offset"), 30);

    // The runtime then rewinds to 0 without rebuilding: a third delivery of
    // all 30, and still no effect.
    let task = consumer.spawn();
    consumer.replay(0, false).await.expect("replay");
    produce_votes(setup.producer.as_ref(), "p1", &["a"], 1).await;
    setup.wait_offset(&consumer, 31).await;
    task.abort();
    let after_runtime = counts(setup.consumer_store.as_ref()).await;
    assert_eq!(total(&after_runtime), 31);
    assert_eq!(after_runtime["p1:a"], 11);
    assert_eq!(handler.committed.load(Ordering::SeqCst), 31);
}

#[tokio::test]
async fn failed_expect_guard_reruns_the_handler_instead_of_failing() {
    let setup = Setup::new().await;
    produce_votes(setup.producer.as_ref(), "p1", &["a"], 1).await;
    let handler = CountingHandler::new("results");
    handler.interfere_once.store(true, Ordering::SeqCst);
    let consumer = setup.consumer(handler.clone());
    let task = consumer.spawn();
    setup.wait_offset(&consumer, 1).await;
    task.abort();
    // The concurrent writer set 100; the re-run counted on top of it.
    assert_eq!(counts(setup.consumer_store.as_ref()).await["p1:a"], 101);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
    assert!(consumer.dead_letters().await.expect("dlq").is_empty());
}

#[tokio::test]
async fn poison_event_goes_to_the_dlq_then_is_redriven_once() {
    let setup = Setup::new().await;
    produce_votes(setup.producer.as_ref(), "p1", &["a"], 3).await;
    let poison_ids = produce_votes(setup.producer.as_ref(), "p1", &["poison"], 1).await;
    produce_votes(setup.producer.as_ref(), "p1", &["b"], 3).await;
    let handler = CountingHandler::new("results");
    handler.poisoned.store(true, Ordering::SeqCst);
    let consumer = setup.consumer(handler.clone());
    let task = consumer.spawn();
    let (_admin, mut admin) = admin_server(vec![consumer.clone()]).await;

    // The consumer retries, dead-letters the poison event and moves on.
    setup.wait_offset(&consumer, 7).await;
    let before = counts(setup.consumer_store.as_ref()).await;
    assert_eq!(total(&before), 6);
    assert!(!before.contains_key("p1:poison"));

    let listed = admin
        .list_dead_letters(ListDeadLettersRequest {
            consumer: "results".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .dead_letters;
    assert_eq!(listed.len(), 1);
    let dl = &listed[0];
    assert_eq!(dl.event_id, poison_ids[0]);
    assert_eq!(dl.offset, 4);
    assert_eq!(dl.attempts, 3, "max_attempts of the policy");
    assert!(dl.error.contains("poison"), "error kept: {}", dl.error);
    assert!(dl.failed_at.is_some());
    assert_eq!(dl.event.as_ref().expect("envelope").event_id, poison_ids[0]);

    let shown = admin
        .get_dead_letter(GetDeadLetterRequest {
            consumer: "results".into(),
            event_id: poison_ids[0].clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .dead_letter
        .expect("dead letter");
    assert_eq!(shown, *dl);

    let status = admin
        .list_consumers(ListConsumersRequest {})
        .await
        .expect("status")
        .into_inner()
        .consumers;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].consumer, "results");
    assert_eq!(status[0].source, "feed:polling");
    assert_eq!(
        (status[0].offset, status[0].head_offset, status[0].lag),
        (7, 7, 0)
    );
    assert_eq!(status[0].dead_letters, 1);

    // Still broken: redrive keeps it, with more attempts.
    let still = admin
        .redrive_dead_letter(RedriveDeadLetterRequest {
            consumer: "results".into(),
            event_id: poison_ids[0].clone(),
        })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!((still.redriven, still.still_failing), (0, 1));
    assert_eq!(
        consumer
            .dead_letter_entry(&poison_ids[0])
            .await
            .expect("kept")
            .attempts,
        6
    );

    // Fixed: redrive applies it once and removes it.
    handler.poisoned.store(false, Ordering::SeqCst);
    let fixed = admin
        .redrive_dead_letter(RedriveDeadLetterRequest {
            consumer: "results".into(),
            event_id: String::new(),
        })
        .await
        .expect("redrive all")
        .into_inner();
    assert_eq!((fixed.redriven, fixed.still_failing), (1, 0));
    let after = counts(setup.consumer_store.as_ref()).await;
    assert_eq!(after["p1:poison"], 1);
    assert_eq!(total(&after), 7);
    assert!(consumer.dead_letters().await.expect("dlq").is_empty());
    let gone = admin
        .get_dead_letter(GetDeadLetterRequest {
            consumer: "results".into(),
            event_id: poison_ids[0].clone(),
        })
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // Delivered again (at-least-once): no second effect.
    let again = consumer
        .process(&tally_chassis::events::Delivery {
            position: 4,
            envelope: dl.event.clone().expect("envelope"),
        })
        .await
        .expect("process");
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(counts(setup.consumer_store.as_ref()).await["p1:poison"], 1);
    task.abort();

    let unknown = admin
        .list_dead_letters(ListDeadLettersRequest {
            consumer: "nope".into(),
        })
        .await
        .expect_err("unknown consumer");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn replay_from_zero_with_rebuild_gives_the_same_read_model() {
    let setup = Setup::new().await;
    produce_votes(setup.producer.as_ref(), "p1", &["a", "b"], 15).await;
    produce_votes(setup.producer.as_ref(), "p2", &["x", "y", "z"], 12).await;
    let handler = CountingHandler::new("results");
    let consumer = setup.consumer(handler.clone());
    let task = consumer.spawn();
    setup.wait_offset(&consumer, 27).await;
    let built = counts(setup.consumer_store.as_ref()).await;
    assert_eq!(total(&built), 27);

    let (_admin, mut admin) = admin_server(vec![consumer.clone()]).await;
    let bad = admin
        .replay(ReplayRequest {
            consumer: "results".into(),
            from_offset: 5,
            rebuild: true,
        })
        .await
        .expect_err("rebuild needs offset 0");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    admin
        .replay(ReplayRequest {
            consumer: "results".into(),
            from_offset: 0,
            rebuild: true,
        })
        .await
        .expect("replay");
    wait_until("every event applied a second time", || async {
        handler.committed.load(Ordering::SeqCst) >= 54
    })
    .await;
    setup.wait_offset(&consumer, 27).await;
    task.abort();
    assert_eq!(counts(setup.consumer_store.as_ref()).await, built);
    assert_eq!(handler.committed.load(Ordering::SeqCst), 54);
}

#[tokio::test]
async fn consumer_killed_mid_stream_resumes_from_its_durable_offset() {
    let setup = Setup::new().await;
    produce_votes(setup.producer.as_ref(), "p1", &["a", "b", "c", "d"], 40).await;
    let handler = CountingHandler::new("results");
    handler.hang_at.store(18, Ordering::SeqCst);
    let first = Consumer::new(
        handler.clone(),
        setup.consumer_store.clone(),
        setup.source(),
        quick_policy(),
    );
    let task = first.spawn();
    wait_until("the consumer hangs inside event 18", || async {
        handler.calls.load(Ordering::SeqCst) >= 18
    })
    .await;
    task.abort();
    let _ = task.await;
    assert_eq!(first.offset().await.expect("offset"), 17);
    assert_eq!(total(&counts(setup.consumer_store.as_ref()).await), 17);

    // A new runtime (as after a process restart) on the same store.
    handler.hang_at.store(0, Ordering::SeqCst);
    let recording = RecordingSource::new(setup.source());
    let second = Consumer::new(
        handler.clone(),
        setup.consumer_store.clone(),
        recording.clone(),
        quick_policy(),
    );
    let task = second.spawn();
    setup.wait_offset(&second, 40).await;
    task.abort();
    assert_eq!(
        recording.afters().first(),
        Some(&17),
        "resumed from the durable offset"
    );
    let result = counts(setup.consumer_store.as_ref()).await;
    assert_eq!(total(&result), 40);
    assert_eq!(result["p1:a"], 10);
    assert_eq!(handler.committed.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn unknown_variants_and_newer_schemas_are_skipped_not_dead_lettered() {
    let setup = Setup::new().await;
    // An envelope with a payload variant this build does not know (field 99).
    let mut unknown = EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "tally.events.v1.PollVoted".into(),
        aggregate_id: "p1".into(),
        schema_version: 1,
        ..Default::default()
    }
    .encode_to_vec();
    unknown.extend_from_slice(&[0x9a, 0x06, 0x02, 0x08, 0x01]);
    let mut newer = envelope::new_envelope(
        "polling",
        "p1",
        2,
        Payload::PollVoted(PollVoted {
            poll_id: "p1".into(),
            option_id: "a".into(),
            ..Default::default()
        }),
    );
    newer.schema_version = 7;
    let mut batch = WriteBatch::new();
    batch
        .emit(OutboxEvent {
            aggregate_id: "p1".into(),
            event_type: "tally.events.v1.PollVoted".into(),
            payload: unknown,
        })
        .emit(envelope::outbox_event(&newer));
    setup.producer.commit(batch).await.expect("commit");
    produce_votes(setup.producer.as_ref(), "p1", &["b"], 1).await;

    let handler = CountingHandler::new("results");
    handler.max_schema.store(1, Ordering::SeqCst);
    let consumer = setup.consumer(handler.clone());
    let task = consumer.spawn();
    setup.wait_offset(&consumer, 3).await;
    task.abort();
    assert_eq!(
        counts(setup.consumer_store.as_ref())
            .await
            .into_iter()
            .collect::<Vec<_>>(),
        vec![("p1:b".to_string(), 1)]
    );
    assert!(consumer.dead_letters().await.expect("dlq").is_empty());
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "skipped events never reach the handler"
    );
}

#[tokio::test]
async fn a_rebuild_interrupted_by_a_crash_is_finished_on_restart() {
    use tally_chassis::events::Handler;
    use tally_chassis::events::consumer::OFFSETS;
    let setup = Setup::new().await;
    produce_votes(setup.producer.as_ref(), "p1", &["a", "b"], 10).await;
    let handler = CountingHandler::new("results");
    let consumer = setup.consumer(handler.clone());
    let task = consumer.spawn();
    setup.wait_offset(&consumer, 10).await;
    task.abort();
    let _ = task.await;
    let built = counts(setup.consumer_store.as_ref()).await;

    // The state a crash leaves in the middle of a rebuild: marker and offset 0
    // written, read model already cleared, processed rows not yet.
    let mut batch = WriteBatch::new();
    batch
        .put(OFFSETS, "results", "rebuilding", b"1".to_vec())
        .put(OFFSETS, "results", "offset", b"0".to_vec());
    setup.consumer_store.commit(batch).await.expect("commit");
    handler
        .reset(setup.consumer_store.as_ref())
        .await
        .expect("reset");
    assert!(counts(setup.consumer_store.as_ref()).await.is_empty());

    let restarted = setup.consumer(handler.clone());
    let task = restarted.spawn();
    setup.wait_offset(&restarted, 10).await;
    wait_until("rebuilt", || async {
        counts(setup.consumer_store.as_ref()).await == built
    })
    .await;
    task.abort();
    assert_eq!(handler.committed.load(Ordering::SeqCst), 20);
}
