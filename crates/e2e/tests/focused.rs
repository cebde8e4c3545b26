//! Deterministic scenarios distilled from failures of the randomized test:
//! one write at a time, fenced, then the cached read must equal PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use cm_reader::{CachingClient, ReaderOptions};
use cm_testkit::TestEnv;

use support::connect;
use support::invalidator::Seeded;
use support::ops::Value;
use support::readers::{self, Read, QUERIES};

fn query(sql: &str) -> usize {
    QUERIES.iter().position(|q| q.sql == sql).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_invalidates_counts_and_lists() {
    let env = tokio::task::spawn_blocking(TestEnv::start)
        .await
        .unwrap()
        .unwrap();
    let seeded = Seeded::start(&env, env.memcached.addr(), "cm_f").await;
    let fence = || seeded.fence();
    let cache = seeded
        .query_cache(&seeded.admin, ReaderOptions::default())
        .await;
    let client = CachingClient::new(connect(&env.pg.url()).await, cache.clone());
    let text = |s: &str| Value::Text(s.to_owned());
    let reads: Vec<Read> = vec![
        (
            query("SELECT id FROM addon WHERE status = $1"),
            vec![text("review")],
        ),
        (
            query("SELECT id FROM addon WHERE status = $1"),
            vec![text("public")],
        ),
        (
            query("SELECT id, author_id, name FROM addon WHERE status = $1 ORDER BY id"),
            vec![text("review")],
        ),
        (
            query("SELECT addon_id, tag FROM addon_tag WHERE tag = $1"),
            vec![text("red")],
        ),
        (
            query("SELECT id FROM event WHERE kind = $1"),
            vec![text("crash")],
        ),
        (
            query("SELECT id FROM event WHERE kind = $1"),
            vec![text("install")],
        ),
    ];
    let writes = [
        "UPDATE addon SET status = 'public' WHERE id = 100004",
        "INSERT INTO addon VALUES (101001, 100001, 'review', 'new')",
        "DELETE FROM addon WHERE id = 100008",
        "UPDATE addon SET id = 101002 WHERE id = 100012",
        "INSERT INTO addon_tag VALUES (100001, 'red', 5) ON CONFLICT DO NOTHING",
        "DELETE FROM addon_tag WHERE addon_id = 100002",
        "UPDATE event SET kind = 'install' WHERE id = 100003",
        "INSERT INTO event VALUES ('crash', 101003, NULL, 'x')",
        "DELETE FROM event WHERE id = 100006",
        "DELETE FROM author WHERE id = 100005",
        "UPDATE addon SET status = 'review', name = 'bulk' WHERE author_id = 100002",
        "UPDATE addon SET status = 'disabled' WHERE author_id = 100003",
        "BEGIN; UPDATE addon SET status = 'public' WHERE id = 100010; SAVEPOINT s; \
         UPDATE addon SET status = 'draft' WHERE id = 100011; ROLLBACK TO SAVEPOINT s; \
         INSERT INTO addon VALUES (101004, 100001, 'disabled', 'n'); COMMIT",
        "UPDATE author SET id = 101005 WHERE id = 100004",
        "UPDATE author SET name = 'renamed' WHERE id = 100006",
        "TRUNCATE event",
    ];
    let mut failures = Vec::new();
    for write in writes {
        for read in &reads {
            readers::cached(&client, read).await.unwrap();
            readers::cached(&client, read).await.unwrap();
        }
        env.pg.psql(write).unwrap();
        fence().await;
        for read in &reads {
            let cached = readers::cached(&client, read).await.unwrap();
            let direct = readers::direct(&seeded.admin, read).await.unwrap();
            if cached != direct {
                failures.push(format!(
                    "after {write}: {} {:?}: cached {cached:?}, postgres {direct:?}",
                    QUERIES[read.0].sql, read.1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
