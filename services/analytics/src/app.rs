//! Analytics' use cases, the reads of the read model: results, minute buckets, owner totals and the
//! top-polls ranking, each page a bounded scan of the [`ReadModel`] port that resumes from a token.

use crate::domain::paging::{self, List, minute_from_key};
use crate::domain::{DomainError, Millis, PollSummary, PollView};
use crate::ports::ReadModel;
use std::sync::Arc;
use tally_chassis::storage::StoreError;

/// Rows read per scan when counting an owner's open polls.
const OWNER_SCAN_BATCH: usize = 256;

/// Query failures.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request is malformed (bad page token).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The poll is not in the read model (yet).
    #[error("{0}")]
    NotFound(String),
    /// The read model could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page, in list order.
    pub items: Vec<T>,
    /// Empty when there are no more pages.
    pub next_page_token: String,
}

/// Owner totals as answered (open polls counted at the time of the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerAnswer {
    /// The owner asked about.
    pub owner_id: String,
    /// Polls the owner ever created.
    pub polls: u64,
    /// Of those, the ones open at the time of the query.
    pub open_polls: u64,
    /// Votes cast on all of the owner's polls.
    pub total_votes: u64,
}

/// The read side.
#[derive(Clone)]
pub struct Queries {
    model: Arc<dyn ReadModel>,
    default_page: u32,
    max_page: u32,
}

impl Queries {
    /// Queries over `model`, with page sizes defaulting to `default_page`
    /// and capped at `max_page`.
    pub fn new(model: Arc<dyn ReadModel>, default_page: u32, max_page: u32) -> Self {
        Self {
            model,
            default_page,
            max_page,
        }
    }

    /// One poll's results.
    pub async fn poll(&self, poll_id: &str) -> Result<PollView, QueryError> {
        self.model.poll(poll_id).await?.ok_or_else(|| {
            QueryError::NotFound(format!("poll {poll_id} is not in the analytics read model"))
        })
    }

    /// Votes per minute of one poll, oldest first: `(minute start secs, votes)`.
    pub async fn minutes(
        &self,
        poll_id: &str,
        page_size: u32,
        token: &str,
    ) -> Result<Page<(i64, u64)>, QueryError> {
        let after = paging::decode_token(List::Minutes, token)?;
        self.poll(poll_id).await?;
        let size = paging::page_size(page_size, self.default_page, self.max_page);
        let rows = self.model.minutes(poll_id, after, size + 1).await?;
        let more = rows.len() > size;
        let mut items = Vec::with_capacity(size.min(rows.len()));
        let mut last = None;
        for row in rows.into_iter().take(size) {
            let minute = minute_from_key(&row.key)
                .ok_or_else(|| StoreError::Corrupt(format!("minute key {}", row.key)))?;
            items.push((minute, row.value));
            last = Some(row.key);
        }
        Ok(Page {
            items,
            next_page_token: next_token(more, List::Minutes, last),
        })
    }

    /// Totals of one owner (zeros for an owner without polls).
    pub async fn owner(&self, owner_id: &str, now: Millis) -> Result<OwnerAnswer, QueryError> {
        let totals = self.model.owner_totals(owner_id).await?.unwrap_or_default();
        let mut open = 0u64;
        let mut after = None;
        loop {
            let rows = self
                .model
                .owner_polls(owner_id, after.clone(), OWNER_SCAN_BATCH)
                .await?;
            let full = rows.len() == OWNER_SCAN_BATCH;
            for row in rows {
                if row.value.is_open_at(now) {
                    open += 1;
                }
                after = Some(row.key);
            }
            if !full {
                break;
            }
        }
        Ok(OwnerAnswer {
            owner_id: owner_id.to_string(),
            polls: totals.polls,
            open_polls: open,
            total_votes: totals.total_votes,
        })
    }

    /// Polls by total votes, most first (ties by poll id).
    pub async fn top(&self, page_size: u32, token: &str) -> Result<Page<PollSummary>, QueryError> {
        let after = paging::decode_token(List::TopPolls, token)?;
        let size = paging::page_size(page_size, self.default_page, self.max_page);
        let rows = self.model.top(after, size + 1).await?;
        let more = rows.len() > size;
        let mut items = Vec::with_capacity(size.min(rows.len()));
        let mut last = None;
        for row in rows.into_iter().take(size) {
            items.push(row.value);
            last = Some(row.key);
        }
        Ok(Page {
            items,
            next_page_token: next_token(more, List::TopPolls, last),
        })
    }
}

fn next_token(more: bool, list: List, last: Option<String>) -> String {
    match (more, last) {
        (true, Some(key)) => paging::encode_token(list, &key),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OwnedPoll, OwnerTotals};
    use crate::ports::{Keyed, MockReadModel};

    fn owned(key: usize, closed: bool) -> Keyed<OwnedPoll> {
        Keyed {
            key: format!("p-{key:05}"),
            value: OwnedPoll {
                closes_at_ms: None,
                closed,
            },
        }
    }

    #[tokio::test]
    async fn owner_counts_open_polls_across_scan_batches() {
        let mut model = MockReadModel::new();
        model.expect_owner_totals().returning(|_| {
            Ok(Some(OwnerTotals {
                polls: 300,
                total_votes: 9,
            }))
        });
        // A full first batch (every other poll closed), then a short one that
        // must resume after the first batch's last key.
        model
            .expect_owner_polls()
            .withf(|_, after, limit| after.is_none() && *limit == OWNER_SCAN_BATCH)
            .times(1)
            .returning(|_, _, _| {
                Ok((0..OWNER_SCAN_BATCH)
                    .map(|i| owned(i, i % 2 == 0))
                    .collect())
            });
        model
            .expect_owner_polls()
            .withf(|_, after, _| after.as_deref() == Some("p-00255"))
            .times(1)
            .returning(|_, _, _| Ok(vec![owned(256, false)]));
        let queries = Queries::new(Arc::new(model), 10, 100);
        let answer = queries.owner("o-1", 0).await.unwrap();
        assert_eq!(answer.open_polls, 129);
        assert_eq!((answer.polls, answer.total_votes), (300, 9));
    }

    #[tokio::test]
    async fn a_top_page_asks_one_more_row_to_know_if_another_page_exists() {
        let summary = |id: &str| Keyed {
            key: paging::top_key(1, id),
            value: PollSummary {
                poll_id: id.to_string(),
                owner_id: "o".to_string(),
                question: String::new(),
                total_votes: 1,
            },
        };
        let mut model = MockReadModel::new();
        model
            .expect_top()
            .withf(|after, limit| after.is_none() && *limit == 3)
            .returning(move |_, _| Ok(vec![summary("a"), summary("b"), summary("c")]));
        let queries = Queries::new(Arc::new(model), 10, 100);
        let page = queries.top(2, "").await.unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(
            paging::decode_token(List::TopPolls, &page.next_page_token).unwrap(),
            Some(paging::top_key(1, "b"))
        );
    }

    #[tokio::test]
    async fn minutes_of_an_unknown_poll_are_not_found() {
        let mut model = MockReadModel::new();
        model.expect_poll().returning(|_| Ok(None));
        let queries = Queries::new(Arc::new(model), 10, 100);
        let err = queries.minutes("p-1", 5, "").await.unwrap_err();
        assert!(matches!(err, QueryError::NotFound(_)), "{err:?}");
    }
}
