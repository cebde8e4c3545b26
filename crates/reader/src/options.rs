//! Reader-wide settings ([`ReaderOptions`]) and per-query ones
//! ([`QueryOptions`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cm_keys::TableName;
use cm_store::{DEFAULT_ITEM_SIZE_LIMIT, ITEM_OVERHEAD};

use crate::error::ReaderError;
use crate::token::WriteToken;

/// A test hook run on the miss path after the query, just before the
/// post-query registrations and the store (which may go in one batch). See
/// [`ReaderOptions::before_store`].
pub type BeforeStoreHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The publication the invalidator streams by default.
pub const DEFAULT_PUBLICATION: &str = "cm_invalidator";

/// Settings shared by every query of one [`crate::QueryCache`].
#[derive(Clone)]
pub struct ReaderOptions {
    /// TTL of a cached result when the query does not set one (default 5 min).
    pub default_ttl: Duration,
    /// TTL of every flush list this reader appends to. The store resets a
    /// list's TTL on each append, so every process appending to the same
    /// lists must use the same value, and it must be at least the longest
    /// result TTL: a list that expires before its members leaves them
    /// impossible to invalidate. Per-query TTLs above it are capped to it.
    /// Default 1 day.
    pub flush_list_ttl: Duration,
    /// Serve nothing from the cache (and fill nothing) while the
    /// invalidator's heartbeat is older than this, or missing (default 5 s).
    pub max_staleness: Duration,
    /// How long a fill lease (the placeholder on a missing result) lives; a
    /// query slower than this cannot store its result (default 10 s).
    pub lease_ttl: Duration,
    /// How often a caller that finds another caller filling the same result
    /// looks again before reading through (default 5).
    pub lease_wait_attempts: u32,
    /// The pause between those looks (default 20 ms).
    pub lease_wait: Duration,
    /// The largest encoded result stored; bigger ones are served uncached.
    /// Must not exceed what the store accepts (default: memcached's 1 MiB
    /// item limit minus the store's per-item overhead).
    pub max_value_bytes: usize,
    /// How many learned statements (one per statement text and namespace)
    /// are kept in process (default 4096).
    pub statement_cache_capacity: usize,
    /// Record every stored statement result in the inspection registry
    /// (default on), so the consistency checker (`crate::inspect`) can
    /// enumerate what is cached. Costs the fill nothing it waits for: a
    /// stored result's `q:` key (about 40 bytes) is queued for a background
    /// task, which appends what arrived in the last few milliseconds in one
    /// append (so a result shows in the registry a few milliseconds after
    /// its fill; [`crate::QueryCache::flush_inspection_registry`] waits for
    /// the queue). Its failures are ignored, and a fill that finds the queue
    /// full (4096 keys waiting) goes unregistered. The registry is a flush
    /// list per minute of fills (see `KeySpace::registry`) with the
    /// flush-list TTL; a minute that overflows memcached's item size stops
    /// recording for the rest of that minute, so the checker sees a
    /// bounded, possibly partial list.
    pub inspection_registry: bool,
    /// The invalidator's publication (default `cm_invalidator`, the
    /// invalidator's default). A statement reading a table outside it is
    /// read through: the worker never sees that table's changes. `None`
    /// skips the check, for setups where every table is published and the
    /// reader's role cannot read `pg_publication_tables`.
    pub publication: Option<String>,
    /// How long a read given a write token ([`QueryOptions::after`]) waits
    /// for the invalidator to apply it before reading from the database
    /// (default 1 s; per query: [`QueryOptions::token_wait`]).
    pub token_wait: Duration,
    /// Test hook, run after a miss's query and before its row registrations
    /// and store; `None` in production. Lets a test invalidate in that
    /// window (the stale-set race).
    pub before_store: Option<BeforeStoreHook>,
}

impl fmt::Debug for ReaderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderOptions")
            .field("default_ttl", &self.default_ttl)
            .field("flush_list_ttl", &self.flush_list_ttl)
            .field("max_staleness", &self.max_staleness)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_wait_attempts", &self.lease_wait_attempts)
            .field("lease_wait", &self.lease_wait)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("inspection_registry", &self.inspection_registry)
            .field("publication", &self.publication)
            .field("token_wait", &self.token_wait)
            .field("before_store", &self.before_store.is_some())
            .finish()
    }
}

