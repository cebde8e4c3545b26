//! A hit costs one multi-get and nothing else; partitioned tables are read
//! under their root's keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cm_reader::{CachingClient, QueryCache, ReaderOptions};
use cm_store::{CacheStore, FlushListSnapshot, Generation, Item, Lease, LeaseOutcome, StoreError};
use common::{connect, ints, Harness, MAPPING, SCHEMA};

/// The real store, with every call counted (not a mock: calls go through).
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn CacheStore>,
    calls: AtomicUsize,
    get_many: AtomicUsize,
}

impl Counting {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl CacheStore for Counting {
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Item>>, StoreError> {
        self.count();
        self.get_many.fetch_add(1, Ordering::SeqCst);
        self.inner.get_many(keys).await
    }
    async fn get_with_lease(&self, key: &str, ttl: Duration) -> Result<LeaseOutcome, StoreError> {
        self.count();
        self.inner.get_with_lease(key, ttl).await
    }
    async fn set_if_lease_valid(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        lease: Lease,
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.set_if_lease_valid(key, value, ttl, lease).await
    }
    async fn release_lease(&self, key: &str, lease: Lease) -> Result<(), StoreError> {
        self.count();
        self.inner.release_lease(key, lease).await
    }
    async fn append_to_flush_lists(
        &self,
        keys: &[&str],
        member: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.count();
        self.inner.append_to_flush_lists(keys, member, ttl).await
    }
    async fn read_flush_lists(&self, keys: &[&str]) -> Result<Vec<FlushListSnapshot>, StoreError> {
        self.count();
        self.inner.read_flush_lists(keys).await
    }
    async fn clear_flush_lists_if_unchanged(
        &self,
        lists: &[(&str, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        self.count();
        self.inner.clear_flush_lists_if_unchanged(lists).await
    }
    async fn delete_many(&self, keys: &[&str]) -> Result<(), StoreError> {
        self.count();
        self.inner.delete_many(keys).await
    }
    async fn create_generation_if_missing(&self, key: &str) -> Result<Generation, StoreError> {
        self.count();
        self.inner.create_generation_if_missing(key).await
    }
    async fn bump_generation(&self, key: &str) -> Result<Generation, StoreError> {
        self.count();
        self.inner.bump_generation(key).await
    }
    async fn write_heartbeat(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.count();
        self.inner.write_heartbeat(key, value, ttl).await
    }
}

#[tokio::test]
async fn a_hit_is_one_multi_get() {
    let h = Harness::with(SCHEMA, MAPPING, None, ReaderOptions::default()).await;
    let counting = Arc::new(Counting {
        inner: h.store.clone(),
        calls: AtomicUsize::new(0),
        get_many: AtomicUsize::new(0),
    });
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
    let before = counting.calls.load(Ordering::SeqCst);
    let rows = client.query(sql, &[&"Ann"]).await.unwrap();
    assert_eq!(ints(&rows, "id"), [10, 11]);
    assert_eq!(client.metrics().hits, 1);
    assert_eq!(counting.calls.load(Ordering::SeqCst) - before, 1);
    // Learning the statement read the schema version once, then one
    // lookup per read.
    assert_eq!(counting.get_many.load(Ordering::SeqCst), 3);
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
