//! The behaviours every [`CacheStore`] must have, one async function each,
//! run against memcached and the in-process store alike.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cm_store::{CacheStore, Generation, LeaseOutcome, StoreError};
use tokio::sync::Mutex;

use super::Harness;

const TTL: Duration = Duration::from_secs(60);
const LEASE_TTL: Duration = Duration::from_secs(30);

fn refs(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

async fn value_of(store: &dyn CacheStore, key: &str) -> Option<Vec<u8>> {
    let mut items = store.get_many(&[key]).await.unwrap();
    items.pop().unwrap().map(|item| item.value)
}

async fn won(store: &dyn CacheStore, key: &str) -> cm_store::Lease {
    match store.get_with_lease(key, LEASE_TTL).await.unwrap() {
        LeaseOutcome::Won(lease) => lease,
        other => panic!("expected to win the lease on {key}, got {other:?}"),
    }
}

pub async fn get_many_returns_values_in_key_order_with_misses(h: &Harness) {
    let keys: Vec<String> = (0..5).map(|i| h.key(&format!("gm{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        if i != 2 {
            h.store
                .write_heartbeat(key, format!("v{i}").as_bytes(), TTL)
                .await
                .unwrap();
        }
    }
    let items = h.store.get_many(&refs(&keys)).await.unwrap();
    let values: Vec<Option<Vec<u8>>> = items
        .iter()
        .map(|i| i.as_ref().map(|i| i.value.clone()))
        .collect();
    assert_eq!(
        values,
        [
            Some(b"v0".to_vec()),
            Some(b"v1".to_vec()),
            None,
            Some(b"v3".to_vec()),
            Some(b"v4".to_vec())
        ]
    );
    assert!(h.store.get_many(&[]).await.unwrap().is_empty());
    // The same key twice is answered twice.
    let twice = h.store.get_many(&[&keys[0], &keys[0]]).await.unwrap();
    assert_eq!(twice[0], twice[1]);
}

pub async fn first_lease_read_wins_and_concurrent_ones_wait(h: &Harness) {
    let key = h.key("lease-race");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = Arc::clone(&h.store);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            store.get_with_lease(&key, LEASE_TTL).await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            LeaseOutcome::Won(_) => winners += 1,
            LeaseOutcome::Wait => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    // A placeholder is not a value.
    assert_eq!(value_of(&*h.store, &key).await, None);
}

pub async fn filled_lease_turns_into_hits(h: &Harness) {
    let key = h.key("lease-fill");
    let lease = won(&*h.store, &key).await;
    assert!(h
        .store
        .set_if_lease_valid(&key, b"rows", TTL, lease)
        .await
        .unwrap());
    assert_eq!(
        h.store.get_with_lease(&key, LEASE_TTL).await.unwrap(),
        LeaseOutcome::Hit(b"rows".to_vec())
    );
    assert_eq!(value_of(&*h.store, &key).await, Some(b"rows".to_vec()));
    // A lease is good for one fill only.
    assert!(!h
        .store
        .set_if_lease_valid(&key, b"again", TTL, lease)
        .await
        .unwrap());
    assert_eq!(value_of(&*h.store, &key).await, Some(b"rows".to_vec()));
}

/// The stale-set race: a reader takes the lease and queries old data, the
/// invalidator deletes the key, the reader's fill must then store nothing.
pub async fn delete_during_fill_voids_the_lease(h: &Harness) {
    let key = h.key("stale-set");
    let lease = won(&*h.store, &key).await;
    h.store.delete_many(&[&key]).await.unwrap();
    assert!(!h
        .store
        .set_if_lease_valid(&key, b"old rows", TTL, lease)
        .await
        .unwrap());
    assert_eq!(value_of(&*h.store, &key).await, None);
    // Also when another reader has taken a new lease in between.
    let lease = won(&*h.store, &key).await;
    h.store.delete_many(&[&key]).await.unwrap();
    let newer = won(&*h.store, &key).await;
    assert_ne!(lease, newer);
    assert!(!h
        .store
        .set_if_lease_valid(&key, b"old rows", TTL, lease)
        .await
        .unwrap());
    assert!(h
        .store
        .set_if_lease_valid(&key, b"new rows", TTL, newer)
        .await
        .unwrap());
    assert_eq!(value_of(&*h.store, &key).await, Some(b"new rows".to_vec()));
}

pub async fn released_lease_lets_the_next_reader_win(h: &Harness) {
    let key = h.key("lease-release");
    let lease = won(&*h.store, &key).await;
    assert_eq!(
        h.store.get_with_lease(&key, LEASE_TTL).await.unwrap(),
        LeaseOutcome::Wait
    );
    h.store.release_lease(&key, lease).await.unwrap();
    let next = won(&*h.store, &key).await;
    // Releasing a stale lease does not touch someone else's.
    h.store.release_lease(&key, lease).await.unwrap();
    assert_eq!(
        h.store.get_with_lease(&key, LEASE_TTL).await.unwrap(),
        LeaseOutcome::Wait
    );
    assert!(h
        .store
        .set_if_lease_valid(&key, b"v", TTL, next)
        .await
        .unwrap());
}

pub async fn lease_placeholder_expires_after_its_ttl(h: &Harness) {
    let key = h.key("lease-expiry");
    let first = match h
        .store
        .get_with_lease(&key, Duration::from_secs(1))
        .await
        .unwrap()
    {
        LeaseOutcome::Won(lease) => lease,
        other => panic!("{other:?}"),
    };
    // memcached's clock ticks once a second: a 1 s item is gone within 1 s
    // (a little more on a busy machine).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = won(&*h.store, &key).await;
    assert_ne!(first, second);
    assert!(!h
        .store
        .set_if_lease_valid(&key, b"late", TTL, first)
        .await
        .unwrap());
}

pub async fn heartbeat_expires_after_its_ttl(h: &Harness) {
    let key = h.key("hb");
    h.store
        .write_heartbeat(&key, b"0/1548E98 1700000000", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        value_of(&*h.store, &key).await,
        Some(b"0/1548E98 1700000000".to_vec())
    );
    h.store
        .write_heartbeat(&key, b"0/1548F00 1700000001", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        value_of(&*h.store, &key).await,
        Some(b"0/1548F00 1700000001".to_vec())
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(value_of(&*h.store, &key).await, None);
}

pub async fn concurrent_appends_all_survive(h: &Harness) {
    let list = h.key("f:hot");
    let mut tasks = Vec::new();
    for t in 0..50 {
        let store = Arc::clone(&h.store);
        let list = list.clone();
        let prefix = h.prefix.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let member = format!("{prefix}:q:{t}-{i}");
                store
                    .append_to_flush_list(&list, &member, TTL)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let members: HashSet<String> = h
        .store
        .take_flush_list(&list)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(members.len(), 1000);
    for t in 0..50 {
        for i in 0..20 {
            assert!(members.contains(&format!("{}:q:{t}-{i}", h.prefix)));
        }
    }
    assert!(h.store.take_flush_list(&list).await.unwrap().is_empty());
}

/// Every appended member is either in some take's result or still in the
/// list afterwards: the read-and-clear never drops a concurrent append.
pub async fn take_racing_with_appends_loses_nothing(h: &Harness) {
    let list = h.key("f:raced");
    let taken = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The appenders start only once the taker is running.
    let start = Arc::new(tokio::sync::Barrier::new(17));
    let taker = {
        let store = Arc::clone(&h.store);
        let list = list.clone();
        let taken = Arc::clone(&taken);
        let done = Arc::clone(&done);
        let start = Arc::clone(&start);
        tokio::spawn(async move {
            let mut takes = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let members = store.take_flush_list(&list).await.unwrap();
                taken.lock().await.extend(members);
                takes += 1;
                if takes == 1 {
                    start.wait().await;
                }
                if finished {
                    break takes;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut appenders = Vec::new();
    for t in 0..16 {
        let store = Arc::clone(&h.store);
        let list = list.clone();
        let prefix = h.prefix.clone();
        let start = Arc::clone(&start);
        appenders.push(tokio::spawn(async move {
            start.wait().await;
            for i in 0..50 {
                store
                    .append_to_flush_list(&list, &format!("{prefix}:q:{t}-{i}"), TTL)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let takes = taker.await.unwrap();
    assert!(takes >= 2);
    let mut seen: Vec<String> = taken.lock().await.clone();
    seen.extend(h.store.take_flush_list(&list).await.unwrap());
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 16 * 50, "appends lost");
    // Nothing else shows up. (A member may be returned twice: a list that
    // stays contended through every retry is returned but not cleared.)
    for member in &distinct {
        assert!(member.starts_with(&format!("{}:q:", h.prefix)), "{member}");
    }
}

pub async fn append_registers_member_in_every_list(h: &Harness) {
    let lists: Vec<String> = (0..30).map(|i| h.key(&format!("f:obj{i}"))).collect();
    let member = h.key("q:result");
    h.store
        .append_to_flush_lists(&refs(&lists), &member, TTL)
        .await
        .unwrap();
    h.store
        .append_to_flush_lists(&refs(&lists[..10]), &h.key("q:other"), TTL)
        .await
        .unwrap();
    let taken = h.store.take_flush_lists(&refs(&lists)).await.unwrap();
    assert_eq!(taken.len(), 30);
    for (i, members) in taken.iter().enumerate() {
        let mut expected = vec![member.clone()];
        if i < 10 {
            expected.push(h.key("q:other"));
        }
        assert_eq!(members, &expected, "list {i}");
    }
    h.store
        .append_to_flush_lists(&[], &member, TTL)
        .await
        .unwrap();
}

pub async fn take_of_missing_list_is_empty_and_take_clears(h: &Harness) {
    let list = h.key("f:once");
    assert!(h.store.take_flush_list(&list).await.unwrap().is_empty());
    for _ in 0..3 {
        h.store
            .append_to_flush_list(&list, &h.key("q:dup"), TTL)
            .await
            .unwrap();
    }
    // Duplicates collapse: deleting a key once is enough.
    assert_eq!(
        h.store.take_flush_list(&list).await.unwrap(),
        [h.key("q:dup")]
    );
    assert!(h.store.take_flush_list(&list).await.unwrap().is_empty());
    assert_eq!(value_of(&*h.store, &list).await, None);
}

/// A list's TTL restarts with every append, so it outlives its newest member.
pub async fn append_resets_the_flush_list_ttl(h: &Harness) {
    let touched = h.key("f:touched");
    let untouched = h.key("f:untouched");
    let ttl = Duration::from_secs(4);
    h.store
        .append_to_flush_lists(&[&touched, &untouched], &h.key("q:a"), ttl)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.store
        .append_to_flush_list(&touched, &h.key("q:b"), ttl)
        .await
        .unwrap();
    // memcached expires a 4 s item between 3 and 4 s after its write.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        h.store.take_flush_list(&untouched).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        h.store.take_flush_list(&touched).await.unwrap(),
        [h.key("q:a"), h.key("q:b")]
    );
}

pub async fn generation_create_is_random_and_stable(h: &Harness) {
    let a = h.key("g:a");
    let b = h.key("g:b");
    let ga = h.store.create_generation_if_missing(&a).await.unwrap();
    let gb = h.store.create_generation_if_missing(&b).await.unwrap();
    assert_ne!(ga, gb, "generations must start random");
    assert!(ga.get() > 1 || gb.get() > 1);
    assert_eq!(h.store.create_generation_if_missing(&a).await.unwrap(), ga);
    let missing = h.key("g:missing");
    assert_eq!(
        h.store.read_generations(&[&a, &missing, &b]).await.unwrap(),
        [Some(ga), None, Some(gb)]
    );
}

pub async fn concurrent_generation_creators_agree(h: &Harness) {
    let key = h.key("g:contended");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&h.store);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            store.create_generation_if_missing(&key).await.unwrap()
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        seen.insert(task.await.unwrap());
    }
    assert_eq!(seen.len(), 1, "creators disagree: {seen:?}");
}

pub async fn bump_changes_the_generation(h: &Harness) {
    let key = h.key("g:bumped");
    let before = h.store.create_generation_if_missing(&key).await.unwrap();
    let after = h.store.bump_generation(&key).await.unwrap();
    assert_eq!(after, Generation(before.get().wrapping_add(1)));
    assert_eq!(
        h.store.read_generations(&[&key]).await.unwrap(),
        [Some(after)]
    );
    // Concurrent bumps are all counted.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = Arc::clone(&h.store);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            store.bump_generation(&key).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        h.store.read_generations(&[&key]).await.unwrap(),
        [Some(Generation(after.get().wrapping_add(10)))]
    );
}

pub async fn vanished_generation_never_matches_its_old_snapshot(h: &Harness) {
    let key = h.key("g:vanishing");
    let snapshot = h.store.create_generation_if_missing(&key).await.unwrap();
    h.store.delete_many(&[&key]).await.unwrap();
    assert_eq!(h.store.read_generations(&[&key]).await.unwrap(), [None]);
    let recreated = h.store.create_generation_if_missing(&key).await.unwrap();
    assert_ne!(recreated, snapshot);
    // Bumping a vanished generation also lands on a fresh random value.
    h.store.delete_many(&[&key]).await.unwrap();
    let bumped = h.store.bump_generation(&key).await.unwrap();
    assert_ne!(bumped, recreated);
    assert_ne!(bumped, Generation(recreated.get().wrapping_add(1)));
    assert_eq!(
        h.store.read_generations(&[&key]).await.unwrap(),
        [Some(bumped)]
    );
}

pub async fn delete_many_with_missing_keys_succeeds(h: &Harness) {
    let keys: Vec<String> = (0..40).map(|i| h.key(&format!("q:del{i}"))).collect();
    for key in keys.iter().step_by(3) {
        h.store.write_heartbeat(key, b"x", TTL).await.unwrap();
    }
    h.store.delete_many(&refs(&keys)).await.unwrap();
    assert!(h
        .store
        .get_many(&refs(&keys))
        .await
        .unwrap()
        .iter()
        .all(Option::is_none));
    h.store.delete_many(&refs(&keys)).await.unwrap();
    h.store.delete_many(&[]).await.unwrap();
}

fn assert_invalid_key<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::InvalidKey { .. })),
        "expected InvalidKey, got {result:?}"
    );
}

pub async fn invalid_keys_are_rejected(h: &Harness) {
    let good = h.key("ok");
    let long = "k".repeat(251);
    let s = &*h.store;
    for bad in [
        "",
        "has space",
        "new\nline",
        "tab\t",
        long.as_str(),
        "ünïcode",
    ] {
        assert_invalid_key(s.get_many(&[&good, bad]).await);
        assert_invalid_key(s.get_with_lease(bad, LEASE_TTL).await);
        assert_invalid_key(
            s.set_if_lease_valid(bad, b"v", TTL, cm_store::Lease::new(1))
                .await,
        );
        assert_invalid_key(s.release_lease(bad, cm_store::Lease::new(1)).await);
        assert_invalid_key(s.append_to_flush_list(bad, &good, TTL).await);
        assert_invalid_key(s.append_to_flush_list(&good, bad, TTL).await);
        assert_invalid_key(s.take_flush_list(bad).await);
        assert_invalid_key(s.delete_many(&[&good, bad]).await);
        assert_invalid_key(s.read_generations(&[bad]).await);
        assert_invalid_key(s.create_generation_if_missing(bad).await);
        assert_invalid_key(s.bump_generation(bad).await);
        assert_invalid_key(s.write_heartbeat(bad, b"v", TTL).await);
    }
    // Nothing of a refused batch was applied: the valid list got no member.
    assert!(s.take_flush_list(&good).await.unwrap().is_empty());
}

pub async fn values_over_the_limit_are_rejected_and_at_the_limit_stored(h: &Harness) {
    // The longest key there is, with the largest value allowed: it must fit.
    let key = format!("{}:{}", h.prefix, "x".repeat(250 - h.prefix.len() - 1));
    assert_eq!(key.len(), 250);
    let max = vec![b'v'; h.max_value_bytes];
    h.store.write_heartbeat(&key, &max, TTL).await.unwrap();
    assert_eq!(
        value_of(&*h.store, &key).await.map(|v| v.len()),
        Some(max.len())
    );

    let over = vec![b'v'; h.max_value_bytes + 1];
    let result = h.store.write_heartbeat(&key, &over, TTL).await;
    assert!(
        matches!(result, Err(StoreError::ValueTooLarge { len, limit, .. }) if len == over.len() && limit == h.max_value_bytes),
        "{result:?}"
    );
    let lease_key = h.key("big");
    let lease = won(&*h.store, &lease_key).await;
    assert!(matches!(
        h.store
            .set_if_lease_valid(&lease_key, &over, TTL, lease)
            .await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    // The refused fill left the lease intact.
    assert!(h
        .store
        .set_if_lease_valid(&lease_key, &max, TTL, lease)
        .await
        .unwrap());
}

/// A flush list that reached the item size limit refuses the append with an
/// error: the reader must then not store the result it could not register.
pub async fn append_to_a_full_list_is_refused_not_dropped(h: &Harness) {
    let list = h.key("f:full");
    let member = h.key(&format!("q:{}", "m".repeat(200)));
    h.store
        .append_to_flush_list(&list, &member, TTL)
        .await
        .unwrap();
    // Grow the list to just under the limit with one big write of members.
    let mut filler = Vec::new();
    while filler.len() + member.len() < h.max_value_bytes - 300 {
        filler.extend_from_slice(member.as_bytes());
        filler.push(b' ');
    }
    h.store.write_heartbeat(&list, &filler, TTL).await.unwrap();
    let mut refused = None;
    for i in 0..40 {
        match h.store.append_to_flush_list(&list, &member, TTL).await {
            Ok(()) => {}
            Err(StoreError::NotStored { key }) => {
                assert_eq!(key, list);
                refused = Some(i);
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused.is_some(), "appends never hit the size limit");
    assert_eq!(h.store.take_flush_list(&list).await.unwrap(), [member]);
}
