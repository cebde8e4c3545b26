//! Carrying out one transaction's invalidations in the cache, crash-safely:
//!
//! 1. read the flush lists (members and CAS), without clearing them;
//! 2. delete every member (NOT_FOUND is fine);
//! 3. bump the generations;
//! 4. clear each list only if it is unchanged since the read.
//!
//! If the worker dies anywhere in between, the transaction was not
//! acknowledged, PostgreSQL sends it again, and the lists still hold every
//! member: deleting twice is harmless, forgetting is not. A list that keeps
//! changing under us (readers registering) is left in place after a few
//! rounds; its members were deleted, and later ones are deleted again by the
//! next change.

use std::collections::BTreeSet;
use std::time::Duration;

use cm_store::{CacheStore, StoreError};

use crate::txn::TxnInvalidations;

/// How many read/delete/clear rounds a changing list gets.
const CLEAR_ROUNDS: usize = 3;

/// Counts of what one application did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Cached results (and other members) deleted.
    pub deleted: usize,
    /// Generations bumped.
    pub bumped: usize,
}

/// Applies `txn` once; any store error aborts (the caller retries the whole
/// transaction: every step is idempotent).
pub async fn apply_once(
    store: &dyn CacheStore,
    txn: &TxnInvalidations,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    let mut pending: Vec<&str> = txn.flush_lists().iter().map(|k| k.as_str()).collect();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for _ in 0..CLEAR_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let snapshots = store.read_flush_lists(&pending).await?;
        let members: Vec<&str> = snapshots
            .iter()
            .flat_map(|s| s.members.iter().map(String::as_str))
            .filter(|m| !deleted.contains(*m))
            .collect();
        if !members.is_empty() {
            store.delete_many(&members).await?;
            applied.deleted += members.len();
            deleted.extend(members.iter().map(|m| m.to_string()));
        }
        let existing: Vec<(&str, u64)> = pending
            .iter()
            .zip(&snapshots)
            .filter_map(|(key, s)| s.cas.map(|cas| (*key, cas)))
            .collect();
        if existing.is_empty() {
            break;
        }
        let cleared = store.clear_flush_lists_if_unchanged(&existing).await?;
        pending = existing
            .iter()
            .zip(cleared)
            .filter(|(_, ok)| !ok)
            .map(|((key, _), _)| *key)
            .collect();
    }
    for generation in txn.generations() {
        store.bump_generation(generation.as_str()).await?;
        applied.bumped += 1;
    }
    Ok(applied)
}

/// Exponential backoff between retries, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 50 ms, doubles up to `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(50).min(max),
            max,
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}
