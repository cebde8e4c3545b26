//! Shared by the store test binaries: the [`Harness`] every behaviour runs
//! on, the behaviours themselves ([`suite`]) and [`store_suite!`], which
//! turns each behaviour into a test for one store implementation.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod suite;

use std::sync::Arc;
use std::time::Duration;

use cm_store::{CacheStore, MemcachedConfig, MemcachedStore, MemoryStore, MemoryStoreConfig};
use cm_testkit::{MemcachedServer, TestMemcached};

/// A store under test, a key prefix no other test uses, and whatever keeps
/// the store's server alive.
pub struct Harness {
    pub store: Arc<dyn CacheStore>,
    pub prefix: String,
    pub max_value_bytes: usize,
    _memcached: Option<TestMemcached>,
    _result_server: Option<MemcachedServer>,
}

impl Harness {
    /// `{prefix}:{name}`: a name starting `q:` makes a result key, which
    /// split pools send to the result servers; any other, metadata.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

/// Generous, so a loaded test machine does not turn into flaky timeouts; the
/// timeout tests set their own.
pub const SUITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`MemcachedStore`] on the test kit's memcached.
pub async fn memcached_harness() -> Harness {
    let memcached = tokio::task::spawn_blocking(TestMemcached::start)
        .await
        .unwrap()
        .expect("memcached for the test");
    let config = MemcachedConfig::new([memcached.addr()]);
    connected(config, memcached, None).await
}

/// A [`MemcachedStore`] with split pools: metadata on the test kit's
/// memcached (`-M`), results on a memcached of its own that evicts.
pub async fn split_memcached_harness() -> Harness {
    let (memcached, results) = tokio::task::spawn_blocking(|| {
        (
            TestMemcached::start().expect("memcached for metadata"),
            MemcachedServer::start_evicting(64).expect("memcached for results"),
        )
    })
    .await
    .unwrap();
    let config = MemcachedConfig::new([memcached.addr()]).with_result_servers([results.addr()]);
    connected(config, memcached, Some(results)).await
}

/// A harness over a store connected with `config` (given the suite's
/// timeout), keeping the servers it uses alive.
async fn connected(
    mut config: MemcachedConfig,
    memcached: TestMemcached,
    results: Option<MemcachedServer>,
) -> Harness {
    config.timeout = SUITE_TIMEOUT;
    let max_value_bytes = config.max_value_bytes();
    let store = MemcachedStore::connect(config).await.unwrap();
    Harness {
        store: Arc::new(store),
        prefix: memcached.key_prefix().to_string(),
        max_value_bytes,
        _memcached: Some(memcached),
        _result_server: results,
    }
}

/// A [`MemoryStore`] with default limits.
pub async fn memory_harness() -> Harness {
    let config = MemoryStoreConfig::default();
    let max_value_bytes = config.max_value_bytes;
    Harness {
        store: Arc::new(MemoryStore::new(config)),
        prefix: "mem".to_string(),
        max_value_bytes,
        _memcached: None,
        _result_server: None,
    }
}

/// One `#[tokio::test]` per behaviour of [`suite`], each on a fresh harness
/// from the given async constructor.
macro_rules! store_suite {
    ($harness:path) => {
        store_suite!(@each $harness;
            get_many_returns_values_in_key_order_with_misses,
            first_lease_read_wins_and_concurrent_ones_wait,
            filled_lease_turns_into_hits,
            delete_during_fill_voids_the_lease,
            released_lease_lets_the_next_reader_win,
            lease_placeholder_expires_after_its_ttl,
            heartbeat_expires_after_its_ttl,
            concurrent_appends_all_survive,
            clear_racing_with_appends_loses_nothing,
            append_registers_member_in_every_list,
            read_then_clear_with_nothing_in_between_clears,
            append_between_read_and_clear_keeps_the_list,
            crash_between_read_and_clear_leaves_every_member,
            append_resets_the_flush_list_ttl,
            append_to_a_full_list_is_refused_not_dropped,
            lease_and_append_registers_the_winner,
            lease_and_append_releases_the_lease_when_a_list_refuses,
            append_then_store_registers_then_stores,
            append_then_store_leaves_nothing_when_a_list_refuses,
            append_members_reach_the_list_in_order,
            generation_create_is_random_and_stable,
            concurrent_generation_creators_agree,
            bump_changes_the_generation,
            vanished_generation_never_matches_its_old_snapshot,
            delete_many_with_missing_keys_succeeds,
            invalid_keys_are_rejected,
            values_over_the_limit_are_rejected_and_at_the_limit_stored
        );
    };
    (@each $harness:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness().await;
                common::suite::$name(&harness).await;
            }
        )*
    };
}
