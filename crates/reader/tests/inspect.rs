//! The consistency checker as a library: it re-runs what readers would
//! serve and reports results that a write left stale (here, writes the
//! harness deliberately does not invalidate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cm_keys::Heartbeat;
use cm_reader::inspect::{inspect, inspect_with, InspectError, InspectOptions};
use cm_reader::{CachingClient, Outcome, QueryCache, QueryOptions, ReaderOptions};
use cm_store::testing::{InstrumentedStore, Method};
use common::{connect, Harness, MAPPING, SCHEMA};
use tokio::sync::Notify;
use tokio_postgres::Client;

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// The same table name in two schemas, with different rows: which one a
/// statement reads depends on the `search_path`.
const EVENTS: &str = "
CREATE SCHEMA shelf;
CREATE TABLE shelf.event (id int PRIMARY KEY, at timestamptz NOT NULL, label text NOT NULL);
CREATE TABLE public.event (id int PRIMARY KEY, at timestamptz NOT NULL, label text NOT NULL);
INSERT INTO shelf.event VALUES (1, '2024-01-01 00:00:00+00', 'on the shelf');
INSERT INTO public.event VALUES (1, '2024-01-01 00:00:00+00', 'in public');
";

/// A `timestamptz` as text: the session's `TimeZone` decides it.
const EVENTS_AT: &str = "SELECT id, at::text AS at, label FROM event ORDER BY id";

