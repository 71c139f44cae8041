//! The `tally.poll.v1.PollService` edge: authenticates the caller, checks the
//! scope, turns protobuf into domain values and back, calls the use cases
//! ([`crate::app`]) and maps every error to its gRPC status (the only place
//! that does). No rule lives here.

use crate::app::{Polls, now_ms};
use crate::domain::paging;
use crate::domain::poll::{NewPoll, Poll, PollStatus};
use crate::domain::tally::Tally;
use crate::domain::vote::{VoteRecord, VoteRequest};
use crate::domain::{DomainError, Millis};
use crate::events::timestamp;
use crate::ports::{ListFilter, PollingError};
use tally_api::poll::v1 as pb;
use tally_api::poll::v1::poll_service_server::PollService;
use tally_chassis::auth::{
    Authenticator, Caller, SCOPE_POLLS_READ, SCOPE_POLLS_WRITE, SCOPE_VOTES_WRITE,
};
use tonic::{Request, Response, Status};

/// Longest id accepted in a request.
const MAX_ID_LEN: usize = 64;

/// The PollService implementation.
#[derive(Clone)]
pub struct PollApi {
    app: Polls,
    auth: Authenticator,
    default_page_size: u32,
    max_page_size: u32,
}

impl PollApi {
    pub fn new(
        app: Polls,
        auth: Authenticator,
        default_page_size: u32,
        max_page_size: u32,
    ) -> Self {
        Self {
            app,
            auth,
            default_page_size,
            max_page_size,
        }
    }

    async fn caller<T>(&self, req: &Request<T>, scope: &str) -> Result<Caller, Status> {
        let caller = self.auth.authenticate(req.metadata()).await?;
        caller.require(scope)?;
        Ok(caller)
    }
}

/// Timestamps between years 1 and 9999, as the protobuf spec allows.
fn millis_of(ts: &prost_types::Timestamp, field: &str) -> Result<Millis, Status> {
    const MIN_SECS: i64 = -62_135_596_800;
    const MAX_SECS: i64 = 253_402_300_799;
    if !(MIN_SECS..=MAX_SECS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Status::invalid_argument(format!(
            "{field}: is not a valid timestamp"
        )));
    }
    Ok(ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000)
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

fn domain_status(e: DomainError) -> Status {
    match e {
        DomainError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
        DomainError::NotFound(m) => Status::not_found(m),
        DomainError::FailedPrecondition(m) => Status::failed_precondition(m),
        DomainError::PermissionDenied(m) => Status::permission_denied(m),
        DomainError::AlreadyExists(m) => Status::already_exists(m),
        // A per-user quota, as gRPC's status guide and the user service's
        // API-key cap use it: not retryable as is (the mesh retries only
        // UNAVAILABLE), fixed by closing a poll or upgrading the plan.
        DomainError::ResourceExhausted(m) => Status::resource_exhausted(m),
    }
}

fn status(e: PollingError) -> Status {
    match e {
        PollingError::Domain(d) => domain_status(d),
        PollingError::Contention(_) => Status::aborted(e.to_string()),
        PollingError::Store(s) => {
            tracing::error!(error = %s, "storage failure");
            tally_chassis::status::store(s)
        }
    }
}

fn status_pb(status: PollStatus) -> pb::PollStatus {
    match status {
        PollStatus::Open => pb::PollStatus::Open,
        PollStatus::Closed => pb::PollStatus::Closed,
    }
}

fn poll_pb(p: &Poll, now: Millis) -> pb::Poll {
    pb::Poll {
        poll_id: p.poll_id.clone(),
        owner_id: p.owner_id.clone(),
        question: p.question.clone(),
        options: p
            .options
            .iter()
            .map(|o| pb::PollOption {
                option_id: o.option_id.clone(),
                text: o.text.clone(),
            })
            .collect(),
        status: status_pb(p.status_at(now)) as i32,
        created_at: Some(timestamp(p.created_at)),
        closes_at: p.closes_at.map(timestamp),
        closed_at: p.closed_at.map(timestamp),
    }
}

fn vote_pb(v: &VoteRecord) -> pb::Vote {
    pb::Vote {
        vote_id: v.vote_id.clone(),
        poll_id: v.poll_id.clone(),
        option_id: v.option_id.clone(),
        voter_id: v.voter_id.clone(),
        cast_at: Some(timestamp(v.cast_at)),
    }
}

fn results_pb(poll: &Poll, tally: &Tally, now: Millis) -> pb::GetResultsResponse {
    pb::GetResultsResponse {
        poll_id: poll.poll_id.clone(),
        results: tally
            .results(poll)
            .map(|(id, text, votes)| pb::OptionResult {
                option_id: id.to_string(),
                text: text.to_string(),
                votes,
            })
            .collect(),
        total_votes: tally.votes,
        status: status_pb(poll.status_at(now)) as i32,
    }
}

