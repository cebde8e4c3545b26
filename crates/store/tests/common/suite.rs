//! The behaviours every [`CacheStore`] must have, one async function each,
//! run against memcached and the in-process store alike.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cm_store::{
    read_generation, CacheStore, FlushListSnapshot, Generation, LeaseOutcome, StoreError,
};

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
    // Results and metadata alternate: with split pools the answers of both
    // come back in the caller's order.
    let keys: Vec<String> = (0..5)
        .map(|i| match i % 2 {
            0 => h.key(&format!("q:gm{i}")),
            _ => h.key(&format!("hb:gm{i}")),
        })
        .collect();
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
    let key = h.key("q:lease-race");
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
    let key = h.key("q:lease-fill");
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
    let key = h.key("q:stale-set");
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
    let key = h.key("q:lease-release");
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
    let key = h.key("q:lease-expiry");
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
    let snapshot = h.store.read_flush_list(&list).await.unwrap();
    let members: HashSet<String> = snapshot.members.into_iter().collect();
    assert_eq!(members.len(), 1000);
    for t in 0..50 {
        for i in 0..20 {
            assert!(members.contains(&format!("{}:q:{t}-{i}", h.prefix)));
        }
    }
    let cas = snapshot.cas.expect("the list exists");
    assert!(h
        .store
        .clear_flush_list_if_unchanged(&list, cas)
        .await
        .unwrap());
    assert_eq!(
        h.store.read_flush_list(&list).await.unwrap(),
        FlushListSnapshot::default()
    );
}

