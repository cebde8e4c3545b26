//! A slot that is not the one the worker left flushes the whole cache; the
//! same slot after a stop does not; a misconfigured instance exits before it
//! touches the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs the worker until it is applying, writes, and stops it with SIGTERM.
async fn run_once_and_stop(h: &Harness) {
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    h.psql("UPDATE book SET title = 'seen' WHERE id = 10;");
    h.wait_applied().await;
    let (status, stderr) = worker.terminate();
    assert!(status.success(), "clean stop: {stderr}");
}

async fn epoch(h: &Harness) -> Option<u64> {
    h.generation(&h.space.epoch()).await
}

/// The raw worker state record.
async fn worker_state(h: &Harness) -> Option<Vec<u8>> {
    let key = h.space.worker_state();
    let item = h.store.get_many(&[key.as_str()]).await.unwrap().remove(0);
    item.map(|item| item.value)
}

fn drop_slot(h: &Harness) {
    h.psql(&format!("SELECT pg_drop_replication_slot('{}');", h.slot));
}

/// Runs `cm-invalidator run` expecting it to exit by itself; returns its
/// status and stderr.
fn run_until_exit(h: &Harness) -> (ExitStatus, String) {
    let mut child = h
        .command(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("run did not exit on a misconfiguration");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_recreated_by_setup_while_stopped_flushes_the_cache_in_setup_and_run() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    run_once_and_stop(&h).await;
    let before = epoch(&h).await;
    assert!(before.is_some());

    drop_slot(&h);
    h.psql("UPDATE book SET title = 'unseen' WHERE id = 10;");
    let out = h.run_cli(&["setup"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("flushed the cache"), "{stdout}");
    let after_setup = epoch(&h).await;
    assert_ne!(after_setup, before, "setup bumps the epoch");

    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert_ne!(
        epoch(&h).await,
        after_setup,
        "run finds a slot confirmed past its bound and bumps again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_recreated_by_hand_while_stopped_flushes_the_cache() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    run_once_and_stop(&h).await;
    let before = epoch(&h).await;

    drop_slot(&h);
    h.psql("UPDATE book SET title = 'unseen' WHERE id = 10;");
    h.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        h.slot
    ));
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert_ne!(epoch(&h).await, before, "no result cached before is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_or_a_crash_and_a_restart_keep_the_epoch() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    run_once_and_stop(&h).await;
    let first = epoch(&h).await;
    let confirmed = h.confirmed_flush();

    h.psql("UPDATE book SET title = 'while stopped' WHERE id = 11;");
    let mut worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert_eq!(epoch(&h).await, first, "restart after SIGTERM");
    // Confirmations go on past the bound persisted at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.confirmed_flush() <= confirmed {
        assert!(Instant::now() < deadline, "nothing confirmed after restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    worker.kill_9();
    h.psql("UPDATE book SET title = 'while crashed' WHERE id = 11;");
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert_eq!(epoch(&h).await, first, "restart after kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_slot_makes_run_exit_with_its_error_and_keeps_the_epoch() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    run_once_and_stop(&h).await;
    let before = epoch(&h).await;
    let state_before = worker_state(&h).await;

    drop_slot(&h);
    h.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'test_decoding');",
        h.slot
    ));
    let (status, stderr) = run_until_exit(&h);
    assert!(!status.success());
    assert!(
        stderr.contains("is not a pgoutput slot") && stderr.contains("test_decoding"),
        "{stderr}"
    );
    assert!(!stderr.contains("Some("), "{stderr}");
    assert_eq!(epoch(&h).await, before);
    assert_eq!(worker_state(&h).await, state_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_publication_makes_run_exit_with_its_error_and_keeps_the_epoch() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    run_once_and_stop(&h).await;
    let before = epoch(&h).await;

    h.psql("DROP PUBLICATION cm_pub;");
    let (status, stderr) = run_until_exit(&h);
    assert!(!status.success());
    assert!(
        stderr.contains("publication \"cm_pub\" does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("research"), "{stderr}");
    assert_eq!(epoch(&h).await, before);
}
