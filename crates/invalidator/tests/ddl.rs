//! DDL run from psql (no row write after it) invalidates through the WAL:
//! the event triggers `setup` installs emit a transactional message, the
//! worker bumps the generations of what the DDL touched and then the schema
//! version. Changes of partitions and inheritance children reach their
//! ancestors' "any change" lists, also for a partition created after start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cm_keys::{Key, TableName};
use common::*;

const DDL_SCHEMA: &str = "
CREATE TABLE author(id int PRIMARY KEY, name text);
CREATE TABLE book(id int PRIMARY KEY, author_id int, title text, pages int);
CREATE VIEW book_titles AS SELECT id, title FROM book;
CREATE TABLE tag(id int PRIMARY KEY);
CREATE TABLE event(id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE event_0 PARTITION OF event FOR VALUES FROM (0) TO (100);
CREATE TABLE event_1(id int, at int, PRIMARY KEY (id, at));
CREATE MATERIALIZED VIEW author_count AS SELECT count(*) AS n FROM author;
CREATE FUNCTION book_pages(int) RETURNS int LANGUAGE sql AS 'SELECT pages FROM book WHERE id = $1';
CREATE TABLE animal(id int PRIMARY KEY, name text);
CREATE TABLE dog(breed text) INHERITS (animal);
ALTER TABLE dog ADD PRIMARY KEY (id);
INSERT INTO author VALUES (1, 'a1');
INSERT INTO book VALUES (10, 1, 't10', 100);
";

async fn started() -> Harness {
    let h = Harness::new(DDL_SCHEMA, Options::default()).await;
    h.setup();
    h
}

/// The generations a test watches, read together.
async fn generations(h: &Harness, keys: &[Key]) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for key in keys {
        out.push(h.generation(key).await);
    }
    out
}

