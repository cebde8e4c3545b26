//! `cm-e2e`: end-to-end tests of the whole system. The crate holds no
//! library code; everything lives in `tests/`:
//!
//! * `tests/randomized.rs`: the randomized test. A schema
//!   with an FK chain (author -> addon -> version, cascading), a composite
//!   primary key (`addon_tag`), a list-partitioned table (`event`, published
//!   by leaf), a view joining two tables and a toasted column
//!   (`author.bio`, STORAGE EXTERNAL); `cm-invalidator setup` and the real
//!   `cm-invalidator run` as a child process; three writer clients at once
//!   (psql processes with COPY, Python with psycopg, tokio-postgres) doing
//!   inserts, updates (FK and primary key changes, moves between predicate
//!   values and partitions), deletes, rare TRUNCATEs, savepoint rollbacks and
//!   rolled-back transactions; six reader tasks caching lists, gets, counts,
//!   joins and the view through `CachingClient`. Then a fence (the worker's
//!   heartbeat passes the WAL position after the last write) and the check:
//!   every read the readers made, through the cache and straight from
//!   PostgreSQL, must be equal. The seed is printed (`CM_E2E_SEED` replays a
//!   run); sizes are `CM_E2E_TRANSACTIONS` (per writer, default 800),
//!   `CM_E2E_READS` (default 24000) and `CM_E2E_READERS` (default 6).
//!   It runs in `scripts/test` at full size (at least 2,000 write
//!   transactions and 20,000 cached reads).
//! * `tests/focused.rs`: the same system, one write at a time, each fenced
//!   and checked; deterministic.
//!
//! The Python writer needs `psycopg` (`scripts/test` installs it with pip);
//! without it the randomized test fails and says so. The `cm-invalidator`
//! binary is `$CM_E2E_INVALIDATOR_BIN`, or built with cargo into the target
//! directory the tests run from.
