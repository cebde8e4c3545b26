//! The consistency checker as a library: it re-runs what readers would
//! serve and reports results that a write left stale (here, writes the
//! harness deliberately does not invalidate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_keys::Heartbeat;
use cm_reader::inspect::{inspect, inspect_with, InspectError, InspectOptions};
use cm_reader::ReaderOptions;
use common::{connect, Harness, MAPPING, SCHEMA};

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// Stands in for the invalidator having applied every fence: a fresh
/// heartbeat at the highest LSN.
async fn applied_everything(h: &Harness) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let heartbeat = Heartbeat {
        lsn: u64::MAX,
        emitted_unix_micros: now,
        applied_unix_micros: now,
    };
    let key = h.space.heartbeat();
    h.store
        .write_heartbeat(key.as_str(), &heartbeat.encode(), Duration::from_secs(600))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_left_uninvalidated_is_reported_with_its_statement() {
    let h = Harness::start().await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.client
        .query_one("SELECT name FROM author WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    h.client
        .count("SELECT * FROM book WHERE status = $1", &[&"draft"])
        .await
        .unwrap();
    h.client
        .query_as("SELECT id FROM author", &[], |row| row.try_get::<_, i32>(0))
        .await
        .unwrap();
    let admin = connect(&h.pg.url()).await;
    applied_everything(&h).await;

    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!(report.registered, 4, "{report:?}");
    assert_eq!(report.checked, 3, "{report:?}");
    assert_eq!(report.skipped_by_reason.not_rows, 1, "{report:?}");
    assert!(!report.has_stale(), "{report:?}");

    // Written, never invalidated: the list is stale, and only the list.
    h.psql("UPDATE book SET title = 'changed' WHERE id = 10;");
    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!(report.stale.len(), 1, "{report:?}");
    let stale = &report.stale[0];
    assert_eq!(stale.sql, BY_AUTHOR);
    assert_eq!(stale.params.len(), 1);
    assert_eq!(stale.params[0].type_oid, 23);
    assert_eq!(stale.params[0].hex.as_deref(), Some("00000001"));
    assert!(stale.diff.contains("\"changed\""), "{}", stale.diff);
    // The connection is left outside the check's transaction.
    let isolation: String = admin
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(isolation, "read committed");

    // Once invalidated, nothing is stale; the invalidated result is skipped.
    h.invalidate().await;
    applied_everything(&h).await;
    let report = inspect_with(
        &admin,
        &h.cache,
        &InspectOptions {
            sample: Some(10),
            ..InspectOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!report.has_stale(), "{report:?}");
    assert!(report.skipped_by_reason.not_cached >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_times_out_naming_the_heartbeat_and_the_registry_can_be_off() {
    let options = ReaderOptions {
        inspection_registry: false,
        ..ReaderOptions::default()
    };
    let h = Harness::with(SCHEMA, MAPPING, None, options).await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let admin = connect(&h.pg.url()).await;

    // The harness's heartbeat is at LSN 1: never past a fence.
    let error = inspect_with(
        &admin,
        &h.cache,
        &InspectOptions {
            fence_timeout: Duration::from_millis(300),
            ..InspectOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            InspectError::FenceTimeout {
                heartbeat_age: Some(_),
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("s old"), "{error}");

    applied_everything(&h).await;
    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!((report.registered, report.checked), (0, 0), "{report:?}");
}
