//! The replication client against a real PostgreSQL: what is re-sent after a
//! reconnect for each confirmed position (`docs/pgoutput.md` §4.2), writes from psql,
//! and the refusals that protect against silent loss.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use cm_pgoutput::{LogicalMessage, Lsn};
use cm_replication::{preflight, ReplicationConnection, ReplicationError, StartOptions};
use cm_testkit::TestPostgres;
use common::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// T1..T3 are single-insert transactions; the marker transaction ends each read.
async fn resent_after_confirming(confirm: Option<usize>) -> Vec<Vec<String>> {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    pg.psql(
        "INSERT INTO item VALUES (1, 't1'); INSERT INTO item VALUES (2, 't2');
         INSERT INTO item VALUES (3, 't3'); INSERT INTO mark VALUES (1);",
    )
    .unwrap();
    let mut stream = start(&pg, &slot).await;
    let txns = read_until_marker(&mut stream, 1, None).await.0;
    assert_eq!(
        changes(&txns),
        vec![
            s(&["I item 1,t1"]),
            s(&["I item 2,t2"]),
            s(&["I item 3,t3"])
        ]
    );
    if let Some(index) = confirm {
        stream.acker().commit_done(txns[index].end_lsn).unwrap();
    }
    stream.stop().await.unwrap();

    let client = sql(&pg).await;
    let info = preflight::slot_info(&client, &slot).await.unwrap().unwrap();
    let expected_flush = confirm.map(|i| txns[i].end_lsn);
    if let Some(flush) = expected_flush {
        assert_eq!(info.confirmed_flush_lsn, Some(flush));
    }
    pg.psql("INSERT INTO mark VALUES (2);").unwrap();
    let mut stream = start(&pg, &slot).await;
    let again = read_until_marker(&mut stream, 2, None).await.0;
    stream.stop().await.unwrap();
    // The first marker transaction was never confirmed: it comes back too.
    changes(&again)
}

#[tokio::test]
async fn nothing_confirmed_resends_everything() {
    assert_eq!(
        resent_after_confirming(None).await,
        vec![
            s(&["I item 1,t1"]),
            s(&["I item 2,t2"]),
            s(&["I item 3,t3"]),
            s(&["I mark 1"])
        ]
    );
}

#[tokio::test]
async fn confirming_t1_resends_t2_and_t3() {
    assert_eq!(
        resent_after_confirming(Some(0)).await,
        vec![s(&["I item 2,t2"]), s(&["I item 3,t3"]), s(&["I mark 1"])]
    );
}

#[tokio::test]
async fn confirming_t3_resends_nothing_before_it() {
    assert_eq!(
        resent_after_confirming(Some(2)).await,
        vec![s(&["I mark 1"])]
    );
}

#[tokio::test]
async fn psql_writes_arrive_decoded() {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    let mut stream = start(&pg, &slot).await;
    // Every statement from a separate psql process.
    for statement in [
        "INSERT INTO item VALUES (1, 'one'), (2, 'two');",
        "UPDATE item SET note = 'uno' WHERE id = 1;",
        "DELETE FROM item WHERE id = 2;",
        "COPY item (id, note) FROM STDIN;\n7\tseven\n8\teight\n\\.\n",
        "TRUNCATE item;",
        "INSERT INTO mark VALUES (1);",
    ] {
        pg.psql(statement).unwrap();
    }
    let txns = read_until_marker(&mut stream, 1, None).await.0;
    assert_eq!(
        changes(&txns),
        vec![
            s(&["I item 1,one", "I item 2,two"]),
            s(&["U item 1,uno"]),
            s(&["D item 2,n"]),
            s(&["I item 7,seven", "I item 8,eight"]),
            s(&["T item"]),
        ]
    );
    let acker = stream.acker();
    let last = txns.last().unwrap().end_lsn;
    assert_eq!(acker.commit_done(last).unwrap(), last);
    assert!(acker.commit_done(cm_pgoutput::Lsn(last.0 + 1)).is_err());
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn identify_system_reports_the_cluster() {
    let pg = TestPostgres::start().unwrap();
    let mut conn = ReplicationConnection::connect(&config(&pg)).await.unwrap();
    let id = conn.identify_system().await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some(pg.dbname()));
    assert!(id.timeline >= 1);
    assert!(!id.system_id.is_empty());
    assert!(conn.server_major_version().unwrap() >= 14);
    conn.close().await;
}

#[tokio::test]
async fn slot_started_once_with_two_phase_is_refused() {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    // As can happen by accident: one peek with two_phase flips the slot's
    // flag for good (docs/pgoutput.md §7).
    pg.psql(&format!(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL,
           'proto_version', '3', 'publication_names', '{PUBLICATION}', 'two_phase', 'on');"
    ))
    .unwrap();
    let client = sql(&pg).await;
    let err = preflight::check_before_streaming(&client, &slot, &[PUBLICATION.into()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicationError::SlotTwoPhase { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("drop the slot and create it again"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_publication_and_slot_are_refused_with_advice() {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    let client = sql(&pg).await;
    preflight::check_before_streaming(&client, &slot, &[PUBLICATION.into()])
        .await
        .unwrap();
    let err = preflight::check_before_streaming(&client, &slot, &["nope".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicationError::PublicationMissing { .. }),
        "{err}"
    );
    let other = cm_replication::SlotName::new(&pg.unique_name("absent")).unwrap();
    let err = preflight::check_before_streaming(&client, &other, &[PUBLICATION.into()])
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicationError::SlotMissing { .. }), "{err}");
    let conn = ReplicationConnection::connect(&config(&pg)).await.unwrap();
    let err = conn
        .start_replication(StartOptions::new(other, [PUBLICATION]))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ReplicationError::SlotMissing { .. }), "{err}");
}

