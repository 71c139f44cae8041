//! Reading a producer's topic as an [`EventSource`]: one fetch task per
//! partition (long-polling fetches), and a merge that hands out the
//! producer's positions in order (`after + 1`, `after + 2`, ...) from
//! whichever partition holds the next one, dropping re-sent duplicates.
//!
//! Each partition holds its positions in increasing order of first
//! appearance (the relay publishes in outbox order and re-sends only from its
//! durable offset on), so the next position is always at the head of some
//! partition once it is published; while it is not, the merge waits. Every
//! partition buffers at most one fetched batch, so memory stays bounded
//! whatever the backlog.

use super::{KafkaSettings, POSITION_HEADER, TYPE_HEADER, Topic, open_topic, unavailable};
use crate::events::bus::{BusError, Delivery, DeliveryStream, EventSource, Subscription};
use crate::events::feed_source::backoff;
use async_trait::async_trait;
use futures::future::select_all;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tally_api::events::v1::EventEnvelope;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Deliveries buffered between the merge and the consumer.
const BUFFER: usize = 64;
/// Fetched batches buffered per partition ahead of the merge.
const LANE_BATCHES: usize = 1;
/// Shortest time between two fetches that came back empty (in case a broker
/// answers at once instead of waiting up to the fetch wait).
const MIN_EMPTY_FETCH_INTERVAL: Duration = Duration::from_millis(20);
/// Reconnect backoff bounds of a failing partition fetch.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A producer's topic as an [`EventSource`].
#[derive(Clone)]
pub struct KafkaSource {
    topic: Arc<Topic>,
    settings: Arc<KafkaSettings>,
    producer: String,
}

impl KafkaSource {
    /// Connects to the topic of `producer` (created if missing).
    pub async fn connect(settings: &KafkaSettings, producer: &str) -> Result<Self, BusError> {
        Ok(Self {
            topic: Arc::new(open_topic(settings, producer).await?),
            settings: Arc::new(settings.clone()),
            producer: producer.to_string(),
        })
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }
}

/// One record as the merge sees it.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    position: u64,
    event_type: String,
    delivery: Delivery,
}

/// The item of a record, or `None` (logged) when it carries no position.
fn item_of(record: &RecordAndOffset) -> Option<Item> {
    let r = &record.record;
    let text = |key: &str| {
        r.headers
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    let Some(position) = text(POSITION_HEADER).and_then(|s| s.parse::<u64>().ok()) else {
        tracing::error!(
            offset = record.offset,
            "record without a {POSITION_HEADER} header; ignored"
        );
        return None;
    };
    let event_type = text(TYPE_HEADER).unwrap_or_default();
    let bytes = r.value.as_deref().unwrap_or_default();
    let envelope = match crate::events::envelope::decode(bytes) {
        Ok(env) if !bytes.is_empty() => env,
        _ => {
            tracing::error!(position, "record without a valid envelope");
            EventEnvelope {
                event_type: event_type.clone(),
                aggregate_id: r
                    .key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .unwrap_or_default()
                    .to_string(),
                ..Default::default()
            }
        }
    };
    Some(Item {
        position,
        event_type,
        delivery: Delivery { position, envelope },
    })
}

type Batch = Result<Vec<Item>, BusError>;

/// Fetches one partition from its earliest record on, forever (until the
/// merge is gone), sending each non-empty batch.
async fn fetch_partition(
    client: Arc<PartitionClient>,
    tx: mpsc::Sender<Batch>,
    wait: Duration,
    max_bytes: i32,
) {
    let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    let mut offset: Option<i64> = None;
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let result = match offset {
            None => match client.get_offset(OffsetAt::Earliest).await {
                Ok(earliest) => {
                    offset = Some(earliest);
                    continue;
                }
                Err(e) => Err(e),
            },
            Some(at) => client
                .fetch_records(at, 1..max_bytes.max(2), wait_ms)
                .await
                .map(|(records, _high_watermark)| records),
        };
        match result {
            Ok(records) => {
                failures = 0;
                let from = offset.unwrap_or(0);
                let records: Vec<RecordAndOffset> =
                    records.into_iter().filter(|r| r.offset >= from).collect();
                if let Some(last) = records.last() {
                    offset = Some(last.offset + 1);
                    let items: Vec<Item> = records.iter().filter_map(item_of).collect();
                    if !items.is_empty() && tx.send(Ok(items)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let next = started + MIN_EMPTY_FETCH_INTERVAL;
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                tracing::warn!(topic = %client.topic(), partition = client.partition(), ?offset, "offset out of range (retention); restarting from the earliest record");
                offset = None;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if tx.try_send(Err(unavailable(e))).is_err() && tx.is_closed() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff(MIN_BACKOFF, MAX_BACKOFF, failures)) => {}
                }
            }
        }
    }
}

