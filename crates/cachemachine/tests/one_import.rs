//! A service built from this crate alone, against real PostgreSQL and
//! memcached: the builder's defaults plus the test servers' addresses, a
//! deadpool pool, and the embedded mode read through over a pool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cachemachine::deadpool_postgres::{Config, Pool, Runtime};
use cachemachine::embedded::{EmbeddedCache, EmbeddedOptions};
use cachemachine::tokio_postgres::NoTls;
use cachemachine::{CachingPool, Outcome, QueryCache};
use cm_keys::Heartbeat;
use cm_testkit::{TestMemcached, TestPostgres};

const LIST: &str = "SELECT id, name FROM addons WHERE author_id = $1 ORDER BY id";

fn pool(pg: &TestPostgres) -> Pool {
    let config = Config {
        url: Some(pg.url()),
        ..Config::default()
    };
    config.create_pool(Some(Runtime::Tokio1), NoTls).unwrap()
}

async fn names(db: &CachingPool<Pool>) -> (Vec<String>, Outcome) {
    let (rows, outcome) = db.query_with_outcome(LIST, &[&1i32]).await.unwrap();
    (rows.iter().map(|r| r.get("name")).collect(), outcome)
}

#[tokio::test]
async fn a_pooled_service_needs_only_this_crate() {
    let (pg, memcached) = tokio::task::spawn_blocking(|| {
        (
            TestPostgres::start().unwrap(),
            TestMemcached::start().unwrap(),
        )
    })
    .await
    .unwrap();
    pg.psql(include_str!("../examples/addons.sql")).unwrap();
    // What `cm-invalidator setup` creates for the reader to check against.
    pg.psql("CREATE PUBLICATION cm_invalidator FOR ALL TABLES")
        .unwrap();
    let pool = pool(&pg);
    let cache = QueryCache::builder()
        .prefix(memcached.key_prefix())
        .servers([memcached.addr()])
        .build(&pool)
        .await
        .unwrap();
    // The invalidator's heartbeat: without it every read bypasses.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let heartbeat = Heartbeat::of_message(1, now.as_micros() as u64, now.as_micros() as u64);
    let key = cache.key_space().heartbeat();
    let store = cache.store();
    store
        .write_heartbeat(key.as_str(), &heartbeat.encode(), Duration::from_secs(60))
        .await
        .unwrap();

    let db = CachingPool::new(pool, cache);
    let expected = vec!["Tab Grouper".to_owned(), "Dark Reader".to_owned()];
    assert_eq!(names(&db).await, (expected.clone(), Outcome::Miss));
    assert_eq!(names(&db).await, (expected, Outcome::Hit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_reads_through_the_embedded_cache() {
    let pg = TestPostgres::start().unwrap();
    pg.psql(include_str!("../examples/addons.sql")).unwrap();
    let mut options = EmbeddedOptions::new(pg.url());
    options.slot = pg.unique_name("cm_embedded");
    let embedded = EmbeddedCache::start(options).await.unwrap();
    let db = CachingPool::new(pool(&pg), embedded.client().cache().clone());

    // Until the first heartbeat round trip the reader bypasses the cache.
    let deadline = Instant::now() + Duration::from_secs(30);
    while names(&db).await.1 != Outcome::Hit {
        assert!(Instant::now() < deadline, "never served from the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.psql("UPDATE addons SET name = 'changed by psql' WHERE id = 2")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !names(&db).await.0.contains(&"changed by psql".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the cached list was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        names(&db).await.1,
        Outcome::Hit,
        "cached again after the refresh"
    );
    embedded.shutdown().await;
}
