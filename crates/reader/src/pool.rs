//! [`CachingPool`]: cached reads over a connection pool (or any
//! [`ConnectionSource`]) that take a connection only when they reach the
//! database.

use std::sync::Arc;

use postgres_types::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::Row;

use crate::cache::QueryCache;
use crate::error::ReaderError;
use crate::fill::Outcome;
use crate::metrics::MetricsSnapshot;
use crate::options::QueryOptions;
use crate::query::{reads_without_options, CachedQuery};
use crate::row::CachedRow;
use crate::source::ConnectionSource;

/// A connection pool whose `SELECT`s are served from the cache when valid.
///
/// A read looks the cache up first and checks a connection out of the pool
/// only to learn a statement it has not seen, for a miss, or to read
/// through: under load, hits do not wait for connections they would not
/// use. With deadpool (feature `deadpool`) a miss prepares through the
/// pooled connection's statement cache, once per connection.
///
/// ```no_run
/// # #[cfg(feature = "deadpool")]
/// # async fn demo(pool: deadpool_postgres::Pool, cache: std::sync::Arc<cm_reader::QueryCache>)
/// # -> Result<(), cm_reader::ReaderError> {
/// let db = cm_reader::CachingPool::new(pool, cache);
/// let rows = db.query("SELECT id, name FROM addons WHERE author_id = $1", &[&1i32]).await?;
/// # let _ = rows; Ok(()) }
/// ```
///
/// Like a pooled connection, it never caches inside a transaction: open
/// one on a connection from the pool itself.
#[derive(Debug, Clone)]
pub struct CachingPool<P> {
    pool: P,
    cache: Arc<QueryCache>,
}

impl<P: ConnectionSource> CachingPool<P> {
    /// Wraps `pool`; `cache` is shared by every reader of the process.
    pub fn new(pool: P, cache: Arc<QueryCache>) -> CachingPool<P> {
        CachingPool { pool, cache }
    }

    /// The pool, for anything that must not be cached.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The shared cache state.
    pub fn cache(&self) -> &Arc<QueryCache> {
        &self.cache
    }

    /// The shared counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.cache.metrics()
    }

    /// The reads below, with per-query options.
    pub fn with(&self, options: QueryOptions) -> CachedQuery<'_, P> {
        CachedQuery::new(&self.pool, &self.cache, options)
    }

    reads_without_options!();
}
