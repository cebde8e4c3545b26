//! Keys built by the key scheme from hostile table names and values are
//! accepted by a real memcached, for every operation both sides use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cm_keys::{CanonicalValue, KeySpace, TableName};
use cm_store::{CacheStore, LeaseOutcome, MemcachedConfig, MemcachedStore};
use cm_testkit::TestMemcached;

#[tokio::test]
async fn keys_from_hostile_names_and_values_work_on_memcached() {
    let memcached = TestMemcached::start().unwrap();
    let store = MemcachedStore::connect(MemcachedConfig::new([memcached.addr().to_string()]))
        .await
        .unwrap();
    let space = KeySpace::new(memcached.key_prefix()).unwrap();
    let huge = "x".repeat(1 << 20);
    let names = [
        "plain",
        "with space",
        "quote'\"`",
        "new\nline\r\ttab",
        "ünïcødé 表",
        "nul\0byte",
        &huge,
    ];
    let ttl = Duration::from_secs(60);
    for (i, name) in names.iter().enumerate() {
        let table = TableName::new(*name, *name);
        let value = CanonicalValue::Text((*name).to_string());
        let object = space.object(&table, &[(*name, Some(&value))]);
        let predicate = space.predicate(&table, &[("c", Some(&value)), ("d", None)]);
        let generation = space.table_generation(&table);
        let result = space.result(&[name.as_bytes()]);

        let LeaseOutcome::Won(lease) = store.get_with_lease(result.as_str(), ttl).await.unwrap()
        else {
            panic!("lease for key {i}");
        };
        store
            .append_to_flush_lists(&[object.as_str(), predicate.as_str()], result.as_str(), ttl)
            .await
            .unwrap();
        assert!(store
            .set_if_lease_valid(result.as_str(), b"rows", ttl, lease)
            .await
            .unwrap());
        store
            .create_generation_if_missing(generation.as_str())
            .await
            .unwrap();
        store.bump_generation(generation.as_str()).await.unwrap();

        let lists = store
            .read_flush_lists(&[object.as_str(), predicate.as_str()])
            .await
            .unwrap();
        for list in &lists {
            assert_eq!(list.members, vec![result.as_str().to_string()], "key {i}");
        }
        let got = store.get_many(&[result.as_str()]).await.unwrap();
        assert_eq!(
            got[0].as_ref().map(|item| item.value.as_slice()),
            Some(&b"rows"[..])
        );
        store.delete_many(&[result.as_str()]).await.unwrap();
    }
}
