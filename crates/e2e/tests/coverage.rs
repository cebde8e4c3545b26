//! Schema coverage with the real `cm-invalidator`: DDL that puts no row in
//! the WAL, partitions created after the worker started, names that come to
//! resolve to something else. Each case caches reads, runs a change from
//! psql with no row write after it, fences (the worker has applied
//! everything committed), and reads again: the cached read must equal the
//! database's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cm_keys::{KeySpace, SchemaConfig};
use cm_reader::{CachedRow, CachingClient, QueryCache, RawValue, ReaderOptions};
use cm_store::{CacheStore, MemcachedConfig, MemcachedStore};
use cm_testkit::TestEnv;
use tokio_postgres::{Client, Row};

use support::connect;
use support::invalidator::{self, Worker};

const SCHEMA: &str = "
CREATE SCHEMA api;
CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL, price int NOT NULL);
CREATE TABLE other_item (id int PRIMARY KEY, name text NOT NULL, price int NOT NULL);
CREATE TABLE gadget (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO item VALUES (1, 'one', 10), (2, 'two', 20);
INSERT INTO other_item VALUES (7, 'seven', 70);
INSERT INTO gadget VALUES (1, 'g');
CREATE VIEW item_view AS SELECT id, name FROM item;
CREATE VIEW item_view_view AS SELECT id, name FROM item_view;
CREATE MATERIALIZED VIEW item_total AS SELECT sum(price) AS total FROM item;
CREATE FUNCTION price_label(p int) RETURNS text IMMUTABLE LANGUAGE sql RETURN 'p' || p;
CREATE TABLE sale (id int, region text, total int, PRIMARY KEY (id, region))
  PARTITION BY LIST (region);
CREATE TABLE sale_eu PARTITION OF sale FOR VALUES IN ('eu');
CREATE TABLE sale_rest PARTITION OF sale DEFAULT;
INSERT INTO sale VALUES (1, 'eu', 100), (2, 'us', 200);
CREATE TABLE sale_asia (id int, region text, total int, PRIMARY KEY (id, region));
INSERT INTO sale_asia VALUES (3, 'asia', 300);
CREATE TABLE extra (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO extra VALUES (8, 'eight');
CREATE VIEW everything AS
  SELECT id, 'item' AS kind, name FROM item
  UNION ALL SELECT id, 'extra' AS kind, name FROM extra;
CREATE TABLE measure (id int NOT NULL, year int NOT NULL, v int NOT NULL);
CREATE TABLE measure_2023 (PRIMARY KEY (id), CHECK (year = 2023)) INHERITS (measure);
CREATE TABLE measure_2024 (PRIMARY KEY (id), CHECK (year = 2024)) INHERITS (measure);
ALTER TABLE measure REPLICA IDENTITY FULL;
ALTER TABLE measure_2023 REPLICA IDENTITY FULL; ALTER TABLE measure_2024 REPLICA IDENTITY FULL;
INSERT INTO measure_2023 VALUES (1, 2023, 10); INSERT INTO measure_2024 VALUES (2, 2024, 20);
";

/// A running worker over a fresh database, and a reader on it.
struct Stack {
    env: TestEnv,
    _dir: tempfile::TempDir,
    _worker: Worker,
    store: Arc<dyn CacheStore>,
    space: KeySpace,
    admin: Client,
    cached: CachingClient<Client>,
}

impl Stack {
    async fn start() -> Stack {
        let env = tokio::task::spawn_blocking(TestEnv::start)
            .await
            .unwrap()
            .unwrap();
        env.pg.psql(SCHEMA).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config: PathBuf = dir.path().join("invalidator.toml");
        let prefix = env.memcached.key_prefix().to_owned();
        std::fs::write(
            &config,
            support::schema::invalidator_toml(
                &env.pg.url(),
                &env.pg.unique_name("cm_cov"),
                env.memcached.addr(),
                &prefix,
            )
            .replace(
                "[schema.tables.\"public.addon\"]\npredicates = [[\"status\"]]\n",
                "",
            ),
        )
        .unwrap();
        let worker = invalidator::set_up_and_run(&config, &dir.path().join("worker.log"))
            .await
            .unwrap();
        let store: Arc<dyn CacheStore> = Arc::new(
            MemcachedStore::connect(MemcachedConfig::new([env.memcached.addr().to_owned()]))
                .await
                .unwrap(),
        );
        let space = KeySpace::new(prefix).unwrap();
        let admin = connect(&env.pg.url()).await;
        let stack_client = connect(&env.pg.url()).await;
        let stack = Stack {
            _dir: dir,
            _worker: worker,
            store: store.clone(),
            space: space.clone(),
            cached: CachingClient::new(
                connect(&env.pg.url()).await,
                Arc::new(
                    QueryCache::discover(
                        &stack_client,
                        space,
                        store,
                        &SchemaConfig::default(),
                        ReaderOptions {
                            publication: Some("cm_pub".into()),
                            ..ReaderOptions::default()
                        },
                    )
                    .await
                    .unwrap(),
                ),
            ),
            admin,
            env,
        };
        stack.fence().await;
        stack
    }

    /// Waits until the worker has applied everything committed so far.
    async fn fence(&self) {
        invalidator::fence(
            &self.admin,
            &self.store,
            &self.space,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }

    fn psql(&self, sql: &str) {
        self.env.pg.psql(sql).unwrap();
    }

    /// Reads `sql` twice through the cache (the second read is a hit when
    /// the statement is cacheable) and returns what it saw.
    async fn cache_read(&self, sql: &str) -> Rendered {
        self.cached_once(sql).await;
        self.cached_once(sql).await
    }

    async fn cached_once(&self, sql: &str) -> Rendered {
        let rows = self.cached.query(sql, &[]).await.unwrap();
        let columns = rows.first().map(|r| r.columns().iter().map(|c| c.name()));
        Rendered::new(columns, cached_raw(&rows))
    }

    /// The same statement, straight from the database, on a session with
    /// the same `search_path` as the cached client's.
    async fn direct_read(&self, sql: &str) -> Rendered {
        let rows = self.cached.client().query(sql, &[]).await.unwrap();
        let columns = rows.first().map(|r| r.columns().iter().map(|c| c.name()));
        Rendered::new(columns, direct_raw(&rows))
    }

    /// Reads `sql` with the text parameter `param` through the cache,
    /// twice, returning the raw rows.
    async fn cached_with(&self, sql: &str, param: &str) -> RawRows {
        let mut rows = Vec::new();
        for _ in 0..2 {
            rows = cached_raw(&self.cached.query(sql, &[&param]).await.unwrap());
        }
        rows
    }

    /// Learns `sql` with `first` (the plan prunes what `second` reads),
    /// caches it for `second`, runs `write`, fences, and checks `second`.
    async fn check_pruned(&self, sql: &str, first: &str, second: &str, write: &str) {
        self.cached_with(sql, first).await;
        let before = self.cached_with(sql, second).await;
        self.psql(write);
        self.fence().await;
        let cached = self.cached_with(sql, second).await;
        let direct = direct_raw(&self.cached.client().query(sql, &[&second]).await.unwrap());
        assert_eq!(cached, direct, "stale after {write:?}: {sql} with {second}");
        assert_ne!(
            cached, before,
            "{write:?} did not change {sql} with {second}"
        );
    }

    /// Caches `reads`, runs `change`, fences, and checks every read.
    async fn check(&self, change: &str, reads: &[&str]) {
        let mut before = Vec::new();
        for sql in reads {
            before.push(self.cache_read(sql).await);
        }
        let hits = self.cached.metrics().hits;
        assert!(hits > 0, "nothing was cached before {change:?}");
        self.psql(change);
        self.fence().await;
        for (sql, old) in reads.iter().zip(before) {
            let cached = self.cached_once(sql).await;
            let direct = self.direct_read(sql).await;
            assert_eq!(cached, direct, "stale after {change:?}: {sql}");
            assert_ne!(cached, old, "the change {change:?} did not change {sql}");
        }
    }
}

/// Rows as raw wire values (`None` for NULL).
type RawRows = Vec<Vec<Option<Vec<u8>>>>;

fn cached_raw(rows: &[CachedRow]) -> RawRows {
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.raw(i).map(<[u8]>::to_vec)).collect())
        .collect()
}

fn direct_raw(rows: &[Row]) -> RawRows {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<RawValue>>(i).map(|v| v.0))
                .collect()
        })
        .collect()
}