/// One partition as the merge sees it: its fetched batches and the records
/// of the current one not yet handed out.
struct Lane {
    rx: mpsc::Receiver<Batch>,
    buffered: VecDeque<Item>,
}

/// What the merge does next with the buffered heads.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Hand out the head of this lane (it holds `last + 1`).
    Take(usize),
    /// Every lane holds a later position: `last + 1` is gone (retention);
    /// continue after this position minus one.
    Gap(u64),
    /// Wait for more records on the empty lanes.
    Wait,
}

/// Drops heads at or below `last`, then decides the next step.
fn next_step(lanes: &mut [VecDeque<Item>], last: u64) -> Step {
    for lane in lanes.iter_mut() {
        while lane.front().is_some_and(|i| i.position <= last) {
            lane.pop_front();
        }
    }
    let want = last.saturating_add(1);
    if let Some(i) = lanes
        .iter()
        .position(|l| l.front().is_some_and(|i| i.position == want))
    {
        return Step::Take(i);
    }
    let heads: Option<Vec<u64>> = lanes
        .iter()
        .map(|l| l.front().map(|i| i.position))
        .collect();
    match heads.and_then(|h| h.into_iter().min()) {
        Some(min) => Step::Gap(min),
        None => Step::Wait,
    }
}

/// Merges the lanes into `tx` in position order after `last`.
async fn merge(
    mut lanes: Vec<Lane>,
    mut last: u64,
    types: HashSet<String>,
    tx: mpsc::Sender<Result<Delivery, BusError>>,
    topic: String,
) {
    loop {
        let mut heads: Vec<VecDeque<Item>> = lanes
            .iter_mut()
            .map(|l| std::mem::take(&mut l.buffered))
            .collect();
        loop {
            match next_step(&mut heads, last) {
                Step::Take(i) => {
                    let Some(item) = heads.get_mut(i).and_then(VecDeque::pop_front) else {
                        break;
                    };
                    last = item.position;
                    if (types.is_empty() || types.contains(&item.event_type))
                        && tx.send(Ok(item.delivery)).await.is_err()
                    {
                        return;
                    }
                }
                Step::Gap(min) => {
                    tracing::warn!(%topic, missing_from = last + 1, next = min, "positions missing from every partition (retention); skipping them");
                    last = min - 1;
                }
                Step::Wait => break,
            }
        }
        for (lane, buffered) in lanes.iter_mut().zip(heads) {
            lane.buffered = buffered;
        }
        let waiting: Vec<_> = lanes
            .iter_mut()
            .enumerate()
            .filter(|(_, l)| l.buffered.is_empty())
            .map(|(i, l)| Box::pin(async move { (i, l.rx.recv().await) }))
            .collect();
        if waiting.is_empty() {
            continue;
        }
        let ((index, batch), _, rest) = tokio::select! {
            _ = tx.closed() => return,
            done = select_all(waiting) => done,
        };
        drop(rest);
        match batch {
            Some(Ok(items)) => {
                if let Some(lane) = lanes.get_mut(index) {
                    lane.buffered.extend(items);
                }
            }
            Some(Err(e)) => {
                let _ = tx.try_send(Err(e));
            }
            None => return,
        }
    }
}

#[async_trait]
impl EventSource for KafkaSource {
    fn describe(&self) -> String {
        format!("kafka:{}", self.topic.name)
    }