impl Default for ReaderOptions {
    fn default() -> ReaderOptions {
        ReaderOptions {
            default_ttl: Duration::from_secs(300),
            flush_list_ttl: Duration::from_secs(24 * 60 * 60),
            max_staleness: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(10),
            lease_wait_attempts: 5,
            lease_wait: Duration::from_millis(20),
            max_value_bytes: DEFAULT_ITEM_SIZE_LIMIT - ITEM_OVERHEAD,
            statement_cache_capacity: 4096,
            inspection_registry: true,
            publication: Some(DEFAULT_PUBLICATION.to_owned()),
            token_wait: Duration::from_secs(1),
            before_store: None,
        }
    }
}

impl ReaderOptions {
    /// Checks that the settings fit together.
    pub fn validate(&self) -> Result<(), ReaderError> {
        if self.default_ttl > self.flush_list_ttl {
            return Err(ReaderError::Config(format!(
                "default_ttl {:?} exceeds flush_list_ttl {:?}: results would outlive the \
                 flush lists that invalidate them",
                self.default_ttl, self.flush_list_ttl
            )));
        }
        if self.lease_ttl.is_zero() {
            return Err(ReaderError::Config("lease_ttl is zero".into()));
        }
        Ok(())
    }

    /// The TTL a result is stored with: the query's or the default, capped
    /// to the flush-list TTL.
    pub(crate) fn result_ttl(&self, query: &QueryOptions) -> Duration {
        query
            .ttl
            .unwrap_or(self.default_ttl)
            .min(self.flush_list_ttl)
    }
}

/// Options for one query; build with the chained setters.
///
/// ```
/// use std::time::Duration;
/// use cm_keys::TableName;
/// use cm_reader::QueryOptions;
///
/// let options = QueryOptions::new()
///     .ttl(Duration::from_secs(60))
///     .namespace("tenant-42")
///     .depends_on(TableName::new("public", "price_list"));
/// assert!(!options.is_no_cache());
/// ```
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) no_cache: bool,
    pub(crate) namespace: String,
    pub(crate) extra_tables: Vec<TableName>,
    pub(crate) after: Option<WriteToken>,
    pub(crate) token_wait: Option<Duration>,
}

impl QueryOptions {
    /// The defaults: reader's TTL, cached, no namespace, no extra tables.
    pub fn new() -> QueryOptions {
        QueryOptions::default()
    }

    /// Keep the result this long (capped to the flush-list TTL).
    pub fn ttl(mut self, ttl: Duration) -> QueryOptions {
        self.ttl = Some(ttl);
        self
    }

    /// Read straight from the database; neither read nor fill the cache.
    pub fn no_cache(mut self) -> QueryOptions {
        self.no_cache = true;
        self
    }

    /// Whether [`QueryOptions::no_cache`] was set.
    pub fn is_no_cache(&self) -> bool {
        self.no_cache
    }

    /// Keep this result apart from the same query under another namespace
    /// (a tenant, a locale: whatever the statement text does not show but
    /// the result depends on). Session state that changes what a statement
    /// reads or returns must be named here, because connections share the
    /// cache: `search_path` (which tables the names mean), the role under
    /// row-level security, `TimeZone` and `DateStyle` for text conversions.
    pub fn namespace(mut self, namespace: impl Into<String>) -> QueryOptions {
        self.namespace = namespace.into();
        self
    }

    /// Read-your-writes: serve this read from the cache only once the
    /// invalidator has applied everything up to `token` (a write's commit,
    /// [`crate::write_token`]); until then wait, up to
    /// [`QueryOptions::token_wait`], then read from the database. A later
    /// token replaces an earlier one. See `docs/freshness.md`.
    pub fn after(mut self, token: WriteToken) -> QueryOptions {
        self.after = Some(token.max(self.after));
        self
    }

    /// The token set by [`QueryOptions::after`], if any.
    pub fn token(&self) -> Option<WriteToken> {
        self.after
    }

    /// How long this read waits for its token to be applied (default
    /// [`ReaderOptions::token_wait`]).
    pub fn token_wait(mut self, wait: Duration) -> QueryOptions {
        self.token_wait = Some(wait);
        self
    }

    /// Also depend on `table` as a whole: for tables the catalog lookup of
    /// what a statement reads cannot show, e.g. those a function reads. A table outside the schema model makes
    /// the query read through (nothing would invalidate it).
    pub fn depends_on(mut self, table: TableName) -> QueryOptions {
        self.extra_tables.push(table);
        self
    }
}
