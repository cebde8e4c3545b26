//! A hit costs one multi-get and nothing else; a miss, the query and three
//! memcached round trips, and no prepare once the client has prepared the
//! statement; partitioned tables are read under their root's keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cm_reader::{BeforeStoreHook, CachingClient, Outcome, QueryCache, ReaderOptions};
use cm_store::testing::{InstrumentedStore, Method};
use cm_store::{MemcachedConfig, MemcachedStore};
use common::pause::PauseBeforeStore;
use common::{connect, ints, texts, Harness, MAPPING, SCHEMA};
use tokio_postgres::Client;

#[tokio::test]
async fn a_hit_is_one_multi_get() {
    let h = Harness::with(SCHEMA, MAPPING, None, ReaderOptions::default()).await;
    // The real store, with every call counted (not a mock: calls go through).
    let counting = Arc::new(InstrumentedStore::new(h.store.clone()));
    let cache = QueryCache::new(
        h.space.clone(),
        counting.clone(),
        h.model.clone(),
        ReaderOptions {
            publication: Some("cm_pub".into()),
            ..ReaderOptions::default()
        },
    )
    .unwrap();
    let client = CachingClient::new(connect(&h.pg.url()).await, Arc::new(cache));
    let sql = "SELECT b.id, b.title FROM book_with_author b WHERE author = $1 ORDER BY id";
    client.query(sql, &[&"Ann"]).await.unwrap();
    let before = counting.total_calls();
    let rows = client.query(sql, &[&"Ann"]).await.unwrap();
    assert_eq!(ints(&rows, "id"), [10, 11]);
    assert_eq!(client.metrics().hits, 1);
    assert_eq!(counting.total_calls() - before, 1);
    // Learning the statement read the schema version once, then one
    // lookup per read.
    assert_eq!(counting.calls(Method::GetMany), 3);
}

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// A client over the harness's PostgreSQL whose store is a memcached store
/// of its own on the harness's one memcached server (so its exchanges can
/// be counted), every call counted too. The inspection registry is off: its
/// background appends would land at any time.
async fn counted(
    h: &Harness,
) -> (
    CachingClient<Client>,
    Arc<MemcachedStore>,
    Arc<InstrumentedStore>,
) {
    counted_with(h, None).await
}

/// [`counted`], with a hook run between a miss's query and its store.
async fn counted_with(
    h: &Harness,
    before_store: Option<BeforeStoreHook>,
) -> (
    CachingClient<Client>,
    Arc<MemcachedStore>,
    Arc<InstrumentedStore>,
) {
    let addr = h.memcached.as_ref().unwrap().addr().to_owned();
    let memcached = Arc::new(
        MemcachedStore::connect(MemcachedConfig::new([addr]))
            .await
            .unwrap(),
    );
    let counting = Arc::new(InstrumentedStore::new(memcached.clone()));
    let options = ReaderOptions {
        publication: Some("cm_pub".into()),
        inspection_registry: false,
        before_store,
        ..h.cache.options().clone()
    };
    let cache =
        QueryCache::new(h.space.clone(), counting.clone(), h.model.clone(), options).unwrap();
    let client = CachingClient::new(connect(&h.pg.url()).await, Arc::new(cache));
    (client, memcached, counting)
}