/// Notes that row-level security shows only to their owner.
const NOTES: &str = "
CREATE TABLE note (id int PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
ALTER TABLE note ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON note USING (owner = current_user);
";

/// Stands in for the invalidator having applied every fence: a fresh
/// heartbeat at the highest LSN.
async fn applied_everything(h: &Harness) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let heartbeat = Heartbeat::of_message(u64::MAX, now, now);
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

/// A harness whose reader session runs with `TimeZone = 'Asia/Tokyo'` and
/// `search_path = shelf, public`, and has filled [`EVENTS_AT`] under them.
async fn filled_in_tokyo_on_the_shelf() -> Harness {
    let schema = format!("{SCHEMA}{EVENTS}");
    let h = Harness::with(&schema, MAPPING, None, ReaderOptions::default()).await;
    h.client
        .client()
        .batch_execute("SET TimeZone = 'Asia/Tokyo'; SET search_path = shelf, public")
        .await
        .unwrap();
    let rows = h
        .client
        .with(QueryOptions::new().namespace("tokyo-shelf"))
        .query(EVENTS_AT, &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<&str>("at"), "2024-01-01 09:00:00+09");
    assert_eq!(rows[0].get::<&str>("label"), "on the shelf");
    h
}

/// A checker connection in UTC on the default search path.
async fn checker_in_utc(h: &Harness) -> Client {
    let admin = connect(&h.pg.url()).await;
    admin
        .batch_execute("SET TimeZone = 'UTC'; RESET search_path")
        .await
        .unwrap();
    admin
}

async fn show(client: &Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_filled_under_another_time_zone_and_search_path_is_not_reported_stale() {
    let h = filled_in_tokyo_on_the_shelf().await;
    let admin = checker_in_utc(&h).await;
    applied_everything(&h).await;

    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!((report.registered, report.checked), (1, 1), "{report:?}");
    assert!(!report.has_stale(), "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    // The replayed settings ended with the check's transaction.
    assert_eq!(show(&admin, "TimeZone").await, "UTC");
    assert_eq!(show(&admin, "search_path").await, "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_result_filled_under_another_time_zone_and_search_path_is_reported() {
    let h = filled_in_tokyo_on_the_shelf().await;
    let admin = checker_in_utc(&h).await;
    applied_everything(&h).await;

    // The table of the checker's own path changed, not the one the result
    // was read from: nothing is stale.
    h.psql("UPDATE public.event SET label = 'elsewhere';");
    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!(report.checked, 1, "{report:?}");
    assert!(!report.has_stale(), "{report:?}");

    // Written, never invalidated.
    h.psql("UPDATE shelf.event SET label = 'moved';");
    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!(report.stale.len(), 1, "{report:?}");
    let stale = &report.stale[0];
    assert_eq!(
        (stale.sql.as_str(), stale.namespace.as_str()),
        (EVENTS_AT, "tokyo-shelf")
    );
    assert!(
        stale
            .diff
            .ends_with("database (1, \"2024-01-01 09:00:00+09\", \"moved\")"),
        "{}",
        stale.diff
    );
    assert!(
        stale
            .session
            .contains(&("TimeZone".to_owned(), "Asia/Tokyo".to_owned())),
        "{stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_filled_under_another_role_is_checked_as_that_role_or_skipped_when_it_cannot_be_assumed(
) {
    let schema = format!("{SCHEMA}{NOTES}");
    let h = Harness::with(&schema, MAPPING, None, ReaderOptions::default()).await;
    let reader = h.pg.unique_name("reader");
    let outsider = h.pg.unique_name("outsider");
    h.psql(&format!(
        "CREATE ROLE {reader}; GRANT SELECT ON note TO {reader};
         CREATE ROLE {outsider} LOGIN; GRANT SELECT ON note TO {outsider};
         INSERT INTO note VALUES (1, '{reader}', 'mine'), (2, 'someone', 'theirs');"
    ));
    h.client
        .client()
        .batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    let notes = "SELECT id, body FROM note ORDER BY id";
    let rows = h.client.query(notes, &[]).await.unwrap();
    assert_eq!(
        rows.len(),
        1,
        "row-level security shows the reader its own note"
    );
    applied_everything(&h).await;

    // A superuser bypasses row-level security, so only as the reader's role
    // does the check see the same single note.
    let superuser = connect(&h.pg.url()).await;
    let report = inspect(&superuser, &h.cache, None).await.unwrap();
    assert_eq!((report.registered, report.checked), (1, 1), "{report:?}");
    assert!(!report.has_stale(), "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");

    // A checker that is not a member of the role skips the result.
    let url = format!(
        "postgres://{outsider}@{}:{}/{}",
        h.pg.host(),
        h.pg.port(),
        h.pg.dbname()
    );
    let outsider_client = connect(&url).await;
    let report = inspect(&outsider_client, &h.cache, None).await.unwrap();
    assert_eq!(report.checked, 0, "{report:?}");
    assert_eq!(report.skipped_by_reason.role_not_assumable, 1, "{report:?}");
    assert_eq!(report.skipped, 1, "{report:?}");
    assert!(!report.has_stale(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_result_is_checked_or_skipped_for_a_named_reason() {
    let h = Harness::start().await;
    for author in 1..=3i32 {
        h.client.query(BY_AUTHOR, &[&author]).await.unwrap();
    }
    h.client
        .query_as("SELECT id FROM author", &[], |row| row.try_get::<_, i32>(0))
        .await
        .unwrap();
    let admin = connect(&h.pg.url()).await;
    applied_everything(&h).await;

    let report = inspect(&admin, &h.cache, Some(1)).await.unwrap();
    assert_eq!(report.registered, 4, "{report:?}");
    assert_eq!(report.checked, 1, "{report:?}");
    assert_eq!(report.skipped_by_reason.not_rows, 1, "{report:?}");
    assert_eq!(report.skipped_by_reason.not_sampled, 2, "{report:?}");
    assert_eq!(
        report.registered,
        report.checked + report.skipped,
        "{report:?}"
    );

    let report = inspect(&admin, &h.cache, None).await.unwrap();
    assert_eq!(report.checked, 3, "{report:?}");
    assert_eq!(
        report.registered,
        report.checked + report.skipped,
        "{report:?}"
    );
}

/// The registry's members, read straight from the store (the buckets around
/// now).
async fn registry_members(h: &Harness) -> Vec<String> {
    let minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let buckets: Vec<_> = (minute - 1..=minute + 1)
        .map(|b| h.space.registry(b))
        .collect();
    let names: Vec<&str> = buckets.iter().map(|k| k.as_str()).collect();
    let mut members: Vec<String> = Vec::new();
    for list in h.store.read_flush_lists(&names).await.unwrap() {
        members.extend(list.members);
    }
    members.sort();
    members.dedup();
    members
}

/// A fill hands its key to the registry and goes on: a fill completes while
/// the registry's append is held up, and the key is appended afterwards
/// (here on `flush_inspection_registry`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_appended_off_the_fill_path() {
    let h = Harness::start().await;
    let counting = Arc::new(InstrumentedStore::new(h.store.clone()));
    let options = ReaderOptions {
        publication: Some("cm_pub".into()),
        ..ReaderOptions::default()
    };
    let cache = Arc::new(
        QueryCache::new(h.space.clone(), counting.clone(), h.model.clone(), options).unwrap(),
    );
    let client = CachingClient::new(connect(&h.pg.url()).await, cache.clone());
    let (appending, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let hook = (appending.clone(), release.clone());
    counting.before_next(Method::AppendMembersToFlushList, move |_| async move {
        hook.0.notify_one();
        hook.1.notified().await;
        Ok(())
    });
    let (_, first) = client
        .query_with_outcome(BY_AUTHOR, &[&1i32])
        .await
        .unwrap();
    appending.notified().await;
    // The registry's writer is stuck in its first append; fills go on.
    let (_, second) = client
        .query_with_outcome(BY_AUTHOR, &[&2i32])
        .await
        .unwrap();
    assert_eq!((first, second), (Outcome::Miss, Outcome::Miss));
    assert_eq!(client.metrics().stores, 2);
    assert!(registry_members(&h).await.is_empty());
    release.notify_one();
    cache.flush_inspection_registry().await;
    let members = registry_members(&h).await;
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members
        .iter()
        .all(|m| m.starts_with(&format!("{}:q:", h.space.prefix()))));
    assert_eq!(counting.calls(Method::AppendMembersToFlushList), 2);
}
