//! Read-your-writes tokens in the reader alone, against the test harness's
//! stand-in invalidator (which publishes no applied LSN of its own): a read
//! with a token waits for the progress record, is served from the cache
//! once it covers the token, and reads from the database when it does not
//! within the bound (`docs/freshness.md`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cm_keys::Heartbeat;
use cm_reader::{Outcome, QueryOptions, ReaderOptions, WriteToken, WRITE_TOKEN_SQL};
use common::{texts, Harness, MAPPING, SCHEMA};

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

/// A token for everything committed so far, taken by psql (any client).
fn psql_token(h: &Harness) -> WriteToken {
    h.pg.psql(WRITE_TOKEN_SQL).unwrap().trim().parse().unwrap()
}

/// Writes a fresh progress record that says everything up to `applied` is
/// invalidated.
async fn publish_applied(h: &Harness, applied: WriteToken) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut record = Heartbeat::of_message(1, now, now);
    record.applied_lsn = applied.lsn();
    let key = h.space.heartbeat();
    h.store
        .write_heartbeat(key.as_str(), &record.encode(), Duration::from_secs(600))
        .await
        .unwrap();
}

async fn titles(h: &Harness, options: QueryOptions) -> (Vec<String>, Outcome) {
    let (rows, outcome) = h
        .client
        .with(options)
        .query_with_outcome(BY_AUTHOR, &[&1i32])
        .await
        .unwrap();
    (texts(&rows, "title"), outcome)
}

#[tokio::test]
async fn without_a_worker_a_token_read_returns_from_the_database_within_the_bound() {
    let h = Harness::start().await;
    titles(&h, QueryOptions::new()).await;
    assert_eq!(titles(&h, QueryOptions::new()).await.1, Outcome::Hit);
    h.psql("UPDATE book SET title = 'new' WHERE id = 10");
    let token = psql_token(&h);
    // Nothing applies the update: without the token the cache serves the
    // old titles.
    let (old, outcome) = titles(&h, QueryOptions::new()).await;
    assert_eq!(
        (old, outcome),
        (vec!["A1".into(), "A2".into()], Outcome::Hit)
    );

    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let (seen, outcome) = titles(&h, QueryOptions::new().after(token).token_wait(wait)).await;
    assert_eq!(seen, ["new", "A2"]);
    assert_eq!(outcome, Outcome::Bypass);
    assert!(
        started.elapsed() >= wait,
        "read through before the token wait was over"
    );
}

#[tokio::test]
async fn a_token_read_is_served_from_the_cache_once_the_record_covers_it() {
    let h = Harness::start().await;
    titles(&h, QueryOptions::new()).await;
    let token = psql_token(&h);
    let hold = Duration::from_millis(150);
    let started = Instant::now();
    let publisher = async {
        tokio::time::sleep(hold).await;
        publish_applied(&h, token).await;
    };
    let reading = titles(
        &h,
        QueryOptions::new()
            .after(token)
            .token_wait(Duration::from_secs(10)),
    );
    let ((seen, outcome), ()) = tokio::join!(reading, publisher);
    assert_eq!(seen, ["A1", "A2"]);
    assert_eq!(outcome, Outcome::Hit);
    assert!(
        started.elapsed() >= hold,
        "served before the record covered the token"
    );
    // An earlier token is covered at once.
    let earlier = WriteToken::from_lsn(token.lsn() - 1);
    assert_eq!(
        titles(&h, QueryOptions::new().after(earlier)).await.1,
        Outcome::Hit
    );
}

#[tokio::test]
async fn the_client_carries_its_own_writes_token_and_only_for_committed_writes() {
    let options = ReaderOptions {
        token_wait: Duration::from_millis(200),
        ..ReaderOptions::default()
    };
    let h = Harness::with(SCHEMA, MAPPING, None, options).await;
    titles(&h, QueryOptions::new()).await;
    assert_eq!(h.client.last_write_token(), None);

    // Inside a transaction block the write has not committed: no token.
    h.client.client().batch_execute("BEGIN").await.unwrap();
    h.client
        .execute("UPDATE book SET title = 'mine' WHERE id = 10", &[])
        .await
        .unwrap();
    assert_eq!(h.client.last_write_token(), None);
    h.client.client().batch_execute("ROLLBACK").await.unwrap();

    let changed = h
        .client
        .execute("UPDATE book SET title = 'new' WHERE id = 10", &[])
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let token = h
        .client
        .last_write_token()
        .expect("a committed write's token");
    assert!(
        token <= psql_token(&h),
        "the token lies past the server's position"
    );
    // This client's next read waits for its own write, then reads through.
    let (seen, outcome) = titles(&h, QueryOptions::new()).await;
    assert_eq!(seen, ["new", "A2"]);
    assert_eq!(outcome, Outcome::Bypass);
    // Once applied, its reads are cache reads again.
    h.invalidate().await;
    publish_applied(&h, token).await;
    titles(&h, QueryOptions::new()).await;
    assert_eq!(titles(&h, QueryOptions::new()).await.1, Outcome::Hit);

    // A commit made another way is noted after the fact.
    h.psql("UPDATE book SET title = 'newer' WHERE id = 10");
    let noted = h.client.note_write().await.unwrap();
    assert!(noted > token);
    assert_eq!(h.client.last_write_token(), Some(noted));
    let (seen, _) = titles(&h, QueryOptions::new()).await;
    assert_eq!(seen, ["newer", "A2"]);
}