/// The statement `sql` as prepared on `client`'s connection: its name,
/// when it was prepared, and how many times it ran.
async fn prepared(client: &Client, sql: &str) -> Vec<(String, String, i64)> {
    client
        .query(
            "SELECT name, prepare_time::text, generic_plans + custom_plans \
             FROM pg_prepared_statements WHERE statement = $1",
            &[&sql],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// A miss whose generations exist: the lookup, the lease with the pre-query
/// registrations, the row registrations with the store. With one memcached
/// server each is one pipelined exchange, one round trip.
#[tokio::test]
async fn a_miss_is_three_memcached_round_trips() {
    let h = Harness::start().await;
    let (client, memcached, counting) = counted(&h).await;
    // Learns the statement and creates the generations.
    client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let combined = [
        Method::GetMany,
        Method::LeaseAndAppend,
        Method::AppendThenStoreIfLeaseValid,
    ];
    let before: Vec<usize> = combined.iter().map(|&m| counting.calls(m)).collect();
    let (calls, exchanges) = (counting.total_calls(), memcached.exchanges());
    let (rows, outcome) = client
        .query_with_outcome(BY_AUTHOR, &[&2i32])
        .await
        .unwrap();
    assert_eq!(
        (texts(&rows, "title"), outcome),
        (vec!["B1".to_owned()], Outcome::Miss)
    );
    assert_eq!(client.metrics().stores, 2);
    for (method, before) in combined.iter().zip(before) {
        assert_eq!(counting.calls(*method) - before, 1, "{method:?}");
    }
    assert_eq!(counting.total_calls() - calls, 3);
    assert_eq!(memcached.exchanges() - exchanges, 3);
}

/// The stale-set race through the pipelined store: a write invalidated
/// after the query and before the (one-batch) registrations and store
/// deletes the placeholder, so the store stores nothing.
#[tokio::test]
async fn an_invalidation_before_the_pipelined_store_voids_the_fill() {
    let h = Harness::start().await;
    let (pause, hook) = PauseBeforeStore::new();
    let (client, memcached, counting) = counted_with(&h, Some(hook)).await;
    // Learns the statement and creates the generations.
    client.query(BY_AUTHOR, &[&2i32]).await.unwrap();
    let exchanges = memcached.exchanges();
    pause.arm();
    let (old, ()) = tokio::join!(client.query(BY_AUTHOR, &[&1i32]), async {
        pause.reached().await;
        h.write("UPDATE book SET title = 'new' WHERE id = 10").await;
        pause.release();
    });
    assert_eq!(texts(&old.unwrap(), "title"), ["A1", "A2"]);
    // Lookup, lease with registrations, registrations with store.
    assert_eq!(memcached.exchanges() - exchanges, 3);
    assert_eq!(counting.calls(Method::AppendThenStoreIfLeaseValid), 2);
    let m = client.metrics();
    assert_eq!((m.stores, m.lease_lost), (1, 1));
    let rows = client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["new", "A2"]);
    assert_eq!(client.metrics().hits, 0);
}

/// A `CachingClient` prepares a statement once: the next miss runs the same
/// prepared statement on its connection.
#[tokio::test]
async fn a_second_miss_on_a_client_does_not_prepare_again() {
    let h = Harness::start().await;
    let (client, _, _) = counted(&h).await;
    client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let first = prepared(client.client(), BY_AUTHOR).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].2, 1);
    let (_, outcome) = client
        .query_with_outcome(BY_AUTHOR, &[&2i32])
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Miss);
    let second = prepared(client.client(), BY_AUTHOR).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!((&second[0].0, &second[0].1), (&first[0].0, &first[0].1));
    assert_eq!(second[0].2, 2, "the same statement ran twice");
}

const ORDERS: &str = "
CREATE TABLE region (code text PRIMARY KEY);
INSERT INTO region VALUES ('eu'), ('us');
CREATE TABLE orders (id int, region text REFERENCES region(code), total int,
                     PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
ALTER TABLE orders_eu REPLICA IDENTITY FULL;
ALTER TABLE orders_us REPLICA IDENTITY FULL;
INSERT INTO orders VALUES (1, 'eu', 10), (2, 'us', 20);
";

#[tokio::test]
async fn partitions_are_read_and_invalidated_under_their_root() {
    let h = Harness::with(ORDERS, "", None, ReaderOptions::default()).await;
    let by_region = "SELECT id, total FROM orders WHERE region = $1 ORDER BY id";
    let all = "SELECT id FROM orders ORDER BY id";
    assert_eq!(
        ints(&h.client.query(by_region, &[&"us"]).await.unwrap(), "id"),
        [2]
    );
    assert_eq!(ints(&h.client.query(all, &[]).await.unwrap(), "id"), [1, 2]);
    h.write("INSERT INTO orders VALUES (3, 'us', 30)").await;
    assert_eq!(
        ints(&h.client.query(by_region, &[&"us"]).await.unwrap(), "id"),
        [2, 3]
    );
    assert_eq!(
        ints(&h.client.query(all, &[]).await.unwrap(), "id"),
        [1, 2, 3]
    );
    h.write("UPDATE orders SET total = 11 WHERE id = 1").await;
    let rows = h.client.query(all, &[]).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(h.hits(), 0);
    h.client.query(all, &[]).await.unwrap();
    assert_eq!(h.hits(), 1, "{:?}", h.client.metrics());
}