/// The invalidator's loop (read, delete the members, clear if unchanged,
/// read again on `false`) racing 16 appenders: every appended member is
/// either in some read result or still in the list at the end.
pub async fn clear_racing_with_appends_loses_nothing(h: &Harness) {
    let list = h.key("f:raced");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The appenders start only once the invalidator is running.
    let start = Arc::new(tokio::sync::Barrier::new(17));
    let invalidator = {
        let store = Arc::clone(&h.store);
        let list = list.clone();
        let done = Arc::clone(&done);
        let start = Arc::clone(&start);
        tokio::spawn(async move {
            let mut read = Vec::<String>::new();
            let (mut reads, mut cleared, mut changed) = (0, 0, 0);
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let snapshot = store.read_flush_list(&list).await.unwrap();
                reads += 1;
                if reads == 1 {
                    start.wait().await;
                }
                // Here the invalidator deletes the members: sometimes at
                // once, sometimes giving the appenders a chance first, so
                // clears both fail and succeed while appends go on.
                read.extend(snapshot.members);
                if reads % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                if let Some(cas) = snapshot.cas {
                    if store
                        .clear_flush_list_if_unchanged(&list, cas)
                        .await
                        .unwrap()
                    {
                        cleared += 1;
                    } else {
                        changed += 1;
                    }
                }
                if finished {
                    break (read, reads, cleared, changed);
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
                // A pause, so the list is sometimes quiet long enough for a
                // clear to succeed while the appends go on.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut seen, reads, cleared, changed) = invalidator.await.unwrap();
    assert!(reads >= 2);
    eprintln!("{reads} reads, {cleared} lists cleared, {changed} changed since their read");
    seen.extend(h.store.read_flush_list(&list).await.unwrap().members);
    let distinct: HashSet<&String> = seen.iter().collect();
    let expected: HashSet<String> = (0..16)
        .flat_map(|t| (0..50).map(move |i| (t, i)))
        .map(|(t, i)| format!("{}:q:{t}-{i}", h.prefix))
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|m| !distinct.contains(m)).collect();
    assert!(missing.is_empty(), "appends lost: {missing:?}");
    // Nothing else shows up. (A member may be read more than once: a list
    // that changed since its read stays in place and is read again.)
    assert_eq!(distinct.len(), expected.len());
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
    let read = h.store.read_flush_lists(&refs(&lists)).await.unwrap();
    assert_eq!(read.len(), 30);
    for (i, snapshot) in read.iter().enumerate() {
        let mut expected = vec![member.clone()];
        if i < 10 {
            expected.push(h.key("q:other"));
        }
        assert_eq!(snapshot.members, expected, "list {i}");
    }
    let clears: Vec<(&str, u64)> = lists
        .iter()
        .zip(&read)
        .map(|(list, snapshot)| (list.as_str(), snapshot.cas.unwrap()))
        .collect();
    assert_eq!(
        h.store
            .clear_flush_lists_if_unchanged(&clears)
            .await
            .unwrap(),
        vec![true; 30]
    );
    assert!(h
        .store
        .read_flush_lists(&refs(&lists))
        .await
        .unwrap()
        .iter()
        .all(|snapshot| snapshot == &FlushListSnapshot::default()));
    h.store
        .append_to_flush_lists(&[], &member, TTL)
        .await
        .unwrap();
    assert!(h.store.read_flush_lists(&[]).await.unwrap().is_empty());
    assert!(h
        .store
        .clear_flush_lists_if_unchanged(&[])
        .await
        .unwrap()
        .is_empty());
}

/// Read, delete the members, clear: with nothing in between, the clear
/// removes the list. A missing list reads as empty with no CAS, and clearing
/// a list that is already gone succeeds.
pub async fn read_then_clear_with_nothing_in_between_clears(h: &Harness) {
    let list = h.key("f:once");
    assert_eq!(
        h.store.read_flush_list(&list).await.unwrap(),
        FlushListSnapshot {
            members: Vec::new(),
            cas: None
        }
    );
    for member in ["q:dup", "q:dup", "q:other", "q:dup"] {
        h.store
            .append_to_flush_list(&list, &h.key(member), TTL)
            .await
            .unwrap();
    }
    let snapshot = h.store.read_flush_list(&list).await.unwrap();
    // Duplicates collapse: deleting a key once is enough.
    assert_eq!(snapshot.members, [h.key("q:dup"), h.key("q:other")]);
    let cas = snapshot.cas.expect("the list exists");
    // A read changes nothing.
    assert_eq!(h.store.read_flush_list(&list).await.unwrap(), snapshot);
    h.store.delete_many(&refs(&snapshot.members)).await.unwrap();
    assert!(h
        .store
        .clear_flush_list_if_unchanged(&list, cas)
        .await
        .unwrap());
    assert_eq!(value_of(&*h.store, &list).await, None);
    assert_eq!(
        h.store.read_flush_list(&list).await.unwrap(),
        FlushListSnapshot::default()
    );
    // Already gone (cleared, expired, evicted): nothing left to clear.
    assert!(h
        .store
        .clear_flush_list_if_unchanged(&list, cas)
        .await
        .unwrap());
}

/// An append between the read and the clear: the clear answers `false` and
/// leaves the list with the new member and the old ones; reading again and
/// clearing with the new CAS then works. Each list of a batch is answered on
/// its own.
pub async fn append_between_read_and_clear_keeps_the_list(h: &Harness) {
    let changed = h.key("f:changed");
    let unchanged = h.key("f:unchanged");
    let gone = h.key("f:gone");
    let old = [h.key("q:old1"), h.key("q:old2")];
    for member in &old {
        h.store
            .append_to_flush_lists(&[&changed, &unchanged, &gone], member, TTL)
            .await
            .unwrap();
    }
    let read = h
        .store
        .read_flush_lists(&[&changed, &unchanged, &gone])
        .await
        .unwrap();
    for snapshot in &read {
        assert_eq!(snapshot.members, old);
    }
    let cas: Vec<u64> = read.iter().map(|s| s.cas.unwrap()).collect();
    // A reader registers a new result in one list; another invalidator
    // clears a third one.
    h.store
        .append_to_flush_list(&changed, &h.key("q:new"), TTL)
        .await
        .unwrap();
    assert!(h
        .store
        .clear_flush_list_if_unchanged(&gone, cas[2])
        .await
        .unwrap());
    let cleared = h
        .store
        .clear_flush_lists_if_unchanged(&[
            (&changed, cas[0]),
            (&unchanged, cas[1]),
            (&gone, cas[2]),
        ])
        .await
        .unwrap();
    assert_eq!(cleared, [false, true, true]);
    let again = h.store.read_flush_list(&changed).await.unwrap();
    assert_eq!(
        again.members,
        [old[0].clone(), old[1].clone(), h.key("q:new")]
    );
    let new_cas = again.cas.unwrap();
    assert_ne!(new_cas, cas[0]);
    // The stale CAS still does not match.
    assert!(!h
        .store
        .clear_flush_list_if_unchanged(&changed, cas[0])
        .await
        .unwrap());
    assert!(h
        .store
        .clear_flush_list_if_unchanged(&changed, new_cas)
        .await
        .unwrap());
    assert_eq!(
        h.store.read_flush_list(&changed).await.unwrap(),
        FlushListSnapshot::default()
    );
    // A list cleared and recreated since the read does not match either.
    h.store
        .append_to_flush_list(&unchanged, &h.key("q:again"), TTL)
        .await
        .unwrap();
    assert!(!h
        .store
        .clear_flush_list_if_unchanged(&unchanged, cas[1])
        .await
        .unwrap());
    assert_eq!(
        h.store.read_flush_list(&unchanged).await.unwrap().members,
        [h.key("q:again")]
    );
}

/// A worker that dies after reading (and deleting some members) but before
/// clearing leaves every member in the list: the replay reads them again.
pub async fn crash_between_read_and_clear_leaves_every_member(h: &Harness) {
    let lists = [h.key("f:crash1"), h.key("f:crash2")];
    let members: Vec<String> = (0..5).map(|i| h.key(&format!("q:crash{i}"))).collect();
    for member in &members {
        h.store
            .append_to_flush_lists(&refs(&lists), member, TTL)
            .await
            .unwrap();
        h.store.write_heartbeat(member, b"rows", TTL).await.unwrap();
    }
    let worker = {
        let store = Arc::clone(&h.store);
        let lists = lists.clone();
        tokio::spawn(async move {
            let read = store.read_flush_lists(&refs(&lists)).await.unwrap();
            // Dies halfway through deleting the members, before any clear.
            store
                .delete_many(&refs(&read[0].members[..2]))
                .await
                .unwrap();
            read
        })
    };
    let before = worker.await.unwrap();
    let after = h.store.read_flush_lists(&refs(&lists)).await.unwrap();
    assert_eq!(after, before, "lists changed without a clear");
    for snapshot in &after {
        assert_eq!(snapshot.members, members);
    }
    // The replay deletes every member, then clears.
    h.store.delete_many(&refs(&after[0].members)).await.unwrap();
    let clears: Vec<(&str, u64)> = lists
        .iter()
        .zip(&after)
        .map(|(list, snapshot)| (list.as_str(), snapshot.cas.unwrap()))
        .collect();
    assert_eq!(
        h.store
            .clear_flush_lists_if_unchanged(&clears)
            .await
            .unwrap(),
        [true, true]
    );
    assert!(h
        .store
        .get_many(&refs(&members))
        .await
        .unwrap()
        .iter()
        .all(Option::is_none));
}

/// A list's TTL restarts with every append, so it outlives its newest member.
pub async fn append_resets_the_flush_list_ttl(h: &Harness) {
    let touched = h.key("f:touched");
    let untouched = h.key("f:untouched");
    // memcached keeps time in whole seconds: an 8 s item expires between 7
    // and 8 s after its write. Margins of a second or more on both sides,
    // so a loaded machine (late sleeps, memcached's clock late) passes too.
    let ttl = Duration::from_secs(8);
    h.store
        .append_to_flush_lists(&[&touched, &untouched], &h.key("q:a"), ttl)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.store
        .append_to_flush_list(&touched, &h.key("q:b"), ttl)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.store.read_flush_list(&untouched).await.unwrap(),
        FlushListSnapshot::default()
    );
    assert_eq!(
        h.store.read_flush_list(&touched).await.unwrap().members,
        [h.key("q:a"), h.key("q:b")]
    );
}

/// The generation under `key`, read through the store's one-key helper.
async fn generation(h: &Harness, key: &str) -> Option<Generation> {
    read_generation(h.store.as_ref(), key).await.unwrap()
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
    for (key, expected) in [(&a, Some(ga)), (&missing, None), (&b, Some(gb))] {
        assert_eq!(generation(h, key).await, expected);
    }
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
    assert_eq!(generation(h, &key).await, Some(after));
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
        generation(h, &key).await,
        Some(Generation(after.get().wrapping_add(10)))
    );
}

pub async fn vanished_generation_never_matches_its_old_snapshot(h: &Harness) {
    let key = h.key("g:vanishing");
    let snapshot = h.store.create_generation_if_missing(&key).await.unwrap();
    h.store.delete_many(&[&key]).await.unwrap();
    assert_eq!(generation(h, &key).await, None);
    let recreated = h.store.create_generation_if_missing(&key).await.unwrap();
    assert_ne!(recreated, snapshot);
    // Bumping a vanished generation also lands on a fresh random value.
    h.store.delete_many(&[&key]).await.unwrap();
    let bumped = h.store.bump_generation(&key).await.unwrap();
    assert_ne!(bumped, recreated);
    assert_ne!(bumped, Generation(recreated.get().wrapping_add(1)));
    assert_eq!(generation(h, &key).await, Some(bumped));
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
        assert_invalid_key(s.read_flush_lists(&[&good, bad]).await);
        assert_invalid_key(
            s.clear_flush_lists_if_unchanged(&[(&good, 1), (bad, 1)])
                .await,
        );
        assert_invalid_key(s.delete_many(&[&good, bad]).await);
        assert_invalid_key(read_generation(s, bad).await);
        assert_invalid_key(s.create_generation_if_missing(bad).await);
        assert_invalid_key(s.bump_generation(bad).await);
        assert_invalid_key(s.write_heartbeat(bad, b"v", TTL).await);
    }
    // Nothing of a refused batch was applied: the valid list got no member.
    assert_eq!(
        s.read_flush_list(&good).await.unwrap(),
        FlushListSnapshot::default()
    );
    // ... and a refused clear cleared nothing.
    s.append_to_flush_list(&good, &good, TTL).await.unwrap();
    let cas = s.read_flush_list(&good).await.unwrap().cas.unwrap();
    assert_invalid_key(
        s.clear_flush_lists_if_unchanged(&[(&good, cas), ("bad key", cas)])
            .await,
    );
    assert_eq!(s.read_flush_list(&good).await.unwrap().members, [good]);
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
    let lease_key = h.key("q:big");
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
    assert_eq!(
        h.store.read_flush_list(&list).await.unwrap().members,
        [member]
    );
}