/// A result as column names and sorted raw rows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rendered {
    columns: Vec<String>,
    rows: RawRows,
}

impl Rendered {
    fn new<'a>(columns: Option<impl Iterator<Item = &'a str>>, mut rows: RawRows) -> Rendered {
        rows.sort();
        Rendered {
            columns: columns.map_or_else(Vec::new, |c| c.map(str::to_owned).collect()),
            rows,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_ddl_invalidates_without_a_row_write() {
    let s = Stack::start().await;
    s.check(
        "CREATE OR REPLACE VIEW item_view AS SELECT id, upper(name) AS name FROM item",
        &[
            "SELECT id, name FROM item_view",
            "SELECT id, name FROM item_view_view",
        ],
    )
    .await;
    // A function redefined: no row changes, the results it computed do.
    s.check(
        "CREATE OR REPLACE FUNCTION price_label(p int) RETURNS text IMMUTABLE \
         LANGUAGE sql RETURN 'price ' || p",
        &["SELECT id, price_label(price) AS label FROM item WHERE id = 1"],
    )
    .await;
    // A same-type rewrite: the Relation message is identical.
    s.check(
        "ALTER TABLE gadget ALTER COLUMN name TYPE text USING name || '!'",
        &["SELECT id, name FROM gadget WHERE id = 1"],
    )
    .await;
    s.check(
        "ALTER TABLE item ADD COLUMN color text DEFAULT 'red'",
        &["SELECT * FROM item WHERE id = 2"],
    )
    .await;
    s.check(
        "ALTER TABLE item DROP COLUMN color",
        &["SELECT * FROM item WHERE id = 2"],
    )
    .await;
    s.check(
        "ALTER TABLE sale ATTACH PARTITION sale_asia FOR VALUES IN ('asia')",
        &["SELECT id, total FROM sale", "SELECT count(*) FROM sale"],
    )
    .await;
    s.check(
        "ALTER TABLE sale DETACH PARTITION sale_eu",
        &["SELECT id, total FROM sale"],
    )
    .await;
    s.check(
        "ALTER TABLE gadget RENAME TO gadget_old; ALTER TABLE other_item RENAME TO gadget",
        &["SELECT id, name FROM gadget"],
    )
    .await;
    s.check(
        "DROP TABLE gadget; CREATE TABLE gadget AS SELECT 99 AS id, 'remade'::text AS name",
        &["SELECT id, name FROM gadget"],
    )
    .await;
    s.check(
        "ALTER TABLE item RENAME COLUMN name TO title",
        &["SELECT * FROM item WHERE id = 1"],
    )
    .await;
    // Rows that change only by REFRESH: first a write the view does not see.
    s.psql("UPDATE item SET price = price + 1");
    s.check(
        "REFRESH MATERIALIZED VIEW item_total",
        &["SELECT total FROM item_total"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_a_plan_pruned_for_the_first_values_invalidate_with_the_real_worker() {
    let s = Stack::start().await;
    s.check_pruned(
        "SELECT id, name FROM everything WHERE kind = $1 ORDER BY id",
        "item",
        "extra",
        "UPDATE extra SET name = 'changed' WHERE id = 8",
    )
    .await;
    s.check_pruned(
        "SELECT id, v FROM measure WHERE year = $1::text::int",
        "2023",
        "2024",
        "UPDATE measure_2024 SET v = 21",
    )
    .await;
    s.check_pruned(
        "SELECT id, total FROM sale WHERE region = $1",
        "eu",
        "us",
        "UPDATE sale_rest SET total = 201",
    )
    .await;
    // The materialized view changes only by REFRESH, here after a write.
    s.psql("UPDATE item SET price = price + 5");
    s.check_pruned(
        "SELECT total FROM item_total WHERE total > $1::text::int",
        "1000",
        "0",
        "REFRESH MATERIALIZED VIEW item_total",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_created_after_the_worker_started_invalidates_its_root() {
    let s = Stack::start().await;
    s.psql("CREATE TABLE sale_apac PARTITION OF sale FOR VALUES IN ('apac')");
    s.fence().await;
    let sql = "SELECT id, total FROM sale WHERE region = 'apac'";
    s.check("INSERT INTO sale VALUES (9, 'apac', 900)", &[sql])
        .await;
    s.check("UPDATE sale_apac SET total = 901", &[sql]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_created_to_shadow_a_table_on_the_search_path_invalidates_it() {
    let s = Stack::start().await;
    s.cached
        .client()
        .batch_execute("SET search_path = api, public")
        .await
        .unwrap();
    s.check(
        "CREATE VIEW api.item AS SELECT id, name || ' (api)' AS name FROM public.item",
        &["SELECT id, name FROM item WHERE id = 1"],
    )
    .await;
}

/// A publication narrowed after the worker started (here to inserts only)
/// hides later updates from the worker: what readers cached must not be
/// served again, and they read the table through from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_narrowed_to_inserts_makes_its_tables_read_through() {
    let s = Stack::start().await;
    let sql = "SELECT id, name FROM item WHERE id = 1";
    s.cache_read(sql).await;
    s.psql("ALTER PUBLICATION cm_pub SET (publish = 'insert')");
    s.fence().await;
    let before = s.cache_read(sql).await;
    s.psql("UPDATE item SET name = 'renamed' WHERE id = 1");
    s.fence().await;
    let cached = s.cached_once(sql).await;
    assert_eq!(
        cached,
        s.direct_read(sql).await,
        "stale after an unpublished UPDATE"
    );
    assert_ne!(cached, before, "the UPDATE did not change {sql}");
}
