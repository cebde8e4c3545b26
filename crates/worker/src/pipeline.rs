//! Transactions being applied, in commit order, in groups of consecutive
//! commits ([`CommitGroup`]).
//!
//! Their cache work runs concurrently (deletes and bumps commute and are
//! idempotent), but results are taken in the order the transactions
//! committed, so acknowledgements always cover a prefix of finished
//! transactions. A heartbeat that arrived behind unfinished transactions
//! waits in the same queue and becomes due when everything before it is done.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use cm_keys::Heartbeat;
use cm_pgoutput::Lsn;
use futures::stream::{FuturesOrdered, StreamExt};

use crate::apply::Applied;
use crate::error::WorkerError;
use crate::txn::CommitGroup;

/// Applies one group's invalidations and hands the group back.
pub type ApplyFuture =
    Pin<Box<dyn Future<Output = Result<(Applied, CommitGroup), WorkerError>> + Send>>;

enum Entry {
    Group,
    Heartbeat(Heartbeat, Lsn),
}

/// The in-flight transactions and the heartbeats queued behind them.
#[derive(Default)]
pub struct Pipeline {
    entries: VecDeque<Entry>,
    applying: FuturesOrdered<ApplyFuture>,
}

impl Pipeline {
    /// Groups not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.applying.len()
    }

    /// Starts applying a group of committed transactions.
    pub fn push_group(&mut self, apply: ApplyFuture) {
        self.entries.push_back(Entry::Group);
        self.applying.push_back(apply);
    }

    /// Queues a heartbeat behind the transactions in flight.
    pub fn push_heartbeat(&mut self, heartbeat: Heartbeat, lsn: Lsn) {
        self.entries.push_back(Entry::Heartbeat(heartbeat, lsn));
    }

    /// The oldest group once it is applied, with its result. Pending
    /// forever when nothing is in flight.
    pub async fn next_applied(&mut self) -> Result<(Applied, CommitGroup), WorkerError> {
        let Some(result) = self.applying.next().await else {
            return std::future::pending().await;
        };
        let (applied, group) = result?;
        match self.entries.pop_front() {
            Some(Entry::Group) => Ok((applied, group)),
            // Heartbeats are drained after every group, so the front is
            // always the group whose result this is.
            _ => unreachable_order(),
        }
    }

    /// Heartbeats at the front of the queue: everything before them is done.
    pub fn heartbeats_now_due(&mut self) -> Vec<(Heartbeat, Lsn)> {
        let mut due = Vec::new();
        while let Some(Entry::Heartbeat(..)) = self.entries.front() {
            if let Some(Entry::Heartbeat(heartbeat, lsn)) = self.entries.pop_front() {
                due.push((heartbeat, lsn));
            }
        }
        due
    }
}

fn unreachable_order<T>() -> Result<T, WorkerError> {
    Err(WorkerError::Ack(cm_replication::AckError::Framing(
        "pipeline order lost: a result without its commit",
    )))
}
