//! How the engine reports what it does. The engine knows no metrics
//! system: the application implements [`Observer`] (with Prometheus, the
//! `metrics` facade, or a test counter) and hands it to the worker. Every
//! method has an empty default and is called on the worker's task, so an
//! implementation must be quick and must not block.

use cm_keys::Heartbeat;

use crate::apply::Applied;
use crate::txn::{CommitInfo, Stages};

/// Whether this worker holds its replication slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not streaming: starting, reconnecting, or waiting for a slot that
    /// another worker holds (a hot standby).
    Standby,
    /// Streaming from the slot: this worker is the one invalidating.
    Leader,
}

/// Receives the engine's events.
pub trait Observer: Send + Sync {
    /// A transaction was applied and acknowledged; `applied` counts the
    /// cache work done for it (a group's work is reported with its first
    /// commit).
    fn commit_applied(&self, _commit: &CommitInfo, _applied: Applied) {}

    /// Where an applied and acknowledged transaction spent its lag, stage by
    /// stage; called right after [`Observer::commit_applied`] for it.
    fn commit_stages(&self, _commit: &CommitInfo, _stages: &Stages) {}

    /// A heartbeat was written to the cache: everything committed before it
    /// was emitted is invalidated.
    fn heartbeat_written(&self, _heartbeat: &Heartbeat) {}

    /// The epoch was bumped (or is about to be, with its transaction):
    /// every cached result is invalid.
    fn epoch_bumped(&self) {}

    /// A cache call failed and will be retried.
    fn cache_error(&self) {}

    /// The worker took the slot, or lost or is waiting for it.
    fn role_changed(&self, _role: Role) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
