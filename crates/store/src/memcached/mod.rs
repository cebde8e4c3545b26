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
mod fill;
mod flush_lists;
mod generations;
mod items;
mod pool;
mod router;
mod routing;
mod sentinels;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cm_keys::{Key, KeySpace};

use crate::error::StoreError;
use crate::generation::Generation;
use crate::key::{is_result_key, validate_key, validate_keys, validate_value};
use crate::store::{
    sequential, CacheStore, CheckedFlushLists, FlushListSnapshot, Item, Lease, LeaseOutcome,
};
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
/// | `lease_and_append` | one server holds `q` and every list: `mg <q> v f c N<lease>`, then per list `ms <f> MA N<ttl>` + `ms <f> ME T<ttl>` + `mg <f> T<ttl>`, one batch; otherwise the lease, then `append_to_flush_lists` |
/// | `append_then_store_if_lease_valid` | one server holds `q` and every list: per list `ms <f> MA N<ttl>` + `ms <f> ME T<ttl>` + `mg <f> T<ttl>`, then `ms <q> T<ttl> C<lease cas>`, one batch (`md <q>` if a registration failed); otherwise `append_to_flush_lists`, then the store |
/// | `append_to_flush_lists` | `ms <f> MA N<ttl>` + `mg <f> T<ttl>`; on `NS` (no list, on a memcached without append vivify such as 1.6.18) `ms <f> ME T<ttl>`, then append again |
/// | `append_members_to_flush_list` | as `append_to_flush_lists`, the members' bytes in one append |
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
    /// Shared with both pools: see [`MemcachedStore::exchanges`].
    exchanges: Arc<AtomicU64>,
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
        let exchanges = Arc::new(AtomicU64::new(0));
        let metadata = Pool::connect(
            &config.servers,
            Arc::clone(&config),
            Some(check),
            Arc::clone(&exchanges),
        )
        .await?;
        let results = if config.result_servers.is_empty() {
            None
        } else {
            let servers = &config.result_servers;
            let counter = Arc::clone(&exchanges);
            Some(Pool::connect(servers, Arc::clone(&config), None, counter).await?)
        };
        Ok(MemcachedStore {
            metadata,
            results,
            config,
            exchanges,
        })
    }

    /// How many exchanges this store and its clones have had with
    /// memcached: a command, or a pipelined batch sent to the servers of one
    /// pool at once, counts one (a call spanning both pools counts one per
    /// pool, sent concurrently). With one server, that is the number of
    /// round trips; tests count them (the eviction check at connect is not
    /// counted).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
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
        self.pool_of(key).server_for_key(key)
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

    async fn lease_and_append(
        &self,
        key: &str,
        lease_ttl: Duration,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let call = async {
            validate_key(key)?;
            validate_keys(list_keys)?;
            let Some(pool) = self.one_server_for(key, list_keys) else {
                return sequential::lease_and_append(self, key, lease_ttl, list_keys, list_ttl)
                    .await;
            };
            pool.admit(every_key(key, list_keys)).await?;
            pool.lease_and_append_now(key, lease_ttl, list_keys, list_ttl)
                .await
        };
        self.bounded("lease_and_append", call).await
    }

    async fn append_then_store_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
        list_keys: &[&str],
        list_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let call = async {
            validate_key(key)?;
            validate_keys(list_keys)?;
            validate_value(key, value, self.config.max_value_bytes())?;
            let Some(pool) = self.one_server_for(key, list_keys) else {
                return sequential::append_then_store(
                    self, key, value, ttl, lease, list_keys, list_ttl,
                )
                .await;
            };
            pool.admit(every_key(key, list_keys)).await?;
            pool.append_then_store_now(key, value, ttl, lease, list_keys, list_ttl)
                .await
        };
        self.bounded("append_then_store_if_lease_valid", call).await
    }

    async fn append_members_to_flush_list(
        &self,
        list_key: &str,
        members: &[&str],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let call = async {
            let pool = self.pool_for(list_key).await?;
            pool.append_members_now(list_key, members, ttl).await
        };
        self.bounded("append_members_to_flush_list", call).await
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

    async fn read_flush_lists_checked(
        &self,
        space: &KeySpace,
        list_keys: &[&str],
    ) -> Result<CheckedFlushLists, StoreError> {
        let call = async {
            if let Some(key) = list_keys.iter().find(|k| is_result_key(k)) {
                return Err(StoreError::Config {
                    message: format!("{key:?} is a result key, not a flush list"),
                });
            }
            validate_keys(list_keys)?;
            self.metadata.admit(list_keys.to_vec()).await?;
            self.metadata
                .read_flush_lists_checked_now(space, list_keys)
                .await
        };
        self.bounded("read_flush_lists", call).await
    }

    async fn write_sentinels(&self, space: &KeySpace) -> Result<(), StoreError> {
        let call = async {
            let sentinels = self.metadata.sentinels(space)?;
            let keys: Vec<&str> = sentinels.iter().map(Key::as_str).collect();
            self.metadata.admit(keys).await?;
            self.metadata.write_sentinels_now(&sentinels).await
        };
        self.bounded("write_sentinels", call).await
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

/// `key` and `list_keys`, for one admission check.
fn every_key<'k>(key: &'k str, list_keys: &[&'k str]) -> Vec<&'k str> {
    let mut keys = Vec::with_capacity(1 + list_keys.len());
    keys.push(key);
    keys.extend_from_slice(list_keys);
    keys
}
