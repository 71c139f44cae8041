//! The embedded event bus, consumer side: a gRPC client of a producer's
//! `EventFeedService`, reached through `outbound::channel` (so through the
//! mesh sidecar when there is one).
//!
//! The stream it returns never ends on its own: when the server stream breaks
//! (producer restart, sidecar restart, network), it reconnects with
//! exponential backoff and resumes after the last position it handed out.
//!
//! Each (re)connection is a traced gRPC client call (`trace::client`): its span
//! is a new root that ends once the producer has answered, and its context
//! goes out as `traceparent`, so the producer's sidecars and server join it.
//! Delivered events are not its children: each consume span hangs under the
//! producer span named by the event's own `traceparent` (`trace::events`).

use crate::config::OutboundSettings;
use crate::events::bus::{BusError, Delivery, DeliveryStream, EventSource, Subscription};
use crate::outbound::{self, OutboundError};
use crate::trace::client::ClientTraceService;
use async_trait::async_trait;
use std::time::Duration;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::events::v1::{GetHeadRequest, SubscribeRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Deliveries buffered between the network and the consumer.
const BUFFER: usize = 64;

/// A producer's feed as an [`EventSource`].
#[derive(Clone)]
pub struct FeedSource {
    client: EventFeedServiceClient<ClientTraceService<Channel>>,
    producer: String,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl FeedSource {
    /// A source over an existing channel to `producer`.
    pub fn new(channel: Channel, producer: &str) -> Self {
        Self {
            client: EventFeedServiceClient::new(ClientTraceService::new(channel)),
            producer: producer.to_string(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// A source over the configured outbound address of `producer`
    /// (`[outbound] polling = "http://..."`).
    pub fn from_outbound(
        settings: &OutboundSettings,
        producer: &str,
    ) -> Result<Self, OutboundError> {
        Ok(Self::new(outbound::channel(settings, producer)?, producer))
    }

    /// Overrides the reconnect backoff bounds.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }
}

/// `min * 2^(failures-1)`, capped at `max`.
pub(crate) fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1).min(16))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

#[async_trait]
impl EventSource for FeedSource {
    fn describe(&self) -> String {
        format!("feed:{}", self.producer)
    }

    async fn subscribe(&self, sub: Subscription) -> Result<DeliveryStream, BusError> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut client = self.client.clone();
        let (min, max) = (self.min_backoff, self.max_backoff);
        let producer = self.producer.clone();
        tokio::spawn(async move {
            let mut after = sub.after;
            let mut failures = 0u32;
            loop {
                let request = SubscribeRequest {
                    from_offset: after,
                    consumer: sub.consumer.clone(),
                    event_types: sub.event_types.clone(),
                };
                // The spawned task runs outside any span: each connection starts its own
                // trace, never a child of whatever span started the consumer.
                match client.subscribe(request).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            let message = tokio::select! {
                                _ = tx.closed() => return,
                                m = stream.message() => m,
                            };
                            match message {
                                Ok(Some(msg)) => {
                                    failures = 0;
                                    after = msg.offset;
                                    let Some(envelope) = msg.event else { continue };
                                    let delivery = Delivery {
                                        position: msg.offset,
                                        envelope,
                                    };
                                    if tx.send(Ok(delivery)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {
                                    tracing::info!(%producer, "event feed ended; reconnecting");
                                    break;
                                }
                                Err(status) => {
                                    tracing::warn!(%producer, %status, "event feed broke; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(status) => {
                        let _ = tx.try_send(Err(BusError::Unavailable(format!(
                            "feed of {producer}: {status}"
                        ))));
                    }
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff(min, max, failures)) => {}
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn head(&self) -> Result<u64, BusError> {
        let mut client = self.client.clone();
        client
            .get_head(GetHeadRequest {})
            .await
            .map(|r| r.into_inner().head_offset)
            .map_err(|s| BusError::Unavailable(format!("feed of {}: {s}", self.producer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff(min, max, 1), Duration::from_millis(100));
        assert_eq!(backoff(min, max, 2), Duration::from_millis(200));
        assert_eq!(backoff(min, max, 4), Duration::from_millis(800));
        assert_eq!(backoff(min, max, 5), max);
        assert_eq!(backoff(min, max, 500), max);
    }
}
