//! Carrying out one transaction's invalidations in the cache, crash-safely:
//!
//! 0. make sure the progress record says this group is dispatched
//!    ([`DispatchGate`], beside step 1: no extra round trip);
//! 1. read the flush lists (members and CAS), without clearing them, with
//!    the sentinels of the servers that hold them; if a server lost its
//!    data (a restart), its lists lost members no one can find again:
//!    bump the epoch, then write the sentinels anew (docs/eviction.md);
//! 2. delete every member (NOT_FOUND is fine);
//! 3. clear each list only if it is unchanged since the read;
//! 4. bump the generations, then the ones that must follow them (the
//!    schema version after a DDL's generations).
//!
//! If the worker dies anywhere in between, the transaction was not
//! acknowledged, PostgreSQL sends it again, and the lists still hold every
//! member: deleting twice is harmless, forgetting is not. A list that keeps
//! changing under us (readers registering) is left in place after a few
//! rounds; its members were deleted, and later ones are deleted again by the
//! next change.

use std::collections::BTreeSet;

use cm_keys::KeySpace;
use cm_store::{CacheStore, StoreError};

use crate::progress::DispatchGate;
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
    /// Metadata servers found to have lost their data (each costs an
    /// epoch bump).
    pub lost_servers: usize,
}

/// Applies `txn` once; any store error aborts (the caller retries the whole
/// transaction: every step is idempotent). Nothing is deleted or bumped
/// before `gate` opens.
pub async fn apply_once(
    store: &dyn CacheStore,
    space: &KeySpace,
    txn: &TxnInvalidations,
    gate: &DispatchGate,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    let mut pending: Vec<&str> = txn.flush_lists().iter().map(|k| k.as_str()).collect();
    let mut gate = Some(gate);
    for _ in 0..CLEAR_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let first = gate.take();
        let (read, ()) = tokio::join!(
            store.read_flush_lists_checked(space, &pending),
            async move {
                if let Some(gate) = first {
                    gate.wait().await;
                }
            }
        );
        let read = read?;
        if !read.lost_servers.is_empty() {
            invalidate_lost(store, space, &read.lost_servers).await?;
            applied.lost_servers += read.lost_servers.len();
        }
        let snapshots = read.lists;
        // Every member read this round is deleted again before the clear,
        // even one deleted in an earlier round: since that delete a reader
        // may have leased the key afresh, re-registered it (the append that
        // made our clear fail) and stored. Clearing the list without
        // deleting it would drop that live result's only registration, and
        // the next change of the row would never find it.
        let members: BTreeSet<&str> = snapshots
            .iter()
            .flat_map(|s| s.members.iter().map(String::as_str))
            .collect();
        if !members.is_empty() {
            let members: Vec<&str> = members.into_iter().collect();
            store.delete_many(&members).await?;
            applied.deleted += members.len();
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
    if let Some(gate) = gate {
        gate.wait().await;
    }
    // Sequential: a reader that sees a later key moved must see the
    // earlier ones moved too.
    for generation in txn.generations().iter().chain(txn.after_generations()) {
        store.bump_generation(generation.as_str()).await?;
        applied.bumped += 1;
    }
    Ok(applied)
}

/// A metadata server lost its data: the flush lists it held lost their
/// members, and nothing can find the results registered in them. The epoch
/// bump invalidates every result; the sentinels, written after it, mark the
/// servers whole again. In this order a failure in between is retried with
/// the sentinels still missing, so it bumps again rather than never.
async fn invalidate_lost(
    store: &dyn CacheStore,
    space: &KeySpace,
    servers: &[String],
) -> Result<(), StoreError> {
    store.bump_generation(space.epoch().as_str()).await?;
    store.write_sentinels(space).await?;
    tracing::warn!(
        ?servers,
        "memcached metadata server(s) lost their data (restarted or flushed): \
         epoch bumped, every cached result is invalid"
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cm_keys::{Invalidation, KeySpace, TableName};
    use cm_store::testing::{InstrumentedStore, Method};
    use cm_store::{LeaseOutcome, MemoryStore};

    use super::*;

    const Q: &str = "t:q:hot";
    const TTL: Duration = Duration::from_secs(60);

    /// A memory store where, just before the invalidator's first clear, a
    /// reader refills `Q` (its first registration was deleted a moment ago):
    /// it wins a new lease, re-registers in `list` and stores.
    fn refill_before_clear(list: &str) -> InstrumentedStore {
        let store = InstrumentedStore::new(Arc::new(MemoryStore::default()));
        let list = list.to_owned();
        store.before_next(Method::ClearFlushListsIfUnchanged, |inner| async move {
            let LeaseOutcome::Won(lease) = inner.get_with_lease(Q, TTL).await? else {
                panic!("the first delete should have left Q free to lease");
            };
            inner
                .append_to_flush_lists(&[list.as_str()], Q, TTL)
                .await?;
            assert!(inner.set_if_lease_valid(Q, b"fresh", TTL, lease).await?);
            Ok(())
        });
        store
    }

    /// A result re-registered between a round's delete and its clear must
    /// stay findable: either deleted by a later round or left in the list.
    /// Skipping members "already deleted" in an earlier round cleared the
    /// list under a live, re-registered result, which the next change of the
    /// row then missed for good.
    #[tokio::test]
    async fn a_member_registered_again_after_its_delete_is_not_dropped() {
        let space = KeySpace::new("t").unwrap();
        let table = TableName::new("public", "items");
        let list = space.table_changes(&table);
        let store = refill_before_clear(list.as_str());
        // An earlier fill of Q, registered in the list.
        let LeaseOutcome::Won(lease) = store.inner().get_with_lease(Q, TTL).await.unwrap() else {
            panic!("lease");
        };
        store
            .inner()
            .append_to_flush_lists(&[list.as_str()], Q, TTL)
            .await
            .unwrap();
        assert!(store
            .inner()
            .set_if_lease_valid(Q, b"old", TTL, lease)
            .await
            .unwrap());

        let mut txn = TxnInvalidations::new(100);
        txn.add(Invalidation {
            objects: Vec::new(),
            parents: Vec::new(),
            predicates: Vec::new(),
            table_changes: list.clone(),
            table_generation: space.table_generation(&table),
            bump_table_generation: false,
        });
        apply_once(&store, &space, &txn, &DispatchGate::open())
            .await
            .unwrap();

        let q_alive = store.inner().get_many(&[Q]).await.unwrap()[0].is_some();
        let registered = store
            .inner()
            .read_flush_list(list.as_str())
            .await
            .unwrap()
            .members
            .iter()
            .any(|m| m == Q);
        assert!(
            !q_alive || registered,
            "Q holds a value but no flush list names it any more"
        );
    }
}
