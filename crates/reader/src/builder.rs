//! [`QueryCacheBuilder`]: a [`QueryCache`] from named settings whose
//! defaults match the invalidator's (`config/invalidator.toml`).

use std::sync::Arc;

use cm_keys::{KeySpace, PrefixError, SchemaConfig};
use cm_store::{CacheStore, MemcachedConfig, MemcachedStore, StoreError};

use crate::cache::QueryCache;
use crate::error::ReaderError;
use crate::options::ReaderOptions;
use crate::source::{ConnectionSource, SourceConnection};

/// The memcached server the builder uses unless told otherwise (the
/// invalidator's default `cache.servers`).
pub const DEFAULT_SERVER: &str = "127.0.0.1:11211";

/// The key prefix the builder uses unless told otherwise (the invalidator's
/// default `cache.prefix`).
pub const DEFAULT_PREFIX: &str = "cm";

/// Why [`QueryCacheBuilder::build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The key prefix is not a valid one.
    #[error("key prefix: {0}")]
    Prefix(#[from] PrefixError),
    /// memcached refused the configuration (a metadata server that evicts,
    /// an address that does not resolve).
    #[error("memcached: {0}")]
    Store(#[from] StoreError),
    /// The options do not fit together, the schema could not be read, or
    /// the mapping does not fit it; or no connection could be had.
    #[error(transparent)]
    Reader(#[from] ReaderError),
}

/// Builds the [`QueryCache`] a process shares between its readers; made by
/// [`QueryCache::builder`]. Every setting must match the invalidator's, and
/// every default does match the invalidator's default: prefix `cm`,
/// memcached at `127.0.0.1:11211` for metadata and results, the default
/// (empty) schema mapping, publication `cm_invalidator`.
///
/// ```no_run
/// # async fn demo(client: tokio_postgres::Client) -> Result<(), cm_reader::BuildError> {
/// use cm_reader::{CachingClient, QueryCache};
///
/// let cache = QueryCache::builder()
///     .prefix("shop")
///     .servers(["10.0.0.5:11211"])
///     .result_servers(["10.0.0.6:11211"])
///     .build(&client)
///     .await?;
/// let db = CachingClient::new(client, cache);
/// # let _ = db; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct QueryCacheBuilder {
    prefix: String,
    servers: Vec<String>,
    result_servers: Vec<String>,
    store: Option<Arc<dyn CacheStore>>,
    schema: SchemaConfig,
    options: ReaderOptions,
}

impl Default for QueryCacheBuilder {
    fn default() -> QueryCacheBuilder {
        QueryCacheBuilder {
            prefix: DEFAULT_PREFIX.to_owned(),
            servers: vec![DEFAULT_SERVER.to_owned()],
            result_servers: Vec::new(),
            store: None,
            schema: SchemaConfig::default(),
            options: ReaderOptions::default(),
        }
    }
}

impl QueryCache {
    /// A builder with the invalidator's defaults.
    pub fn builder() -> QueryCacheBuilder {
        QueryCacheBuilder::default()
    }
}

impl QueryCacheBuilder {
    /// The key prefix (the invalidator's `cache.prefix`; default `cm`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> QueryCacheBuilder {
        self.prefix = prefix.into();
        self
    }

    /// The memcached servers for metadata, started with `-M` (the
    /// invalidator's `cache.servers`; default `127.0.0.1:11211`).
    pub fn servers(
        mut self,
        servers: impl IntoIterator<Item = impl Into<String>>,
    ) -> QueryCacheBuilder {
        self.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// The memcached servers for results, which may evict (the
    /// invalidator's `cache.result_servers`; default none: results live on
    /// the metadata servers).
    pub fn result_servers(
        mut self,
        servers: impl IntoIterator<Item = impl Into<String>>,
    ) -> QueryCacheBuilder {
        self.result_servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// A store of your own instead of memcached (the servers are then
    /// ignored); the invalidator must write to the same one.
    pub fn store(mut self, store: Arc<dyn CacheStore>) -> QueryCacheBuilder {
        self.store = Some(store);
        self
    }

    /// The table mapping (the invalidator's `[schema]`; default empty).
    pub fn schema(mut self, schema: SchemaConfig) -> QueryCacheBuilder {
        self.schema = schema;
        self
    }

    /// The invalidator's publication (its `postgres.publication`; default
    /// `cm_invalidator`).
    pub fn publication(mut self, publication: impl Into<String>) -> QueryCacheBuilder {
        self.options.publication = Some(publication.into());
        self
    }

    /// Reader settings (TTLs, `max_staleness`...); replaces any
    /// [`QueryCacheBuilder::publication`] given before.
    pub fn options(mut self, options: ReaderOptions) -> QueryCacheBuilder {
        self.options = options;
        self
    }

    /// Connects the store and reads the schema through a connection from
    /// `source` (a pool, or a client).
    pub async fn build<S: ConnectionSource>(
        self,
        source: &S,
    ) -> Result<Arc<QueryCache>, BuildError> {
        self.options.validate()?;
        let space = KeySpace::new(self.prefix)?;
        let store = match self.store {
            Some(store) => store,
            None => {
                let config =
                    MemcachedConfig::new(self.servers).with_result_servers(self.result_servers);
                Arc::new(MemcachedStore::connect(config).await?)
            }
        };
        let connection = source.get().await?;
        let cache = QueryCache::discover(
            connection.client(),
            space,
            store,
            &self.schema,
            self.options,
        )
        .await?;
        Ok(Arc::new(cache))
    }
}