#[tokio::test]
async fn second_consumer_of_a_slot_gets_slot_busy() {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    let first = start(&pg, &slot).await;
    let conn = ReplicationConnection::connect(&config(&pg)).await.unwrap();
    let err = conn
        .start_replication(StartOptions::new(slot.clone(), [PUBLICATION]))
        .await
        .err()
        .unwrap();
    assert!(err.is_slot_busy(), "{err}");
    first.stop().await.unwrap();
}

/// A slot whose database only sends standalone messages (the invalidator's
/// heartbeats) while WAL it is never sent piles up (rolled-back work here,
/// other databases in production) must still confirm past that WAL, or the
/// slot holds it forever. The walsender sends a keepalive right behind what
/// it decodes; here every keepalive arrives while the consumer is still
/// handling a message (a slow cache write: 600 ms, longer than the 200 ms
/// in which the walwriter flushes the rolled-back WAL and messages arrive
/// faster than they are handled): it must be remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_slot_confirms_past_wal_it_is_never_sent() {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    let conn = ReplicationConnection::connect(&config(&pg)).await.unwrap();
    let mut options = StartOptions::new(slot.clone(), [PUBLICATION]);
    // Frequent status updates: the walsender stops sending keepalives once
    // we report having received its position, so none arrives later by luck.
    options.status_interval = Duration::from_millis(20);
    let mut stream = conn.start_replication(options).await.unwrap();
    let acker = stream.acker();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                event = stream.next() => event.unwrap().unwrap(),
                _ = &mut stopped => break,
            };
            match &event.message {
                LogicalMessage::Message(m) if m.flags & 1 == 0 => {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    acker.message_done(m.lsn).unwrap();
                }
                LogicalMessage::Commit(c) => {
                    acker.commit_done(c.end_lsn).unwrap();
                }
                _ => {}
            }
        }
        stream.stop().await.unwrap();
    });

    let client = sql(&pg).await;
    let beat_then_unsent_wal = "SELECT pg_logical_emit_message(false, 'hb', 'beat');
        BEGIN; INSERT INTO item SELECT g, 'x' FROM generate_series(1, 100) g; ROLLBACK;
        SELECT pg_current_wal_lsn();";
    let written = pg.psql(beat_then_unsent_wal).unwrap();
    let target: Lsn = written.lines().last().unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let info = preflight::slot_info(&client, &slot).await.unwrap().unwrap();
        let confirmed = info.confirmed_flush_lsn.unwrap_or_default();
        if confirmed >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never confirmed past {target} (still at {confirmed})"
        );
        pg.psql(beat_then_unsent_wal).unwrap();
    }
    stop.send(()).unwrap();
    consumer.await.unwrap();
}

#[tokio::test]
async fn a_ceiling_holds_every_confirmation_until_raised_keepalives_included() {
    let pg = TestPostgres::start().unwrap();
    let slot = setup(&pg).await;
    let client = sql(&pg).await;
    let confirmed = || async {
        preflight::slot_info(&client, &slot)
            .await
            .unwrap()
            .unwrap()
            .confirmed_flush_lsn
            .unwrap()
    };
    let start_position = confirmed().await;
    pg.psql("INSERT INTO item VALUES (1, 'held'); INSERT INTO mark VALUES (1);")
        .unwrap();
    let conn = ReplicationConnection::connect(&config(&pg)).await.unwrap();
    let mut options = StartOptions::new(slot.clone(), [PUBLICATION]);
    options.status_interval = Duration::from_millis(20);
    options.ack_ceiling = Some(Lsn::INVALID);
    let mut stream = conn.start_replication(options).await.unwrap();
    let (_, marker_end) = read_until_marker(&mut stream, 1, None).await;
    let acker = stream.acker();
    acker.commit_done(marker_end).unwrap();

    // Done, but held at the ceiling: nothing reaches the slot.
    let wanted = acker.ceiling_request().await;
    assert!(wanted >= marker_end, "asks for everything received");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(confirmed().await, start_position);

    // Raised: the commit is confirmed. Then only keepalives (WAL the slot
    // is never sent) move the done position; each waits for a raise too.
    acker.raise_ceiling(marker_end);
    let deadline = Instant::now() + Duration::from_secs(10);
    while confirmed().await < marker_end {
        assert!(Instant::now() < deadline, "raised ceiling never confirmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unsent_wal =
        "BEGIN; INSERT INTO item SELECT g, 'x' FROM generate_series(10, 100) g; ROLLBACK;
        SELECT pg_current_wal_lsn();";
    let target: Lsn = pg.psql(unsent_wal).unwrap().trim().parse().unwrap();
    let keeper_acker = acker.clone();
    let keeper = tokio::spawn(async move {
        loop {
            let wanted = keeper_acker.ceiling_request().await;
            keeper_acker.raise_ceiling(wanted);
        }
    });
    let reader = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            event.unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed().await < target {
        assert!(
            Instant::now() < deadline,
            "keepalive never confirmed past {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        pg.psql(unsent_wal).unwrap();
    }
    assert!(acker.progress().flushed >= target);
    keeper.abort();
    reader.abort();
}