/// A list at the item size limit: `member`'s appends to it are refused
/// (grown as in [`append_to_a_full_list_is_refused_not_dropped`]).
async fn full_list(h: &Harness, name: &str, member: &str) -> String {
    let list = h.key(name);
    let mut filler = Vec::new();
    while filler.len() + member.len() < h.max_value_bytes - 300 {
        filler.extend_from_slice(member.as_bytes());
        filler.push(b' ');
    }
    h.store.write_heartbeat(&list, &filler, TTL).await.unwrap();
    for _ in 0..40 {
        match h.store.append_to_flush_list(&list, member, TTL).await {
            Ok(()) => {}
            Err(StoreError::NotStored { .. }) => return list,
            Err(other) => panic!("{other}"),
        }
    }
    panic!("appends to {list} never hit the size limit");
}

fn members(lists: &[FlushListSnapshot]) -> Vec<Vec<String>> {
    lists.iter().map(|l| l.members.clone()).collect()
}

/// The combined first step of a fill: the lease, and the result key in
/// every list once it is won; a caller that does not win holds nothing.
pub async fn lease_and_append_registers_the_winner(h: &Harness) {
    let key = h.key("q:lease-append");
    let lists: Vec<String> = (0..3).map(|i| h.key(&format!("f:la{i}"))).collect();
    let outcome = h
        .store
        .lease_and_append(&key, LEASE_TTL, &refs(&lists), TTL)
        .await
        .unwrap();
    let LeaseOutcome::Won(lease) = outcome else {
        panic!("expected to win, got {outcome:?}");
    };
    let read = h.store.read_flush_lists(&refs(&lists)).await.unwrap();
    assert_eq!(members(&read), vec![vec![key.clone()]; 3]);
    let second = h
        .store
        .lease_and_append(&key, LEASE_TTL, &refs(&lists), TTL)
        .await
        .unwrap();
    assert_eq!(second, LeaseOutcome::Wait);
    // The registration protects the lease: deleting the members voids it.
    h.store.delete_many(&[&key]).await.unwrap();
    assert!(!h
        .store
        .set_if_lease_valid(&key, b"late", TTL, lease)
        .await
        .unwrap());
    // No lists: just the lease.
    let alone = h.key("q:lease-alone");
    let outcome = h
        .store
        .lease_and_append(&alone, LEASE_TTL, &[], TTL)
        .await
        .unwrap();
    assert!(matches!(outcome, LeaseOutcome::Won(_)), "{outcome:?}");
}

