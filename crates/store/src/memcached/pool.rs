//! [`Pool`]: one list of memcached servers behind one client, hashed with
//! [`StableRendezvous`]. A [`MemcachedStore`](super::MemcachedStore) has a
//! metadata pool and, optionally, a result pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memcache::exp::{AsyncMetaClient, Op, OpResult, Operation};

use super::config::MemcachedConfig;
use super::errors::map_error;
use super::evictions::EvictionCheck;
use super::router::StableRendezvous;
use crate::error::StoreError;

/// One pool of servers; the store's operations on it live in `items.rs`,
/// `flush_lists.rs` and `generations.rs`.
#[derive(Clone)]
pub(super) struct Pool {
    pub(super) client: AsyncMetaClient,
    pub(super) servers: Arc<[String]>,
    pub(super) config: Arc<MemcachedConfig>,
    /// `Some` for the metadata pool: its servers must not evict.
    pub(super) evictions: Option<Arc<EvictionCheck>>,
    /// Exchanges with memcached so far, shared by both pools of a store and
    /// its clones ([`MemcachedStore::exchanges`](super::MemcachedStore::exchanges)).
    pub(super) exchanges: Arc<AtomicU64>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("servers", &self.servers)
            .field("evictions", &self.evictions)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Resolves the servers' addresses and builds the client. Connections
    /// are opened lazily.
    pub(super) async fn connect(
        servers: &[String],
        config: Arc<MemcachedConfig>,
        evictions: Option<EvictionCheck>,
        exchanges: Arc<AtomicU64>,
    ) -> Result<Pool, StoreError> {
        let timeout = config.timeout;
        let builder = AsyncMetaClient::builder()
            .router(StableRendezvous)
            .connect_timeout(Some(timeout))
            .io_timeout(Some(timeout))
            .max_connections(config.max_connections_per_server);
        let connecting = builder.connect_multiple_async(servers.iter().map(String::as_str));
        let client = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(StoreError::Config {
                    message: format!("servers {servers:?}: {e}"),
                })
            }
            Err(_) => {
                return Err(StoreError::Timeout {
                    operation: "resolving memcached servers",
                    after: timeout,
                })
            }
        };
        Ok(Pool {
            client,
            servers: servers.into(),
            config,
            evictions: evictions.map(Arc::new),
            exchanges,
        })
    }

    /// The server (as configured) that owns `key` in this pool.
    pub(super) fn server_for_key(&self, key: &str) -> &str {
        self.servers
            .get(self.server_index(key))
            .map_or("", String::as_str)
    }

    /// Lets an operation on these keys through once the servers that own
    /// them are known not to evict (metadata pool only).
    pub(super) async fn admit<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), StoreError> {
        match &self.evictions {
            Some(check) => check.admit(keys).await,
            None => Ok(()),
        }
    }

    /// The index in this pool's servers of the server that owns `key`.
    pub(super) fn server_index(&self, key: &str) -> usize {
        StableRendezvous::server_index(key.as_bytes(), &self.servers)
    }

    /// Counts one exchange: a command or a pipelined batch sent to the
    /// servers it spans, concurrently.
    fn exchange(&self) {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
    }

    /// One operation on its server.
    pub(super) async fn run<O: Operation>(
        &self,
        operation: &'static str,
        op: O,
    ) -> Result<O::Output, StoreError> {
        self.exchange();
        self.client
            .run(op)
            .await
            .map_err(|e| map_error(operation, self.config.timeout, e))
    }

    /// Many operations, pipelined per server; the first failure fails the
    /// call (after every server has answered or failed).
    pub(super) async fn run_many<O: Operation>(
        &self,
        operation: &'static str,
        ops: Vec<O>,
    ) -> Result<Vec<O::Output>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.exchange();
        let timeout = self.config.timeout;
        self.client
            .run_many(ops)
            .await
            .map_err(|e| map_error(operation, timeout, e))?
            .into_iter()
            .map(|result| result.map_err(|e| map_error(operation, timeout, e)))
            .collect()
    }

    /// Operations of any kind, pipelined per server; one answer per
    /// operation, in order. Only a batch that could not be sent at all (an
    /// invalid operation) fails as a whole.
    pub(super) async fn run_batch(
        &self,
        operation: &'static str,
        ops: Vec<Op>,
    ) -> Result<Vec<Result<OpResult, memcache::exp::Error>>, StoreError> {
        self.exchange();
        self.client
            .run_batch(ops)
            .await
            .map_err(|e| map_error(operation, self.config.timeout, e))
    }
}
