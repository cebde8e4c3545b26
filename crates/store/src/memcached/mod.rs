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
//! the stable routing function ([`StableRendezvous`]), the retry loops for
//! flush-list appends and generations, the compare-and-delete that clears a
//! flush list only if unchanged, and one timeout around each whole call.

mod errors;
mod flush_lists;
mod generations;
mod items;
mod router;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use memcache::exp::{AsyncMetaClient, Operation};

use crate::error::StoreError;
use crate::generation::Generation;
use crate::store::{CacheStore, FlushListSnapshot, Item, Lease, LeaseOutcome};
use errors::map_error;
pub use router::{fnv1a64, StableRendezvous};

/// Default bound on every store call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// memcached's default item size limit (`-I 1m`).
pub const DEFAULT_ITEM_SIZE_LIMIT: usize = 1024 * 1024;

/// Room left in an item for its header, CAS and a 250-byte key: memcached
/// counts them against the item size limit, so the largest value is this much
/// smaller than the limit.
pub const ITEM_OVERHEAD: usize = 512;

/// Default number of tries for a compare-and-swap loop.
pub const DEFAULT_MAX_CAS_ATTEMPTS: u32 = 32;

/// How to reach memcached.
#[derive(Debug, Clone)]
pub struct MemcachedConfig {
    /// `host:port` of every server. Every process must list the same
    /// strings (order does not matter): they are what keys are hashed
    /// against.
    pub servers: Vec<String>,
    /// Bound on each store call, and on each connect and exchange inside it.
    pub timeout: Duration,
    /// The servers' item size limit (memcached `-I`); values may be up to
    /// this minus [`ITEM_OVERHEAD`] bytes.
    pub item_size_limit: usize,
    /// Tries for a compare-and-swap loop before giving up with
    /// [`StoreError::Contention`].
    pub max_cas_attempts: u32,
    /// Cap on open connections per server; `None` for no cap.
    pub max_connections_per_server: Option<usize>,
}

impl MemcachedConfig {
    /// The defaults for these servers.
    pub fn new(servers: impl IntoIterator<Item = impl Into<String>>) -> MemcachedConfig {
        MemcachedConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_TIMEOUT,
            item_size_limit: DEFAULT_ITEM_SIZE_LIMIT,
            max_cas_attempts: DEFAULT_MAX_CAS_ATTEMPTS,
            max_connections_per_server: None,
        }
    }

    /// The largest value accepted.
    pub fn max_value_bytes(&self) -> usize {
        self.item_size_limit.saturating_sub(ITEM_OVERHEAD)
    }
}

/// The memcached [`CacheStore`]. Cheap to clone; clones share connections.
///
/// Built on the `memcache` crate's async meta-protocol client, which provides
/// the meta commands and their flags, pipelined per-server batches exchanged
/// concurrently (one round trip in total), connection pools, deadlines and a
/// pluggable router. This type adds the key and value checks, the stable
/// routing ([`StableRendezvous`]), the CAS loops and a timeout per call.
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
    client: AsyncMetaClient,
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
    /// Resolves the servers' addresses and builds the client. Connections
    /// are opened lazily: a down server shows at its first use, as a
    /// [`StoreError::Connection`] or [`StoreError::Timeout`].
    pub async fn connect(config: MemcachedConfig) -> Result<MemcachedStore, StoreError> {
        if config.servers.is_empty() {
            return Err(StoreError::Config {
                message: "no memcached servers configured".to_string(),
            });
        }
        let timeout = config.timeout;
        let builder = AsyncMetaClient::builder()
            .router(StableRendezvous)
            .connect_timeout(Some(timeout))
            .io_timeout(Some(timeout))
            .max_connections(config.max_connections_per_server);
        let connecting = builder.connect_multiple_async(config.servers.iter().map(String::as_str));
        let client = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(StoreError::Config {
                    message: format!("servers {:?}: {e}", config.servers),
                })
            }
            Err(_) => {
                return Err(StoreError::Timeout {
                    operation: "resolving memcached servers",
                    after: timeout,
                })
            }
        };
        Ok(MemcachedStore {
            client,
            config: Arc::new(config),
        })
    }

    /// The configured servers, in configuration order.
    pub fn servers(&self) -> &[String] {
        &self.config.servers
    }

    /// The server (as configured) that owns `key`; see [`StableRendezvous`].
    pub fn server_for_key(&self, key: &str) -> &str {
        let index = StableRendezvous::server_index(key.as_bytes(), &self.config.servers);
        self.config.servers.get(index).map_or("", String::as_str)
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

    /// One operation on its server.
    async fn run<O: Operation>(
        &self,
        operation: &'static str,
        op: O,
    ) -> Result<O::Output, StoreError> {
        self.client
            .run(op)
            .await
            .map_err(|e| map_error(operation, self.config.timeout, e))
    }

    /// Many operations, pipelined per server; the first failure fails the
    /// call (after every server has answered or failed).
    async fn run_many<O: Operation>(
        &self,
        operation: &'static str,
        ops: Vec<O>,
    ) -> Result<Vec<O::Output>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = self.config.timeout;
        self.client
            .run_many(ops)
            .await
            .map_err(|e| map_error(operation, timeout, e))?
            .into_iter()
            .map(|result| result.map_err(|e| map_error(operation, timeout, e)))
            .collect()
    }
}

#[async_trait]
impl CacheStore for MemcachedStore {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>, StoreError> {
        self.bounded("get_many", self.get_many_now(keys)).await
    }

    async fn get_with_lease(
        &self,
        key: &str,
        lease_ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        self.bounded("get_with_lease", self.get_with_lease_now(key, lease_ttl))
            .await
    }

    async fn set_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError> {
        self.bounded(
            "set_if_lease_valid",
            self.set_if_lease_valid_now(key, value, ttl, lease),
        )
        .await
    }

    async fn release_lease(&self, key: &str, lease: Lease) -> Result<(), StoreError> {
        self.bounded("release_lease", self.release_lease_now(key, lease))
            .await
    }

    async fn append_to_flush_lists(
        &self,
        list_keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.bounded(
            "append_to_flush_lists",
            self.append_to_flush_lists_now(list_keys, member, ttl),
        )
        .await
    }

    async fn read_flush_lists(
        &self,
        list_keys: &[&str],
    ) -> Result<Vec<FlushListSnapshot>, StoreError> {
        self.bounded("read_flush_lists", self.read_flush_lists_now(list_keys))
            .await
    }

    async fn clear_flush_lists_if_unchanged(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        self.bounded(
            "clear_flush_lists_if_unchanged",
            self.clear_flush_lists_if_unchanged_now(lists),
        )
        .await
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<(), StoreError> {
        self.bounded("delete_many", self.delete_many_now(keys))
            .await
    }

    async fn read_generations(&self, keys: &[&str]) -> Result<Vec<Option<Generation>>, StoreError> {
        self.bounded("read_generations", self.read_generations_now(keys))
            .await
    }

    async fn create_generation_if_missing(&self, key: &str) -> Result<Generation, StoreError> {
        self.bounded(
            "create_generation_if_missing",
            self.create_generation_if_missing_now(key),
        )
        .await
    }

    async fn bump_generation(&self, key: &str) -> Result<Generation, StoreError> {
        self.bounded("bump_generation", self.bump_generation_now(key))
            .await
    }

    async fn write_heartbeat(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.bounded("write_heartbeat", self.write_heartbeat_now(key, value, ttl))
            .await
    }
}
