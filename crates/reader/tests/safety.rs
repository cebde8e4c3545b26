//! The reader never serves what it must not, and never fails a read because
//! of the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cm_reader::{QueryOptions, ReaderError, ReaderOptions};
use cm_testkit::MemcachedServer;
use common::pause::PauseBeforeStore;
use common::{ints, texts, Harness, MAPPING, SCHEMA};

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

#[tokio::test]
async fn a_transactions_reads_are_never_cached() {
    let mut h = Harness::start().await;
    let before = h.client.metrics();
    {
        let txn = h.client.transaction().await.unwrap();
        txn.execute("UPDATE book SET title = 'mine' WHERE id = 10", &[])
            .await
            .unwrap();
        let rows = txn.query(BY_AUTHOR, &[&1i32]).await.unwrap();
        assert_eq!(rows[0].get::<_, String>("title"), "mine");
        txn.rollback().await.unwrap();
    }
    assert_eq!(h.client.metrics(), before);
    // Nothing the transaction saw was stored: the first cached read misses.
    let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["A1", "A2"]);
    let m = h.client.metrics();
    assert_eq!((m.hits, m.misses), (0, 1));
}

#[tokio::test]
async fn a_stopped_memcached_makes_reads_bypass_never_fail() {
    let server = tokio::task::spawn_blocking(|| MemcachedServer::start().unwrap())
        .await
        .unwrap();
    let h = Harness::with(
        SCHEMA,
        MAPPING,
        Some(server.addr()),
        ReaderOptions {
            publication: Some("cm_pub".into()),
            ..ReaderOptions::default()
        },
    )
    .await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    drop(server);
    for _ in 0..2 {
        let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
        assert_eq!(ints(&rows, "id"), [10, 11]);
        assert_eq!(h.client.count(BY_AUTHOR, &[&1i32]).await.unwrap(), 2);
    }
    h.psql("UPDATE book SET title = 'fresh' WHERE id = 10");
    let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["fresh", "A2"]);
    let m = h.client.metrics();
    assert_eq!(m.hits, 0);
    assert!(m.cache_errors >= 5, "{m:?}");
}

#[tokio::test]
async fn a_heartbeat_older_than_max_staleness_bypasses_the_cache() {
    let h = Harness::start().await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.heartbeat(Duration::from_secs(60)).await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let m = h.client.metrics();
    assert_eq!((m.hits, m.bypasses, m.stores), (0, 1, 1));
    // A missing heartbeat counts as too old.
    h.store
        .delete_many(&[h.space.heartbeat().as_str()])
        .await
        .unwrap();
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(h.client.metrics().bypasses, 2);
    h.heartbeat(Duration::ZERO).await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
}

/// A reader that read old data, whose rows are invalidated before it
/// stores, does not store: the invalidation deleted its lease placeholder.
#[tokio::test]
async fn an_invalidation_during_a_fill_voids_the_fill() {
    let (pause, hook) = PauseBeforeStore::new();
    let options = ReaderOptions {
        before_store: Some(hook),
        ..ReaderOptions::default()
    };
    let h = Harness::with(SCHEMA, MAPPING, None, options).await;
    pause.arm();
    let (old, ()) = tokio::join!(h.client.query(BY_AUTHOR, &[&1i32]), async {
        pause.reached().await;
        // The reader has its (old) rows and holds the lease; a writer
        // commits and the invalidator applies it.
        h.write("UPDATE book SET title = 'new' WHERE id = 10").await;
        pause.release();
    });
    assert_eq!(texts(&old.unwrap(), "title"), ["A1", "A2"]);
    let m = h.client.metrics();
    assert_eq!((m.stores, m.lease_lost), (0, 1));
    let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["new", "A2"]);
    assert_eq!(h.hits(), 0);
}

#[tokio::test]
async fn concurrent_misses_run_one_fill() {
    let h = Harness::start().await;
    let sql = "SELECT id FROM book WHERE author_id = $1";
    // Learn the statement first, so the racing calls differ only in the fill.
    h.client
        .with(QueryOptions::new().namespace("warm-up"))
        .query(sql, &[&1i32])
        .await
        .unwrap();
    let results = futures_join(&h, sql).await;
    for rows in results {
        assert_eq!(rows.len(), 2);
    }
    let m = h.client.metrics();
    // One of the eight won the lease and stored; the others either waited
    // for its value (hits) or read through without filling.
    assert_eq!(m.stores, 2, "{m:?}");
    assert_eq!(m.cache_errors, 0);
}

async fn futures_join(h: &Harness, sql: &str) -> Vec<Vec<cm_reader::CachedRow>> {
    let a = h.client.query(sql, &[&1i32]);
    let b = h.client.query(sql, &[&1i32]);
    let c = h.client.query(sql, &[&1i32]);
    let d = h.client.query(sql, &[&1i32]);
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
}

#[tokio::test]
async fn writes_are_refused_and_no_cache_reads_through() {
    let h = Harness::start().await;
    for sql in [
        "UPDATE book SET title = 'x'",
        "DELETE FROM book",
        "WITH d AS (DELETE FROM book RETURNING id) SELECT id FROM d",
    ] {
        let err = h.client.query(sql, &[]).await.unwrap_err();
        assert!(
            matches!(err, ReaderError::NotASelect { .. }),
            "{sql}: {err}"
        );
    }
    let err = h
        .client
        .with(QueryOptions::new().no_cache())
        .query("DELETE FROM book", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ReaderError::NotASelect { .. }));
    assert_eq!(h.client.count("SELECT * FROM book", &[]).await.unwrap(), 3);
    let no_cache = h.client.with(QueryOptions::new().no_cache());
    no_cache.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    no_cache.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let m = h.client.metrics();
    assert_eq!((m.hits, m.bypasses), (0, 2));
}

#[tokio::test]
async fn results_over_the_size_limit_are_not_cached() {
    let options = ReaderOptions {
        max_value_bytes: 64,
        ..ReaderOptions::default()
    };
    let h = Harness::with(SCHEMA, MAPPING, None, options).await;
    let sql = "SELECT * FROM book ORDER BY id";
    h.client.query(sql, &[]).await.unwrap();
    h.client.query(sql, &[]).await.unwrap();
    let m = h.client.metrics();
    assert_eq!((m.hits, m.oversized, m.stores), (0, 2, 0));
}

#[tokio::test]
async fn uncovered_tables_are_read_through() {
    let h = Harness::start().await;
    // System catalogs are not in the schema model: no invalidation reaches them.
    h.client
        .query(
            "SELECT relname FROM pg_class WHERE relname = $1",
            &[&"book"],
        )
        .await
        .unwrap();
    // Volatile functions are never cached.
    h.client
        .query("SELECT now(), id FROM book", &[])
        .await
        .unwrap();
    let m = h.client.metrics();
    assert_eq!((m.bypasses, m.stores), (2, 0));
}
