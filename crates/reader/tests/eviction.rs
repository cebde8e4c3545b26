//! Results on a small memcached that evicts, flush lists on one that must
//! not (`-M`): evictions never cost an invalidation, and a full metadata
//! server stops caching without failing a read. See `docs/eviction.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_reader::ReaderOptions;
use cm_store::MemcachedConfig;
use cm_testkit::{MemcachedOptions, MemcachedServer};
use common::{ints, texts, Harness};

/// One row per ~100 KB payload; each row's result is ~100 KB.
const BLOBS: &str = "
CREATE TABLE blob (id int PRIMARY KEY, version int NOT NULL, payload text NOT NULL);
ALTER TABLE blob REPLICA IDENTITY FULL;
INSERT INTO blob SELECT i, 1, repeat(md5(i::text), 3200) FROM generate_series(1, 80) i;
";

const BY_ID: &str = "SELECT id, version, payload FROM blob WHERE id = $1";

async fn start(options: MemcachedOptions) -> MemcachedServer {
    tokio::task::spawn_blocking(move || MemcachedServer::start_with(options).unwrap())
        .await
        .unwrap()
}

fn stat(server: &MemcachedServer, name: &str) -> u64 {
    server.stats().unwrap()[name].parse().unwrap()
}

async fn versions(h: &Harness, id: i32) -> Vec<i32> {
    ints(&h.client.query(BY_ID, &[&id]).await.unwrap(), "version")
}

/// The hole this closes: a result that keeps being read stays cached while
/// memcached evicts around it. Its flush list must survive too, or the next
/// change of its row invalidates nothing.
#[tokio::test]
async fn evictions_on_the_result_server_never_let_a_changed_row_be_served_stale() {
    let metadata = start(MemcachedOptions::metadata()).await;
    let results = start(MemcachedOptions::evicting(4)).await;
    let (metadata_addr, results_addr) = (metadata.addr(), results.addr());
    let h = Harness::with_store(
        BLOBS,
        "",
        move |_| MemcachedConfig::new([metadata_addr]).with_result_servers([results_addr]),
        ReaderOptions::default(),
    )
    .await;
    // 80 results of ~100 KB on a 4 MB server, the hot one read in between.
    for id in 1..=80 {
        assert_eq!(versions(&h, id).await, [1]);
        assert_eq!(versions(&h, 1).await, [1]);
    }
    assert!(stat(&results, "evictions") > 0, "nothing was evicted");
    assert_eq!(stat(&metadata, "evictions"), 0);
    let hits_before = h.hits();
    assert_eq!(versions(&h, 1).await, [1]);
    assert_eq!(h.hits(), hits_before + 1, "the hot result was evicted");

    let applied = h.write("UPDATE blob SET version = 2").await;
    // Every row's flush list still named its result, evicted or not.
    assert_eq!(applied.deleted.len(), 80, "{:?}", applied.deleted.len());
    for id in 1..=80 {
        assert_eq!(versions(&h, id).await, [2], "row {id}");
    }
}

/// A metadata server with `-M` and no room left refuses flush-list
/// appends: the reader answers from the database and stores nothing it
/// could not register, and the metadata server evicts nothing.
#[tokio::test]
async fn a_full_metadata_server_stops_caching_but_reads_stay_right() {
    let metadata = start(MemcachedOptions {
        memory_mb: Some(2),
        ..MemcachedOptions::metadata()
    })
    .await;
    let results = start(MemcachedOptions::evicting(16)).await;
    let (metadata_addr, results_addr) = (metadata.addr(), results.addr());
    let h = Harness::with_store(
        common::SCHEMA,
        common::MAPPING,
        move |_| MemcachedConfig::new([metadata_addr]).with_result_servers([results_addr]),
        ReaderOptions::default(),
    )
    .await;
    const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";
    // Generations and the epoch exist; then the metadata server fills up.
    assert_eq!(
        ints(&h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap(), "id"),
        [10, 11]
    );
    // Big items take the free pages, then every small size class is filled
    // (an item goes to the slab class of its size).
    for size in [1000, 8, 40, 80, 120, 160, 240, 400] {
        fill_until_refused(&h, size).await;
    }

    let before = h.client.metrics();
    for _ in 0..2 {
        let rows = h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap();
        assert_eq!(texts(&rows, "title"), ["B1"]);
    }
    let after = h.client.metrics();
    assert_eq!(
        after.stores, before.stores,
        "a result was stored unregistered"
    );
    assert_eq!(after.hits, before.hits);
    assert!(after.cache_errors > before.cache_errors);
    assert_eq!(stat(&results, "curr_items"), 1, "only the first result");
    assert_eq!(stat(&metadata, "evictions"), 0);
    // A write from another client is still seen.
    h.psql("UPDATE book SET title = 'B1 v2' WHERE id = 20");
    let rows = h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["B1 v2"]);
}

/// Writes `size`-byte metadata items until the server refuses one.
async fn fill_until_refused(h: &Harness, size: usize) {
    let filler = vec![b'f'; size];
    for i in 0..200_000 {
        let key = format!("{}:hb:fill{size}-{i}", h.space.prefix());
        let written = h
            .store
            .write_heartbeat(&key, &filler, std::time::Duration::from_secs(600))
            .await;
        match written {
            Ok(()) => {}
            // A loaded machine may time a write out; that is not the
            // refusal this waits for (the next item tries again).
            Err(cm_store::StoreError::Timeout { .. }) => {}
            Err(error) => {
                assert!(error.to_string().contains("out of memory"), "{error}");
                return;
            }
        }
    }
    panic!("a 2 MB server took 200 000 items of {size} bytes");
}
