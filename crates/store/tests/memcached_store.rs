//! The shared store behaviours against real memcached (through the test
//! kit), plus what only memcached has: several servers, routing, dead and
//! unresponsive servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use cm_keys::KeySpace;
use cm_store::{
    CacheStore, CheckedFlushLists, LeaseOutcome, MemcachedConfig, MemcachedStore, StableRendezvous,
    StoreError,
};
use cm_testkit::MemcachedServer;

store_suite!(common::memcached_harness);

/// The same behaviours with results on their own (evicting) servers and
/// metadata on the `-M` one.
mod split_pools {
    use super::common;

    store_suite!(common::split_memcached_harness);
}

const TTL: Duration = Duration::from_secs(60);

async fn start_servers(n: usize) -> Vec<MemcachedServer> {
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| MemcachedServer::start().expect("memcached"))
            .collect()
    })
    .await
    .unwrap()
}

async fn store_on(servers: Vec<String>, timeout: Duration) -> MemcachedStore {
    let mut config = MemcachedConfig::new(servers);
    config.timeout = timeout;
    MemcachedStore::connect(config).await.unwrap()
}

fn is_transport_error(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Connection { .. } | StoreError::Timeout { .. }
    )
}

#[tokio::test]
async fn stopped_server_fails_fast_instead_of_hanging() {
    let server = start_servers(1).await.remove(0);
    let store = store_on(vec![server.addr()], Duration::from_millis(300)).await;
    store.write_heartbeat("hb", b"v", TTL).await.unwrap();
    drop(server);
    let started = Instant::now();
    let reads = store.get_many(&["hb", "q:1"]).await;
    let deletes = store.delete_many(&["q:1"]).await;
    let bump = store.bump_generation("g:t").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    for error in [reads.unwrap_err(), deletes.unwrap_err(), bump.unwrap_err()] {
        assert!(is_transport_error(&error), "{error}");
    }
}

/// A server that accepts connections but never answers: every call ends
/// with `Timeout` after about the configured timeout.
#[tokio::test]
async fn unresponsive_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let timeout = Duration::from_millis(200);
    let store = store_on(vec![addr], timeout).await;
    let started = Instant::now();
    let result = store.delete_many(&["q:1", "q:2"]).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            result,
            Err(StoreError::Timeout {
                operation: "delete_many",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < timeout * 5,
        "took {elapsed:?}"
    );
    let result = store.read_flush_list("f:1").await;
    assert!(
        matches!(
            result,
            Err(StoreError::Timeout {
                operation: "read_flush_lists",
                ..
            })
        ),
        "{result:?}"
    );
    let result = store.clear_flush_list_if_unchanged("f:1", 7).await;
    assert!(
        matches!(
            result,
            Err(StoreError::Timeout {
                operation: "clear_flush_lists_if_unchanged",
                ..
            })
        ),
        "{result:?}"
    );
    drop(listener);
}

/// Checking keys happens before any I/O: a store whose only server is down
/// still answers a bad key with `InvalidKey`, not a connection error.
#[tokio::test]
async fn invalid_key_is_refused_before_any_io() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let store = store_on(vec![addr], Duration::from_millis(300)).await;
    let result = store.delete_many(&["fine", "not fine"]).await;
    assert!(
        matches!(result, Err(StoreError::InvalidKey { .. })),
        "{result:?}"
    );
    let result = store.write_heartbeat("hb", &vec![0; 2 << 20], TTL).await;
    assert!(
        matches!(result, Err(StoreError::ValueTooLarge { .. })),
        "{result:?}"
    );
    assert!(is_transport_error(
        &store.get_many(&["fine"]).await.unwrap_err()
    ));
}

#[tokio::test]
async fn no_servers_is_a_configuration_error() {
    let result = MemcachedStore::connect(MemcachedConfig::new(Vec::<String>::new())).await;
    assert!(matches!(result, Err(StoreError::Config { .. })));
}