/// A won lease whose registration fails is given back, and the call fails.
pub async fn lease_and_append_releases_the_lease_when_a_list_refuses(h: &Harness) {
    let key = h.key("q:lease-refused");
    let full = full_list(h, "f:la-full", &key).await;
    let fine = h.key("f:la-fine");
    let result = h
        .store
        .lease_and_append(&key, LEASE_TTL, &[&fine, &full], TTL)
        .await;
    match result {
        Err(StoreError::NotStored { key: refused }) => assert_eq!(refused, full),
        other => panic!("expected NotStored, got {other:?}"),
    }
    won(h.store.as_ref(), &key).await;
}

/// The combined last step of a fill: the result key in every list, then
/// the value if the lease holds.
pub async fn append_then_store_registers_then_stores(h: &Harness) {
    let key = h.key("q:append-store");
    let lists: Vec<String> = (0..3).map(|i| h.key(&format!("f:as{i}"))).collect();
    let lease = won(h.store.as_ref(), &key).await;
    assert!(h
        .store
        .append_then_store_if_lease_valid(&key, b"rows", TTL, lease, &refs(&lists), TTL)
        .await
        .unwrap());
    assert_eq!(value_of(h.store.as_ref(), &key).await.unwrap(), b"rows");
    let read = h.store.read_flush_lists(&refs(&lists)).await.unwrap();
    assert_eq!(members(&read), vec![vec![key.clone()]; 3]);
    // An invalidation in between (the placeholder deleted) voids the store.
    let voided = h.key("q:append-store-voided");
    let lease = won(h.store.as_ref(), &voided).await;
    h.store.delete_many(&[&voided]).await.unwrap();
    assert!(!h
        .store
        .append_then_store_if_lease_valid(&voided, b"stale", TTL, lease, &refs(&lists), TTL)
        .await
        .unwrap());
    assert_eq!(value_of(h.store.as_ref(), &voided).await, None);
}

