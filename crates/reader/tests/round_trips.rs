//! A hit costs one multi-get and nothing else; partitioned tables are read
//! under their root's keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::testing::{InstrumentedStore, Method};
use common::{connect, ints, Harness, MAPPING, SCHEMA};

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
