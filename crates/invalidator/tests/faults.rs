//! Crashes and outages: nothing is acknowledged before it is applied, and
//! nothing is lost across worker crashes, cache outages, PostgreSQL
//! restarts or a dropped slot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_apply_and_ack_replays_the_transaction() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    worker.kill_9();

    // The worker dies right after deleting the keys of the UPDATE below and
    // before acknowledging it.
    let first = h
        .cache("book 10 before crash", &[h.object("book", 10)])
        .await;
    let before = h.confirmed_flush();
    let mut crashing = h.spawn_worker(true);
    h.psql("UPDATE book SET title = 'crash' WHERE id = 10;");
    let status = crashing.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the crash hook aborted the worker");
    assert!(
        !h.is_cached(&first).await,
        "keys were deleted before the crash"
    );
    assert_eq!(h.confirmed_flush(), before, "nothing acknowledged");

    // A reader caches again in between (the list now holds a new member);
    // the restarted worker replays the unacknowledged UPDATE and flushes it.
    let second = h
        .cache("book 10 after crash", &[h.object("book", 10)])
        .await;
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert!(
        !h.is_cached(&second).await,
        "replayed transaction invalidated again"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.confirmed_flush() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "replay never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_the_ack_loses_nothing() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    let q = h.cache("book 10", &[h.object("book", 10)]).await;
    h.psql("UPDATE book SET title = 'acked' WHERE id = 10;");
    h.wait_applied().await;
    assert!(!h.is_cached(&q).await);
    worker.kill_9();

    // Writes while no worker runs are applied by the next one.
    let q = h.cache("book 11", &[h.object("book", 11)]).await;
    h.psql("UPDATE book SET title = 'while down' WHERE id = 11;");
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert!(!h.is_cached(&q).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_memcached_holds_the_ack_until_it_is_back() {
    let h = Harness::new(
        SCHEMA,
        Options {
            owned_memcached: true,
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let q = h.cache("book 10", &[h.object("book", 10)]).await;
    let pid = h.env.memcached.server().unwrap().pid();
    let before = h.confirmed_flush();

    signal(pid, "STOP");
    h.psql("UPDATE book SET title = 'during outage' WHERE id = 10;");
    let written = h.psql("SELECT pg_current_wal_lsn()");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = h.confirmed_flush();
    let written: cm_pgoutput::Lsn = written.trim().parse().unwrap();
    assert!(during < written, "no LSN past the write acknowledged while memcached was down ({before} -> {during}, write at {written})");
    signal(pid, "CONT");

    h.wait_applied().await;
    assert!(
        !h.is_cached(&q).await,
        "applied once memcached answered again"
    );
    // The acknowledgement follows with the next status update.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.confirmed_flush() < written {
        assert!(std::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_during_writes_lose_nothing() {
    let mut h = Harness::new(
        SCHEMA,
        Options {
            owned_pg: true,
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let mut cached = Vec::new();
    for (round, mode) in [cm_testkit::StopMode::Fast, cm_testkit::StopMode::Immediate]
        .into_iter()
        .enumerate()
    {
        let id = 100 + round as i64;
        h.psql(&format!("INSERT INTO book VALUES ({id}, 1, 'draft', 'x');"));
        // The INSERT's own invalidation must land before the fill, or it
        // voids the fill's lease (the race the lease exists to lose).
        h.wait_applied().await;
        cached.push(
            h.cache(&format!("book {id}"), &[h.object("book", id)])
                .await,
        );
        h.psql(&format!(
            "UPDATE book SET title = 'before restart' WHERE id = {id};"
        ));
        let cluster = h.env.pg.cluster_mut().unwrap();
        cluster.stop(mode).unwrap();
        cluster.start_again().unwrap();
        h.psql(&format!(
            "UPDATE book SET title = 'after restart' WHERE id = {id};"
        ));
    }
    h.wait_applied().await;
    for q in &cached {
        assert!(!h.is_cached(q).await, "0 stale after the fence");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_and_a_dropped_slot_bump_the_epoch() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let epoch_key = h.space.epoch();
    let after_setup = h.generation(&epoch_key).await;
    assert!(
        after_setup.is_some(),
        "setup flushes for the slot it created"
    );
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let first = h.generation(&epoch_key).await;
    assert_ne!(first, after_setup, "first start (no worker state) bumps it");

    // The worker reconnects quickly; terminate its walsender and drop the
    // slot until the drop wins the race.
    let drop_sql = format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{0}';
         SELECT pg_sleep(0.05);
         SELECT pg_drop_replication_slot('{0}');",
        h.slot
    );
    let mut tries = 0;
    while let Err(error) = h.env.pg.psql(&drop_sql) {
        tries += 1;
        assert!(tries < 50, "could not drop the slot: {error}");
    }
    // The worker reconnects, finds no slot, creates one and bumps the epoch.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.generation(&epoch_key).await == first {
        assert!(std::time::Instant::now() < deadline, "epoch not bumped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.wait_applied().await;
    let exists = h.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
        h.slot
    ));
    assert_eq!(exists.trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_without_acknowledging_more() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    let (status, stderr) = worker.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {stderr}");
    let active = h.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND active",
        h.slot
    ));
    assert_eq!(active.trim(), "0", "the walsender was released (CopyDone)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_waits_for_the_slot_and_takes_over() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let mut first = h.spawn_worker(false);
    h.wait_applied().await;
    // The slot is the leader lock: the second worker gets 55006 and waits.
    let _second = h.spawn_worker(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let q = h.cache("book 10", &[h.object("book", 10)]).await;
    h.psql("UPDATE book SET title = 'leader' WHERE id = 10;");
    h.wait_applied().await;
    assert!(!h.is_cached(&q).await);

    first.kill_9();
    let q = h.cache("book 11", &[h.object("book", 11)]).await;
    h.psql("UPDATE book SET title = 'successor' WHERE id = 11;");
    h.wait_applied().await;
    assert!(!h.is_cached(&q).await, "the waiting worker took over");
}
