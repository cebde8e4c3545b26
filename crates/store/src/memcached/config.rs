//! [`MemcachedConfig`]: the two server pools and the limits of a
//! [`MemcachedStore`](super::MemcachedStore).

use std::time::Duration;

use crate::error::StoreError;

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
///
/// Keys go to one of two pools by their kind ([`cm_keys::KeyKind::of_key`]):
/// results (`q:` keys, and their lease placeholders) to `result_servers`,
/// everything else (flush lists, generations, the heartbeat, the worker
/// state, and any key the scheme did not build) to `servers`. An evicted
/// flush list would silently lose its members' invalidations, so every
/// server in `servers` must refuse writes instead of evicting (memcached
/// `-M`); [`MemcachedStore::connect`](super::MemcachedStore::connect)
/// checks that. Results may be evicted (a miss), so `result_servers` may
/// run without `-M`. With `result_servers` empty, results share `servers`
/// (and are then never evicted either: a full server refuses their fills).
/// `docs/eviction.md` explains the design.
#[derive(Debug, Clone)]
pub struct MemcachedConfig {
    /// `host:port` of every metadata server, each started with `-M`. Every
    /// process must list the same strings (order does not matter): they are
    /// what keys are hashed against.
    pub servers: Vec<String>,
    /// `host:port` of every result server; empty: results go to
    /// [`servers`](Self::servers). Hashed like `servers`, within this list
    /// only; every process must list the same strings here too.
    pub result_servers: Vec<String>,
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
    /// The defaults for these servers, which then hold every key.
    pub fn new(servers: impl IntoIterator<Item = impl Into<String>>) -> MemcachedConfig {
        MemcachedConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            result_servers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            item_size_limit: DEFAULT_ITEM_SIZE_LIMIT,
            max_cas_attempts: DEFAULT_MAX_CAS_ATTEMPTS,
            max_connections_per_server: None,
        }
    }

    /// The same, with results on their own servers.
    pub fn with_result_servers(
        mut self,
        result_servers: impl IntoIterator<Item = impl Into<String>>,
    ) -> MemcachedConfig {
        self.result_servers = result_servers.into_iter().map(Into::into).collect();
        self
    }

    /// The largest value accepted.
    pub fn max_value_bytes(&self) -> usize {
        self.item_size_limit.saturating_sub(ITEM_OVERHEAD)
    }

    /// Refuses an empty metadata list and a server listed in both pools (a
    /// server either may evict or must not).
    pub(super) fn validate(&self) -> Result<(), StoreError> {
        if self.servers.is_empty() {
            return Err(StoreError::Config {
                message: "no memcached servers configured".to_string(),
            });
        }
        if let Some(both) = self
            .result_servers
            .iter()
            .find(|server| self.servers.contains(server))
        {
            return Err(StoreError::Config {
                message: format!(
                    "memcached {both} is listed both as a server and as a result server; \
                     list it in one of them"
                ),
            });
        }
        Ok(())
    }
}
