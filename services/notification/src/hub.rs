//! The in-process fan-out: the projector publishes each committed update once,
//! and every watcher of this replica receives it through a bounded broadcast.
//! A receiver that falls behind the broadcast's capacity learns it (`Lagged`)
//! and catches up from the store instead of holding memory.

use crate::domain::Update;
use std::sync::Arc;
use tokio::sync::broadcast;

/// A committed update and the owner of its poll (for WatchMyPolls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub owner_id: String,
    pub update: Update,
}

/// The broadcast of committed updates. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
}

impl Hub {
    /// A hub holding at most `capacity` updates for slow receivers.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// Sends `published` to every current receiver (none is fine).
    pub fn publish(&self, published: Published) {
        let _ = self.tx.send(Arc::new(published));
    }

    /// A receiver of every update published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }
}
