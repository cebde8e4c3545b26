//! Results and metadata on separate memcached pools: metadata servers must
//! not evict (memcached `-M`), result servers may. What only the split
//! configuration has: the eviction check, routing by kind, a full metadata
//! server refusing writes, evictions confined to the result servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::time::Duration;

use cm_store::{CacheStore, LeaseOutcome, MemcachedConfig, MemcachedStore, StoreError};
use cm_testkit::{MemcachedOptions, MemcachedServer};

const TTL: Duration = Duration::from_secs(600);

async fn start(options: MemcachedOptions) -> MemcachedServer {
    tokio::task::spawn_blocking(move || MemcachedServer::start_with(options).expect("memcached"))
        .await
        .unwrap()
}

fn stat(server: &MemcachedServer, name: &str) -> u64 {
    server.stats().unwrap()[name].parse().unwrap()
}

fn assert_refused_as_evicting(result: Result<MemcachedStore, StoreError>, server: &str) {
    match result {
        Err(StoreError::EvictingServer { server: named, .. }) if named == server => {}
        other => panic!("expected EvictingServer for {server}, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_with_an_evicting_metadata_server_fails_naming_it_and_the_fix() {
    let metadata = start(MemcachedOptions::metadata()).await;
    let evicting = start(MemcachedOptions::evicting(4)).await;
    let config = MemcachedConfig::new([metadata.addr(), evicting.addr()]);
    let error = MemcachedStore::connect(config).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&evicting.addr()) && message.contains("-M"),
        "{message}"
    );
    assert!(message.contains("result servers"), "{message}");
    assert_refused_as_evicting(Err(error), &evicting.addr());
    // The same server is fine for results.
    let config = MemcachedConfig::new([metadata.addr()]).with_result_servers([evicting.addr()]);
    MemcachedStore::connect(config).await.unwrap();
}

#[tokio::test]
async fn a_server_in_both_pools_is_a_configuration_error() {
    let config = MemcachedConfig::new(["127.0.0.1:1"]).with_result_servers(["127.0.0.1:1"]);
    let error = MemcachedStore::connect(config).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Config { message } if message.contains("127.0.0.1:1")),
        "{error:?}"
    );
}

/// A metadata server that is down at connect is checked before its first
/// use: when it comes up evicting, nothing is written to it.
#[tokio::test]
async fn a_metadata_server_down_at_connect_is_checked_before_its_first_use() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut config = MemcachedConfig::new([addr.clone()]);
    config.timeout = Duration::from_secs(2);
    let store = MemcachedStore::connect(config).await.unwrap();
    let error = store.bump_generation("cm:g:t").await.unwrap_err();
    assert!(matches!(error, StoreError::Connection { .. }), "{error:?}");
    let server = start(MemcachedOptions {
        port: Some(port),
        ..MemcachedOptions::evicting(4)
    })
    .await;
    let error = store
        .append_to_flush_list("cm:f:row", "cm:q:r", TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::EvictingServer { server, .. } if *server == addr),
        "{error:?}"
    );
    assert_eq!(stat(&server, "curr_items"), 0, "something was written");
}

/// Every key goes to its pool: results (and their leases) to the result
/// servers, flush lists, generations and the heartbeat to the metadata
/// servers; a multi-get across both answers in the caller's order.
#[tokio::test]
async fn keys_are_routed_by_kind_and_multi_key_calls_span_both_pools() {
    let metadata = start(MemcachedOptions::metadata()).await;
    let results = start(MemcachedOptions::evicting(16)).await;
    let config = MemcachedConfig::new([metadata.addr()]).with_result_servers([results.addr()]);
    let store = MemcachedStore::connect(config).await.unwrap();
    let only_metadata = MemcachedStore::connect(MemcachedConfig::new([metadata.addr()]))
        .await
        .unwrap();
    assert_eq!(store.server_for_key("cm:q:1"), results.addr());
    assert_eq!(store.server_for_key("cm:f:1"), metadata.addr());

    let LeaseOutcome::Won(lease) = store.get_with_lease("cm:q:1", TTL).await.unwrap() else {
        panic!("lease");
    };
    store
        .append_to_flush_lists(&["cm:f:1", "cm:f:2"], "cm:q:1", TTL)
        .await
        .unwrap();
    assert!(store
        .set_if_lease_valid("cm:q:1", b"rows", TTL, lease)
        .await
        .unwrap());
    let generation = store.create_generation_if_missing("cm:g:t").await.unwrap();
    store
        .write_heartbeat("cm:hb:h", b"beat", TTL)
        .await
        .unwrap();

    let keys = ["cm:hb:h", "cm:q:1", "cm:g:t", "cm:q:missing"];
    let got = store.get_many(&keys).await.unwrap();
    let values: Vec<Option<Vec<u8>>> = got.into_iter().map(|i| i.map(|i| i.value)).collect();
    assert_eq!(
        values,
        [
            Some(b"beat".to_vec()),
            Some(b"rows".to_vec()),
            Some(generation.get().to_string().into_bytes()),
            None
        ]
    );
    // The result is not on the metadata server; the rest is only there.
    let direct = only_metadata.get_many(&keys).await.unwrap();
    let present: Vec<bool> = direct.iter().map(Option::is_some).collect();
    assert_eq!(present, [true, false, true, false]);
    assert_eq!(stat(&results, "curr_items"), 1);

    store
        .delete_many(&["cm:q:1", "cm:f:1", "cm:g:t"])
        .await
        .unwrap();
    assert!(store
        .get_many(&["cm:q:1", "cm:f:1", "cm:g:t", "cm:f:2"])
        .await
        .unwrap()
        .iter()
        .take(3)
        .all(Option::is_none));
}

