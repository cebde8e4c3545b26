//! Writes from psql (a client that is not ours) invalidate exactly the cached
//! results they can change, through the real worker process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_keys::CanonicalValue;
use common::*;

fn text(s: &str) -> CanonicalValue {
    CanonicalValue::Text(s.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_writes_invalidate_the_results_they_change() {
    let h = Harness::new(
        SCHEMA,
        Options {
            extra_toml: MAPPING.into(),
            ..Options::default()
        },
    )
    .await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;

    // An unrelated result must survive everything below.
    let unrelated = h.cache("book 99", &[h.object("book", 99)]).await;

    // Update of a row in a result; the FK parent's results go too (child
    // change flushes the parent's), and the author list it belongs to.
    let book10 = h.cache("book 10", &[h.object("book", 10)]).await;
    let author1 = h.cache("author 1", &[h.object("author", 1)]).await;
    let by_author1 = h
        .cache(
            "books of author 1",
            &[h.predicate("book", "author_id", CanonicalValue::Int(1))],
        )
        .await;
    h.psql("UPDATE book SET title = 'new' WHERE id = 10;");
    h.wait_applied().await;
    assert!(!h.is_cached(&book10).await, "updated row");
    assert!(
        !h.is_cached(&author1).await,
        "child change flushes the parent's results"
    );
    assert!(!h.is_cached(&by_author1).await, "list holding the row");
    assert!(h.is_cached(&unrelated).await);

    // Insert matching a WHERE fk = $1 list that was cached empty.
    let by_author2 = h
        .cache(
            "books of author 2",
            &[h.predicate("book", "author_id", CanonicalValue::Int(2))],
        )
        .await;
    h.psql("INSERT INTO book VALUES (20, 2, 'draft', 't20');");
    h.wait_applied().await;
    assert!(
        !h.is_cached(&by_author2).await,
        "insert into a WHERE author_id = 2 list"
    );

    // Update moving a row into a WHERE status = $1 list.
    let published = h
        .cache(
            "published",
            &[h.predicate("book", "status", text("published"))],
        )
        .await;
    h.psql("UPDATE book SET status = 'published' WHERE id = 11;");
    h.wait_applied().await;
    assert!(!h.is_cached(&published).await, "row moved into the list");

    // Parent change flushes results holding its children (registered under
    // the parent's object key, as the reader does for FK neighbours).
    let children = h
        .cache(
            "author 2 with books",
            &[h.object("author", 2), h.object("book", 20)],
        )
        .await;
    h.psql("UPDATE author SET name = 'renamed' WHERE id = 2;");
    h.wait_applied().await;
    assert!(!h.is_cached(&children).await, "parent change");

    // Delete, and a FK change under FULL identity: old and new parent lists.
    let book11 = h.cache("book 11", &[h.object("book", 11)]).await;
    let by_author1 = h
        .cache(
            "books of author 1 again",
            &[h.predicate("book", "author_id", CanonicalValue::Int(1))],
        )
        .await;
    let by_author2 = h
        .cache(
            "books of author 2 again",
            &[h.predicate("book", "author_id", CanonicalValue::Int(2))],
        )
        .await;
    h.psql("UPDATE book SET author_id = 2 WHERE id = 10;");
    h.psql("DELETE FROM book WHERE id = 11;");
    h.wait_applied().await;
    assert!(!h.is_cached(&book11).await, "deleted row");
    assert!(!h.is_cached(&by_author1).await, "old FK value's list");
    assert!(!h.is_cached(&by_author2).await, "new FK value's list");
    assert!(
        h.is_cached(&unrelated).await,
        "nothing unrelated was flushed"
    );

    // TRUNCATE bumps the table generation; the epoch is untouched.
    let generation = h.generation(&h.table_generation("book")).await;
    let epoch = h.generation(&h.space.epoch()).await;
    h.psql("TRUNCATE book;");
    h.wait_applied().await;
    assert_ne!(h.generation(&h.table_generation("book")).await, generation);
    assert_eq!(h.generation(&h.space.epoch()).await, epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_multi_statement_transactions_invalidate_every_row() {
    let h = Harness::new(SCHEMA, Options::default()).await;
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    let rows: Vec<_> = [30, 31, 10]
        .iter()
        .map(|id| h.object("book", *id))
        .collect();
    let mut cached = Vec::new();
    for (i, key) in rows.iter().enumerate() {
        cached.push(
            h.cache(&format!("row {i}"), std::slice::from_ref(key))
                .await,
        );
    }
    h.psql(
        "BEGIN;
         COPY book (id, author_id, status, title) FROM STDIN;\n30\t1\tdraft\tc30\n31\t2\tdraft\tc31\n\\.\n
         UPDATE book SET title = 'x' WHERE id = 10;
         COMMIT;",
    );
    h.wait_applied().await;
    for q in &cached {
        assert!(!h.is_cached(q).await);
    }
}

/// A metadata server that restarts takes the flush lists it held with it
/// (`flush_all` here: the same loss). The next change whose lists lived
/// there finds that server's sentinel missing and bumps the epoch, so no
/// result registered in a lost list is served again (docs/eviction.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_server_that_lost_its_data_is_noticed_by_the_next_change() {
    let second = tokio::task::spawn_blocking(cm_testkit::MemcachedServer::start)
        .await
        .unwrap()
        .unwrap();
    let h = Harness::new(
        SCHEMA,
        Options {
            more_servers: vec![second.addr()],
            ..Options::default()
        },
    )
    .await;
    h.psql("INSERT INTO book SELECT i, 1, 'draft', 't' FROM generate_series(100, 139) i;");
    h.setup();
    let _worker = h.spawn_worker(false);
    h.wait_applied().await;
    // Forty rows' lists span both servers; the first change finds no
    // sentinel yet (a new cache) and writes them.
    let every_row = "UPDATE book SET title = title || '.' WHERE id BETWEEN 100 AND 139;";
    h.psql(every_row);
    h.wait_applied().await;
    let epoch = h.generation(&h.space.epoch()).await;
    assert!(epoch.is_some());
    h.psql(every_row);
    h.wait_applied().await;
    assert_eq!(
        h.generation(&h.space.epoch()).await,
        epoch,
        "no server lost anything"
    );

    for id in 100..140 {
        h.cache(&format!("book {id}"), &[h.object("book", id)])
            .await;
    }
    cm_testkit::memcached_flush_all(&second.addr()).unwrap();
    h.psql(every_row);
    h.wait_applied().await;
    let after = h.generation(&h.space.epoch()).await;
    assert!(after.is_some() && after != epoch, "{epoch:?} -> {after:?}");
}
