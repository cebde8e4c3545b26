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
//! * Take: `mg <list> v c` then `md <list> C<cas>`. A concurrent append
//!   changes the CAS, the delete answers `EX` and the list is read again, so
//!   an append is either in what we return or still in the list. `NF` (someone
//!   else removed it after our read) still returns what we read: deleting
//!   those members twice is harmless, skipping them is not. A list that keeps
//!   changing through every try is returned as read but left in place rather
//!   than failing the call: under a steady stream of appends the CAS loop
//!   alone would starve (measured: 16 tasks appending to one list beat 32
//!   tries), and the invalidator would stall on one hot list.

use std::time::Duration;

use memcache::exp::{Delete, Get, GetStatus, Meta, MutationStatus, Op, OpResult, Set, Ttl};

use super::errors::map_error;
use super::MemcachedStore;
use crate::error::StoreError;
use crate::flush_list::{decode_members, encode_member};
use crate::key::{validate_key, validate_keys};
use crate::ttl::ttl_secs;

impl MemcachedStore {
    pub(super) async fn append_to_flush_lists_now(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_keys(list_keys)?;
        validate_key(member)?;
        if list_keys.is_empty() {
            return Ok(());
        }
        let secs = ttl_secs(ttl);
        let bytes = encode_member(member);
        let append = |list: &str| Set::new(list, &bytes).append().vivify_ttl(secs);
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
        let results = self.client.run_batch(ops).await.map_err(map)?;
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
                .map(|&i| Set::new(list_keys[i], &bytes).add().ttl(Ttl::secs(secs)))
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

    pub(super) async fn take_flush_lists_now(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<Vec<String>>, StoreError> {
        validate_keys(list_keys)?;
        let mut taken: Vec<Vec<String>> = vec![Vec::new(); list_keys.len()];
        let mut pending: Vec<usize> = (0..list_keys.len()).collect();
        for _ in 0..self.config.max_cas_attempts {
            if pending.is_empty() {
                break;
            }
            let reads = pending
                .iter()
                .map(|&i| Get::new(list_keys[i]).meta(Meta::NONE.cas()))
                .collect();
            let reads = self.run_many("take_flush_lists", reads).await?;
            // (index, cas) of every list that exists; what it holds is
            // returned whatever the delete below answers.
            let mut found = Vec::new();
            for (&i, read) in pending.iter().zip(reads) {
                if let (GetStatus::Hit, Some(value), Some(cas)) =
                    (read.status, read.value, read.item.cas)
                {
                    merge(&mut taken[i], decode_members(&value));
                    found.push((i, cas));
                }
            }
            let deletes = found
                .iter()
                .map(|&(i, cas)| Delete::new(list_keys[i]).compare_cas(cas))
                .collect();
            let deletes = self.run_many("take_flush_lists", deletes).await?;
            pending = found
                .into_iter()
                .zip(deletes)
                .filter(|(_, deleted)| deleted.status == MutationStatus::CasMismatch)
                .map(|((i, _), _)| i)
                .collect();
        }
        // Lists still in `pending` kept changing under every try: they are
        // left in place (never deleted unread), and what was read is
        // returned, so a hot list cannot starve the invalidator. Their
        // members come back in a later take; deleting them twice is harmless.
        Ok(taken)
    }
}

/// Adds the members not yet in `into`, keeping first-seen order.
fn merge(into: &mut Vec<String>, members: Vec<String>) {
    if into.is_empty() {
        *into = members;
        return;
    }
    let known: std::collections::HashSet<String> = into.iter().cloned().collect();
    into.extend(members.into_iter().filter(|m| !known.contains(m)));
}
