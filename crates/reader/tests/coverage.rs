//! Schema coverage: what a statement reads comes from the catalog, not from
//! its text or from one `EXPLAIN` plan. Each test caches a read whose name
//! resolution or parameter values could mislead, writes with psql to the
//! part that would be missed, applies the slot's changes, and reads again:
//! fresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use common::{connect, ints, texts, Harness, MAPPING};
use tokio_postgres::Client;

/// Two schemas on the path, a view shadowing a table by name, a UNION ALL
/// view over two tables, inheritance children excluded by CHECK, a list
/// partitioned table with a default partition.
const SCHEMA: &str = "
CREATE SCHEMA app; CREATE SCHEMA api;
CREATE TABLE app.addons (id int PRIMARY KEY, author_id int NOT NULL, name text NOT NULL);
CREATE TABLE app.themes (id int PRIMARY KEY, kind text NOT NULL, name text NOT NULL);
ALTER TABLE app.addons REPLICA IDENTITY FULL; ALTER TABLE app.themes REPLICA IDENTITY FULL;
CREATE VIEW api.addons AS SELECT author_id AS id, name FROM app.addons;
CREATE VIEW api.everything AS
  SELECT id, 'addon' AS kind, name FROM app.addons
  UNION ALL SELECT id, 'theme' AS kind, name FROM app.themes WHERE kind = 'theme';
INSERT INTO app.addons VALUES (1, 42, 'one'), (2, 7, 'two');
INSERT INTO app.themes VALUES (5, 'theme', 'dark');
CREATE TABLE measure (id int, year int NOT NULL, v int NOT NULL);
CREATE TABLE measure_2023 (PRIMARY KEY (id), CHECK (year = 2023)) INHERITS (measure);
CREATE TABLE measure_2024 (PRIMARY KEY (id), CHECK (year = 2024)) INHERITS (measure);
ALTER TABLE measure REPLICA IDENTITY FULL;
ALTER TABLE measure_2023 REPLICA IDENTITY FULL; ALTER TABLE measure_2024 REPLICA IDENTITY FULL;
INSERT INTO measure_2023 VALUES (1, 2023, 10); INSERT INTO measure_2024 VALUES (2, 2024, 20);
CREATE TABLE sale (id int, region text, total int, PRIMARY KEY (id, region))
  PARTITION BY LIST (region);
CREATE TABLE sale_eu PARTITION OF sale FOR VALUES IN ('eu');
CREATE TABLE sale_rest PARTITION OF sale DEFAULT;
INSERT INTO sale VALUES (1, 'eu', 100), (2, 'us', 200);
";

async fn harness() -> Harness {
    Harness::with(SCHEMA, "", None, ReaderOptions::default()).await
}

