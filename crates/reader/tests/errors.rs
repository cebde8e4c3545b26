//! What a caller sees when the database refuses a read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_reader::ReaderError;
use common::Harness;

#[tokio::test]
async fn a_database_error_shows_the_servers_message_once() {
    let h = Harness::start().await;
    let error = h
        .client
        .query("SELECT * FROM no_such_table", &[])
        .await
        .err()
        .unwrap();
    let text = error.to_string();
    assert!(
        text.contains("42P01") && text.contains("relation \"no_such_table\" does not exist"),
        "{text}"
    );
    assert!(!text.contains("db error"), "{text}");
    assert!(std::error::Error::source(&error).is_none(), "said once");
    let ReaderError::Database(db) = &error else {
        panic!("expected a database error: {error:?}");
    };
    assert_eq!(
        db.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
}
