//! The embedded mode end to end: one process caches through the in-process
//! store and invalidates it from the WAL; a write from psql refreshes a
//! cached list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cm_embedded::{EmbeddedCache, EmbeddedOptions};
use cm_testkit::TestPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psql_write_refreshes_an_embedded_cached_list() {
    let pg = TestPostgres::start().unwrap();
    pg.psql(include_str!("../../cachemachine/examples/addons.sql"))
        .unwrap();
    let mut options = EmbeddedOptions::new(pg.url());
    options.slot = pg.unique_name("cm_embedded");
    let cache = EmbeddedCache::start(options).await.unwrap();
    let client = cache.client();
    let list = "SELECT id, name FROM addons WHERE author_id = $1 ORDER BY id";

    // Until the first heartbeat round trip the reader bypasses the cache.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        client.query(list, &[&1i32]).await.unwrap();
        if client.metrics().hits > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never served from the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pg.psql("UPDATE addons SET name = 'changed by psql' WHERE id = 2;")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = client.query(list, &[&1i32]).await.unwrap();
        if rows
            .iter()
            .any(|r| r.get::<String>("name") == "changed by psql")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cached list was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = client.metrics().hits;
    client.query(list, &[&1i32]).await.unwrap();
    assert_eq!(
        client.metrics().hits,
        before + 1,
        "cached again after the refresh"
    );
    cache.shutdown().await;
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_is_refused_clearly() {
    let pg = TestPostgres::start().unwrap();
    let options = EmbeddedOptions::new(format!("{}?sslmode=require", pg.url()));
    let error = EmbeddedCache::start(options).await.err().unwrap();
    assert_eq!(
        error.to_string(),
        "postgres: server does not support TLS but sslmode=require"
    );
}
