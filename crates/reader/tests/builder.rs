//! `QueryCache::builder`: the invalidator's defaults for everything a test
//! need not change, end to end over memcached, with a pool and a client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_reader::{BuildError, CachingClient, CachingPool, Outcome, QueryCache, ReaderOptions};
use common::{connect, ints, Harness};
use deadpool_postgres::{Config, Runtime};
use tokio_postgres::NoTls;

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// The builder for the harness's memcached, prefix and publication; every
/// other setting is the default.
fn builder(h: &Harness) -> cm_reader::QueryCacheBuilder {
    let memcached = h.memcached.as_ref().unwrap();
    QueryCache::builder()
        .prefix(memcached.key_prefix())
        .servers([memcached.addr()])
        .publication("cm_pub")
}

#[tokio::test]
async fn a_built_cache_serves_a_pool_and_a_client() {
    let h = Harness::start().await;
    let pool = Config {
        url: Some(h.pg.url()),
        ..Config::default()
    }
    .create_pool(Some(Runtime::Tokio1), NoTls)
    .unwrap();
    let cache = builder(&h).build(&pool).await.unwrap();
    assert_eq!(cache.key_space().prefix(), h.space.prefix());
    assert_eq!(
        cache.options().default_ttl,
        ReaderOptions::default().default_ttl
    );

    let db = CachingPool::new(pool, cache.clone());
    let client = CachingClient::new(connect(&h.pg.url()).await, cache);
    let (rows, outcome) = db.query_with_outcome(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!((ints(&rows, "id"), outcome), (vec![10, 11], Outcome::Miss));
    let (rows, outcome) = client
        .query_with_outcome(BY_AUTHOR, &[&1i32])
        .await
        .unwrap();
    assert_eq!((ints(&rows, "id"), outcome), (vec![10, 11], Outcome::Hit));

    h.write("UPDATE book SET title = 'A1*' WHERE id = 10").await;
    let (_, outcome) = db.query_with_outcome(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(outcome, Outcome::Miss);
}

#[tokio::test]
async fn a_client_builds_a_cache_and_bad_settings_are_refused() {
    let h = Harness::start().await;
    let client = connect(&h.pg.url()).await;
    let cache = builder(&h).build(&client).await.unwrap();
    let db = CachingClient::new(client, cache);
    assert_eq!(db.query(BY_AUTHOR, &[&2i32]).await.unwrap().len(), 1);

    let bad_prefix = builder(&h).prefix("no spaces").build(db.client()).await;
    assert!(matches!(bad_prefix, Err(BuildError::Prefix(_))));
    let bad_mapping = builder(&h)
        .schema(
            cm_keys::SchemaConfig::from_toml_str("[tables.\"public.nope\"]\nignore = true\n")
                .unwrap(),
        )
        .build(db.client())
        .await;
    assert!(
        matches!(bad_mapping, Err(BuildError::Reader(_))),
        "{bad_mapping:?}"
    );
}
