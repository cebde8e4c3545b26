//! Behaviours that need a private cluster with special settings: SCRAM
//! authentication, keepalives under a short wal_sender_timeout, and a fast
//! shutdown of PostgreSQL while streaming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use cm_replication::{ReplicationConfig, ReplicationConnection, ReplicationError};
use cm_testkit::{PgCluster, StopMode, TestPostgres};
use common::*;

#[tokio::test]
async fn scram_role_connects_and_a_wrong_password_is_refused() {
    let pg = TestPostgres::start_with(
        PgCluster::builder()
            .setting("password_encryption", "scram-sha-256")
            .hba_line("host all cm_scram 127.0.0.1/32 scram-sha-256"),
    )
    .unwrap();
    pg.psql("CREATE ROLE cm_scram LOGIN REPLICATION PASSWORD 's3cret';")
        .unwrap();
    let url = |password: &str| {
        format!(
            "postgres://cm_scram:{password}@{}:{}/{}",
            pg.host(),
            pg.port(),
            pg.dbname()
        )
    };
    let mut conn =
        ReplicationConnection::connect(&ReplicationConfig::parse(&url("s3cret")).unwrap())
            .await
            .unwrap();
    let id = conn.identify_system().await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some(pg.dbname()));
    conn.close().await;

    let err = ReplicationConnection::connect(&ReplicationConfig::parse(&url("wrong")).unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );

    let no_password = format!(
        "host={} port={} user=cm_scram dbname={}",
        pg.host(),
        pg.port(),
        pg.dbname()
    );
    let err = ReplicationConnection::connect(&ReplicationConfig::parse(&no_password).unwrap())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ReplicationError::Auth(_)), "{err}");
}

#[tokio::test]
async fn keepalives_are_answered_while_the_consumer_sleeps() {
    let pg =
        TestPostgres::start_with(PgCluster::builder().setting("wal_sender_timeout", "2s")).unwrap();
    let slot = setup(&pg).await;
    pg.psql("INSERT INTO item VALUES (1, 'slow'); INSERT INTO mark VALUES (1);")
        .unwrap();
    let mut stream = start(&pg, &slot).await;
    // Four messages (B, R, I, C) of the first transaction at 6 s each: three
    // times the timeout per message. The stream's own task must keep the
    // connection alive.
    let started = Instant::now();
    let txns = read_until_marker(&mut stream, 1, Some(Duration::from_secs(6)))
        .await
        .0;
    assert!(started.elapsed() > Duration::from_secs(12));
    assert_eq!(changes(&txns), vec![vec!["I item 1,slow".to_string()]]);
    stream.stop().await.unwrap();
}

// Multi-threaded: the test blocks a thread in pg_ctl while the stream's task
// must keep answering the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_shutdown_is_not_delayed_and_streaming_resumes_after_restart() {
    // A client that never answered would hold a fast shutdown for the whole
    // wal_sender_timeout; make that unmistakable.
    let mut pg =
        TestPostgres::start_with(PgCluster::builder().setting("wal_sender_timeout", "60s"))
            .unwrap();
    let slot = setup(&pg).await;
    pg.psql("INSERT INTO item VALUES (1, 'before'); INSERT INTO mark VALUES (1);")
        .unwrap();
    let mut stream = start(&pg, &slot).await;
    let (first, marker_end) = read_until_marker(&mut stream, 1, None).await;
    assert_eq!(changes(&first), vec![vec!["I item 1,before".to_string()]]);
    // Like the invalidator, finish everything received. The server compares
    // our *flush* with its sent position at shutdown, so unfinished work
    // would (rightly) hold the shutdown until it is done or times out.
    stream.acker().commit_done(marker_end).unwrap();

    let cluster = pg.cluster_mut().unwrap();
    let stopping = Instant::now();
    cluster.stop(StopMode::Fast).unwrap();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(2), "fast shutdown took {took:?}");
    // The stream reports the end instead of hanging.
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    // The walsender ends the copy (CommandComplete) once everything it sent
    // is confirmed: an orderly end, not a protocol violation.
    match &end {
        Some(Err(error)) => assert!(error.is_ended_by_server(), "{error}"),
        other => panic!("expected the server's end of the stream: {other:?}"),
    }
    drop(stream);

    cluster.start_again().unwrap();
    pg.psql("INSERT INTO item VALUES (2, 'after'); INSERT INTO mark VALUES (2);")
        .unwrap();
    let mut stream = start(&pg, &slot).await;
    let resumed = read_until_marker(&mut stream, 2, None).await.0;
    let resumed = changes(&resumed);
    // Replays of confirmed work are allowed (PG15 may lose a confirm-only
    // advance on shutdown, docs/pgoutput.md §4.4); skipping anything is not.
    let tail = &resumed[resumed.len() - 2..];
    assert_eq!(
        tail,
        [
            vec!["I mark 1".to_string()],
            vec!["I item 2,after".to_string()]
        ]
    );
    for txn in &resumed[..resumed.len() - 2] {
        assert_eq!(
            txn,
            &vec!["I item 1,before".to_string()],
            "only replays before"
        );
    }
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn an_invalidated_slot_is_refused_as_lost() {
    let pg =
        TestPostgres::start_with(PgCluster::builder().setting("max_slot_wal_keep_size", "1MB"))
            .unwrap();
    let slot = setup(&pg).await;
    // Move WAL several segments past the slot, then checkpoint: the slot's
    // restart_lsn falls out of max_slot_wal_keep_size and it is invalidated.
    for round in 0..4 {
        pg.psql(&format!(
            "INSERT INTO item SELECT g, 'x' FROM generate_series({0} * 1000 + 1, {0} * 1000 + 1000) g;
             SELECT pg_switch_wal();",
            round
        ))
        .unwrap();
    }
    pg.psql("CHECKPOINT;").unwrap();
    let conn = ReplicationConnection::connect(&config(&pg)).await.unwrap();
    let err = conn
        .start_replication(cm_replication::StartOptions::new(slot, [PUBLICATION]))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ReplicationError::SlotLost { .. }), "{err}");
    assert!(err.to_string().contains("flush the whole cache"), "{err}");
}