#[tonic::async_trait]
impl PollService for PollApi {
    async fn create_poll(
        &self,
        req: Request<pb::CreatePollRequest>,
    ) -> Result<Response<pb::CreatePollResponse>, Status> {
        let caller = self.caller(&req, SCOPE_POLLS_WRITE).await?;
        let r = req.into_inner();
        let closes_at = r
            .closes_at
            .as_ref()
            .map(|t| millis_of(t, "closes_at"))
            .transpose()?;
        let now = now_ms();
        let new = NewPoll {
            question: r.question,
            options: r.options,
            closes_at,
        };
        let poll = self
            .app
            .create(caller.user_id, new, now)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreatePollResponse {
            poll: Some(poll_pb(&poll, now)),
        }))
    }

    async fn get_poll(
        &self,
        req: Request<pb::GetPollRequest>,
    ) -> Result<Response<pb::GetPollResponse>, Status> {
        self.caller(&req, SCOPE_POLLS_READ).await?;
        let r = req.into_inner();
        id_field(&r.poll_id, "poll_id")?;
        let poll = self.app.get(&r.poll_id).await.map_err(status)?;
        Ok(Response::new(pb::GetPollResponse {
            poll: Some(poll_pb(&poll, now_ms())),
        }))
    }

    async fn list_polls(
        &self,
        req: Request<pb::ListPollsRequest>,
    ) -> Result<Response<pb::ListPollsResponse>, Status> {
        let caller = self.caller(&req, SCOPE_POLLS_READ).await?;
        let r = req.into_inner();
        let filter = match r.filter {
            Some(pb::list_polls_request::Filter::OwnerId(owner)) => {
                id_field(&owner, "owner_id")?;
                ListFilter::Owner(owner)
            }
            Some(pb::list_polls_request::Filter::OpenOnly(true)) => ListFilter::Open,
            // No filter (or open_only = false): the caller's own polls.
            Some(pb::list_polls_request::Filter::OpenOnly(false)) | None => {
                ListFilter::Owner(caller.user_id)
            }
        };
        let page = r.page.unwrap_or_default();
        let size = paging::page_size(page.page_size, self.default_page_size, self.max_page_size);
        let after = paging::decode_token(&page.page_token).map_err(domain_status)?;
        let now = now_ms();
        let found = self
            .app
            .list(&filter, after, size, now)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListPollsResponse {
            polls: found.polls.iter().map(|p| poll_pb(p, now)).collect(),
            next_page_token: found
                .next_after
                .as_deref()
                .map(paging::encode_token)
                .unwrap_or_default(),
        }))
    }

    async fn close_poll(
        &self,
        req: Request<pb::ClosePollRequest>,
    ) -> Result<Response<pb::ClosePollResponse>, Status> {
        let caller = self.caller(&req, SCOPE_POLLS_WRITE).await?;
        let r = req.into_inner();
        id_field(&r.poll_id, "poll_id")?;
        let now = now_ms();
        let poll = self
            .app
            .close(&r.poll_id, &caller.user_id, now)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ClosePollResponse {
            poll: Some(poll_pb(&poll, now)),
        }))
    }

    async fn cast_vote(
        &self,
        req: Request<pb::CastVoteRequest>,
    ) -> Result<Response<pb::CastVoteResponse>, Status> {
        let caller = self.caller(&req, SCOPE_VOTES_WRITE).await?;
        let r = req.into_inner();
        id_field(&r.poll_id, "poll_id")?;
        let outcome = self
            .app
            .cast_vote(
                &VoteRequest {
                    poll_id: r.poll_id,
                    option_id: r.option_id,
                    voter_id: caller.user_id,
                    idempotency_key: r.idempotency_key,
                },
                now_ms(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CastVoteResponse {
            vote: Some(vote_pb(&outcome.vote)),
            replayed: outcome.replayed,
        }))
    }

    async fn get_results(
        &self,
        req: Request<pb::GetResultsRequest>,
    ) -> Result<Response<pb::GetResultsResponse>, Status> {
        self.caller(&req, SCOPE_POLLS_READ).await?;
        let r = req.into_inner();
        id_field(&r.poll_id, "poll_id")?;
        let (poll, tally) = self.app.results(&r.poll_id).await.map_err(status)?;
        Ok(Response::new(results_pb(&poll, &tally, now_ms())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_checked() {
        let ok = prost_types::Timestamp {
            seconds: 2,
            nanos: 5_000_000,
        };
        assert_eq!(millis_of(&ok, "closes_at").expect("ok"), 2005);
        for bad in [
            prost_types::Timestamp {
                seconds: 1,
                nanos: -1,
            },
            prost_types::Timestamp {
                seconds: 1,
                nanos: 1_000_000_000,
            },
            prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
        ] {
            let s = millis_of(&bad, "closes_at").expect_err("bad");
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert!(s.message().starts_with("closes_at"));
        }
    }

    #[test]
    fn domain_errors_map_to_codes() {
        use tonic::Code;
        let cases = [
            (
                DomainError::invalid("options[3]", "x"),
                Code::InvalidArgument,
            ),
            (DomainError::NotFound("x".into()), Code::NotFound),
            (
                DomainError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                DomainError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (DomainError::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                DomainError::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(domain_status(e).code(), code);
        }
        let s = domain_status(DomainError::invalid("options[3]", "must not be empty"));
        assert_eq!(s.message(), "options[3]: must not be empty");
        assert_eq!(
            status(PollingError::Contention("p".into())).code(),
            Code::Aborted
        );
    }
}