/// Runs `ddl` from psql, waits until the worker applied it, and asserts
/// that every generation of `tables` and the schema version moved while
/// the epoch did not (the DDL was scoped).
async fn assert_ddl_bumps(h: &Harness, ddl: &str, tables: &[&str]) {
    let mut keys: Vec<Key> = tables.iter().map(|t| h.table_generation(t)).collect();
    keys.push(h.space.schema_version());
    let epoch = h.generation(&h.space.epoch()).await;
    let before = generations(h, &keys).await;
    h.psql(ddl);
    h.wait_applied().await;
    let after = generations(h, &keys).await;
    for ((key, b), a) in keys.iter().zip(&before).zip(&after) {
        assert!(a.is_some(), "{ddl}: {key} was never bumped");
        assert_ne!(b, a, "{ddl}: {key} did not move");
    }
    assert_eq!(
        h.generation(&h.space.epoch()).await,
        epoch,
        "{ddl}: the epoch moved, the DDL was not scoped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ddl_kind_bumps_what_it_touched_and_the_schema_version() {
    let h = started().await;
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;

    assert_ddl_bumps(
        &h,
        "CREATE OR REPLACE VIEW book_titles AS SELECT id, title, pages FROM book;",
        &["book_titles"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "ALTER TABLE author ALTER COLUMN name TYPE varchar(40) USING upper(name);",
        &["author"],
    )
    .await;
    assert_ddl_bumps(&h, "ALTER TABLE book ADD COLUMN isbn text;", &["book"]).await;
    assert_ddl_bumps(&h, "ALTER TABLE book DROP COLUMN isbn;", &["book"]).await;
    assert_ddl_bumps(
        &h,
        "ALTER TABLE event ATTACH PARTITION event_1 FOR VALUES FROM (100) TO (200);",
        &["event", "event_1"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "ALTER TABLE event DETACH PARTITION event_1;",
        &["event", "event_1"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "ALTER TABLE author RENAME TO writer;",
        &["author", "writer"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "DROP TABLE tag; CREATE TABLE tag(id int PRIMARY KEY, label text);",
        &["tag"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "REFRESH MATERIALIZED VIEW author_count;",
        &["author_count"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "CREATE OR REPLACE FUNCTION book_pages(int) RETURNS int LANGUAGE sql \
         AS 'SELECT pages + 0 FROM book WHERE id = $1';",
        &["book_pages"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "ALTER TABLE dog ADD COLUMN age int;",
        &["dog", "animal"],
    )
    .await;
}

/// Bulk loads, restores and migrations run as a superuser often set
/// `session_replication_role = replica` to skip triggers; an event trigger
/// fires there only when enabled ALWAYS, which `setup` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_in_a_session_with_the_replica_role_bumps_too() {
    let h = started().await;
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert_ddl_bumps(
        &h,
        "SET session_replication_role = replica; \
         CREATE OR REPLACE VIEW book_titles AS SELECT id, upper(title) AS title FROM book;",
        &["book_titles"],
    )
    .await;
    assert_ddl_bumps(
        &h,
        "SET session_replication_role = replica; DROP VIEW book_titles;",
        &["book_titles"],
    )
    .await;
}

/// Event triggers that stop firing while the worker runs (disabled by
/// hand: no event reports that): no heartbeat comes back meanwhile, so
/// readers read through, and once they fire again the epoch is bumped for
/// the DDL that went unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_that_stop_firing_stop_heartbeats_until_an_epoch_bump() {
    let h = started().await;
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let epoch = h.generation(&h.space.epoch()).await;
    h.psql("ALTER EVENT TRIGGER cachemachine_ddl_command_end DISABLE;");
    // Any heartbeat tick that read the state before the change is over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.psql("CREATE OR REPLACE VIEW book_titles AS SELECT id, upper(title) AS title FROM book;");
    let unseen = h.wal_lsn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heartbeat = h.heartbeat().await.unwrap();
    assert!(
        heartbeat.lsn < unseen.0,
        "a heartbeat came back while the DDL triggers did not fire"
    );
    assert_eq!(h.generation(&h.space.epoch()).await, epoch);

    h.psql("ALTER EVENT TRIGGER cachemachine_ddl_command_end ENABLE ALWAYS;");
    h.wait_applied().await;
    let after = h.generation(&h.space.epoch()).await;
    assert!(after.is_some() && after != epoch, "{epoch:?} -> {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_that_cannot_be_scoped_bumps_the_epoch() {
    let h = started().await;
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    for ddl in [
        // A table that may shadow public.book on search_path.
        "CREATE SCHEMA app; CREATE TABLE app.book(id int PRIMARY KEY);",
        // A schema rename: every name in it changes.
        "ALTER SCHEMA app RENAME TO app2;",
    ] {
        let epoch = h.generation(&h.space.epoch()).await;
        let version = h.generation(&h.space.schema_version()).await;
        h.psql(ddl);
        h.wait_applied().await;
        assert_ne!(h.generation(&h.space.epoch()).await, epoch, "{ddl}");
        assert_ne!(
            h.generation(&h.space.schema_version()).await,
            version,
            "{ddl}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_ddl_message_bumps_the_epoch() {
    let h = started().await;
    let worker = h.spawn_worker(false);
    h.wait_applied().await;
    let epoch = h.generation(&h.space.epoch()).await;
    let version = h.generation(&h.space.schema_version()).await;
    h.psql("SELECT pg_logical_emit_message(true, 'cm.ddl', 'this is not json');");
    h.wait_applied().await;
    assert_ne!(h.generation(&h.space.epoch()).await, epoch);
    assert_ne!(h.generation(&h.space.schema_version()).await, version);
    let mut worker = worker;
    let (_, stderr) = worker.terminate();
    assert!(
        stderr.contains("unreadable DDL message"),
        "the error is logged: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_replayed_after_a_crash_meets_a_newer_catalog_and_bumps_the_epoch() {
    let h = started().await;
    let mut crashing = h.spawn_worker(true);
    h.wait_applied().await;
    let epoch = h.generation(&h.space.epoch()).await;
    // Applied, then the worker dies before acknowledging it.
    h.psql("ALTER TABLE book RENAME COLUMN title TO headline;");
    assert!(!crashing
        .wait_exit(std::time::Duration::from_secs(30))
        .success());
    let book = h.generation(&h.table_generation("book")).await;

    // The restarted worker reads the catalog after the rename: it cannot
    // tell what the DDL changed any more, so it flushes everything.
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    assert_ne!(h.generation(&h.space.epoch()).await, epoch);
    assert_ne!(h.generation(&h.table_generation("book")).await, book);
}

fn public(table: &str) -> TableName {
    TableName::new("public", table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_children_flush_their_ancestors_any_change_lists() {
    let h = started().await;
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let unrelated = h
        .cache("book list", &[h.space.table_changes(&public("book"))])
        .await;

    // An INHERITS child: a reader of the parent reads its rows.
    let animals = h
        .cache("animals", &[h.space.table_changes(&public("animal"))])
        .await;
    h.psql("INSERT INTO dog VALUES (1, 'rex', 'collie');");
    h.wait_applied().await;
    assert!(!h.is_cached(&animals).await, "child insert, parent's list");

    // A partition created after the worker started, announced by the
    // trigger: the model is re-read when the DDL commits.
    let events = h
        .cache("events", &[h.space.table_changes(&public("event"))])
        .await;
    h.psql("CREATE TABLE event_2 PARTITION OF event FOR VALUES FROM (200) TO (300);");
    h.wait_applied().await;
    let events_again = h
        .cache("events again", &[h.space.table_changes(&public("event"))])
        .await;
    h.psql("INSERT INTO event VALUES (1, 250);");
    h.wait_applied().await;
    assert!(!h.is_cached(&events).await);
    assert!(
        !h.is_cached(&events_again).await,
        "insert into a partition created after start, root's list"
    );

    // One the trigger did not announce (disabled for that command only, in
    // one transaction, so the heartbeats never see it disabled): the worker
    // re-reads the catalog when it meets the unknown relation.
    h.psql(
        "BEGIN;
         ALTER EVENT TRIGGER cachemachine_ddl_command_end DISABLE;
         CREATE TABLE event_3 PARTITION OF event FOR VALUES FROM (300) TO (400);
         ALTER EVENT TRIGGER cachemachine_ddl_command_end ENABLE ALWAYS;
         COMMIT;",
    );
    h.wait_applied().await;
    let events = h
        .cache("events third", &[h.space.table_changes(&public("event"))])
        .await;
    h.psql("INSERT INTO event VALUES (1, 350);");
    h.wait_applied().await;
    assert!(
        !h.is_cached(&events).await,
        "insert into an unannounced partition, root's list"
    );
    assert!(h.is_cached(&unrelated).await, "nothing unrelated flushed");
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn setup_dry_run_shows_the_trigger_sql_and_check_flags_a_disabled_trigger() {
    let h = Harness::new(DDL_SCHEMA, Options::default()).await;
    let out = h.run_cli(&["setup", "--dry-run"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("CREATE EVENT TRIGGER cachemachine_ddl_command_end ON ddl_command_end"),
        "{text}"
    );
    assert!(text.contains("CREATE EVENT TRIGGER cachemachine_sql_drop ON sql_drop"));
    assert!(text.contains("pg_logical_emit_message(true, 'cm.ddl'"));
    assert_eq!(
        h.psql("SELECT count(*) FROM pg_event_trigger").trim(),
        "0",
        "a dry run changes nothing"
    );

    h.setup();
    let out = h.run_cli(&["check", "--json"]);
    assert_eq!(finding(&out, "ddl event triggers")["status"], "ok");
    h.setup(); // idempotent
    assert!(stdout(&h.run_cli(&["setup"])).contains("nothing to do"));

    h.psql("ALTER EVENT TRIGGER cachemachine_sql_drop DISABLE;");
    let out = h.run_cli(&["check", "--json"]);
    assert!(!out.status.success(), "a disabled trigger is a problem");
    let ddl = finding(&out, "ddl event triggers");
    assert_eq!(ddl["status"], "problem");
    let detail = ddl["detail"].as_str().unwrap();
    assert!(
        detail.contains("cachemachine_sql_drop (evtenabled = 'D')"),
        "{detail}"
    );
    assert!(detail.contains("stay cached until their TTL"), "{detail}");

    h.setup(); // re-enables
    let out = h.run_cli(&["check", "--json"]);
    assert_eq!(finding(&out, "ddl event triggers")["status"], "ok");

    // Plain ENABLE ('O') skips sessions with the replica role.
    h.psql("ALTER EVENT TRIGGER cachemachine_ddl_command_end ENABLE;");
    let out = h.run_cli(&["check", "--json"]);
    assert!(!out.status.success(), "an origin-only trigger is a problem");
    let ddl = finding(&out, "ddl event triggers");
    let detail = ddl["detail"].as_str().unwrap();
    assert!(
        detail.contains("cachemachine_ddl_command_end (evtenabled = 'O')"),
        "{detail}"
    );
    h.setup();
    let out = h.run_cli(&["check", "--json"]);
    assert_eq!(finding(&out, "ddl event triggers")["status"], "ok");
}

#[tokio::test]
async fn setup_without_superuser_names_the_privilege_unless_the_trigger_exists() {
    let h = Harness::new(DDL_SCHEMA, Options::default()).await;
    let role = h.env.pg.unique_name("cm_ddl_role");
    h.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw';
         GRANT CREATE ON DATABASE \"{db}\" TO {role};",
        db = h.env.pg.dbname()
    ));
    let url = format!(
        "postgres://{role}:pw@{host}:{port}/{db}",
        host = h.env.pg.host(),
        port = h.env.pg.port(),
        db = h.env.pg.dbname()
    );
    let as_role = |args: &[&str]| {
        h.command(args)
            .env("CM_INVALIDATOR_POSTGRES__URL", &url)
            .output()
            .unwrap()
    };
    let out = as_role(&["setup"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs superuser") && stderr.contains("CREATE EVENT TRIGGER"),
        "{stderr}"
    );
    assert_eq!(h.psql("SELECT count(*) FROM pg_event_trigger").trim(), "0");

    h.setup();
    let out = as_role(&["setup"]);
    assert!(
        out.status.success(),
        "installed already: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.psql(&format!(
        "REVOKE CREATE ON DATABASE \"{db}\" FROM {role}; DROP ROLE {role};",
        db = h.env.pg.dbname()
    ));
}
