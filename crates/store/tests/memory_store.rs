//! The shared store behaviours against the in-process [`cm_store::MemoryStore`],
//! plus what only it has (item and byte limits).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use cm_store::{
    read_generation, CacheStore, LeaseOutcome, MemoryStore, MemoryStoreConfig, StoreError,
};

store_suite!(common::memory_harness);

#[tokio::test]
async fn item_limit_evicts_least_recently_used_result() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_items: Some(3),
        ..MemoryStoreConfig::default()
    });
    let ttl = Duration::from_secs(60);
    for key in ["cm:q:a", "cm:q:b", "cm:q:c"] {
        store.write_heartbeat(key, b"v", ttl).await.unwrap();
    }
    store.get_many(&["cm:q:a"]).await.unwrap();
    store.write_heartbeat("cm:q:d", b"v", ttl).await.unwrap();
    assert_eq!(store.len(), 3);
    let present: Vec<bool> = store
        .get_many(&["cm:q:a", "cm:q:b", "cm:q:c", "cm:q:d"])
        .await
        .unwrap()
        .iter()
        .map(Option::is_some)
        .collect();
    assert_eq!(present, [true, false, true, true]);
}

/// The in-process store behaves like a memcached metadata server run with
/// `-M`: flush lists and generations are never evicted, results make room
/// for them, and a write that still does not fit is refused, not stored by
/// evicting metadata.
#[tokio::test]
async fn metadata_is_never_evicted_and_a_full_store_refuses_writes() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_items: Some(3),
        ..MemoryStoreConfig::default()
    });
    let ttl = Duration::from_secs(60);
    let generation = store.create_generation_if_missing("cm:g:t").await.unwrap();
    store
        .append_to_flush_list("cm:f:row", "cm:q:r", ttl)
        .await
        .unwrap();
    let lease = match store.get_with_lease("cm:q:r", ttl).await.unwrap() {
        LeaseOutcome::Won(lease) => lease,
        other => panic!("{other:?}"),
    };
    assert!(store
        .set_if_lease_valid("cm:q:r", b"rows", ttl, lease)
        .await
        .unwrap());
    // The heartbeat takes the result's place, not the older metadata's.
    store.write_heartbeat("cm:hb:h", b"v", ttl).await.unwrap();
    assert_eq!(store.get_many(&["cm:q:r"]).await.unwrap(), [None]);
    // Full of metadata: every write that needs room is refused.
    let refused = store
        .append_to_flush_list("cm:f:other", "cm:q:r", ttl)
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Server { message }) if message.contains("out of memory")),
        "{refused:?}"
    );
    assert_eq!(
        store.get_with_lease("cm:q:s", ttl).await.unwrap(),
        LeaseOutcome::Wait
    );
    assert_eq!(
        read_generation(&store, "cm:g:t").await.unwrap(),
        Some(generation)
    );
    assert_eq!(
        store.read_flush_list("cm:f:row").await.unwrap().members,
        ["cm:q:r"]
    );
    // Writes in place still work: the invalidator can always bump and
    // append to an existing list.
    assert_ne!(store.bump_generation("cm:g:t").await.unwrap(), generation);
    store
        .append_to_flush_list("cm:f:row", "cm:q:s", ttl)
        .await
        .unwrap();
}

#[tokio::test]
async fn byte_limit_bounds_the_store() {
    let store = MemoryStore::new(MemoryStoreConfig {
        max_bytes: Some(10_000),
        ..MemoryStoreConfig::default()
    });
    for i in 0..100 {
        let key = format!("cm:q:{i}");
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
