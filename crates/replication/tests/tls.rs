//! The walsender connection over TLS: SCRAM and streaming through a
//! `hostssl`-only role with `verify-full`, a certificate that does not name
//! the host, and `require` against a server without TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cm_replication::{
    ReplicationConfig, ReplicationConnection, ReplicationError, SlotName, StartOptions,
};
use cm_testkit::{PgCluster, TestPostgres};
use cm_tls::{CertificateRejected, TlsError};
use common::*;

/// A TLS cluster where role `cm_tls` may log in over TLS only, with SCRAM.
fn tls_server() -> TestPostgres {
    let pg = TestPostgres::start_with(
        PgCluster::builder()
            .tls()
            .setting("password_encryption", "scram-sha-256")
            .setting("log_connections", "on")
            .hba_line("hostssl all cm_tls 127.0.0.1/32 scram-sha-256")
            .hba_line("host all cm_tls 127.0.0.1/32 reject"),
    )
    .unwrap();
    pg.psql("CREATE ROLE cm_tls LOGIN REPLICATION PASSWORD 's3cret';")
        .unwrap();
    pg
}

fn tls_url(pg: &TestPostgres, host: &str) -> String {
    format!(
        "postgres://cm_tls:s3cret@{host}:{}/{}?sslmode=verify-full&sslrootcert={}&application_name=cm_tls_test",
        pg.port(),
        pg.dbname(),
        pg.tls_ca_file().unwrap().display()
    )
}

#[tokio::test]
async fn streams_over_verified_tls() {
    let pg = tls_server();
    pg.psql(&format!(
        "CREATE TABLE item(id int PRIMARY KEY, note text);
         CREATE TABLE mark(id int PRIMARY KEY);
         CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES;"
    ))
    .unwrap();
    let config = ReplicationConfig::parse(&tls_url(&pg, "127.0.0.1")).unwrap();
    let slot = SlotName::new(&pg.unique_name("cm_slot")).unwrap();
    let mut conn = ReplicationConnection::connect(&config).await.unwrap();
    conn.create_slot(&slot).await.unwrap();
    let stream_conn = ReplicationConnection::connect(&config).await.unwrap();
    let mut stream = stream_conn
        .start_replication(StartOptions::new(slot.clone(), [PUBLICATION]))
        .await
        .unwrap();
    pg.psql("INSERT INTO item VALUES (1, 'over tls'); INSERT INTO mark VALUES (1);")
        .unwrap();
    let (txns, _) = read_until_marker(&mut stream, 1, None).await;
    assert_eq!(changes(&txns), vec![vec!["I item 1,over tls".to_owned()]]);
    let walsender_ssl = pg
        .psql(
            "SELECT ssl, version FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) \
             WHERE application_name = 'cm_tls_test'",
        )
        .unwrap();
    assert!(walsender_ssl.starts_with("t|TLSv1."), "{walsender_ssl}");
    stream.stop().await.unwrap();
    conn.close().await;
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused_before_logging_in() {
    let pg = tls_server();
    let config = ReplicationConfig::parse(&tls_url(&pg, "localhost")).unwrap();
    let error = ReplicationConnection::connect(&config).await.err().unwrap();
    assert!(
        matches!(
            &error,
            ReplicationError::Tls(TlsError::Rejected(CertificateRejected::WrongHost { host, .. }))
                if host == "localhost"
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("TLS: certificate not valid for host \"localhost\" (sslmode=verify-full)"),
        "{error}"
    );
    let log = pg.cluster().unwrap().log_contents().unwrap();
    assert!(
        !log.contains("connection authorized: user=cm_tls"),
        "no login happened: {log}"
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_and_prefer_goes_plain() {
    let pg = TestPostgres::start().unwrap();
    let url = format!("{}?sslmode=require", pg.url());
    let config = ReplicationConfig::parse(&url).unwrap();
    let error = ReplicationConnection::connect(&config).await.err().unwrap();
    assert_eq!(
        error.to_string(),
        "server does not support TLS but sslmode=require"
    );
    let prefer = ReplicationConfig::parse(&format!("{}?sslmode=prefer", pg.url())).unwrap();
    let mut conn = ReplicationConnection::connect(&prefer).await.unwrap();
    conn.identify_system().await.unwrap();
    conn.close().await;
}
