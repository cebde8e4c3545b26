//! [`MemcachedStore`]: the [`CacheStore`] over one or many memcached servers,
//! through the `memcache` crate's async meta-protocol client
//! ([`memcache::exp::AsyncMetaClient`]).
//!
//! What the client gives us, used as is: the meta commands (`mg`, `ms`, `md`,
//! `ma`) with lease (`N`, `W`/`Z`/`X`), CAS (`c`, `C`), append-with-vivify
//! (`MA` + `N`) and touch (`T`) flags; pipelined batches grouped per server
//! and exchanged concurrently (one round trip in total); per-server
//! connection pools; connect and I/O deadlines; the [`memcache::exp::Router`]
//! plug point. What this module adds: key and value checks before any I/O,
//! the stable routing function ([`StableRendezvous`]), the split of keys by
//! kind between a metadata pool that must not evict and an optional result
//! pool that may ([`MemcachedConfig`], `docs/eviction.md`), the retry loops for
//! flush-list appends and generations, the compare-and-delete that clears a
//! flush list only if unchanged, and one timeout around each whole call.

mod config;
mod errors;
mod evictions;
mod flush_lists;
mod generations;
mod items;
mod pool;
mod router;
mod routing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::generation::Generation;
use crate::key::validate_value;
use crate::store::{CacheStore, FlushListSnapshot, Item, Lease, LeaseOutcome};
pub use config::{
    MemcachedConfig, DEFAULT_ITEM_SIZE_LIMIT, DEFAULT_MAX_CAS_ATTEMPTS, DEFAULT_TIMEOUT,
    ITEM_OVERHEAD,
};
use evictions::EvictionCheck;
use pool::Pool;
pub use router::{fnv1a64, StableRendezvous};

/// The memcached [`CacheStore`]. Cheap to clone; clones share connections.
///
/// Built on the `memcache` crate's async meta-protocol client, which provides
/// the meta commands and their flags, pipelined per-server batches exchanged
/// concurrently (one round trip in total), connection pools, deadlines and a
/// pluggable router. This type adds the key and value checks, the stable
/// routing ([`StableRendezvous`]), the CAS loops and a timeout per call.
///
/// Keys are routed by kind to one of two pools (see [`MemcachedConfig`]):
/// results to the result servers, everything else to the metadata servers,
/// which must not evict. A call over many keys is split between the pools
/// and runs on both at once, so a reader's hit is still one round trip of
/// wall time. A metadata server that answers a write with
/// `SERVER_ERROR out of memory` (memcached `-M` when full) fails the call
/// with [`StoreError::Server`]: the reader then does not cache, the
/// invalidator retries.
///
/// How each operation maps onto the meta protocol:
///
/// | operation | commands |
/// |---|---|
/// | `get_many` | `mg <k> v f c` for every key, pipelined per server |
/// | `get_with_lease` | `mg <k> v f c N<lease>`: `W` = won (the CAS is the lease), `Z` = wait, `X` = stale |
/// | `set_if_lease_valid` | `ms <k> T<ttl> C<lease cas>`: `HD` stored; `NF`/`EX` (deleted, expired, replaced) store nothing |
/// | `release_lease` | `md <k> C<lease cas>` |
/// | `append_to_flush_lists` | `ms <f> MA N<ttl>` + `mg <f> T<ttl>`; on `NS` (no list, on a memcached without append vivify such as 1.6.18) `ms <f> ME T<ttl>`, then append again |
/// | `read_flush_lists` | `mg <f> v c` pipelined; `EN` → no list (`cas: None`) |
/// | `clear_flush_lists_if_unchanged` | `md <f> C<cas>` pipelined; `HD`/`NF` → `true`, `EX` (changed since the read) → `false` |
/// | `delete_many` | `md <k>` pipelined; `NF` counts as deleted |
/// | `create_generation_if_missing` | `ms <g> ME` (add, no TTL) with a random number; `NS` → `mg <g> v` |
/// | `bump_generation` | `ma <g> v`; `NF` → add a random number; lost that race → `ma` again |
/// | `write_heartbeat` | `ms <k> T<ttl>` |
#[derive(Clone)]
pub struct MemcachedStore {
    metadata: Pool,
    /// `None`: results share the metadata pool.
    results: Option<Pool>,
    config: Arc<MemcachedConfig>,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MemcachedStore {
    /// Checks the configuration, asks every metadata server whether it
    /// evicts, resolves the addresses and builds the clients.
    ///
    /// A metadata server whose `stats settings` reports `evictions on` (or
    /// no eviction setting at all) is refused with
    /// [`StoreError::EvictingServer`]. One that cannot be reached yet is
    /// checked before its first use instead, and until it passes every call
    /// that needs it fails. Connections are otherwise opened lazily: a down
    /// server shows at its first use, as a [`StoreError::Connection`] or
    /// [`StoreError::Timeout`].
    pub async fn connect(config: MemcachedConfig) -> Result<MemcachedStore, StoreError> {
        config.validate()?;
        let config = Arc::new(config);
        let check = EvictionCheck::connect(&config.servers, config.timeout).await?;
        let metadata = Pool::connect(&config.servers, Arc::clone(&config), Some(check)).await?;
        let results = if config.result_servers.is_empty() {
            None
        } else {
            Some(Pool::connect(&config.result_servers, Arc::clone(&config), None).await?)
        };
        Ok(MemcachedStore {
            metadata,
            results,
            config,
        })
    }

    /// The configured metadata servers, in configuration order.
    pub fn servers(&self) -> &[String] {
        &self.config.servers
    }

    /// The configured result servers; empty when results share
    /// [`servers`](Self::servers).
    pub fn result_servers(&self) -> &[String] {
        &self.config.result_servers
    }

    /// The server (as configured) that owns `key`: in the result pool for a
    /// result key when there is one, else in the metadata pool; see
    /// [`StableRendezvous`].
    pub fn server_for_key(&self, key: &str) -> &str {
        match &self.results {
            Some(results) if crate::key::is_result_key(key) => results.server_for_key(key),
            _ => self.metadata.server_for_key(key),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &MemcachedConfig {
        &self.config
    }

    /// Runs one call under the store timeout.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout {
                operation,
                after: self.config.timeout,
            }),
        }
    }
}