/// Keys spread over every server; a multi-get across servers returns
/// everything in key order; every key lives exactly on the server
/// [`StableRendezvous`] names; a store listing the servers in another order
/// routes the same way.
#[tokio::test]
async fn keys_spread_over_servers_and_every_process_agrees_where() {
    let servers = start_servers(3).await;
    let addrs: Vec<String> = servers.iter().map(MemcachedServer::addr).collect();
    let store = store_on(addrs.clone(), Duration::from_secs(5)).await;
    let keys: Vec<String> = (0..90).map(|i| format!("cm:q:{i:04x}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for key in &keys {
        store
            .write_heartbeat(key, key.as_bytes(), TTL)
            .await
            .unwrap();
    }

    let items = store.get_many(&refs).await.unwrap();
    for (key, item) in keys.iter().zip(&items) {
        assert_eq!(item.as_ref().unwrap().value, key.as_bytes());
    }

    let mut per_server = vec![0; 3];
    for (index, addr) in addrs.iter().enumerate() {
        let only = store_on(vec![addr.clone()], Duration::from_secs(5)).await;
        let found = only.get_many(&refs).await.unwrap();
        for (key, item) in keys.iter().zip(found) {
            let owner = store.server_for_key(key);
            assert_eq!(
                StableRendezvous::server_index(key.as_bytes(), &addrs),
                addrs.iter().position(|a| a == owner).unwrap()
            );
            assert_eq!(item.is_some(), owner == addr, "{key} on {addr}");
            per_server[index] += usize::from(item.is_some());
        }
    }
    assert!(
        per_server.iter().all(|&n| n >= 10),
        "unbalanced: {per_server:?}"
    );

    let mut reordered = addrs.clone();
    reordered.rotate_left(1);
    let other = store_on(reordered, Duration::from_secs(5)).await;
    assert_eq!(other.get_many(&refs).await.unwrap(), items);
    other.delete_many(&refs).await.unwrap();
    assert!(store
        .get_many(&refs)
        .await
        .unwrap()
        .iter()
        .all(Option::is_none));
}

/// Flush lists, leases and generations work when their keys live on
/// different servers, and a down server fails only the calls that need it.
#[tokio::test]
async fn operations_span_servers_and_a_down_server_fails_loudly() {
    let mut servers = start_servers(2).await;
    let addrs: Vec<String> = servers.iter().map(MemcachedServer::addr).collect();
    let store = store_on(addrs.clone(), Duration::from_millis(500)).await;
    let lists: Vec<String> = (0..20).map(|i| format!("cm:f:{i}")).collect();
    let refs: Vec<&str> = lists.iter().map(String::as_str).collect();
    store
        .append_to_flush_lists(&refs, "cm:q:r", TTL)
        .await
        .unwrap();
    let read = store.read_flush_lists(&refs).await.unwrap();
    assert!(read.iter().all(|snapshot| snapshot.members == ["cm:q:r"]));
    let clears: Vec<(&str, u64)> = refs
        .iter()
        .zip(&read)
        .map(|(&list, snapshot)| (list, snapshot.cas.unwrap()))
        .collect();
    assert_eq!(
        store.clear_flush_lists_if_unchanged(&clears).await.unwrap(),
        vec![true; lists.len()]
    );
    assert!(store
        .read_flush_lists(&refs)
        .await
        .unwrap()
        .iter()
        .all(|snapshot| snapshot.cas.is_none()));

    // Stop the second server: its keys fail, they do not move to the first.
    let dead = servers[1].addr();
    let on_dead = lists
        .iter()
        .find(|k| store.server_for_key(k) == dead)
        .unwrap();
    let on_live = lists
        .iter()
        .find(|k| store.server_for_key(k) != dead)
        .unwrap();
    drop(servers.pop());
    store
        .append_to_flush_list(on_live, "cm:q:s", TTL)
        .await
        .unwrap();
    let error = store
        .append_to_flush_list(on_dead, "cm:q:s", TTL)
        .await
        .unwrap_err();
    assert!(is_transport_error(&error), "{error}");
    let error = store.delete_many(&[on_live, on_dead]).await.unwrap_err();
    assert!(is_transport_error(&error), "{error}");
}

/// A value another client marked stale (`md <key> I`, which this crate never
/// sends) goes to one lease reader as `Won` (memcached `X` + `W`) and to the
/// others as `Stale` (`X` + `Z`); a plain read does not serve it.
#[tokio::test]
async fn stale_value_goes_to_one_refresher_and_is_served_stale_to_others() {
    let server = start_servers(1).await.remove(0);
    let store = store_on(vec![server.addr()], Duration::from_secs(5)).await;
    let raw = memcache::exp::AsyncMetaClient::connect(server.addr())
        .await
        .unwrap();
    let lease_ttl = Duration::from_secs(30);
    let lease = match store.get_with_lease("q:s", lease_ttl).await.unwrap() {
        LeaseOutcome::Won(lease) => lease,
        other => panic!("{other:?}"),
    };
    assert!(store
        .set_if_lease_valid("q:s", b"old", TTL, lease)
        .await
        .unwrap());
    let invalidated = raw.delete("q:s").invalidate().send().await.unwrap();
    assert!(invalidated.applied());

    let refresher = match store.get_with_lease("q:s", lease_ttl).await.unwrap() {
        LeaseOutcome::Won(lease) => lease,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        store.get_with_lease("q:s", lease_ttl).await.unwrap(),
        LeaseOutcome::Stale(b"old".to_vec())
    );
    assert_eq!(store.get_many(&["q:s"]).await.unwrap(), [None]);
    assert!(store
        .set_if_lease_valid("q:s", b"new", TTL, refresher)
        .await
        .unwrap());
    assert_eq!(
        store.get_with_lease("q:s", lease_ttl).await.unwrap(),
        LeaseOutcome::Hit(b"new".to_vec())
    );
}

#[tokio::test]
async fn a_generation_memcached_will_not_incr_is_bumped_by_replacement() {
    let servers = start_servers(1).await;
    let store = store_on(vec![servers[0].addr()], Duration::from_secs(2)).await;
    // What memcached answers "non-numeric value" for, as it may for a
    // generation of 2^63 or more written by an older version.
    store
        .write_heartbeat("cm:g:unincrementable", b"12x", TTL)
        .await
        .unwrap();
    let bumped = store.bump_generation("cm:g:unincrementable").await.unwrap();
    assert!(bumped.get() < 1 << 63);
    let read = store
        .get_many(&["cm:g:unincrementable"])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(read.value, bumped.get().to_string().into_bytes());
    // It INCRs from then on.
    let again = store.bump_generation("cm:g:unincrementable").await.unwrap();
    assert_eq!(again.get(), bumped.get() + 1);
}

/// With the result key and every list on one server, a fill's two combined
/// steps are one exchange each (one pipelined batch); with a list on
/// another server, the lease (or the appends) must land first, so each
/// step takes two.
#[tokio::test]
async fn combined_fill_steps_pipeline_only_on_one_server() {
    let servers = start_servers(2).await;
    let addrs: Vec<String> = servers.iter().map(MemcachedServer::addr).collect();
    let lease_ttl = Duration::from_secs(30);
    let one = store_on(vec![addrs[0].clone()], Duration::from_secs(5)).await;
    let lists = ["cm:f:one-a", "cm:f:one-b", "cm:f:one-c"];
    let before = one.exchanges();
    let LeaseOutcome::Won(lease) = one
        .lease_and_append("cm:q:one", lease_ttl, &lists, TTL)
        .await
        .unwrap()
    else {
        panic!("no lease");
    };
    assert_eq!(one.exchanges() - before, 1);
    let before = one.exchanges();
    assert!(one
        .append_then_store_if_lease_valid("cm:q:one", b"rows", TTL, lease, &lists, TTL)
        .await
        .unwrap());
    assert_eq!(one.exchanges() - before, 1);

    let two = store_on(addrs.clone(), Duration::from_secs(5)).await;
    let key = "cm:q:two";
    let elsewhere = (0..)
        .map(|i| format!("cm:f:two-{i}"))
        .find(|list| two.server_for_key(list) != two.server_for_key(key))
        .unwrap();
    // An existing list: on a memcached without append vivify (1.6.18), a
    // missing one costs the separate path another exchange to create.
    two.append_to_flush_list(&elsewhere, "cm:q:seed", TTL)
        .await
        .unwrap();
    let before = two.exchanges();
    let LeaseOutcome::Won(lease) = two
        .lease_and_append(key, lease_ttl, &[&elsewhere], TTL)
        .await
        .unwrap()
    else {
        panic!("no lease");
    };
    assert_eq!(two.exchanges() - before, 2);
    let before = two.exchanges();
    assert!(two
        .append_then_store_if_lease_valid(key, b"rows", TTL, lease, &[&elsewhere], TTL)
        .await
        .unwrap());
    assert_eq!(two.exchanges() - before, 2);
    let list = two.read_flush_list(&elsewhere).await.unwrap();
    assert_eq!(list.members, ["cm:q:seed", key]);
    assert_eq!(
        two.get_many(&[key]).await.unwrap()[0]
            .as_ref()
            .unwrap()
            .value,
        b"rows"
    );
}

/// A metadata server that lost its data (`flush_all`, as a restart would)
/// is reported by a checked read of the lists it holds, and only then;
/// written sentinels mark every server whole again (docs/eviction.md).
#[tokio::test]
async fn a_checked_read_reports_a_server_that_lost_its_data() {
    let servers = start_servers(2).await;
    let addrs: Vec<String> = servers.iter().map(MemcachedServer::addr).collect();
    let store = store_on(addrs.clone(), Duration::from_secs(5)).await;
    let space = KeySpace::new("cm").unwrap();
    let lists: Vec<String> = (0..20).map(|i| format!("cm:f:{i:04x}")).collect();
    let lists: Vec<&str> = lists.iter().map(String::as_str).collect();
    store
        .append_to_flush_lists(&lists, "cm:q:1", TTL)
        .await
        .unwrap();
    let lost = |read: &CheckedFlushLists| {
        let mut lost = read.lost_servers.clone();
        lost.sort();
        lost
    };
    let mut every = addrs.clone();
    every.sort();

    // No sentinel written yet: every server read from counts as lost.
    let read = store
        .read_flush_lists_checked(&space, &lists)
        .await
        .unwrap();
    assert_eq!(lost(&read), every);
    store.write_sentinels(&space).await.unwrap();
    let read = store
        .read_flush_lists_checked(&space, &lists)
        .await
        .unwrap();
    assert!(read.lost_servers.is_empty(), "{read:?}");
    assert!(read.lists.iter().all(|list| list.members == ["cm:q:1"]));

    cm_testkit::memcached_flush_all(&addrs[1]).unwrap();
    let on_first: Vec<&str> = lists
        .iter()
        .copied()
        .filter(|list| store.server_for_key(list) == addrs[0])
        .collect();
    assert!(!on_first.is_empty() && on_first.len() < lists.len());
    let read = store
        .read_flush_lists_checked(&space, &on_first)
        .await
        .unwrap();
    assert!(read.lost_servers.is_empty(), "only the servers read from");
    let read = store
        .read_flush_lists_checked(&space, &lists)
        .await
        .unwrap();
    assert_eq!(read.lost_servers, [addrs[1].clone()]);
    for (list, snapshot) in lists.iter().zip(&read.lists) {
        let on_lost = store.server_for_key(list) == addrs[1];
        assert_eq!(snapshot.members.is_empty(), on_lost, "{list}");
    }
    store.write_sentinels(&space).await.unwrap();
    let read = store
        .read_flush_lists_checked(&space, &lists)
        .await
        .unwrap();
    assert!(read.lost_servers.is_empty(), "{read:?}");
}
