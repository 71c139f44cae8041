//! The storage port behind the resilient stack of `crate::resilience`, for
//! ScyllaDB (the embedded store is a local file and needs none): each call
//! has a deadline, reads are retried once, a breaker opens after consecutive
//! outages so calls fail fast with [`StoreError::Unavailable`], and a
//! bulkhead bounds the calls in flight. A failed condition or a corrupt
//! record is an answer, not an outage: it never trips the breaker.

use super::{OutboxEntry, Row, Store, StoreError, WriteBatch};
use crate::resilience::{self, Call, ResilienceError, Resilient, Settings, SettingsError};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Arc;
use tower_resilience::circuitbreaker::CircuitState;

/// One storage-port call, as the stack sees it.
#[derive(Clone)]
pub(crate) enum StoreCall {
    /// Reads one row.
    Get {
        /// The table to read.
        table: &'static str,
        /// The row's partition.
        partition: String,
        /// The row's key within the partition.
        key: String,
    },
    /// Reads a page of one partition in key order.
    Scan {
        /// The table to read.
        table: &'static str,
        /// The partition to page through.
        partition: String,
        /// Only keys after this one (the previous page's last key).
        after: Option<String>,
        /// Most rows in the page.
        limit: usize,
    },
    /// Applies a write batch; the one call never retried.
    Commit(WriteBatch),
    /// Reads a page of outbox entries for the relay.
    ReadOutbox {
        /// Only entries after this sequence number.
        after: u64,
        /// Most entries in the page.
        limit: usize,
    },
    /// Checks the backend answers, for health.
    Ping,
}

impl Call for StoreCall {
    fn idempotent(&self) -> bool {
        !matches!(self, StoreCall::Commit(_))
    }
}

/// What a call returned.
pub(crate) enum StoreReply {
    /// A commit or ping succeeded.
    Done,
    /// The answer to a get: the row's value, if it exists.
    Value(Option<Vec<u8>>),
    /// The answer to a scan.
    Rows(Vec<Row>),
    /// The answer to an outbox read.
    Outbox(Vec<OutboxEntry>),
}

fn is_outage(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

/// A [`Store`] whose calls go through the resilient stack.
#[derive(Clone)]
pub struct ResilientStore {
    stack: Resilient<StoreCall, StoreReply, StoreError>,
}

impl ResilientStore {
    /// Wraps `inner`; `name` labels its metrics (e.g. `scylla`).
    pub fn new(
        name: &str,
        inner: Arc<dyn Store>,
        settings: &Settings,
    ) -> Result<Self, SettingsError> {
        let svc = tower::service_fn(move |call: StoreCall| {
            let inner = inner.clone();
            let fut: BoxFuture<'static, Result<StoreReply, StoreError>> = Box::pin(async move {
                match call {
                    StoreCall::Get {
                        table,
                        partition,
                        key,
                    } => inner
                        .get(table, &partition, &key)
                        .await
                        .map(StoreReply::Value),
                    StoreCall::Scan {
                        table,
                        partition,
                        after,
                        limit,
                    } => inner
                        .scan(table, &partition, after, limit)
                        .await
                        .map(StoreReply::Rows),
                    StoreCall::Commit(batch) => {
                        inner.commit(batch).await.map(|()| StoreReply::Done)
                    }
                    StoreCall::ReadOutbox { after, limit } => inner
                        .read_outbox(after, limit)
                        .await
                        .map(StoreReply::Outbox),
                    StoreCall::Ping => inner.ping().await.map(|()| StoreReply::Done),
                }
            });
            fut
        });
        Ok(Self {
            stack: Resilient::new(name, settings, svc, is_outage)?,
        })
    }

    /// The breaker's state now (open: calls fail fast).
    pub fn breaker(&self) -> CircuitState {
        self.stack.state()
    }

    async fn call(&self, call: StoreCall) -> Result<StoreReply, StoreError> {
        self.stack.call(call).await.map_err(|e| match e {
            ResilienceError::Application(e) => e,
            other => StoreError::Unavailable(resilience::describe(self.stack.name(), &other)),
        })
    }
}

fn unexpected() -> StoreError {
    StoreError::Corrupt("the storage stack answered another call".into())
}

#[async_trait]
impl Store for ResilientStore {
    async fn get(
        &self,
        table: &'static str,
        partition: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self
            .call(StoreCall::Get {
                table,
                partition: partition.to_string(),
                key: key.to_string(),
            })
            .await?
        {
            StoreReply::Value(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn scan(
        &self,
        table: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        match self
            .call(StoreCall::Scan {
                table,
                partition: partition.to_string(),
                after,
                limit,
            })
            .await?
        {
            StoreReply::Rows(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        match self.call(StoreCall::Commit(batch)).await? {
            StoreReply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        match self.call(StoreCall::ReadOutbox { after, limit }).await? {
            StoreReply::Outbox(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Through the stack: while the breaker is open this fails fast, and
        // after its open wait the ping is the probe that can close it.
        match self.call(StoreCall::Ping).await? {
            StoreReply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MockStore;

    #[tokio::test(start_paused = true)]
    async fn outages_open_the_breaker_but_failed_conditions_do_not() {
        let mut mock = MockStore::new();
        mock.expect_commit()
            .times(3 * resilience::DEFAULT_CONSECUTIVE_FAILURES)
            .returning(|_| {
                Err(StoreError::ConditionFailed {
                    index: 0,
                    table: "t".into(),
                    partition: "p".into(),
                    key: "k".into(),
                })
            });
        // Five failed attempts open the breaker; after that none reach it.
        mock.expect_get()
            .times(resilience::DEFAULT_CONSECUTIVE_FAILURES)
            .returning(|_, _, _| Err(StoreError::Unavailable("no host".into())));
        let s =
            ResilientStore::new("test-store", Arc::new(mock), &Settings::default()).expect("stack");
        for _ in 0..3 * resilience::DEFAULT_CONSECUTIVE_FAILURES {
            let e = s.commit(WriteBatch::new()).await.expect_err("condition");
            assert!(matches!(e, StoreError::ConditionFailed { .. }), "{e}");
        }
        assert_eq!(s.breaker(), CircuitState::Closed, "answers are not outages");
        // Each read is tried twice, so the third read opens the breaker.
        for _ in 0..resilience::DEFAULT_CONSECUTIVE_FAILURES {
            let e = s.get("t", "p", "k").await.expect_err("down");
            assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        }
        assert_eq!(s.breaker(), CircuitState::Open);
        let e = s.ping().await.expect_err("open");
        assert!(e.to_string().contains("circuit breaker open"), "{e}");
    }
}
