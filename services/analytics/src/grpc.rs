//! The `tally.analytics.v1.AnalyticsService` edge: authenticates the caller
//! (`polls:read`), validates the request, asks [`Queries`] and maps errors to
//! gRPC statuses. No rule lives here.

use crate::app::{Queries, QueryError};
use crate::domain::{DomainError, Millis, timestamp};
use tally_api::analytics::v1 as pb;
use tally_api::analytics::v1::analytics_service_server::AnalyticsService;
use tally_chassis::auth::{Authenticator, Caller, SCOPE_POLLS_READ};
use tonic::{Request, Response, Status};

const MAX_ID_LEN: usize = 64;

/// The AnalyticsService implementation.
#[derive(Clone)]
pub struct AnalyticsApi {
    queries: Queries,
    auth: Authenticator,
}

impl AnalyticsApi {
    pub fn new(queries: Queries, auth: Authenticator) -> Self {
        Self { queries, auth }
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = self.auth.authenticate(req.metadata()).await?;
        caller.require(SCOPE_POLLS_READ)?;
        Ok(caller)
    }
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

fn id_field(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: is longer than {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

fn status(e: QueryError) -> Status {
    match e {
        QueryError::Domain(d @ DomainError::InvalidArgument { .. }) => {
            Status::invalid_argument(d.to_string())
        }
        QueryError::Domain(d) => Status::internal(d.to_string()),
        QueryError::NotFound(m) => Status::not_found(m),
        QueryError::Store(s) => {
            tracing::error!(error = %s, "storage failure");
            tally_chassis::status::store(s)
        }
    }
}

fn page(p: Option<&tally_api::common::v1::PageRequest>) -> (u32, &str) {
    p.map(|p| (p.page_size, p.page_token.as_str()))
        .unwrap_or((0, ""))
}

#[tonic::async_trait]
impl AnalyticsService for AnalyticsApi {
    async fn get_poll_results(
        &self,
        req: Request<pb::GetPollResultsRequest>,
    ) -> Result<Response<pb::GetPollResultsResponse>, Status> {
        self.caller(&req).await?;
        let r = req.into_inner();
        id_field(&r.poll_id, "poll_id")?;
        let view = self.queries.poll(&r.poll_id).await.map_err(status)?;
        Ok(Response::new(pb::GetPollResultsResponse {
            poll_id: view.poll_id.clone(),
            closed: view.is_closed_at(now_ms()),
            options: view
                .options
                .iter()
                .map(|o| pb::OptionTotal {
                    option_id: o.option_id.clone(),
                    text: o.text.clone(),
                    votes: o.votes,
                })
                .collect(),
            total_votes: view.total_votes,
            as_of_offset: view.last_offset,
        }))
    }

    async fn get_vote_time_series(
        &self,
        req: Request<pb::GetVoteTimeSeriesRequest>,
    ) -> Result<Response<pb::GetVoteTimeSeriesResponse>, Status> {
        self.caller(&req).await?;
        let r = req.into_inner();
        id_field(&r.poll_id, "poll_id")?;
        let (size, token) = page(r.page.as_ref());
        let page = self
            .queries
            .minutes(&r.poll_id, size, token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetVoteTimeSeriesResponse {
            buckets: page
                .items
                .into_iter()
                .map(|(minute, votes)| pb::MinuteBucket {
                    minute: Some(timestamp(minute.saturating_mul(1000))),
                    votes,
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_owner_totals(
        &self,
        req: Request<pb::GetOwnerTotalsRequest>,
    ) -> Result<Response<pb::GetOwnerTotalsResponse>, Status> {
        let caller = self.caller(&req).await?;
        let r = req.into_inner();
        let owner = if r.owner_id.is_empty() {
            caller.user_id
        } else {
            id_field(&r.owner_id, "owner_id")?;
            r.owner_id
        };
        let t = self.queries.owner(&owner, now_ms()).await.map_err(status)?;
        Ok(Response::new(pb::GetOwnerTotalsResponse {
            owner_id: t.owner_id,
            polls: t.polls,
            open_polls: t.open_polls,
            total_votes: t.total_votes,
        }))
    }

    async fn list_top_polls(
        &self,
        req: Request<pb::ListTopPollsRequest>,
    ) -> Result<Response<pb::ListTopPollsResponse>, Status> {
        self.caller(&req).await?;
        let r = req.into_inner();
        let (size, token) = page(r.page.as_ref());
        let page = self.queries.top(size, token).await.map_err(status)?;
        Ok(Response::new(pb::ListTopPollsResponse {
            polls: page
                .items
                .into_iter()
                .map(|s| pb::PollSummary {
                    poll_id: s.poll_id,
                    owner_id: s.owner_id,
                    question: s.question,
                    total_votes: s.total_votes,
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