/// Filling ~100 KB results far past a 4 MB result server evicts results
/// there and nothing on the metadata server: every flush list still lists
/// every result registered in it, evicted or not.
#[tokio::test]
async fn results_are_evicted_on_the_result_server_and_flush_lists_never() {
    let metadata = start(MemcachedOptions::metadata()).await;
    let results = start(MemcachedOptions::evicting(4)).await;
    let config = MemcachedConfig::new([metadata.addr()]).with_result_servers([results.addr()]);
    let store = MemcachedStore::connect(config).await.unwrap();
    let big = vec![b'x'; 100 * 1024];
    for i in 0..120 {
        let (result, list) = (format!("cm:q:{i}"), format!("cm:f:{i}"));
        let LeaseOutcome::Won(lease) = store.get_with_lease(&result, TTL).await.unwrap() else {
            panic!("lease {i}");
        };
        store
            .append_to_flush_list(&list, &result, TTL)
            .await
            .unwrap();
        assert!(store
            .set_if_lease_valid(&result, &big, TTL, lease)
            .await
            .unwrap());
    }
    assert!(stat(&results, "evictions") > 0, "no result was evicted");
    assert_eq!(stat(&metadata, "evictions"), 0);
    let lists: Vec<String> = (0..120).map(|i| format!("cm:f:{i}")).collect();
    let refs: Vec<&str> = lists.iter().map(String::as_str).collect();
    for (i, snapshot) in store
        .read_flush_lists(&refs)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(snapshot.members, [format!("cm:q:{i}")]);
    }
}

/// Writes `size`-byte items until the server refuses one; that error.
async fn fill_until_refused(store: &MemcachedStore, name: &str, size: usize) -> StoreError {
    let filler = vec![b'f'; size];
    for i in 0..200_000 {
        let key = format!("cm:hb:{name}{i}");
        if let Err(error) = store.write_heartbeat(&key, &filler, TTL).await {
            return error;
        }
    }
    panic!("a 2 MB server took 200 000 items of {size} bytes");
}

/// A metadata server run with `-M` and no room left answers writes with
/// `SERVER_ERROR out of memory`: the store reports it, evicts nothing, and
/// what was stored stays.
#[tokio::test]
async fn a_full_metadata_server_refuses_appends_with_an_error_and_evicts_nothing() {
    let metadata = start(MemcachedOptions {
        memory_mb: Some(2),
        ..MemcachedOptions::metadata()
    })
    .await;
    let store = MemcachedStore::connect(MemcachedConfig::new([metadata.addr()]))
        .await
        .unwrap();
    store
        .append_to_flush_list("cm:f:first", "cm:q:r", TTL)
        .await
        .unwrap();
    // Big items take the free pages, then items the size of a new flush
    // list fill the last page of their slab class.
    let refused = fill_until_refused(&store, "big", 1000).await;
    assert!(refused.to_string().contains("out of memory"), "{refused}");
    fill_until_refused(&store, "small", 8).await;
    let error = store
        .append_to_flush_list("cm:f:new", "cm:q:r", TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Server { message } if message.contains("out of memory"))
            || matches!(error, StoreError::NotStored { .. }),
        "{error:?}"
    );
    assert_eq!(stat(&metadata, "evictions"), 0);
    assert_eq!(
        store.read_flush_list("cm:f:first").await.unwrap().members,
        ["cm:q:r"]
    );
}
