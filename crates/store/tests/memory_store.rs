//! The shared store behaviours against the in-process [`cm_store::MemoryStore`],
//! plus what only it has (item and byte limits).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use cm_store::{CacheStore, LeaseOutcome, MemoryStore, MemoryStoreConfig};

store_suite!(common::memory_harness);

#[tokio::test]
async fn item_limit_evicts_least_recently_used() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_items: Some(3),
        ..MemoryStoreConfig::default()
    });
    let ttl = Duration::from_secs(60);
    for key in ["a", "b", "c"] {
        store.write_heartbeat(key, b"v", ttl).await.unwrap();
    }
    store.get_many(&["a"]).await.unwrap();
    store.write_heartbeat("d", b"v", ttl).await.unwrap();
    assert_eq!(store.len(), 3);
    let present: Vec<bool> = store
        .get_many(&["a", "b", "c", "d"])
        .await
        .unwrap()
        .iter()
        .map(Option::is_some)
        .collect();
    assert_eq!(present, [true, false, true, true]);
}

#[tokio::test]
async fn evicted_generation_comes_back_different() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_items: Some(1),
        ..MemoryStoreConfig::default()
    });
    let snapshot = store.create_generation_if_missing("g:t").await.unwrap();
    store
        .write_heartbeat("hb", b"v", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.read_generations(&["g:t"]).await.unwrap(), [None]);
    assert_ne!(store.bump_generation("g:t").await.unwrap(), snapshot);
}

#[tokio::test]
async fn byte_limit_bounds_the_store() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_bytes: Some(10_000),
        ..MemoryStoreConfig::default()
    });
    for i in 0..100 {
        let key = format!("q:{i}");
        match store
            .get_with_lease(&key, Duration::from_secs(30))
            .await
            .unwrap()
        {
            LeaseOutcome::Won(lease) => {
                store
                    .set_if_lease_valid(&key, &[0; 1000], Duration::from_secs(60), lease)
                    .await
                    .unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(store.len() < 10, "{} items kept", store.len());
}
