//! Reads through a deadpool pool: a hit takes no connection, a miss waits
//! for one, and misses prepare through the pooled connection's statement
//! cache instead of preparing again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cm_reader::{CachingPool, Outcome, QueryOptions};
use common::{ints, texts, Harness};
use deadpool_postgres::{Config, Object, Pool, PoolConfig, Runtime};
use tokio::time::timeout;
use tokio_postgres::NoTls;

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// Far longer than any read takes; only a read that waits for a connection
/// held by the test reaches it.
const NEVER: Duration = Duration::from_secs(20);

fn pool_of_one(h: &Harness) -> Pool {
    let config = Config {
        url: Some(h.pg.url()),
        pool: Some(PoolConfig::new(1)),
        ..Config::default()
    };
    config.create_pool(Some(Runtime::Tokio1), NoTls).unwrap()
}

/// This connection's prepared statements for `sql`: (name, prepare time).
async fn prepared(connection: &Object, sql: &str) -> Vec<(String, String)> {
    connection
        .query(
            "SELECT name, prepare_time::text FROM pg_prepared_statements WHERE statement = $1",
            &[&sql],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_need_no_connection_and_a_miss_waits_for_one() {
    let h = Harness::start().await;
    let pool = pool_of_one(&h);
    let db = CachingPool::new(pool.clone(), h.cache.clone());
    let (_, outcome) = db.query_with_outcome(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(outcome, Outcome::Miss);

    let held = pool.get().await.unwrap();
    for _ in 0..3 {
        let (rows, outcome) = timeout(NEVER, db.query_with_outcome(BY_AUTHOR, &[&1i32]))
            .await
            .expect("a hit waited for the pool's only connection")
            .unwrap();
        assert_eq!((ints(&rows, "id"), outcome), (vec![10, 11], Outcome::Hit));
    }
    let miss = tokio::spawn({
        let db = db.clone();
        async move { db.query_with_outcome(BY_AUTHOR, &[&2i32]).await }
    });
    // The miss queues for the connection the test holds.
    while pool.status().waiting == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!miss.is_finished());
    drop(held);
    let (rows, outcome) = timeout(NEVER, miss).await.unwrap().unwrap().unwrap();
    assert_eq!((ints(&rows, "id"), outcome), (vec![20], Outcome::Miss));
    let m = db.metrics();
    assert_eq!((m.hits, m.misses), (3, 2));
}

#[tokio::test]
async fn misses_reuse_the_statement_the_pooled_connection_prepared() {
    let h = Harness::start().await;
    let pool = pool_of_one(&h);
    let db = CachingPool::new(pool.clone(), h.cache.clone());
    db.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let first = prepared(&pool.get().await.unwrap(), BY_AUTHOR).await;
    assert_eq!(first.len(), 1, "the miss's statement stays prepared");

    for author in [2i32, 3] {
        db.query(BY_AUTHOR, &[&author]).await.unwrap();
    }
    h.write("UPDATE book SET title = 'A1*' WHERE id = 10").await;
    let rows = db.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["A1*", "A2"]);
    assert_eq!(db.metrics().misses, 4);

    let connection = pool.get().await.unwrap();
    assert_eq!(prepared(&connection, BY_AUTHOR).await, first);
    assert_eq!(connection.statement_cache.size(), 1);
}

#[tokio::test]
async fn a_cached_statement_whose_result_type_changed_is_prepared_again() {
    let h = Harness::start().await;
    let pool = pool_of_one(&h);
    let db = CachingPool::new(pool.clone(), h.cache.clone());
    let all = "SELECT * FROM author WHERE id = $1";
    assert_eq!(db.query_one(all, &[&1i32]).await.unwrap().len(), 2);

    // The server now refuses the cached statement ("cached plan must not
    // change result type"); a miss prepares it again.
    h.write("ALTER TABLE author ADD COLUMN born int").await;
    let row = db.query_one(all, &[&2i32]).await.unwrap();
    assert_eq!(row.len(), 3);
    assert_eq!(row.get::<Option<i32>>("born"), None);
}

#[tokio::test]
async fn no_cache_reads_through_a_pooled_connection() {
    let h = Harness::start().await;
    let db = CachingPool::new(pool_of_one(&h), h.cache.clone());
    let query = db.with(QueryOptions::new().no_cache());
    let (rows, outcome) = query.query_with_outcome(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(
        (ints(&rows, "id"), outcome),
        (vec![10, 11], Outcome::Bypass)
    );
    assert!(query.query("DELETE FROM book", &[]).await.is_err());
}
