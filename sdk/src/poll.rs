//! Typed calls to `tally.poll.v1.PollService`.

use super::{Client, Error};
use tally_api::common::v1::PageRequest;
use tally_api::poll::v1 as pb;

/// Which polls [`Client::list_polls`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFilter {
    /// Polls owned by this user id.
    Owner(String),
    /// Polls that are still open.
    OpenOnly,
}

impl Client {
    /// Creates a poll owned by the caller.
    pub async fn create_poll<I, S>(
        &self,
        question: &str,
        options: I,
        closes_at: Option<prost_types::Timestamp>,
    ) -> Result<pb::Poll, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let req = self.request(pb::CreatePollRequest {
            question: question.to_string(),
            options: options.into_iter().map(Into::into).collect(),
            closes_at,
        })?;
        let res = self.poll_raw().create_poll(req).await?.into_inner();
        res.poll.ok_or(Error::MissingField("poll"))
    }

    /// Reads one poll.
    pub async fn get_poll(&self, poll_id: &str) -> Result<pb::Poll, Error> {
        let req = self.request(pb::GetPollRequest {
            poll_id: poll_id.to_string(),
        })?;
        let res = self.poll_raw().get_poll(req).await?.into_inner();
        res.poll.ok_or(Error::MissingField("poll"))
    }

    /// One page of polls; pass the answer's `next_page_token` for the next.
    pub async fn list_polls(
        &self,
        filter: ListFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListPollsResponse, Error> {
        let filter = match filter {
            ListFilter::Owner(owner) => pb::list_polls_request::Filter::OwnerId(owner),
            ListFilter::OpenOnly => pb::list_polls_request::Filter::OpenOnly(true),
        };
        let req = self.request(pb::ListPollsRequest {
            filter: Some(filter),
            page: Some(PageRequest {
                page_size,
                page_token: page_token.to_string(),
            }),
        })?;
        Ok(self.poll_raw().list_polls(req).await?.into_inner())
    }

    /// Closes a poll (owner only).
    pub async fn close_poll(&self, poll_id: &str) -> Result<pb::Poll, Error> {
        let req = self.request(pb::ClosePollRequest {
            poll_id: poll_id.to_string(),
        })?;
        let res = self.poll_raw().close_poll(req).await?.into_inner();
        res.poll.ok_or(Error::MissingField("poll"))
    }

    /// Casts the caller's vote. Retrying with the same `idempotency_key`
    /// returns the first vote with `replayed = true`.
    pub async fn cast_vote(
        &self,
        poll_id: &str,
        option_id: &str,
        idempotency_key: &str,
    ) -> Result<pb::CastVoteResponse, Error> {
        let req = self.request(pb::CastVoteRequest {
            poll_id: poll_id.to_string(),
            option_id: option_id.to_string(),
            idempotency_key: idempotency_key.to_string(),
        })?;
        Ok(self.poll_raw().cast_vote(req).await?.into_inner())
    }

    /// Vote counts per option.
    pub async fn get_results(&self, poll_id: &str) -> Result<pb::GetResultsResponse, Error> {
        let req = self.request(pb::GetResultsRequest {
            poll_id: poll_id.to_string(),
        })?;
        Ok(self.poll_raw().get_results(req).await?.into_inner())
    }
}
