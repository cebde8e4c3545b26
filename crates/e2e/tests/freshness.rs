//! Freshness through the cm-invalidator binary (`docs/freshness.md`):
//! a write token taken after a psql commit, given to the very next read,
//! never gets the pre-commit result, even while the worker's memcached round
//! trips are slowed so that the cached result outlives the commit; and a
//! fill read from a hot standby that has not replayed what the worker
//! already invalidated is never stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use cm_reader::{CachingClient, Outcome, QueryOptions, ReaderError, ReaderOptions, WriteToken};
use cm_testkit::{PgReplica, TestEnv};

use support::connect;
use support::delay::DelayProxy;
use support::invalidator::Seeded;
use support::schema;

const READ: &str = "SELECT name FROM author WHERE id = $1";

/// How long the worker's every request to memcached is held.
const WORKER_DELAY: Duration = Duration::from_millis(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_never_returns_the_pre_commit_result_while_the_worker_is_slow() {
    let env = tokio::task::spawn_blocking(TestEnv::start)
        .await
        .unwrap()
        .unwrap();
    let proxy = DelayProxy::start(env.memcached.addr(), WORKER_DELAY).await;
    let seeded = Seeded::start(&env, proxy.addr(), "cm_rw").await;
    let options = ReaderOptions {
        token_wait: Duration::from_secs(5),
        ..ReaderOptions::default()
    };
    let cache = seeded.query_cache(&seeded.admin, options).await;
    let reader = CachingClient::new(connect(&env.pg.url()).await, cache);
    let id = schema::base(0) + 1;
    name(&reader, id, QueryOptions::new()).await;

    let (mut stale_without_token, mut waited) = (0, 0);
    for round in 0..20 {
        let wanted = format!("name {round}");
        env.pg
            .psql(&format!(
                "UPDATE author SET name = '{wanted}' WHERE id = {id}"
            ))
            .unwrap();
        // Any connection, after the commit returned: a separate psql.
        let token = psql_token(&env);
        // Without the token the cache may still serve the old name: that
        // is the window the token must close.
        let (seen, _) = name(&reader, id, QueryOptions::new()).await;
        if seen != wanted {
            stale_without_token += 1;
        }
        let (seen, outcome) = name(&reader, id, QueryOptions::new().after(token)).await;
        assert_eq!(
            seen, wanted,
            "round {round}: a read after token {token} returned the pre-commit name ({outcome})"
        );
        if outcome != Outcome::Bypass {
            waited += 1;
        }
        // Refill, so the next round starts from a cached old name.
        name(&reader, id, QueryOptions::new().after(token)).await;
    }
    eprintln!("{stale_without_token} of 20 reads without the token were stale; {waited} token reads waited");
    assert!(
        stale_without_token > 0,
        "the slowed worker never left a stale result to read: the test shows nothing"
    );
    assert!(
        waited > 0,
        "every token read timed out and read through: the applied LSN never caught up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_a_standby_behind_the_invalidator_is_not_stored() {
    let env = tokio::task::spawn_blocking(TestEnv::start)
        .await
        .unwrap()
        .unwrap();
    let seeded = Seeded::start(&env, env.memcached.addr(), "cm_rs").await;
    let replica = tokio::task::block_in_place(|| PgReplica::start(&env.pg)).unwrap();
    let standby = connect(&replica.url()).await;
    let cache = seeded.query_cache(&standby, ReaderOptions::default()).await;
    let reader = CachingClient::new(standby, cache.clone());
    let id = schema::base(0) + 1;
    // The first fill from a standby learns that it is one (and is not
    // stored: the dispatched LSN was not read beside it); the next stores.
    let mut primed = false;
    for _ in 0..3 {
        name(&reader, id, QueryOptions::new()).await;
        if name(&reader, id, QueryOptions::new()).await.1 == Outcome::Hit {
            primed = true;
            break;
        }
    }
    assert!(
        primed,
        "a standby that has replayed everything never filled the cache"
    );

    replica.pause_replay().unwrap();
    env.pg
        .psql(&format!("UPDATE author SET name = 'after' WHERE id = {id}"))
        .unwrap();
    seeded.fence().await;
    let behind = cache.metrics().replica_behind;
    let (seen, outcome) = name(&reader, id, QueryOptions::new()).await;
    assert_ne!(
        seen, "after",
        "the paused standby cannot have the update yet"
    );
    assert_eq!(outcome, Outcome::Miss, "the worker deleted the cached name");
    assert_eq!(
        cache.metrics().replica_behind,
        behind + 1,
        "the standby's fill was stored"
    );

    // A read with the write's token cannot be answered by the paused
    // standby: it fails after the token wait rather than return the old
    // name.
    let token = psql_token(&env);
    let with_token = QueryOptions::new()
        .after(token)
        .token_wait(Duration::from_millis(300));
    let refused = reader
        .with(with_token.clone())
        .query(READ, &[&id])
        .await
        .map(|rows| rows[0].get::<String>(0));
    assert!(
        matches!(refused, Err(ReaderError::NotReplayed { .. })),
        "a token read on the paused standby returned {refused:?}"
    );

    replica.resume_replay().unwrap();
    let primary_lsn = replica.primary_lsn().unwrap();
    tokio::task::block_in_place(|| replica.wait_for_replay(primary_lsn, Duration::from_secs(30)))
        .unwrap();
    let (seen, _) = name(&reader, id, QueryOptions::new()).await;
    assert_eq!(
        seen, "after",
        "a stale fill from the paused standby was served"
    );
    assert_eq!(name(&reader, id, with_token).await.0, "after");
    let (seen, outcome) = name(&reader, id, QueryOptions::new()).await;
    assert_eq!((seen.as_str(), outcome), ("after", Outcome::Hit));
}

/// The author's name through the cache, and how it was served.
async fn name(reader: &CachingClient, id: i32, options: QueryOptions) -> (String, Outcome) {
    let (rows, outcome) = reader
        .with(options)
        .query_with_outcome(READ, &[&id])
        .await
        .unwrap();
    (rows[0].get::<String>(0), outcome)
}

/// A write token taken by psql, a client that knows nothing of the cache.
fn psql_token(env: &TestEnv) -> WriteToken {
    let text = env.pg.psql(cm_reader::WRITE_TOKEN_SQL).unwrap();
    text.trim().parse().unwrap()
}