/// A value whose registration failed is not left stored, whatever order the
/// store sent the commands in.
pub async fn append_then_store_leaves_nothing_when_a_list_refuses(h: &Harness) {
    let key = h.key("q:append-refused");
    let full = full_list(h, "f:as-full", &key).await;
    let fine = h.key("f:as-fine");
    let lease = won(h.store.as_ref(), &key).await;
    let result = h
        .store
        .append_then_store_if_lease_valid(&key, b"rows", TTL, lease, &[&fine, &full], TTL)
        .await;
    match result {
        Err(StoreError::NotStored { key: refused }) => assert_eq!(refused, full),
        other => panic!("expected NotStored, got {other:?}"),
    }
    assert_eq!(value_of(h.store.as_ref(), &key).await, None);
}

/// Many members reach one list, each once, in order.
pub async fn append_members_reach_the_list_in_order(h: &Harness) {
    let list = h.key("f:members");
    let members: Vec<String> = (0..5).map(|i| h.key(&format!("q:m{i}"))).collect();
    h.store
        .append_members_to_flush_list(&list, &refs(&members[..2]), TTL)
        .await
        .unwrap();
    h.store
        .append_members_to_flush_list(&list, &refs(&members[2..]), TTL)
        .await
        .unwrap();
    h.store
        .append_members_to_flush_list(&list, &[], TTL)
        .await
        .unwrap();
    assert_eq!(
        h.store.read_flush_list(&list).await.unwrap().members,
        members
    );
}