    async fn subscribe(&self, sub: Subscription) -> Result<DeliveryStream, BusError> {
        if self.topic.partitions.is_empty() {
            return Err(BusError::Invalid(format!(
                "kafka: topic {} has no partitions",
                self.topic.name
            )));
        }
        let (tx, rx) = mpsc::channel(BUFFER);
        let wait = self.settings.fetch_wait();
        let max_bytes = i32::try_from(self.settings.fetch_max_bytes).unwrap_or(i32::MAX);
        let mut lanes = Vec::with_capacity(self.topic.partitions.len());
        for client in &self.topic.partitions {
            let (lane_tx, lane_rx) = mpsc::channel(LANE_BATCHES);
            tokio::spawn(fetch_partition(client.clone(), lane_tx, wait, max_bytes));
            lanes.push(Lane {
                rx: lane_rx,
                buffered: VecDeque::new(),
            });
        }
        tracing::debug!(producer = %self.producer, consumer = %sub.consumer, after = sub.after, "kafka subscription");
        tokio::spawn(merge(
            lanes,
            sub.after,
            sub.event_types.into_iter().collect(),
            tx,
            self.topic.name.clone(),
        ));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn head(&self) -> Result<u64, BusError> {
        let max_bytes = i32::try_from(self.settings.fetch_max_bytes).unwrap_or(i32::MAX);
        let mut head = 0;
        for client in &self.topic.partitions {
            let end = client
                .get_offset(OffsetAt::Latest)
                .await
                .map_err(unavailable)?;
            let start = client
                .get_offset(OffsetAt::Earliest)
                .await
                .map_err(unavailable)?;
            if end <= start {
                continue;
            }
            let (records, _) = client
                .fetch_records(end - 1, 1..max_bytes.max(2), 0)
                .await
                .map_err(unavailable)?;
            let newest = records.iter().filter_map(item_of).map(|i| i.position).max();
            head = head.max(newest.unwrap_or(0));
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(position: u64) -> Item {
        Item {
            position,
            event_type: "t".into(),
            delivery: Delivery {
                position,
                envelope: EventEnvelope::default(),
            },
        }
    }

    fn lanes(positions: &[&[u64]]) -> Vec<VecDeque<Item>> {
        positions
            .iter()
            .map(|p| p.iter().copied().map(item).collect())
            .collect()
    }

    /// Runs the merge rules over fully buffered lanes.
    fn drain(mut l: Vec<VecDeque<Item>>, mut last: u64) -> (Vec<u64>, Step) {
        let mut out = Vec::new();
        loop {
            match next_step(&mut l, last) {
                Step::Take(i) => {
                    let it = l[i].pop_front().expect("head");
                    last = it.position;
                    out.push(it.position);
                }
                Step::Gap(min) => last = min - 1,
                Step::Wait => return (out, Step::Wait),
            }
        }
    }

    #[test]
    fn merges_partitions_back_into_outbox_order() {
        let (out, step) = drain(lanes(&[&[1, 3, 4, 7], &[2, 5, 6]]), 0);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(step, Step::Wait);
    }

    #[test]
    fn drops_resent_duplicates_and_positions_up_to_after() {
        // A relay crash re-sent 3..5 to both partitions after partition 0 had them.
        let (out, _) = drain(lanes(&[&[1, 3, 5, 3, 5, 7], &[2, 4, 6]]), 0);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7]);
        let (out, _) = drain(lanes(&[&[1, 3, 5, 3, 5, 7], &[2, 4, 6]]), 4);
        assert_eq!(out, [5, 6, 7]);
    }

    #[test]
    fn waits_for_a_position_not_yet_published() {
        // 3 is still being written to the (empty) second partition.
        let (out, step) = drain(lanes(&[&[1, 2, 4], &[]]), 0);
        assert_eq!(out, [1, 2]);
        assert_eq!(step, Step::Wait);
    }

    #[test]
    fn skips_positions_gone_from_every_partition() {
        // Retention removed 1..3: every partition starts later.
        let (out, _) = drain(lanes(&[&[4, 6], &[5]]), 0);
        assert_eq!(out, [4, 5, 6]);
    }
}
