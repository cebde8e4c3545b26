//! The two combined steps of a fill, pipelined on one connection when one
//! server holds the result key and every flush list they touch:
//!
//! * `lease_and_append`: `mg <q> v f c N<lease ttl>`, then the
//!   registration of `<q>` in every list;
//! * `append_then_store_if_lease_valid`: the registrations, then
//!   `ms <q> T<ttl> C<lease cas>`.
//!
//! A registration is three commands: `ms <f> MA N<ttl>` (append, creating
//! the list on servers with append vivify), `ms <f> ME T<ttl>` (add: creates
//! the list with the member on servers without it, such as 1.6.18, and is
//! refused when the list exists) and `mg <f> T<ttl>` (the TTL reset, as in
//! `flush_lists.rs`). The member is in the list when the append or the add
//! was applied. Anything else (a list at the item size limit, a list created
//! by someone else between the two, `SERVER_ERROR out of memory`) fails the
//! registration; there is no retry inside a pipelined batch.
//!
//! Why the order inside a batch holds (`memcache` 0.21, `exp` module, read
//! for this): `AsyncMetaClient::run_batch` groups the operations per server
//! in input order (`core::plan`), encodes each server's group into one
//! payload stamped with opaque tokens `O0`, `O1`, ... (`core::Batch`), checks
//! out one connection for that server, writes the whole payload and reads
//! one answer per command, refusing answers whose tokens are not in order
//! (`execute_batch`, `check_batch_order`). A pooled connection that failed
//! is replaced and the batch re-sent only when nothing of it was written
//! (`Failure::redialable`), so a batch never spans two connections.
//! memcached executes the commands of one connection one after the other,
//! in the order received (which is what lets it answer a pipeline in
//! order). So when every key of a batch routes to one server, the server
//! applies the commands in the order they are listed here. Keys on
//! different servers have no such order; the store then runs the steps one
//! after the other (`store::sequential`).

use std::time::Duration;

use memcache::exp::{Error, Get, Op, OpResult, Set, Ttl};

use super::errors::map_error;
use super::items::{lease_get, lease_outcome, lease_set};
use super::pool::Pool;
use super::MemcachedStore;
use crate::error::StoreError;
use crate::flush_list::encode_member;
use crate::store::{Lease, LeaseOutcome};
use crate::ttl::ttl_secs;

/// Commands per registration: append, add, touch.
const REGISTRATION_COMMANDS: usize = 3;

/// One answer of a batch, as the client returns it.
type Answer = Result<OpResult, Error>;

impl MemcachedStore {
    /// The pool whose one server holds `key` and every one of `lists`, if
    /// there is one: then a batch over them runs in order.
    pub(super) fn one_server_for(&self, key: &str, lists: &[&str]) -> Option<&Pool> {
        let pool = self.pool_of(key);
        let server = pool.server_index(key);
        lists
            .iter()
            .all(|list| std::ptr::eq(self.pool_of(list), pool) && pool.server_index(list) == server)
            .then_some(pool)
    }
}

impl Pool {
    /// The lease read, then `key` registered in every list, in one batch on
    /// one server. A won lease whose registrations failed is released.
    pub(super) async fn lease_and_append_now(
        &self,
        key: &str,
        lease_ttl: Duration,
        lists: &[&str],
        list_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let mut ops: Vec<Op> = Vec::with_capacity(1 + REGISTRATION_COMMANDS * lists.len());
        ops.push(lease_get(key, lease_ttl).into());
        ops.extend(registrations(key, lists, list_ttl));
        let mut answers = self.run_batch("lease_and_append", ops).await?;
        if answers.len() != ops_len(lists) + 1 {
            return Err(missing_answers());
        }
        let registrations = answers.split_off(1);
        let outcome = match answers.pop() {
            Some(Ok(OpResult::Get(read))) => lease_outcome(read)?,
            Some(Err(error)) => return Err(self.map("lease_and_append", error)),
            _ => return Err(missing_answers()),
        };
        match (outcome, self.registered(lists, registrations)) {
            (LeaseOutcome::Won(lease), Err(error)) => {
                // The placeholder expires on its own if this fails too.
                let _ = self.release_lease_now(key, lease).await;
                Err(error)
            }
            (outcome, _) => Ok(outcome),
        }
    }

    /// `key` registered in every list, then stored if the lease holds, in
    /// one batch on one server. A store that landed (or may have) while a
    /// registration failed is deleted again.
    pub(super) async fn append_then_store_now(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
        lists: &[&str],
        list_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut ops: Vec<Op> = registrations(key, lists, list_ttl).collect();
        ops.push(lease_set(key, value, ttl, lease).into());
        let operation = "append_then_store_if_lease_valid";
        let mut answers = self.run_batch(operation, ops).await?;
        if answers.len() != ops_len(lists) + 1 {
            return Err(missing_answers());
        }
        let stored = match answers.pop() {
            Some(Ok(OpResult::Mutation(set))) => Ok(set.applied()),
            Some(Err(error)) => Err(self.map(operation, error)),
            _ => Err(missing_answers()),
        };
        match (self.registered(lists, answers), stored) {
            (Ok(()), stored) => stored,
            (Err(error), Ok(false)) => Err(error),
            (Err(error), _) => {
                // Stored (or maybe, the answer lost) without every
                // registration: it must not stay. Deleting a result is
                // always safe; if this fails too, the caller still hears
                // of the failed registration.
                let _ = self.delete_many_now(&[key]).await;
                Err(error)
            }
        }
    }

    /// Whether every list got its member, from the answers to
    /// [`registrations`] (three per list, in order): the first failure.
    fn registered(&self, lists: &[&str], answers: Vec<Answer>) -> Result<(), StoreError> {
        let operation = "append_to_flush_lists";
        let mut answers = answers.into_iter();
        for list in lists {
            let mut next = || match answers.next() {
                Some(Ok(OpResult::Mutation(m))) => Ok(m.applied()),
                // The touch: a miss only means the list is not there (yet).
                Some(Ok(_)) => Ok(false),
                Some(Err(error)) => Err(self.map(operation, error)),
                None => Err(missing_answers()),
            };
            let (appended, added, touched) = (next(), next(), next());
            touched?;
            match (appended, added) {
                (Ok(true), _) | (_, Ok(true)) => {}
                (Err(error), _) | (_, Err(error)) => return Err(error),
                _ => {
                    return Err(StoreError::NotStored {
                        key: (*list).to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn map(&self, operation: &'static str, error: Error) -> StoreError {
        map_error(operation, self.config.timeout, error)
    }
}

/// The commands registering `member` in every list: append, add, touch.
fn registrations<'a>(
    member: &str,
    lists: &'a [&'a str],
    ttl: Duration,
) -> impl Iterator<Item = Op> + 'a {
    let bytes = encode_member(member);
    let secs = ttl_secs(ttl);
    lists
        .iter()
        .flat_map(move |list| -> [Op; REGISTRATION_COMMANDS] {
            [
                Set::new(list, &bytes).append().vivify_ttl(secs).into(),
                Set::new(list, &bytes).add().ttl(Ttl::secs(secs)).into(),
                Get::new(list).without_value().touch(Ttl::secs(secs)).into(),
            ]
        })
}

/// How many commands registering in `lists` takes.
fn ops_len(lists: &[&str]) -> usize {
    REGISTRATION_COMMANDS * lists.len()
}

fn missing_answers() -> StoreError {
    StoreError::Protocol {
        message: "a pipelined batch came back with answers missing".to_string(),
    }
}
