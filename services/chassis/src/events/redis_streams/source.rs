//! Reading a producer's stream as an [`EventSource`]: one consumer group per
//! consumer, own pending entries first, then new ones, taking over entries a
//! dead member left pending, acked after the consumer's transaction.

use super::{
    BUFFER, READ_COUNT, RedisStreamSettings, connect, entry_id, last_position, position_of,
    unavailable,
};
use crate::events::bus::{BusError, Delivery, DeliveryStream, EventSource, Subscription};
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tally_api::events::v1::EventEnvelope;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A producer's stream as an [`EventSource`], through consumer groups.
#[derive(Clone)]
pub struct RedisSource {
    settings: Arc<RedisStreamSettings>,
    conn: ConnectionManager,
    stream: String,
    producer: String,
    instance: String,
}

impl RedisSource {
    /// Connects to the stream of `producer`.
    pub async fn connect(settings: &RedisStreamSettings, producer: &str) -> Result<Self, BusError> {
        Ok(Self {
            settings: Arc::new(settings.clone()),
            conn: connect(&settings.url, Duration::from_secs(5)).await?,
            stream: settings.stream(producer),
            producer: producer.to_string(),
            instance: settings.instance_name(),
        })
    }

    /// This process's member name in the consumer groups.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The stream key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    async fn ensure_group(&self, group: &str, after: u64) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let start = if after == 0 {
            "0".to_string()
        } else {
            entry_id(after)
        };
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&self.stream, group, start)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// Turns a stream entry into a delivery (an envelope without payload when the
/// bytes are unreadable, so the consumer skips it and moves on).
fn to_delivery(entry: &StreamId) -> Option<Delivery> {
    let position = position_of(&entry.id)?;
    let bytes: Vec<u8> = entry.get("envelope").unwrap_or_default();
    let envelope = match decode_envelope(&bytes) {
        Some(env) => env,
        None => {
            tracing::error!(id = %entry.id, "stream entry without a valid envelope");
            EventEnvelope {
                event_type: entry.get("type").unwrap_or_default(),
                aggregate_id: entry.get("aggregate").unwrap_or_default(),
                ..Default::default()
            }
        }
    };
    Some(Delivery { position, envelope })
}

fn decode_envelope(bytes: &[u8]) -> Option<EventEnvelope> {
    if bytes.is_empty() {
        return None;
    }
    crate::events::envelope::decode(bytes).ok()
}

struct Reader {
    conn: ConnectionManager,
    stream: String,
    group: String,
    instance: String,
    types: HashSet<String>,
    tx: mpsc::Sender<Result<Delivery, BusError>>,
    claim_idle_ms: u64,
    block_ms: u64,
    /// Where to recreate the group if Redis lost it (restart without persistence).
    after: u64,
}

enum Flow {
    Continue,
    Closed,
}

impl Reader {
    /// Sends entries on; acks at once the ones this consumer does not want.
    async fn forward(&mut self, entries: &[StreamId]) -> Result<Flow, BusError> {
        for entry in entries {
            let wanted = entry.map.contains_key("envelope")
                && (self.types.is_empty()
                    || entry
                        .get::<String>("type")
                        .is_some_and(|t| self.types.contains(&t)));
            let delivery = if wanted { to_delivery(entry) } else { None };
            match delivery {
                Some(d) => {
                    if self.tx.send(Ok(d)).await.is_err() {
                        return Ok(Flow::Closed);
                    }
                }
                None => {
                    let _: i64 = self
                        .conn
                        .xack(&self.stream, &self.group, &[&entry.id])
                        .await
                        .map_err(unavailable)?;
                }
            }
        }
        Ok(Flow::Continue)
    }

    async fn read(&mut self, id: &str, block: bool) -> Result<Vec<StreamId>, BusError> {
        let mut options = StreamReadOptions::default()
            .group(&self.group, &self.instance)
            .count(READ_COUNT);
        if block {
            options = options.block(self.block_ms as usize);
        }
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[&self.stream], &[id], &options)
            .await
            .map_err(unavailable)?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Re-delivers this member's own pending entries (left by a previous run).
    async fn own_pending(&mut self) -> Result<Flow, BusError> {
        let mut cursor = "0".to_string();
        loop {
            let entries = self.read(&cursor, false).await?;
            let Some(last) = entries.last() else {
                return Ok(Flow::Continue);
            };
            cursor = last.id.clone();
            if let Flow::Closed = self.forward(&entries).await? {
                return Ok(Flow::Closed);
            }
        }
    }

