//! Real PostgreSQL and memcached servers for integration tests.
//!
//! `cm-testkit` gives each test a real PostgreSQL 15+ (`wal_level = logical`,
//! so logical replication works) and a real memcached, isolated from every
//! other test so that tests can run in parallel:
//!
//! * [`TestPostgres`]: a fresh database with a random name (`cmt_<hex>`),
//!   removed again when the value is dropped.
//! * [`TestMemcached`]: a memcached address plus a key prefix of its own.
//! * [`TestEnv`]: both at once.
//! * [`PgCluster`] and [`MemcachedServer`]: throwaway servers that this
//!   process owns, for tests that need to stop, restart or configure the
//!   server itself (e.g. `wal_sender_timeout`, `pg_hba.conf` lines). A
//!   memcached the kit starts never evicts (`-M`), as the cache's metadata
//!   servers must not; [`MemcachedServer::start_evicting`] starts a small
//!   one that does, for results (see `docs/eviction.md`).
//!   [`PgClusterBuilder::tls`] starts a cluster with `ssl = on` and a
//!   certificate for `127.0.0.1` signed by a throwaway CA
//!   ([`PgCluster::tls_ca_file`]).
//! * [`PgReplica`]: a hot-standby streaming replica of a [`TestPostgres`]'s
//!   server (owned or shared) that reads the test's database, and whose
//!   replay a test can pause, resume and wait for, to read from a replica
//!   that lags.
//!
//! ```no_run
//! use cm_testkit::TestEnv;
//!
//! # fn main() -> Result<(), cm_testkit::TestkitError> {
//! let env = TestEnv::start()?;
//! env.pg.psql("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1);")?;
//! assert_eq!(env.pg.psql("SELECT count(*) FROM t")?.trim(), "1");
//! let key = format!("{}:user:1", env.memcached.key_prefix());
//! println!("connect to {} and {}, use key {key}", env.pg.url(), env.memcached.addr());
//! # Ok(())
//! # }
//! ```
//!
//! # Shared or owned servers
//!
//! Starting a server per test costs a second or two, so a test run can start
//! one of each up front (`cm-test-servers --env-file FILE`, which
//! `scripts/test` does) and point the tests at them:
//!
//! * `CM_TEST_PG_URL`: admin URL of a shared PostgreSQL, e.g.
//!   `postgres://postgres@127.0.0.1:5433/postgres`. The role must be allowed
//!   to create databases (and, for replication tests, to replicate; for
//!   [`PgReplica`], be a superuser that `pg_hba.conf` lets in for replication).
//!   [`TestPostgres::start`] then creates its database there instead of
//!   starting a [`PgCluster`].
//! * `CM_TEST_MEMCACHED`: `host:port` of a shared memcached, started with
//!   `-M` (it holds flush lists, which must never be evicted; the cache
//!   store refuses a server that evicts). [`TestMemcached::start`] then
//!   uses it instead of starting its own.
//! * `CM_PG_BIN`: the PostgreSQL bin directory (with `initdb`, `pg_ctl`,
//!   `psql`) to use; by default the highest `/usr/lib/postgresql/*/bin`.
//! * `CM_TEST_MEMCACHED_MB`: memory of a memcached the kit starts (`-m`,
//!   64 MiB by default).
//!
//! Without those variables every test starts its own servers and stops them
//! when it ends, including when it panics. When the tests run as root,
//! PostgreSQL runs as the `postgres` operating-system user via `runuser`.
//!
//! # What this crate must never be
//!
//! A dependency of production code. It starts and kills processes, creates
//! and drops databases, and trusts every local connection: use it only as a
//! `[dev-dependencies]` entry (or from test-only binaries and scripts), never
//! in `[dependencies]` of a crate that ships.

mod cluster;
mod error;
mod memcached;
mod postgres;
mod psql;
mod replica;
mod tls;
mod url;
mod util;

pub use cluster::{PgCluster, PgClusterBuilder, StopMode};
pub use error::TestkitError;
pub use memcached::{
    flush_all as memcached_flush_all, stats as memcached_stats, MemcachedOptions, MemcachedServer,
    TestMemcached, ENV_MEMCACHED, ENV_MEMCACHED_MB,
};
pub use postgres::{TestPostgres, ENV_PG_URL};
pub use replica::PgReplica;
pub use tls::TLS_SERVER_NAME;

/// Environment variable naming the PostgreSQL bin directory to use.
pub const ENV_PG_BIN: &str = util::ENV_PG_BIN;

/// A PostgreSQL database and a memcached for one test.
#[derive(Debug)]
pub struct TestEnv {
    /// The test's database.
    pub pg: TestPostgres,
    /// The test's memcached and key prefix.
    pub memcached: TestMemcached,
}

impl TestEnv {
    /// Starts (or connects to the shared) PostgreSQL and memcached; see
    /// [`TestPostgres::start`] and [`TestMemcached::start`].
    pub fn start() -> Result<TestEnv, TestkitError> {
        Ok(TestEnv {
            memcached: TestMemcached::start()?,
            pg: TestPostgres::start()?,
        })
    }
}
