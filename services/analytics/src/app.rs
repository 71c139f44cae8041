//! Analytics' use cases, the reads of the read model: results, minute buckets, owner totals and the
//! top-polls ranking, each page a bounded scan that resumes from a token.

use crate::domain::paging::{self, List, minute_from_key};
use crate::domain::{DomainError, Millis, OwnedPoll, OwnerTotals, PollSummary, PollView};
use crate::projector::{
    MINUTES, OWNER_POLLS, OWNERS, POLL_KEY, POLLS, TOP, TOP_PARTITION, TOTALS_KEY, read,
};
use std::sync::Arc;
use tally_chassis::storage::{Store, StoreError, decode};

/// Query failures.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty when there are no more pages.
    pub next_page_token: String,
}

/// Owner totals as answered (open polls counted at the time of the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerAnswer {
    pub owner_id: String,
    pub polls: u64,
    pub open_polls: u64,
    pub total_votes: u64,
}

/// The read side.
#[derive(Clone)]
pub struct Queries {
    store: Arc<dyn Store>,
    default_page: u32,
    max_page: u32,
}

impl Queries {
    pub fn new(store: Arc<dyn Store>, default_page: u32, max_page: u32) -> Self {
        Self {
            store,
            default_page,
            max_page,
        }
    }

    /// One poll's results.
    pub async fn poll(&self, poll_id: &str) -> Result<PollView, QueryError> {
        read::<PollView>(self.store.as_ref(), POLLS, poll_id, POLL_KEY)
            .await?
            .map(|(_, v)| v)
            .ok_or_else(|| {
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
        let rows = self.store.scan(MINUTES, poll_id, after, size + 1).await?;
        let more = rows.len() > size;
        let mut items = Vec::with_capacity(size.min(rows.len()));
        let mut last = None;
        for row in rows.into_iter().take(size) {
            let minute = minute_from_key(&row.key)
                .ok_or_else(|| StoreError::Corrupt(format!("minute key {}", row.key)))?;
            items.push((minute, decode::<u64>(&row.value)?));
            last = Some(row.key);
        }
        Ok(Page {
            items,
            next_page_token: next_token(more, List::Minutes, last),
        })
    }

    /// Totals of one owner (zeros for an owner without polls).
    pub async fn owner(&self, owner_id: &str, now: Millis) -> Result<OwnerAnswer, QueryError> {
        let store = self.store.as_ref();
        let totals = read::<OwnerTotals>(store, OWNERS, owner_id, TOTALS_KEY)
            .await?
            .map(|(_, t)| t)
            .unwrap_or_default();
        let mut open = 0u64;
        let mut after = None;
        loop {
            let rows = store
                .scan(OWNER_POLLS, owner_id, after.clone(), 256)
                .await?;
            let full = rows.len() == 256;
            for row in rows {
                if decode::<OwnedPoll>(&row.value)?.is_open_at(now) {
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
        let rows = self.store.scan(TOP, TOP_PARTITION, after, size + 1).await?;
        let more = rows.len() > size;
        let mut items = Vec::with_capacity(size.min(rows.len()));
        let mut last = None;
        for row in rows.into_iter().take(size) {
            items.push(decode::<PollSummary>(&row.value)?);
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