    /// Takes over entries other (dead) members left pending too long.
    async fn claim(&mut self) -> Result<Flow, BusError> {
        let mut cursor = "0-0".to_string();
        loop {
            let reply: redis::streams::StreamAutoClaimReply = self
                .conn
                .xautoclaim_options(
                    &self.stream,
                    &self.group,
                    &self.instance,
                    self.claim_idle_ms,
                    &cursor,
                    StreamAutoClaimOptions::default().count(READ_COUNT),
                )
                .await
                .map_err(unavailable)?;
            if !reply.claimed.is_empty() {
                tracing::info!(stream = %self.stream, group = %self.group, claimed = reply.claimed.len(), "claimed entries from an idle member");
            }
            if let Flow::Closed = self.forward(&reply.claimed).await? {
                return Ok(Flow::Closed);
            }
            if reply.next_stream_id == "0-0" || reply.next_stream_id.is_empty() {
                return Ok(Flow::Continue);
            }
            cursor = reply.next_stream_id;
        }
    }

    async fn recreate_group(&mut self) -> Result<(), BusError> {
        let start = if self.after == 0 {
            "0".to_string()
        } else {
            entry_id(self.after)
        };
        let created: redis::RedisResult<()> = self
            .conn
            .xgroup_create_mkstream(&self.stream, &self.group, start)
            .await;
        match created {
            Ok(()) => {
                tracing::warn!(stream = %self.stream, group = %self.group, after = self.after, "consumer group was missing; recreated");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn run_once(&mut self) -> Result<Flow, BusError> {
        if let Flow::Closed = self.own_pending().await? {
            return Ok(Flow::Closed);
        }
        let claim_every = Duration::from_millis((self.claim_idle_ms / 2).max(50));
        let mut last_claim: Option<tokio::time::Instant> = None;
        loop {
            if self.tx.is_closed() {
                return Ok(Flow::Closed);
            }
            if last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
                last_claim = Some(tokio::time::Instant::now());
                if let Flow::Closed = self.claim().await? {
                    return Ok(Flow::Closed);
                }
            }
            let entries = self.read(">", true).await?;
            if let Flow::Closed = self.forward(&entries).await? {
                return Ok(Flow::Closed);
            }
        }
    }
}

#[async_trait]
impl EventSource for RedisSource {
    fn describe(&self) -> String {
        format!("redis:{}", self.stream)
    }

    async fn subscribe(&self, sub: Subscription) -> Result<DeliveryStream, BusError> {
        self.ensure_group(&sub.consumer, sub.after).await?;
        // Blocking reads get their own connection, so acks never wait behind them.
        let reader_conn = connect(
            &self.settings.url,
            Duration::from_millis(self.settings.block_ms) + Duration::from_secs(5),
        )
        .await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut reader = Reader {
            conn: reader_conn,
            stream: self.stream.clone(),
            group: sub.consumer.clone(),
            instance: self.instance.clone(),
            types: sub.event_types.into_iter().collect(),
            tx,
            claim_idle_ms: self.settings.claim_idle_ms,
            block_ms: self.settings.block_ms.max(1),
            after: sub.after,
        };
        let producer = self.producer.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match reader.run_once().await {
                    Ok(Flow::Closed) => return,
                    Ok(Flow::Continue) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%producer, error = %e, "redis stream read failed; retrying");
                        let _ = reader.tx.try_send(Err(e));
                        // Redis may have lost the group (NOGROUP after a restart
                        // without persistence): recreate it; BUSYGROUP if it exists.
                        if let Err(e) = reader.recreate_group().await {
                            tracing::debug!(%producer, error = %e, "cannot recreate the consumer group yet");
                        }
                    }
                }
                let wait = crate::events::feed_source::backoff(
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                    failures.max(1),
                );
                tokio::select! {
                    _ = reader.tx.closed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn head(&self) -> Result<u64, BusError> {
        let mut conn = self.conn.clone();
        last_position(&mut conn, &self.stream).await
    }

    async fn ack(&self, consumer: &str, position: u64) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .xack(&self.stream, consumer, &[entry_id(position)])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn rewind(&self, consumer: &str, after: u64) -> Result<(), BusError> {
        self.ensure_group(consumer, after).await?;
        let mut conn = self.conn.clone();
        let start = if after == 0 {
            "0".to_string()
        } else {
            entry_id(after)
        };
        let _: () = conn
            .xgroup_setid(&self.stream, consumer, start)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
