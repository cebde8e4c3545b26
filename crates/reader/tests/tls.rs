//! A `CachingClient` over a tokio-postgres client connected with TLS
//! (`cm_tls::connect`, `sslmode=verify-full`) caches and invalidates as
//! over a plain one. The server rejects every plain TCP connection, so
//! nothing here can have fallen back to the clear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_testkit::{PgCluster, TestPostgres};
use common::{ints, texts, Harness};

const BY_AUTHOR: &str = "SELECT id, title FROM book WHERE author_id = $1 ORDER BY id";

#[tokio::test]
async fn a_caching_client_over_tls_caches_and_invalidates() {
    let pg = tokio::task::spawn_blocking(|| {
        TestPostgres::start_with(
            PgCluster::builder()
                .tls()
                .hba_line("hostnossl all all 127.0.0.1/32 reject"),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        pg.tls_ca_file().unwrap().display()
    );
    let h = Harness::on_server(pg, &url).await;
    let session = h
        .client
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(
        session[0].get::<bool>("ssl"),
        "the client's session is on TLS"
    );

    let first = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(ints(&first, "id"), [10, 11]);
    let second = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(h.hits(), 1);

    h.write("UPDATE book SET title = 'A1 over TLS' WHERE id = 10")
        .await;
    let rows = h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(texts(&rows, "title"), ["A1 over TLS", "A2"]);
    assert_eq!(h.hits(), 1, "the invalidated result was not served");
    h.client.query(BY_AUTHOR, &[&1i32]).await.unwrap();
    assert_eq!(h.hits(), 2, "and the refill is cached again");
}
