//! [`CacheStore`]: the operations the reader and the invalidator need from a
//! cache backend, and the values they exchange.

use std::time::Duration;

use async_trait::async_trait;

use cm_keys::KeySpace;

use crate::error::StoreError;
use crate::generation::Generation;

/// A value read from the store, with the CAS token it had when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The item's compare-and-swap token at the time of the read.
    pub cas: u64,
}

/// The right to fill a missing key, won by [`CacheStore::get_with_lease`].
///
/// It is the CAS token of the placeholder the lease created: a fill with
/// [`CacheStore::set_if_lease_valid`] stores only while that placeholder is
/// still there, untouched. A delete (by the invalidator) or an expiry in
/// between voids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    cas: u64,
}

impl Lease {
    /// A lease on the placeholder with this CAS token.
    pub fn new(cas: u64) -> Lease {
        Lease { cas }
    }

    /// The placeholder's CAS token.
    pub fn cas(self) -> u64 {
        self.cas
    }
}

/// A flush list as read by [`CacheStore::read_flush_lists`]: what to delete,
/// and the CAS to clear the list with once that is done
/// ([`CacheStore::clear_flush_lists_if_unchanged`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushListSnapshot {
    /// The distinct members, in first-appended order; empty for a missing
    /// list.
    pub members: Vec<String>,
    /// The list's CAS token at the time of the read; `None` when the list
    /// does not exist (there is then nothing to clear).
    pub cas: Option<u64>,
}

/// Flush lists read by [`CacheStore::read_flush_lists_checked`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedFlushLists {
    /// One snapshot per key, in order, as
    /// [`read_flush_lists`](CacheStore::read_flush_lists) returns them.
    pub lists: Vec<FlushListSnapshot>,
    /// The servers holding some of the lists whose sentinel was missing:
    /// they lost what they held (a restart, a flush) since the sentinels
    /// were last written, so lists read from them may have lost members.
    pub lost_servers: Vec<String>,
}

/// What a lease read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The key holds a value: serve it.
    Hit(Vec<u8>),
    /// The key was missing; this caller created the placeholder and must
    /// fill it ([`CacheStore::set_if_lease_valid`]) or give it back
    /// ([`CacheStore::release_lease`]). Also returned for a stale item whose
    /// refresh this caller won: the stale value is then not returned.
    Won(Lease),
    /// Another caller holds the lease and is filling the key: go to the
    /// source (or wait and retry); do not fill.
    Wait,
    /// The key holds a value marked stale (memcached `X`) while another
    /// caller refreshes it. This crate never marks values stale itself
    /// (invalidation deletes), so only other writers produce this.
    Stale(Vec<u8>),
}

/// A cache backend shared by the reader and the invalidator.
///
/// Keys are `&str` checked by [`crate::validate_key`] before any I/O; values
/// are bytes. Every call is bounded by the store's timeout. Usable as
/// `Arc<dyn CacheStore>`.
///
/// Implementations must never report success for an operation that did not
/// happen (a failed delete is an error, never `Ok`), and must route a key to
/// the same place every other process using the same configuration does.
#[async_trait]
pub trait CacheStore: Send + Sync + std::fmt::Debug {
    /// Reads many keys at once, in one round trip per server (pipelined).
    /// The result has one entry per key, in order; `None` is a miss. A lease
    /// placeholder and a value marked stale read as a miss.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>, StoreError>;

