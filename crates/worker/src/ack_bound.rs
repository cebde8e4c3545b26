//! Keeps the persisted confirmation bound ahead of what the ack gate may
//! confirm.
//!
//! The rule: no flush position reaches PostgreSQL above the bound `B` in
//! the worker state ([`crate::slot_identity`]). The stream starts with a
//! ceiling the session has persisted; whenever the ceiling holds back work
//! that is done (a commit, or a keepalive confirmation on a quiet slot),
//! [`BoundKeeper`] persists the furthest position received as the new `B`,
//! retrying the cache write until it succeeds, and only then raises the
//! ceiling. Acknowledgements wait meanwhile; nothing is confirmed early.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use cm_keys::{Key, WorkerState};
use cm_replication::Acker;
use cm_store::CacheStore;

use crate::error::WorkerError;
use crate::observer::Observer;
use crate::retry::retry_store;
use crate::slot_identity::write_state;

/// Least time between two writes of the bound. Each raise covers
/// everything received, so under load one write per interval is enough;
/// acknowledgements wait at most this long for the bound.
pub const MIN_BOUND_WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// Persists the bound and raises the gate's ceiling, for one session.
pub struct BoundKeeper {
    store: Arc<dyn CacheStore>,
    key: Key,
    state: WorkerState,
    observer: Arc<dyn Observer>,
    max_backoff: Duration,
}

impl BoundKeeper {
    /// A keeper rewriting `state` (already persisted, with its starting
    /// bound) under `key`.
    pub fn new(
        store: Arc<dyn CacheStore>,
        key: Key,
        state: WorkerState,
        observer: Arc<dyn Observer>,
        max_backoff: Duration,
    ) -> BoundKeeper {
        BoundKeeper {
            store,
            key,
            state,
            observer,
            max_backoff,
        }
    }

    /// Runs until the session ends (the future is dropped); returns only
    /// for a cache error no retry can fix.
    pub async fn run(mut self, acker: Acker) -> Result<Infallible, WorkerError> {
        loop {
            let wanted = acker.ceiling_request().await;
            self.state.confirm_bound = Some(wanted.0);
            let (store, key, state) = (self.store.as_ref(), &self.key, &self.state);
            retry_store(
                self.max_backoff,
                self.observer.as_ref(),
                "persist the confirm bound",
                || write_state(store, key, state),
            )
            .await?;
            // Only now may PostgreSQL hear of positions up to `wanted`.
            let flushed = acker.raise_ceiling(wanted);
            tracing::debug!(bound = %wanted, %flushed, "confirm bound raised");
            tokio::time::sleep(MIN_BOUND_WRITE_INTERVAL).await;
        }
    }
}
