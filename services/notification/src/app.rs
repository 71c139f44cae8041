//! Notification's use cases: one watcher's stream. It subscribes to the hub first, then reads the store
//! (snapshot or logged updates after the resume point), then forwards live
//! updates, skipping sequences it already sent and filling gaps from the log.
//! Subscribing before reading is what makes resume gap-free: an update
//! committed before the subscription is in the store; one committed after it
//! arrives through the hub.
//!
//! Catch-up from the store waits for the client (it is bounded by the log).
//! Live updates never wait: each watcher has a channel of `buffer` updates
//! plus one slot kept for the final status; when the buffer is full the
//! stream ends with RESOURCE_EXHAUSTED ("client too slow; resume from
//! sequence N"), so a slow client costs at most `buffer` updates of memory.

use crate::domain::{PollState, ResumePlan, Update, plan_resume};
use crate::hub::{Hub, Published};
use crate::projector::{load_state, owned_polls, read_log};
use std::collections::HashMap;
use std::sync::Arc;
use tally_api::notification::v1 as pb;
use tally_chassis::storage::{Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LOG_PAGE: usize = 128;

/// What a watch needs from the service.
#[derive(Clone)]
pub struct Watches {
    store: Arc<dyn Store>,
    hub: Hub,
    buffer: usize,
}

/// Why a watch cannot start or has to end; the gRPC edge maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// This replica has not seen the poll.
    #[error("poll {0} is unknown to this notification replica (not created, or not yet received)")]
    UnknownPoll(String),
    /// A WatchPoll client fell `buffer` updates behind.
    #[error(
        "client too slow; resume from sequence {0} (watch again with resume_after_sequence = {0})"
    )]
    TooSlowPoll(u64),
    /// A WatchMyPolls client fell behind.
    #[error("client too slow; watch again (every update carries the poll's absolute counts)")]
    TooSlowOwner,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The two sides of a watcher's channel.
type Tx<T> = mpsc::Sender<Result<T, WatchError>>;
type Rx<T> = mpsc::Receiver<Result<T, WatchError>>;

/// The stream of one watch, ended by an error when it cannot go on.
pub type WatchStream<T> = ReceiverStream<Result<T, WatchError>>;

