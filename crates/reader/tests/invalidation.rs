//! Results stay correct across writes made by another process (psql), with
//! invalidation applied from the logical slot the way the invalidator does
//! it (see `common::Harness::invalidate`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ints, texts, Harness};

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

#[tokio::test]
async fn second_identical_query_is_a_hit() {
    let h = Harness::start().await;
    let first = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(h.hits(), 0);
    let second = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
    assert_eq!(first, second);
    assert_eq!(ints(&second, "id"), [10, 11]);
    // Another parameter value is another result.
    let other = h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
    assert_eq!(ints(&other, "id"), [20]);
    let m = h.client.metrics();
    assert_eq!((m.misses, m.stores, m.cache_errors), (2, 2, 0));
}

#[tokio::test]
async fn update_of_a_row_in_the_result_invalidates_it() {
    let h = Harness::start().await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.write("UPDATE book SET title = 'A1 (2nd ed.)' WHERE id = 10")
        .await;
    let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["A1 (2nd ed.)", "A2"]);
    assert_eq!(h.hits(), 0);
    // And the refilled result is cached again.
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn delete_of_a_row_in_the_result_invalidates_it() {
    let h = Harness::start().await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.write("DELETE FROM book WHERE id = 11").await;
    let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(ints(&rows, "id"), [10]);
    assert_eq!(h.hits(), 0);
}

#[tokio::test]
async fn insert_matching_a_foreign_key_list_invalidates_it() {
    let h = Harness::start().await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    // Cached while empty: nothing in the result to hang an object key on.
    assert!(h
        .client
        .query(BY_AUTHOR, &[&3i32])
        .await
        .unwrap()
        .is_empty());
    let unrelated = h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap();
    let applied = h
        .write("INSERT INTO book VALUES (12, 1, 'A3', 'draft'), (30, 3, 'C1', 'draft')")
        .await;
    assert!(applied.bumped.is_empty(), "{applied:?}");
    assert_eq!(
        ints(&h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap(), "id"),
        [10, 11, 12]
    );
    assert_eq!(
        ints(&h.client.query(BY_AUTHOR, &[&3i32]).await.unwrap(), "id"),
        [30]
    );
    assert_eq!(h.hits(), 0);
    // A list the inserts do not belong to stays cached.
    assert_eq!(
        h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap(),
        unrelated
    );
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn update_moving_a_row_into_a_status_list_invalidates_it() {
    let h = Harness::start().await;
    let sql = "SELECT id FROM book WHERE status = $1 ORDER BY id";
    assert_eq!(
        ints(&h.client.query(sql, &[&"published"]).await.unwrap(), "id"),
        [10, 20]
    );
    let literal = "SELECT id FROM book WHERE status = 'published' ORDER BY id";
    h.client.query(literal, &[]).await.unwrap();
    h.write("UPDATE book SET status = 'published' WHERE id = 11")
        .await;
    assert_eq!(
        ints(&h.client.query(sql, &[&"published"]).await.unwrap(), "id"),
        [10, 11, 20]
    );
    assert_eq!(
        ints(&h.client.query(literal, &[]).await.unwrap(), "id"),
        [10, 11, 20]
    );
    assert_eq!(h.hits(), 0);
}

#[tokio::test]
async fn parent_change_flushes_queries_over_its_children() {
    let h = Harness::start().await;
    // A child list holds author 1's FK: the rows' parent links register it.
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    // A list with the FK column in its rows, but no filter on it.
    let by_status = "SELECT id, author_id FROM book WHERE status = $1 ORDER BY id";
    h.client.query(by_status, &[&"published"]).await.unwrap();
    let by_bob = h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap();
    h.write("UPDATE author SET name = 'Anne' WHERE id = 1")
        .await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    h.client.query(by_status, &[&"published"]).await.unwrap();
    assert_eq!(h.hits(), 0);
    // Bob's books do not hold author 1.
    assert_eq!(h.client.query(BY_AUTHOR, &[&2i32]).await.unwrap(), by_bob);
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn child_change_flushes_queries_holding_the_parent() {
    let h = Harness::start().await;
    let sql = "SELECT id, name FROM author WHERE id = $1";
    h.client.query_one(sql, &[&2i32]).await.unwrap();
    // Inserting a child of author 2 names author 2's object key as parent.
    h.write("INSERT INTO book VALUES (21, 2, 'B2', 'draft')")
        .await;
    h.client.query_one(sql, &[&2i32]).await.unwrap();
    assert_eq!(h.hits(), 0);
    // A child of another author leaves it cached.
    h.write("INSERT INTO book VALUES (13, 1, 'A4', 'draft')")
        .await;
    h.client.query_one(sql, &[&2i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn count_is_cached_and_invalidated() {
    let h = Harness::start().await;
    let sql = "SELECT * FROM book WHERE author_id = $1 -- a trailing comment";
    assert_eq!(h.client.count(sql, &[&1i32]).await.unwrap(), 2);
    assert_eq!(h.client.count(sql, &[&1i32]).await.unwrap(), 2);
    assert_eq!(h.hits(), 1);
    h.write("INSERT INTO book VALUES (12, 1, 'A3', 'draft')")
        .await;
    assert_eq!(h.client.count(sql, &[&1i32]).await.unwrap(), 3);
    // A whole-table count depends on the table as a whole.
    assert_eq!(h.client.count("SELECT id FROM book", &[]).await.unwrap(), 4);
    h.write("DELETE FROM book WHERE id = 20").await;
    assert_eq!(h.client.count("SELECT id FROM book", &[]).await.unwrap(), 3);
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn join_through_a_view_is_invalidated_by_either_table() {
    let h = Harness::start().await;
    let sql = "SELECT id, author FROM book_with_author WHERE author_id = $1 ORDER BY id";
    h.client.query(sql, &[&1i32]).await.unwrap();
    h.client.query(sql, &[&1i32]).await.unwrap();
    assert_eq!(h.hits(), 1);
    h.write("UPDATE author SET name = 'Anne' WHERE id = 1")
        .await;
    let rows = h.client.query(sql, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "author"), ["Anne", "Anne"]);
    h.write("UPDATE book SET author_id = 1 WHERE id = 20").await;
    let rows = h.client.query(sql, &[&1i32]).await.unwrap();
    assert_eq!(ints(&rows, "id"), [10, 11, 20]);
    assert_eq!(h.hits(), 1);
}

#[tokio::test]
async fn truncate_bumps_the_generation_and_empties_results() {
    let h = Harness::start().await;
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    let applied = h.write("TRUNCATE book").await;
    assert_eq!(applied.bumped.len(), 1);
    assert!(h
        .client
        .query(BY_AUTHOR, &[&1i32])
        .await
        .unwrap()
        .is_empty());
    let m = h.client.metrics();
    assert_eq!((m.hits, m.stale_rejections), (0, 1));
    // The refused value was replaced: the next read is a hit again.
    assert!(h
        .client
        .query(BY_AUTHOR, &[&1i32])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(h.hits(), 1);
}
