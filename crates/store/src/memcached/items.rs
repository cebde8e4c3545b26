//! Plain items on memcached: multi-get, leases, deletes, the heartbeat.
//!
//! How a lease maps onto the meta protocol:
//!
//! * `get_with_lease` sends `mg <key> v f c N<lease_ttl>`. On a miss memcached
//!   creates an empty placeholder living `lease_ttl` seconds and answers with
//!   `W` (won) and the placeholder's CAS: that CAS is the [`Lease`]. Every
//!   later `mg` of the placeholder answers `Z` (a token was already sent):
//!   [`LeaseOutcome::Wait`]. A value marked stale (`X`) goes to exactly one
//!   reader with `W` and to the others with `Z`.
//! * `set_if_lease_valid` sends `ms <key> <len> T<ttl> C<lease cas>`: `HD`
//!   stored; `NF` (the invalidator deleted the placeholder, or it expired) or
//!   `EX` (someone else replaced it) store nothing. This is what closes the
//!   stale-set race (`docs/memcached.md` §1).
//! * `release_lease` sends `md <key> C<lease cas>`.

use std::time::Duration;

use memcache::exp::{
    Delete, Get, GetResult, GetStatus, LeaseState, Meta, MutationStatus, Set, Ttl, ValueState,
};

use super::pool::Pool;
use crate::error::StoreError;
use crate::key::{validate_key, validate_keys, validate_value};
use crate::store::{Item, Lease, LeaseOutcome};
use crate::ttl::ttl_secs;

impl Pool {
    pub(super) async fn get_many_now(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<Item>>, StoreError> {
        validate_keys(keys)?;
        let gets = keys
            .iter()
            .map(|key| Get::new(key).meta(Meta::NONE.cas()))
            .collect();
        let results = self.run_many("get_many", gets).await?;
        results
            .into_iter()
            .map(|result| {
                // A placeholder reads as Pending, a stale value as Stale:
                // neither may be served as a fresh hit.
                if result.status != GetStatus::Hit || result.value_state == ValueState::Stale {
                    return Ok(None);
                }
                let Some(value) = result.value else {
                    return Ok(None);
                };
                let cas = result.item.cas.ok_or_else(|| StoreError::Protocol {
                    message: "a hit without the requested CAS".to_string(),
                })?;
                Ok(Some(Item { value, cas }))
            })
            .collect()
    }

    pub(super) async fn get_with_lease_now(
        &self,
        key: &str,
        lease_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        validate_key(key)?;
        let result = self
            .run("get_with_lease", lease_get(key, lease_ttl))
            .await?;
        lease_outcome(result)
    }

    pub(super) async fn set_if_lease_valid_now(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError> {
        validate_key(key)?;
        validate_value(key, value, self.config.max_value_bytes())?;
        let set = lease_set(key, value, ttl, lease);
        let result = self.run("set_if_lease_valid", set).await?;
        Ok(result.applied())
    }

    pub(super) async fn release_lease_now(
        &self,
        key: &str,
        lease: Lease,
    ) -> Result<(), StoreError> {
        validate_key(key)?;
        // Whatever the answer (deleted, already gone, replaced by a value),
        // the lease is no longer ours.
        self.run("release_lease", Delete::new(key).compare_cas(lease.cas()))
            .await?;
        Ok(())
    }

    pub(super) async fn delete_many_now(&self, keys: &[&str]) -> Result<(), StoreError> {
        validate_keys(keys)?;
        let deletes = keys.iter().map(Delete::new).collect();
        for result in self.run_many("delete_many", deletes).await? {
            match result.status {
                // NOT_FOUND is success (docs/memcached.md §2): the key is gone.
                MutationStatus::Applied | MutationStatus::NotFound => {}
                other => {
                    return Err(StoreError::Protocol {
                        message: format!(
                            "delete of {:?} answered {other:?}",
                            String::from_utf8_lossy(&result.key)
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    pub(super) async fn write_heartbeat_now(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        validate_key(key)?;
        validate_value(key, value, self.config.max_value_bytes())?;
        let set = Set::new(key, value).ttl(Ttl::secs(ttl_secs(ttl)));
        let result = self.run("write_heartbeat", set).await?;
        if !result.applied() {
            return Err(StoreError::Protocol {
                message: format!("plain set of {key:?} answered {:?}", result.status),
            });
        }
        Ok(())
    }
}

/// The lease read: `mg <key> v f c N<lease_ttl>`.
pub(super) fn lease_get(key: &str, lease_ttl: Duration) -> Get {
    Get::new(key).lease_ttl(ttl_secs(lease_ttl))
}

/// What a lease read answered.
pub(super) fn lease_outcome(result: GetResult) -> Result<LeaseOutcome, StoreError> {
    if result.lease_state == LeaseState::Granted {
        let cas = result.item.cas.ok_or_else(|| StoreError::Protocol {
            message: "a won lease without the placeholder's CAS".to_string(),
        })?;
        return Ok(LeaseOutcome::Won(Lease::new(cas)));
    }
    Ok(match (result.value_state, result.status, result.value) {
        (ValueState::Stale, _, Some(value)) => LeaseOutcome::Stale(value),
        (ValueState::Fresh, GetStatus::Hit, Some(value)) => LeaseOutcome::Hit(value),
        // Someone else's placeholder (Z), or a miss that memcached could
        // not vivify (no memory): either way this caller must not fill.
        _ => LeaseOutcome::Wait,
    })
}

/// The fill's store: `ms <key> T<ttl> C<lease cas>`.
pub(super) fn lease_set(key: &str, value: &[u8], ttl: Duration, lease: Lease) -> Set {
    Set::new(key, value)
        .ttl(Ttl::secs(ttl_secs(ttl)))
        .compare_cas(lease.cas())
}