    /// Reads a key; on a miss, creates a placeholder that lives `lease_ttl`
    /// and hands this caller the lease to fill it. Exactly one concurrent
    /// caller wins; the others get [`LeaseOutcome::Wait`] until the value is
    /// stored, the lease is released or the placeholder expires.
    async fn get_with_lease(
        &self,
        key: &str,
        lease_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError>;

    /// Stores `value` for `ttl` only if `lease` still holds: the placeholder
    /// is still there with the lease's CAS. Returns `false` and stores
    /// nothing when it was deleted, expired or overwritten in between; that
    /// is how an invalidation during a fill voids the fill.
    async fn set_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError>;

    /// Gives a lease back without filling it (deletes the placeholder if it
    /// still carries the lease's CAS), so the next reader can win at once.
    async fn release_lease(&self, key: &str, lease: Lease) -> Result<(), StoreError>;

    /// A fill's first step: [`get_with_lease`](Self::get_with_lease) on
    /// `key`, and `key` appended to every flush list in `list_keys`
    /// ([`append_to_flush_lists`](Self::append_to_flush_lists), with
    /// `list_ttl`), every append landing **after** the placeholder exists.
    ///
    /// That order is what makes the appends protect the fill: an
    /// invalidation that reads a list holding `key` and deletes `key`
    /// deletes the placeholder, voiding the lease. An append that landed
    /// before the placeholder could be read, its `key` deleted (nothing
    /// there yet) and the list cleared, leaving the fill that wins the lease
    /// afterwards registered nowhere.
    ///
    /// With [`LeaseOutcome::Won`], every append succeeded. When the lease is
    /// not won, some or all of the appends may have been made anyway; that
    /// is harmless, `key` being exactly what the winner appends. On an
    /// error no lease is held (one won is released first).
    ///
    /// The default takes the lease, then appends if it was won: two round
    /// trips. A backend that runs one connection's commands in order may
    /// send both at once when `key` and every list live on one server.
    async fn lease_and_append(
        &self,
        key: &str,
        lease_ttl: Duration,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        sequential::lease_and_append(self, key, lease_ttl, list_keys, list_ttl).await
    }

    /// A fill's last step: `key` appended to every flush list in
    /// `list_keys` (with `list_ttl`), then
    /// [`set_if_lease_valid`](Self::set_if_lease_valid). The value must never
    /// be visible before every append has landed: an invalidation that read
    /// a list after the store and before the append would leave a value
    /// that no list names.
    ///
    /// `Ok(true)`: appended and stored; `Ok(false)`: appended, and the lease
    /// was lost (nothing stored). An error means the value is not stored:
    /// if an append failed after a pipelined store landed, the value was
    /// deleted again before the call returned (best effort: a failed delete
    /// is not reported apart). The lease may still be held after an error;
    /// release it.
    ///
    /// The default appends, then stores: two round trips. A backend that
    /// runs one connection's commands in order may send both at once when
    /// `key` and every list live on one server.
    async fn append_then_store_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<bool, StoreError> {
        sequential::append_then_store(self, key, value, ttl, lease, list_keys, list_ttl).await
    }

    /// Appends `member` to each flush list in `list_keys`, atomically per
    /// list and pipelined across lists. A missing list is created with `ttl`;
    /// every append also resets the list's TTL to `ttl`, so a list outlives
    /// the members appended to it as long as every caller uses the same
    /// flush-list TTL, at least as long as the longest result TTL.
    async fn append_to_flush_lists(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Appends `member` to one flush list; see
    /// [`append_to_flush_lists`](Self::append_to_flush_lists).
    async fn append_to_flush_list(
        &self,
        list_key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.append_to_flush_lists(&[list_key], member, ttl).await
    }

    /// Appends every one of `members` to one flush list, with the same TTL
    /// rule as [`append_to_flush_lists`](Self::append_to_flush_lists). The
    /// default appends them one by one; memcached appends them all in one
    /// atomic append.
    async fn append_members_to_flush_list(
        &self,
        list_key: &str,
        members: &[&str],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        for member in members {
            self.append_to_flush_list(list_key, member, ttl).await?;
        }
        Ok(())
    }

    /// Reads flush lists without changing them, in one round trip per
    /// server (pipelined). Returns one [`FlushListSnapshot`] per key, in
    /// order: the list's members (without duplicates) and its CAS, or no
    /// members and `cas: None` for a missing list.
    ///
    /// The first half of emptying a list; see
    /// [`clear_flush_lists_if_unchanged`](Self::clear_flush_lists_if_unchanged)
    /// for the whole protocol.
    async fn read_flush_lists(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<FlushListSnapshot>, StoreError>;

    /// Reads flush lists like [`read_flush_lists`](Self::read_flush_lists)
    /// and, in the same round trip and before them on each server, that
    /// server's sentinel under `space`; reports the servers whose sentinel
    /// is missing ([`CheckedFlushLists::lost_servers`]). The invalidator
    /// reads with it, so a change whose lists a restarted server lost is
    /// seen as such (docs/eviction.md).
    ///
    /// The default, for a store that cannot lose part of its data, reads
    /// and reports nothing lost.
    async fn read_flush_lists_checked(
        &self,
        space: &KeySpace,
        list_keys: &[&str],
    ) -> Result<CheckedFlushLists, StoreError> {
        let _ = space;
        Ok(CheckedFlushLists {
            lists: self.read_flush_lists(list_keys).await?,
            lost_servers: Vec::new(),
        })
    }

    /// Writes the sentinel under `space` of every metadata server, once
    /// what a lost server held is invalidated (the epoch bumped): until
    /// then a retry finds the sentinel still missing and invalidates again.
    /// The default does nothing.
    async fn write_sentinels(&self, space: &KeySpace) -> Result<(), StoreError> {
        let _ = space;
        Ok(())
    }

    /// Reads one flush list; see [`read_flush_lists`](Self::read_flush_lists).
    async fn read_flush_list(&self, list_key: &str) -> Result<FlushListSnapshot, StoreError> {
        let mut lists = self.read_flush_lists(&[list_key]).await?;
        Ok(lists.pop().unwrap_or_default())
    }

    /// Deletes each flush list only if its CAS is still the one given (read
    /// by [`read_flush_lists`](Self::read_flush_lists)), pipelined. Returns
    /// one flag per list, in order: `true` when the list was deleted or was
    /// already gone, `false` when it changed since the read (an append) and
    /// was left in place.
    ///
    /// Emptying a list safely takes three steps, in this order:
    ///
    /// 1. read it ([`read_flush_lists`](Self::read_flush_lists));
    /// 2. delete its members ([`delete_many`](Self::delete_many));
    /// 3. clear it with the CAS from step 1 (this call).
    ///
    /// A crash before step 3 leaves the list, with every member, for the
    /// replay to find again; a crash after it loses nothing, because the
    /// members are already gone. On `false` the caller reads again, deletes
    /// the new members and retries; it may also give up and leave the list
    /// in place: its members are only ever deleted again, which is
    /// harmless. Never clear a list whose members have not been deleted.
    async fn clear_flush_lists_if_unchanged(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError>;

    /// Clears one flush list if unchanged; see
    /// [`clear_flush_lists_if_unchanged`](Self::clear_flush_lists_if_unchanged).
    async fn clear_flush_list_if_unchanged(
        &self,
        list_key: &str,
        cas: u64,
    ) -> Result<bool, StoreError> {
        let mut cleared = self
            .clear_flush_lists_if_unchanged(&[(list_key, cas)])
            .await?;
        Ok(cleared.pop().unwrap_or(false))
    }

    /// Deletes many keys, pipelined. A key that is already missing counts as
    /// deleted; any other failure is an error (the caller must retry and
    /// must not acknowledge the change).
    async fn delete_many(&self, keys: &[&str]) -> Result<(), StoreError>;

    /// Returns the generation at `key`, creating it with a random value
    /// (`add`, so concurrent creators agree on one) if it is missing.
    /// Generations never expire on their own, but may be evicted.
    async fn create_generation_if_missing(&self, key: &str) -> Result<Generation, StoreError>;

    /// Bumps the generation at `key` (INCR) and returns the new value. A
    /// missing generation is created with a fresh random value instead:
    /// either way no snapshot taken before the call matches afterwards.
    async fn bump_generation(&self, key: &str) -> Result<Generation, StoreError>;

    /// Writes the invalidator's heartbeat; read it back with
    /// [`get_many`](Self::get_many), in the same round trip as the result.
    async fn write_heartbeat(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError>;
}

/// The two-round-trip forms of the combined fill steps, shared by the
/// trait's defaults and by backends that cannot pipeline a given call.
pub(crate) mod sequential {
    use std::time::Duration;

    use super::{CacheStore, Lease, LeaseOutcome};
    use crate::error::StoreError;

    /// The lease, then, once it is won, the appends; a failed append gives
    /// the lease back.
    pub(crate) async fn lease_and_append<S: CacheStore + ?Sized>(
        store: &S,
        key: &str,
        lease_ttl: Duration,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let outcome = store.get_with_lease(key, lease_ttl).await?;
        if let LeaseOutcome::Won(lease) = outcome {
            if !list_keys.is_empty() {
                if let Err(error) = store.append_to_flush_lists(list_keys, key, list_ttl).await {
                    // The placeholder expires on its own if this fails too.
                    let _ = store.release_lease(key, lease).await;
                    return Err(error);
                }
            }
        }
        Ok(outcome)
    }

    /// The appends, then, once every one has succeeded, the store.
    pub(crate) async fn append_then_store<S: CacheStore + ?Sized>(
        store: &S,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<bool, StoreError> {
        if !list_keys.is_empty() {
            store
                .append_to_flush_lists(list_keys, key, list_ttl)
                .await?;
        }
        store.set_if_lease_valid(key, value, ttl, lease).await
    }
}
