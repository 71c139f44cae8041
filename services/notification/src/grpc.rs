//! The `tally.notification.v1.NotificationService` edge: validates requests,
//! authenticates WatchMyPolls callers (`polls:read`), and hands the streams
//! built by [`Watches`] to tonic, turning a watch's error into its status
//! (the only place that does).

use crate::app::{WatchError, WatchStream, Watches};
use std::pin::Pin;
use tally_api::notification::v1 as pb;
use tally_api::notification::v1::notification_service_server::NotificationService;
use tally_chassis::auth::{Authenticator, SCOPE_POLLS_READ};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

const MAX_ID_LEN: usize = 64;

/// A watch stream as tonic sends it.
pub type StatusStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The status a watch error answers with.
fn status(e: WatchError) -> Status {
    match e {
        WatchError::UnknownPoll(_) => Status::not_found(e.to_string()),
        WatchError::TooSlowPoll(_) | WatchError::TooSlowOwner => {
            Status::resource_exhausted(e.to_string())
        }
        WatchError::Store(s) => tally_chassis::status::store(s),
    }
}

fn to_status_stream<T: Send + 'static>(stream: WatchStream<T>) -> StatusStream<T> {
    Box::pin(stream.map(|item| item.map_err(status)))
}

/// The NotificationService implementation.
#[derive(Clone)]
pub struct NotificationApi {
    watches: Watches,
    auth: Authenticator,
}

impl NotificationApi {
    pub fn new(watches: Watches, auth: Authenticator) -> Self {
        Self { watches, auth }
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    type WatchPollStream = StatusStream<pb::WatchPollResponse>;
    type WatchMyPollsStream = StatusStream<pb::WatchMyPollsResponse>;

    async fn watch_poll(
        &self,
        req: Request<pb::WatchPollRequest>,
    ) -> Result<Response<Self::WatchPollStream>, Status> {
        let r = req.into_inner();
        if r.poll_id.is_empty() {
            return Err(Status::invalid_argument("poll_id: must not be empty"));
        }
        if r.poll_id.len() > MAX_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "poll_id: is longer than {MAX_ID_LEN} bytes"
            )));
        }
        let stream = self
            .watches
            .watch_poll(&r.poll_id, r.resume_after_sequence)
            .await
            .map_err(status)?;
        Ok(Response::new(to_status_stream(stream)))
    }

    async fn watch_my_polls(
        &self,
        req: Request<pb::WatchMyPollsRequest>,
    ) -> Result<Response<Self::WatchMyPollsStream>, Status> {
        let caller = self.auth.authenticate(req.metadata()).await?;
        caller.require(SCOPE_POLLS_READ)?;
        let stream = self
            .watches
            .watch_owner(&caller.user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(to_status_stream(stream)))
    }
}