async fn on_path(h: &Harness, path: &str) {
    h.client
        .client()
        .batch_execute(&format!("SET search_path = {path}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_shadowing_a_table_on_the_search_path_is_not_keyed_as_the_table() {
    let h = harness().await;
    on_path(&h, "api, app").await;
    // `addons` is api.addons here, whose `id` is app.addons.author_id.
    let sql = "SELECT id, name FROM addons WHERE id = $1";
    let rows = h.client.query(sql, &[&42i32]).await.unwrap();
    assert_eq!(texts(&rows, "name"), ["one"]);
    assert_eq!(h.client.query(sql, &[&42i32]).await.unwrap().len(), 1);
    assert_eq!(h.hits(), 1);
    // Row 1 of the table, which a text-level key would have named 42.
    h.write("UPDATE app.addons SET name = 'renamed' WHERE id = 1")
        .await;
    let rows = h.client.query(sql, &[&42i32]).await.unwrap();
    assert_eq!(texts(&rows, "name"), ["renamed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_branch_pruned_for_the_first_values_still_invalidates() {
    let h = harness().await;
    let sql = "SELECT id, name FROM api.everything WHERE kind = $1 ORDER BY id";
    // The planner, given 'addon', finds the themes branch constant-false
    // and prunes it.
    assert_eq!(h.client.query(sql, &[&"addon"]).await.unwrap().len(), 2);
    assert_eq!(
        texts(&h.client.query(sql, &[&"theme"]).await.unwrap(), "name"),
        ["dark"]
    );
    h.write("UPDATE app.themes SET name = 'light' WHERE id = 5")
        .await;
    assert_eq!(
        texts(&h.client.query(sql, &[&"theme"]).await.unwrap(), "name"),
        ["light"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inheritance_child_excluded_by_check_for_the_first_values_still_invalidates() {
    let h = harness().await;
    let sql = "SELECT id, v FROM measure WHERE year = $1";
    assert_eq!(
        ints(&h.client.query(sql, &[&2023i32]).await.unwrap(), "v"),
        [10]
    );
    assert_eq!(
        ints(&h.client.query(sql, &[&2024i32]).await.unwrap(), "v"),
        [20]
    );
    h.write("UPDATE measure_2024 SET v = 21 WHERE id = 2").await;
    assert_eq!(
        ints(&h.client.query(sql, &[&2024i32]).await.unwrap(), "v"),
        [21]
    );
    // A row added to a child by a write to the parent's child directly.
    h.write("INSERT INTO measure_2023 VALUES (3, 2023, 30)")
        .await;
    assert_eq!(
        ints(&h.client.query(sql, &[&2023i32]).await.unwrap(), "v").len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_partition_pruned_for_the_first_values_still_invalidates() {
    let h = harness().await;
    let sql = "SELECT id, total FROM sale WHERE region = $1";
    assert_eq!(
        ints(&h.client.query(sql, &[&"eu"]).await.unwrap(), "total"),
        [100]
    );
    assert_eq!(
        ints(&h.client.query(sql, &[&"us"]).await.unwrap(), "total"),
        [200]
    );
    h.write("UPDATE sale SET total = 201 WHERE id = 2").await;
    assert_eq!(
        ints(&h.client.query(sql, &[&"us"]).await.unwrap(), "total"),
        [201]
    );
}

const FUNCTIONS: &str = "
CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);
INSERT INTO counter VALUES (1, 0);
CREATE FUNCTION bump() RETURNS int VOLATILE LANGUAGE sql
  AS 'UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n';
CREATE FUNCTION book_count(a int) RETURNS bigint STABLE LANGUAGE sql
  BEGIN ATOMIC SELECT count(*) FROM book WHERE author_id = a; END;
CREATE FUNCTION book_count_pl(a int) RETURNS bigint STABLE LANGUAGE plpgsql
  AS $$ BEGIN RETURN (SELECT count(*) FROM book WHERE author_id = a); END $$;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volatile_function_is_never_served_and_its_write_runs_every_time() {
    let h = harness_with(FUNCTIONS).await;
    for expected in 1..=3 {
        let row = h.client.query_one("SELECT bump() AS n", &[]).await.unwrap();
        assert_eq!(row.get::<i32>("n"), expected);
    }
    assert_eq!(h.hits(), 0);
    assert_eq!(h.client.metrics().stores, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_sql_function_depends_on_the_tables_its_body_reads() {
    let h = harness_with(FUNCTIONS).await;
    let sql = "SELECT id, book_count(id) AS n FROM author WHERE id = $1";
    let count = |rows: Vec<cm_reader::CachedRow>| rows[0].get::<i64>("n");
    assert_eq!(count(h.client.query(sql, &[&1i32]).await.unwrap()), 2);
    assert_eq!(count(h.client.query(sql, &[&1i32]).await.unwrap()), 2);
    assert_eq!(h.hits(), 1);
    h.write("INSERT INTO book VALUES (12, 1, 'A3', 'draft')")
        .await;
    assert_eq!(count(h.client.query(sql, &[&1i32]).await.unwrap()), 3);
    // The same body in PL/pgSQL records no reads: never cached.
    let sql = "SELECT book_count_pl(1) AS n";
    for _ in 0..2 {
        assert_eq!(count(h.client.query(sql, &[]).await.unwrap()), 3);
    }
    assert_eq!(h.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_the_moment_and_of_the_session_are_read_through() {
    let h = harness_with(FUNCTIONS).await;
    for sql in [
        "SELECT pg_backend_pid() AS v",
        "SELECT inet_client_port() AS v",
        "SELECT txid_current_snapshot()::text AS v",
        "SELECT 'now'::timestamptz::text AS v",
        "SELECT now()::text AS v",
        "SELECT current_setting('TimeZone') AS v",
        "SELECT id FROM book TABLESAMPLE BERNOULLI (50)",
    ] {
        for _ in 0..2 {
            h.client.query(sql, &[]).await.unwrap();
        }
    }
    let m = h.client.metrics();
    assert_eq!((m.hits, m.stores), (0, 0), "{m:?}");
}

async fn harness_with(extra: &str) -> Harness {
    let schema = format!("{}{extra}", common::SCHEMA);
    Harness::with(&schema, MAPPING, None, ReaderOptions::default()).await
}

/// A second reader of the same database whose publication is `publication`.
async fn reader_for(h: &Harness, publication: &str) -> CachingClient<Client> {
    let options = ReaderOptions {
        publication: Some(publication.to_owned()),
        ..ReaderOptions::default()
    };
    let cache = QueryCache::new(h.space.clone(), h.store.clone(), h.model.clone(), options);
    CachingClient::new(connect(&h.pg.url()).await, Arc::new(cache.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_outside_the_publication_is_never_served_from_the_cache() {
    let h = common::Harness::start().await;
    h.psql("CREATE PUBLICATION only_author FOR TABLE author");
    let client = reader_for(&h, "only_author").await;
    let book = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";
    let author = "SELECT name FROM author WHERE id = $1";
    for _ in 0..2 {
        client.query(book, &[&1i32]).await.unwrap();
        client.query(author, &[&1i32]).await.unwrap();
    }
    let m = client.metrics();
    assert_eq!((m.hits, m.stores), (1, 1), "{m:?}");
    // A join reaching the unpublished table is read through as a whole.
    let join = "SELECT a.name, b.title FROM author a JOIN book b ON b.author_id = a.id";
    client.query(join, &[]).await.unwrap();
    client.query(join, &[]).await.unwrap();
    assert_eq!(client.metrics().hits, 1);
}

/// A publication can carry a table's changes only in part: a row filter
/// drops the changes of rows outside it, a column list the values keys are
/// derived from, `publish` whole kinds of change. The table is then read
/// through as if it were outside the publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_publication_carries_only_in_part_is_never_served_from_the_cache() {
    let h = common::Harness::start().await;
    h.psql(
        "CREATE PUBLICATION book_filtered FOR TABLE author, book WHERE (status = 'public');
         CREATE PUBLICATION book_columns FOR TABLE author, book (id, author_id, title);
         CREATE PUBLICATION inserts_only FOR TABLE author, book WITH (publish = 'insert');",
    );
    let book = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";
    let author = "SELECT name FROM author WHERE id = $1";
    // Each read twice: the book reads are read through (bypasses), and the
    // author reads too where the publication leaves out whole actions.
    for (publication, bypasses) in [
        ("book_filtered", 2),
        ("book_columns", 2),
        ("inserts_only", 4),
    ] {
        let client = reader_for(&h, publication).await;
        for _ in 0..2 {
            client.query(book, &[&1i32]).await.unwrap();
            client.query(author, &[&1i32]).await.unwrap();
        }
        let m = client.metrics();
        assert_eq!(m.bypasses, bypasses, "{publication}: {m:?}");
        assert_eq!(m.hits + m.misses + m.bypasses, 4, "{publication}: {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_inside_a_transaction_begun_as_sql_is_never_stored() {
    let h = common::Harness::start().await;
    let sql = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";
    let raw = h.client.client();
    raw.batch_execute("BEGIN; UPDATE book SET title = 'dirty' WHERE id = 10")
        .await
        .unwrap();
    let rows = h.client.query(sql, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["dirty", "A2"]);
    raw.batch_execute("ROLLBACK").await.unwrap();
    let m = h.client.metrics();
    assert_eq!((m.stores, m.in_transaction_fills), (0, 1), "{m:?}");
    let other = reader_for(&h, "cm_pub").await;
    let rows = other.query(sql, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["A1", "A2"]);
    // Outside a block, fills are stored again.
    assert_eq!(other.metrics().stores, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_statement_gets_the_database_syntax_error() {
    let h = common::Harness::start().await;
    let error = h.client.query("SELEC id FROM book", &[]).await.unwrap_err();
    let cm_reader::ReaderError::Database(error) = error else {
        panic!("{error:?}");
    };
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR)
    );
}

/// Built-in functions, SQL value functions and system catalogs hidden in a
/// view, a SQL-standard function body or an argument default: PostgreSQL
/// records no dependency on built-ins, so the catalog closure must find
/// them in the stored expression trees.
const HIDDEN: &str = "
CREATE TABLE stamp (id int PRIMARY KEY, at timestamptz NOT NULL, owner text NOT NULL);
ALTER TABLE stamp REPLICA IDENTITY FULL;
INSERT INTO stamp VALUES (1, now() - interval '1 hour', 'postgres');
CREATE VIEW random_view AS SELECT random() AS r;
CREATE VIEW recent_stamp AS SELECT id FROM stamp WHERE at > now() - interval '2 hours';
CREATE VIEW clock_view AS SELECT clock_timestamp()::text AS t;
CREATE VIEW mine AS SELECT id FROM stamp WHERE owner = current_user;
CREATE VIEW today_view AS SELECT CURRENT_TIMESTAMP::text AS t;
CREATE VIEW pid_view AS SELECT pg_backend_pid() AS p;
CREATE FUNCTION recent_ids() RETURNS SETOF int STABLE LANGUAGE sql
  BEGIN ATOMIC SELECT id FROM stamp WHERE at > now() - interval '2 hours'; END;
CREATE FUNCTION random_atomic() RETURNS float8 STABLE LANGUAGE sql
  BEGIN ATOMIC SELECT random(); END;
CREATE VIEW count_view AS SELECT count(*) AS n, max(at)::text AS last FROM stamp;
CREATE VIEW table_names AS SELECT relname::text AS name FROM pg_class WHERE relname LIKE 'stamp%';
CREATE VIEW sessions AS SELECT count(*) AS n FROM pg_stat_activity;
CREATE FUNCTION stamp_tables() RETURNS bigint STABLE LANGUAGE sql
  BEGIN ATOMIC SELECT count(*) FROM pg_class WHERE relname LIKE 'stamp%'; END;
CREATE FUNCTION later(at timestamptz DEFAULT now()) RETURNS text IMMUTABLE LANGUAGE sql
  RETURN (at + interval '1 day')::text;
CREATE FUNCTION later_sv(at timestamptz DEFAULT CURRENT_TIMESTAMP) RETURNS text IMMUTABLE
  LANGUAGE sql RETURN (at + interval '1 day')::text;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_ins_hidden_in_views_and_function_bodies_are_read_through() {
    let h = harness_with(HIDDEN).await;
    for sql in [
        "SELECT r FROM random_view",
        "SELECT id FROM recent_stamp",
        "SELECT t FROM clock_view",
        "SELECT id FROM mine",
        "SELECT t FROM today_view",
        "SELECT p FROM pid_view",
        "SELECT recent_ids() AS id",
        "SELECT random_atomic() AS r",
        "SELECT name FROM table_names",
        "SELECT n FROM sessions",
        "SELECT stamp_tables() AS n",
        "SELECT later() AS t",
        "SELECT later_sv() AS t",
    ] {
        for _ in 0..2 {
            h.client.query(sql, &[]).await.unwrap();
        }
        let m = h.client.metrics();
        assert_eq!((m.hits, m.stores), (0, 0), "{sql}: {m:?}");
    }
    // Aggregates and casts are pure: a view of them is cached.
    for _ in 0..2 {
        h.client
            .query("SELECT n, last FROM count_view", &[])
            .await
            .unwrap();
    }
    assert_eq!(h.hits(), 1);
}
