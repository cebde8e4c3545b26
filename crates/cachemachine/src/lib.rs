//! cachemachine: a service's PostgreSQL reads cached in memcached, kept
//! correct by an invalidator that follows the database's logical
//! replication stream. This crate is the one import a service needs: it
//! re-exports the reader (`cm-reader`), the key space and schema mapping
//! (`cm-keys`), the stores (`cm-store`), the deadpool integration and the
//! embedded mode, so that versions always agree.
//!
//! ```no_run
//! # #[cfg(feature = "deadpool")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cachemachine::deadpool_postgres::{Config, Runtime};
//! use cachemachine::{tokio_postgres::NoTls, CachingPool, QueryCache};
//!
//! let config = Config { url: Some("postgres://app@127.0.0.1/app".into()), ..Config::default() };
//! let pool = config.create_pool(Some(Runtime::Tokio1), NoTls)?;
//! // Defaults match the invalidator's: prefix `cm`, memcached on 127.0.0.1:11211.
//! let cache = QueryCache::builder().servers(["127.0.0.1:11211"]).build(&pool).await?;
//! let db = CachingPool::new(pool, cache);
//! let (rows, outcome) = db.query_with_outcome("SELECT name FROM addons WHERE author_id = $1", &[&1i32]).await?;
//! println!("{} add-ons ({outcome})", rows.len());
//! # Ok(()) }
//! ```
//!
//! Features: `memcached` (default) re-exports the memcached store's types;
//! `deadpool` makes `deadpool_postgres::Pool` a [`ConnectionSource`] and
//! re-exports `deadpool_postgres`; `embedded` re-exports the embedded mode
//! (the invalidator inside the process, over an in-process store).
//!
//! `examples/addons.rs` is a whole service: axum over a deadpool pool, one
//! log line per request saying whether the cache served it.
//!
//! # What this crate must never do
//!
//! * Hold logic of its own: everything here is a re-export, so the reader's
//!   guarantees (`cm_reader`) are exactly what a user of this crate gets.
//! * Depend on the worker engine except through the `embedded` feature: a
//!   service that reads through memcached does not build the invalidator.

pub use cm_keys::{
    CanonicalValue, ForeignKeyConfig, KeySpace, SchemaConfig, TableConfig, TableName, TablePolicy,
};
pub use cm_reader::{
    describe_metrics, inspect, telemetry, BuildError, CachedColumn, CachedQuery, CachedRow,
    CachingClient, CachingPool, ColumnError, ColumnIndex, ConnectionSource, MetricsSnapshot,
    ObjectRef, Outcome, PreparedClient, QueryCache, QueryCacheBuilder, QueryOptions, RawValue,
    ReaderError, ReaderOptions, SourceConnection, DEFAULT_PREFIX, DEFAULT_PUBLICATION,
    DEFAULT_SERVER,
};
pub use cm_store::{read_heartbeat, CacheStore, MemoryStore, MemoryStoreConfig};
#[cfg(feature = "memcached")]
pub use cm_store::{MemcachedConfig, MemcachedStore};
/// The tokio-postgres this crate is built with (`NoTls`, `Client`, `connect`).
pub use tokio_postgres;

/// deadpool-postgres, whose `Pool` is a [`ConnectionSource`].
#[cfg(feature = "deadpool")]
pub use deadpool_postgres;

/// The embedded mode: the invalidator inside the process, over an
/// in-process store, for one instance of one service (or a demo).
#[cfg(feature = "embedded")]
pub mod embedded {
    pub use cm_embedded::{EmbeddedCache, EmbeddedError, EmbeddedOptions};
}