fn to_pb(u: &Update) -> pb::PollUpdate {
    pb::PollUpdate {
        poll_id: u.poll_id.clone(),
        sequence: u.sequence,
        counts: u
            .counts
            .iter()
            .map(|(option_id, votes)| pb::OptionCount {
                option_id: option_id.clone(),
                votes: *votes,
            })
            .collect(),
        total_votes: u.total_votes,
        closed: u.closed,
        at: Some(prost_types::Timestamp {
            seconds: u.at_ms.div_euclid(1000),
            nanos: (u.at_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
    }
}

fn poll_response(u: &Update, snapshot: bool, resume_unavailable: bool) -> pb::WatchPollResponse {
    pb::WatchPollResponse {
        update: Some(to_pb(u)),
        snapshot,
        resume_unavailable,
    }
}

fn store_error(e: StoreError) -> WatchError {
    tracing::error!(error = %e, "storage failure while serving a watch");
    WatchError::Store(e)
}

/// What happened to a live send.
enum Offer {
    Sent,
    /// The buffer is full (one slot is left for the final status).
    Full,
    /// The client is gone.
    Gone,
}

/// Queues `item` without waiting, keeping one slot free for the final status.
fn offer<T>(tx: &mpsc::Sender<Result<T, WatchError>>, item: T) -> Offer {
    if tx.capacity() <= 1 {
        return if tx.is_closed() {
            Offer::Gone
        } else {
            Offer::Full
        };
    }
    match tx.try_send(Ok(item)) {
        Ok(()) => Offer::Sent,
        Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
    }
}

impl Watches {
    pub fn new(store: Arc<dyn Store>, hub: Hub, buffer: usize) -> Self {
        Self {
            store,
            hub,
            buffer: buffer.max(1),
        }
    }

    fn channel<T>(&self) -> (Tx<T>, Rx<T>) {
        // One slot more than the buffer, kept for the final status.
        mpsc::channel(self.buffer + 1)
    }

    /// Starts a WatchPoll stream; NOT_FOUND if this replica has not seen the poll.
    pub async fn watch_poll(
        &self,
        poll_id: &str,
        resume_after: u64,
    ) -> Result<WatchStream<pb::WatchPollResponse>, WatchError> {
        let live = self.hub.subscribe();
        let state = load_state(self.store.as_ref(), poll_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| WatchError::UnknownPoll(poll_id.to_string()))?;
        let (tx, rx) = self.channel();
        let task = PollWatch {
            store: self.store.clone(),
            poll_id: poll_id.to_string(),
            tx,
            last: 0,
        };
        tokio::spawn(task.run(state, resume_after, live));
        Ok(ReceiverStream::new(rx))
    }

    /// Starts a WatchMyPolls stream for `owner_id`.
    pub async fn watch_owner(
        &self,
        owner_id: &str,
    ) -> Result<WatchStream<pb::WatchMyPollsResponse>, WatchError> {
        let live = self.hub.subscribe();
        let (tx, rx) = self.channel();
        let store = self.store.clone();
        let owner = owner_id.to_string();
        tokio::spawn(async move {
            if let Err(status) = owner_watch(store, owner, &tx, live).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

struct PollWatch {
    store: Arc<dyn Store>,
    poll_id: String,
    tx: mpsc::Sender<Result<pb::WatchPollResponse, WatchError>>,
    /// The last sequence sent to the client.
    last: u64,
}

impl PollWatch {
    async fn run(
        mut self,
        state: PollState,
        resume_after: u64,
        mut live: tokio::sync::broadcast::Receiver<Arc<Published>>,
    ) {
        let started = match plan_resume(&state, resume_after) {
            ResumePlan::Snapshot { resume_unavailable } => {
                self.last = state.sequence;
                self.tx
                    .send(Ok(poll_response(&state.update(), true, resume_unavailable)))
                    .await
                    .is_ok()
            }
            ResumePlan::FromLog { after } => {
                self.last = after;
                self.catch_up_waiting().await
            }
            ResumePlan::Live { after } => {
                self.last = after;
                true
            }
        };
        if !started {
            return;
        }
        loop {
            let received = tokio::select! {
                _ = self.tx.closed() => return,
                r = live.recv() => r,
            };
            let keep_going = match received {
                Ok(p) if p.update.poll_id == self.poll_id => {
                    if p.update.sequence <= self.last {
                        true
                    } else if p.update.sequence == self.last + 1 {
                        self.offer(poll_response(&p.update, false, false), p.update.sequence)
                            .await
                    } else {
                        self.catch_up_live().await
                    }
                }
                Ok(_) => true,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(poll_id = %self.poll_id, missed, "watcher lagged the hub; catching up from the log");
                    self.catch_up_live().await
                }
                Err(RecvError::Closed) => false,
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Sends one live update; on a full buffer ends the stream with
    /// RESOURCE_EXHAUSTED naming the last sequence the client will have.
    async fn offer(&mut self, response: pb::WatchPollResponse, sequence: u64) -> bool {
        match offer(&self.tx, response) {
            Offer::Sent => {
                self.last = sequence;
                true
            }
            Offer::Full => {
                tracing::info!(poll_id = %self.poll_id, last = self.last, "watcher too slow; ending its stream");
                let _ = self.tx.send(Err(WatchError::TooSlowPoll(self.last))).await;
                false
            }
            Offer::Gone => false,
        }
    }

    /// Sends logged updates after `last`, waiting for the client (start of a resume).
    async fn catch_up_waiting(&mut self) -> bool {
        loop {
            let page = match read_log(self.store.as_ref(), &self.poll_id, self.last, LOG_PAGE).await
            {
                Ok(page) => page,
                Err(e) => {
                    let _ = self.tx.send(Err(store_error(e))).await;
                    return false;
                }
            };
            let full = page.len() == LOG_PAGE;
            for update in page {
                if update.sequence <= self.last {
                    continue;
                }
                if self
                    .tx
                    .send(Ok(poll_response(&update, false, false)))
                    .await
                    .is_err()
                {
                    return false;
                }
                self.last = update.sequence;
            }
            if !full {
                return true;
            }
        }
    }

    /// Fills a gap while live: logged updates after `last` without waiting, or a
    /// snapshot when the log no longer reaches back that far.
    async fn catch_up_live(&mut self) -> bool {
        let state = match load_state(self.store.as_ref(), &self.poll_id).await {
            Ok(Some(state)) => state,
            Ok(None) => return true,
            Err(e) => {
                let _ = self.tx.send(Err(store_error(e))).await;
                return false;
            }
        };
        if state.log_first > self.last + 1 {
            return self
                .offer(poll_response(&state.update(), true, true), state.sequence)
                .await;
        }
        loop {
            let page = match read_log(self.store.as_ref(), &self.poll_id, self.last, LOG_PAGE).await
            {
                Ok(page) => page,
                Err(e) => {
                    let _ = self.tx.send(Err(store_error(e))).await;
                    return false;
                }
            };
            let full = page.len() == LOG_PAGE;
            for update in page {
                if update.sequence > self.last
                    && !self
                        .offer(poll_response(&update, false, false), update.sequence)
                        .await
                {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }
}

async fn owner_watch(
    store: Arc<dyn Store>,
    owner: String,
    tx: &mpsc::Sender<Result<pb::WatchMyPollsResponse, WatchError>>,
    mut live: tokio::sync::broadcast::Receiver<Arc<Published>>,
) -> Result<(), WatchError> {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut after = None;
    loop {
        let page = owned_polls(store.as_ref(), &owner, after.clone(), LOG_PAGE)
            .await
            .map_err(store_error)?;
        let full = page.len() == LOG_PAGE;
        for poll_id in page {
            if let Some(state) = load_state(store.as_ref(), &poll_id)
                .await
                .map_err(store_error)?
            {
                last.insert(poll_id.clone(), state.sequence);
                let response = pb::WatchMyPollsResponse {
                    update: Some(to_pb(&state.update())),
                    snapshot: true,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
            }
            after = Some(poll_id);
        }
        if !full {
            break;
        }
    }
    loop {
        let received = tokio::select! {
            _ = tx.closed() => return Ok(()),
            r = live.recv() => r,
        };
        match received {
            Ok(p) if p.owner_id == owner => {
                let seen = last.get(&p.update.poll_id).copied().unwrap_or(0);
                if p.update.sequence <= seen {
                    continue;
                }
                let response = pb::WatchMyPollsResponse {
                    update: Some(to_pb(&p.update)),
                    snapshot: false,
                };
                match offer(tx, response) {
                    Offer::Sent => {
                        last.insert(p.update.poll_id.clone(), p.update.sequence);
                    }
                    Offer::Full => {
                        tracing::info!(owner = %owner, "watcher too slow; ending its stream");
                        return Err(WatchError::TooSlowOwner);
                    }
                    Offer::Gone => return Ok(()),
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return Err(WatchError::TooSlowOwner),
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
