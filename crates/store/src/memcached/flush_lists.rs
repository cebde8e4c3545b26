//! Flush lists on memcached.
//!
//! * Append: `ms <list> <len> MA N<ttl>` appends `"<member> "` atomically,
//!   so there is no read-modify-write and no lost link. `N` creates a missing
//!   list on servers with append vivify; older ones (1.6.18, tested here,
//!   which Debian 12 ships) ignore it and answer `NS`, and the list is
//!   then created with `ms <list> <len> ME T<ttl>` (add), going back to the
//!   append if another process created it first. The append is pipelined
//!   with `mg <list> f T<ttl>`, which resets the list's TTL (memcached
//!   ignores `T` on an append), so a list lives at least as long as its
//!   newest member.
//! * Read: `mg <list> v c` for every list, pipelined: the members and the
//!   CAS, nothing changed.
//! * Clear: `md <list> C<cas>` for every list, pipelined, with the CAS of
//!   the read. `HD` (deleted) and `NF` (already gone: expired, evicted or
//!   cleared by someone else) are `true`; `EX` means an append (or any other
//!   write) changed the list since the read, and it is left in place:
//!   `false`, the caller reads again. The caller deletes the members between
//!   the two, so a crash in between leaves the list to be read again. There
//!   is no retry loop here: under a steady stream of appends a CAS loop
//!   would starve (measured: 16 tasks appending to one list beat 32 tries),
//!   and the caller decides whether to retry or leave a hot list in place.

use std::time::Duration;

use memcache::exp::{
    Delete, Get, GetResult, GetStatus, Meta, MutationStatus, Op, OpResult, Set, Ttl,
};

use super::errors::map_error;
use super::pool::Pool;
use crate::error::StoreError;
use crate::flush_list::{decode_members, encode_member};
use crate::key::{validate_key, validate_keys};
use crate::store::FlushListSnapshot;
use crate::ttl::ttl_secs;

impl Pool {
    pub(super) async fn append_to_flush_lists_now(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_keys(list_keys)?;
        validate_key(member)?;
        self.append_payload(list_keys, &encode_member(member), ttl)
            .await
    }

    /// Every one of `members` appended to `list_key` in one atomic append
    /// (their encodings back to back, as many appends would leave them).
    pub(super) async fn append_members_now(
        &self,
        list_key: &str,
        members: &[&str],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_key(list_key)?;
        validate_keys(members)?;
        if members.is_empty() {
            return Ok(());
        }
        let payload: Vec<u8> = members.iter().flat_map(|m| encode_member(m)).collect();
        self.append_payload(&[list_key], &payload, ttl).await
    }

    /// Appends `bytes` (encoded members) to every list, creating missing
    /// ones; see the module docs.
    async fn append_payload(
        &self,
        list_keys: &[&str],
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if list_keys.is_empty() {
            return Ok(());
        }
        let secs = ttl_secs(ttl);
        let append = |list: &str| Set::new(list, bytes).append().vivify_ttl(secs);
        let ops: Vec<Op> = list_keys
            .iter()
            .flat_map(|list| {
                [
                    append(list).into(),
                    Get::new(list).without_value().touch(Ttl::secs(secs)).into(),
                ]
            })
            .collect();
        let timeout = self.config.timeout;
        let map = |e| map_error("append_to_flush_lists", timeout, e);
        let results = self.run_batch("append_to_flush_lists", ops).await?;
        // Lists whose append was not stored; every other result is the
        // touch, whose miss only means the list is not there yet.
        let mut not_stored = Vec::new();
        for (index, result) in results.into_iter().enumerate() {
            if let OpResult::Mutation(appended) = result.map_err(map)? {
                if !appended.applied() {
                    not_stored.push(index / 2);
                }
            }
        }
        // Older servers (1.6.18, as Debian 12 ships, verified) ignore `N` on
        // an append and answer `NS` for a missing list. Create it with
        // `add`; if someone else created it first, append to theirs. An
        // append also answers `NS` when the list reached the item size
        // limit; that is what a list still refusing after every try is.
        for _ in 0..self.config.max_cas_attempts {
            if not_stored.is_empty() {
                return Ok(());
            }
            let adds = not_stored
                .iter()
                .map(|&i| Set::new(list_keys[i], bytes).add().ttl(Ttl::secs(secs)))
                .collect();
            let adds = self.run_many("append_to_flush_lists", adds).await?;
            let existing: Vec<usize> = not_stored
                .iter()
                .zip(adds)
                .filter(|(_, added)| !added.applied())
                .map(|(&i, _)| i)
                .collect();
            let appends = existing.iter().map(|&i| append(list_keys[i])).collect();
            let appends = self.run_many("append_to_flush_lists", appends).await?;
            not_stored = existing
                .into_iter()
                .zip(appends)
                .filter(|(_, appended)| !appended.applied())
                .map(|(i, _)| i)
                .collect();
        }
        match not_stored.first() {
            None => Ok(()),
            Some(&i) => Err(StoreError::NotStored {
                key: list_keys[i].to_string(),
            }),
        }
    }

    pub(super) async fn read_flush_lists_now(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<FlushListSnapshot>, StoreError> {
        validate_keys(list_keys)?;
        let reads = list_keys
            .iter()
            .map(|list| Get::new(list).meta(Meta::NONE.cas()))
            .collect();
        let reads = self.run_many("read_flush_lists", reads).await?;
        list_keys
            .iter()
            .zip(reads)
            .map(|(list, read)| list_snapshot(list, read))
            .collect()
    }

    pub(super) async fn clear_flush_lists_if_unchanged_now(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        for &(list, _) in lists {
            validate_key(list)?;
        }
        let deletes = lists
            .iter()
            .map(|&(list, cas)| Delete::new(list).compare_cas(cas))
            .collect();
        let deletes = self
            .run_many("clear_flush_lists_if_unchanged", deletes)
            .await?;
        lists
            .iter()
            .zip(deletes)
            .map(|(&(list, _), deleted)| match deleted.status {
                // Deleted, or already gone: either way nothing is left of
                // what was read.
                MutationStatus::Applied | MutationStatus::NotFound => Ok(true),
                // Changed since the read: left in place, to be read again.
                MutationStatus::CasMismatch => Ok(false),
                other => Err(StoreError::Protocol {
                    message: format!(
                        "compare-and-delete of flush list {list:?} answered {other:?}"
                    ),
                }),
            })
            .collect()
    }
}

/// A list's read (`mg <list> v c`) as a snapshot; a miss is an empty list.
pub(super) fn list_snapshot(list: &str, read: GetResult) -> Result<FlushListSnapshot, StoreError> {
    if read.status == GetStatus::Miss {
        return Ok(FlushListSnapshot::default());
    }
    let cas = read.item.cas.ok_or_else(|| StoreError::Protocol {
        message: format!("read of flush list {list:?} came without its CAS"),
    })?;
    Ok(FlushListSnapshot {
        members: decode_members(read.value.as_deref().unwrap_or_default()),
        cas: Some(cas),
    })
}
