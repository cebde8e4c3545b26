//! The reader library: caches `SELECT` results over tokio-postgres, in
//! memcached (or any [`cm_store::CacheStore`]), kept correct by the
//! invalidator that follows PostgreSQL's logical replication stream.
//!
//! Services wrap their connection pool in a [`CachingPool`] (or one client
//! in a [`CachingClient`]) and read as usual (`query`, `query_one`,
//! `query_opt`, `count`, `query_as`); rows come back as [`CachedRow`]s, read
//! with `get::<T: FromSql>()` exactly like tokio-postgres rows. A read looks
//! the cache up before it takes a connection from the pool (any
//! [`ConnectionSource`]; `deadpool_postgres::Pool` with the `deadpool`
//! feature), so a hit never waits for one, and a miss prepares through the
//! pooled connection's statement cache (a [`CachingClient`] keeps its own),
//! once per connection. Nothing is declared: what a result depends on is
//! discovered from the catalog (`closure.rs`: the names the text mentions,
//! resolved under the session's `search_path`, through views, every `UNION`
//! branch, inheritance children, partitions and SQL function bodies,
//! whatever the planner would prune), its `WHERE` equalities where the
//! catalog proves they name rows of one plain table (predicate and object
//! keys), and its result columns' origins (row object keys and FK
//! parents). What the worker cannot see (tables the publication carries
//! only in part or not at all, unlogged tables, volatile or
//! session-dependent functions) is read through; `docs/correctness.md` has
//! the whole model.
//!
//! * Hit: one multi-get of the result, the epoch, the invalidator's
//!   heartbeat, the schema version and the generations of everything read;
//!   served only if the epoch and every generation equal those the result
//!   was filled under and the heartbeat is younger than `max_staleness`
//!   (`fill.rs`). A moved schema version (DDL) drops the learned statements.
//! * Miss: snapshot the generations, take the fill lease, join the flush
//!   lists known before the query, run it, join the rows' flush lists, store
//!   only if the lease still holds (`fill.rs`, `dependencies.rs`): the
//!   query and three store round trips when one memcached server holds the
//!   fill's keys. Stored results reach the inspection registry from a
//!   background task (`registry.rs`).
//! * One read path for both entry points (`read.rs`): learned statement,
//!   cache plan, lookup, and a connection only for learning, a miss or a
//!   read-through.
//! * Helpers: [`QueryCache::cached`] and [`QueryCache::cached_with`].
//! * Checking: [`inspect::inspect`] re-runs the cached statements (listed
//!   in the inspection registry) after a fence and reports stale results.
//! * Telemetry: every read, pooled or not, has a `cached_read` tracing span
//!   (outcome, fingerprint, tables, time) and moves counters and a latency
//!   histogram through the `metrics` facade ([`telemetry`]), all recorded
//!   where the read ends (`ReadTrace::finish`); [`CachingPool::metrics`] and
//!   [`CachingClient::metrics`] also read the counters as a
//!   [`MetricsSnapshot`], and each read returns its coarse [`Outcome`]. The
//!   application installs the recorder; the reader never does.
//!
//! ```no_run
//! # async fn demo(client: tokio_postgres::Client, store: std::sync::Arc<dyn cm_store::CacheStore>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cm_keys::{KeySpace, SchemaConfig};
//! use cm_reader::{CachingClient, QueryCache, QueryOptions, ReaderOptions};
//!
//! let cache = QueryCache::discover(&client, KeySpace::new("shop")?, store,
//!     &SchemaConfig::default(), ReaderOptions::default()).await?;
//! let client = CachingClient::new(client, Arc::new(cache));
//! let books = client.query("SELECT id, title FROM book WHERE author_id = $1", &[&42i32]).await?;
//! let title: &str = books[0].get("title");
//! let n = client.with(QueryOptions::new().namespace("fr")).count("SELECT * FROM book", &[]).await?;
//! # let _ = (title, n); Ok(()) }
//! ```
//!
//! # What this crate must never do
//!
//! * Serve a result that a committed change could have altered, once the
//!   invalidator has applied that change: everything that can make a result
//!   stale is registered or snapshotted *before* its query runs, and a fill
//!   stores only while its lease holds.
//! * Serve anything while the invalidator's heartbeat is older than
//!   `max_staleness`, or missing.
//! * Cache inside a transaction (its own or one begun as SQL: a fill checks
//!   the session is outside a transaction block before it stores), or cache
//!   anything but a plain `SELECT` (writes are refused with
//!   [`ReaderError::NotASelect`]).
//! * Cache a statement that reads what the invalidator cannot see: a table
//!   outside its publication, an unlogged or foreign table, a sequence or a
//!   catalog, or one calling a function whose result a copy would not
//!   reproduce.
//! * Fail a read because of the cache: cache errors degrade to a database
//!   read and a counter.
//! * Let a missing generation or epoch read as a match.

mod builder;
mod cache;
mod client;
mod closure;
#[cfg(feature = "deadpool")]
mod deadpool;
mod dependencies;
mod entry;
mod error;
mod fill;
pub mod inspect;
mod learned;
mod metrics;
mod options;
mod packed;
mod pool;
mod query;
mod read;
mod registry;
mod row;
mod settings;
mod source;
mod sql;
pub mod telemetry;
mod token;

pub use builder::{BuildError, QueryCacheBuilder, DEFAULT_PREFIX, DEFAULT_SERVER};
pub use cache::{ObjectRef, QueryCache};
pub use client::{CachingClient, PreparedClient};
pub use closure::publication_gap_sql;
pub use error::{ColumnError, ReaderError};
pub use fill::Outcome;
pub use metrics::MetricsSnapshot;
pub use options::{BeforeStoreHook, QueryOptions, ReaderOptions, DEFAULT_PUBLICATION};
pub use pool::CachingPool;
pub use query::CachedQuery;
pub use row::{CachedColumn, CachedRow, ColumnIndex, RawValue};
pub use source::{ConnectionSource, SourceConnection};
pub use telemetry::describe_metrics;
pub use token::{write_token, TokenParseError, WriteToken, WRITE_TOKEN_SQL};