#[async_trait]
impl CacheStore for MemcachedStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>, StoreError> {
        let call = self.split(
            keys,
            |pool, keys| async move { pool.get_many_now(&keys).await },
        );
        self.bounded("get_many", call).await
    }

    async fn get_with_lease(
        &self,
        key: &str,
        lease_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let call = async {
            self.pool_for(key)
                .await?
                .get_with_lease_now(key, lease_ttl)
                .await
        };
        self.bounded("get_with_lease", call).await
    }

    async fn set_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError> {
        let call = async {
            validate_value(key, value, self.config.max_value_bytes())?;
            let pool = self.pool_for(key).await?;
            pool.set_if_lease_valid_now(key, value, ttl, lease).await
        };
        self.bounded("set_if_lease_valid", call).await
    }

    async fn release_lease(&self, key: &str, lease: Lease) -> Result<(), StoreError> {
        let call = async {
            self.pool_for(key)
                .await?
                .release_lease_now(key, lease)
                .await
        };
        self.bounded("release_lease", call).await
    }

    async fn append_to_flush_lists(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let call = self.split(list_keys, |pool, lists| async move {
            pool.append_to_flush_lists_now(&lists, member, ttl).await?;
            Ok(vec![(); lists.len()])
        });
        self.bounded("append_to_flush_lists", call).await?;
        Ok(())
    }

    async fn read_flush_lists(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<FlushListSnapshot>, StoreError> {
        let call = self.split(list_keys, |pool, lists| async move {
            pool.read_flush_lists_now(&lists).await
        });
        self.bounded("read_flush_lists", call).await
    }

    async fn clear_flush_lists_if_unchanged(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        let call = self.split(lists, |pool, lists| async move {
            pool.clear_flush_lists_if_unchanged_now(&lists).await
        });
        self.bounded("clear_flush_lists_if_unchanged", call).await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<(), StoreError> {
        let call = self.split(keys, |pool, keys| async move {
            pool.delete_many_now(&keys).await?;
            Ok(vec![(); keys.len()])
        });
        self.bounded("delete_many", call).await?;
        Ok(())
    }

    async fn create_generation_if_missing(&self, key: &str) -> Result<Generation, StoreError> {
        let call = async {
            self.pool_for(key)
                .await?
                .create_generation_if_missing_now(key)
                .await
        };
        self.bounded("create_generation_if_missing", call).await
    }

    async fn bump_generation(&self, key: &str) -> Result<Generation, StoreError> {
        let call = async { self.pool_for(key).await?.bump_generation_now(key).await };
        self.bounded("bump_generation", call).await
    }

    async fn write_heartbeat(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let call = async {
            validate_value(key, value, self.config.max_value_bytes())?;
            let pool = self.pool_for(key).await?;
            pool.write_heartbeat_now(key, value, ttl).await
        };
        self.bounded("write_heartbeat", call).await
    }
}
